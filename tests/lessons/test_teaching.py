"""fused.teaching: the helpers the lessons share."""

import pytest
import torch

import fused
import reference as R
from fused.kernels import conv2d as conv_kernels
from fused.measure.timing import CPU_MIN_REPEATS
from fused import teaching
from fused.teaching import ListOps, show_lines, time_each, tolerance_dtype, watch_launches


def test_list_ops_in_order():
    block = R.conv_bn(4, 8, 1, leaky=0.1).eval()
    x = torch.randn(1, 4, 5, 5)
    with torch.inference_mode(), ListOps() as listed:
        block(x)
    assert listed.ops == ["conv2d", "batch_norm", "leaky_relu_"]  # what lesson 01 shows


def test_show_lines(capsys):
    show_lines(show_lines, "lines = inspect", "print(")
    out = capsys.readouterr().out.splitlines()
    assert out[0].strip().startswith("lines = inspect") and out[-1].strip().startswith("print(")


def test_show_lines_raises_when_a_line_is_missing(capsys):
    """A lesson whose start or stop line has left the source fails, instead of printing the whole
    function under prose that no longer describes it."""
    with pytest.raises(LookupError, match="no line of show_lines contains 'no such line'"):
        show_lines(show_lines, "no such line", "print(")
    with pytest.raises(LookupError, match="after 'lines = inspect' contains 'no such line'"):
        show_lines(show_lines, "lines = inspect", "no such line")
    with pytest.raises(LookupError, match="conv2d_bias_act_kernel contains 'if HAS_RESIDUAL:'"):
        show_lines(conv_kernels.conv2d_bias_act_kernel, "if HAS_RESIDUAL:", "y += res")  # in conv2d_epilogue
    assert capsys.readouterr().out == ""


def test_watch_launches_records_and_restores():
    kernel = conv_kernels.conv2d_bias_act_kernel
    fused_block = fused.fuse(R.randomize_batchnorm(R.conv_bn(3, 8, 2, leaky=0.1)).eval())
    x = torch.randn(1, 3, 12, 12)
    with watch_launches(conv_kernels, "conv2d_bias_act_kernel") as launches, torch.inference_mode():
        out = fused_block(x)
    assert conv_kernels.conv2d_bias_act_kernel is kernel
    [(grid, blocks)] = launches
    assert len(grid) >= 1 and {"BLOCK_M", "BLOCK_N"} <= set(blocks)
    with torch.no_grad(), fused.enabled(False):
        fused.assert_close(out, fused_block.double()(x.double()), reduction_length=27)


def test_time_each():
    times = time_each({"a": lambda: None, "b": lambda: torch.ones(3)}, "cpu", warmup=0, repeats=2)
    assert list(times) == ["a", "b"] and all(t.runs == CPU_MIN_REPEATS and t.method == "wall-clock" for t in times.values())  # a CPU times at least 7 runs


def test_tolerance_dtype_follows_the_float32_precision(monkeypatch):
    """Float32 results are checked with TF32's tolerance exactly where float32 convs use TF32
    (on a GPU by default since fp32 precision "auto"); other dtypes with their own."""
    x = torch.zeros(2)
    assert tolerance_dtype(x) == torch.float32  # here: the interpreter computes exact products
    assert tolerance_dtype(x.half()) == torch.float16
    monkeypatch.setattr(teaching, "float32_precision", lambda device: "tf32")  # as on an H100
    assert tolerance_dtype(x) == "tf32"
    assert tolerance_dtype(x.half()) == torch.float16 and tolerance_dtype(x.bfloat16()) == torch.bfloat16


def test_no_lesson_stops_at_a_breakpoint():
    """Lesson 01 teaches breakpoints inside a kernel; CI runs the lessons top to bottom, so no code
    cell may leave one (it would wait for input forever)."""
    import re
    from pathlib import Path

    import nbformat

    for path in sorted((Path(__file__).resolve().parents[2] / "lessons").glob("*.ipynb")):
        code = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")
        assert not re.search(r"^\s*(breakpoint\(\)|import pdb|pdb\.set_trace\(\))", code, re.M), path.name
