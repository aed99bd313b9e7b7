"""The kernel-writing exercises (fused.kernel_exercises) check in both directions: every worked
solution in lessons/solutions passes, and the lessons' stubs and planted wrong kernels (the
solution with one realistic mistake) fail with a message that names the mistake."""

import importlib.util
import re
from pathlib import Path

import nbformat
import pytest
import torch
import triton
import triton.language as tl

from fused import exercises, kernel_exercises
from fused.kernel_exercises import KERNEL_EXERCISES, check_kernel, solution

ROOT = Path(__file__).resolve().parents[2]
LESSONS = {p.stem[:2]: p for p in (ROOT / "lessons").glob("*.ipynb")}

#: Per exercise: (replacements in the worked solution's source, pattern the report must contain).
PLANTED = {
    "conv3x3": [
        ([("ih, iw = h + r - 1, w + s - 1", "ih, iw = h + r, w + s - 1")], r"tap offsets off by one.*yours reads \(h \+ r, w \+ s - 1\)"),
        ([("ok = row_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)", "ok = row_ok")], "no padding mask"),
        ([("y = acc + tl.load(b_ptr + cols, mask=col_ok, other=0.0)[None, :]", "y = acc")], "dropped bias"),
        ([("mask=row_ok[:, None] & col_ok[None, :])", "mask=row_ok[:, None])")], "wrote outside the output"),
        ([("y = tl.where(y > 0, y, y * slope)", "y = y")], "no LeakyReLU"),
    ],
    "depthwise": [
        ([("ih, iw = oh * stride + r - 1, ow * stride + s - 1", "ih, iw = oh + r - 1, ow + s - 1")], "the stride is missing"),
        ([("w_ptr + c * 9 + r * 3 + s", "w_ptr + 0 * c + r * 3 + s")], "channel 0's filter"),
        ([("w_ptr + c * 9 + r * 3 + s", "w_ptr + c * 9 + s * 3 + r")], "r and s swapped"),
        ([("tap_ok = ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)", "tap_ok = ok")], "no padding mask"),
        ([("ih, iw = oh * stride + r - 1, ow * stride + s - 1", "ih, iw = oh * stride + r - 1, ow * stride + s")],
         r"tap offsets off by one.*yours reads \(h \+ r - 1, w \+ s\)"),
        ([("acc += tl.load(b_ptr + c, mask=ok, other=0.0)", "pass")], "dropped bias"),
        ([("w_ptr + c * 9 + r * 3 + s", "w_ptr + c + r * 3 + s")], "starts at c \\* 9, not c"),
    ],
    "squeeze": [
        ([("ok = p_ok[:, None] & (hw < HW)[None, :]", "ok = p_ok[:, None]")], r"reads outside the input|no mask on the positions"),
        ([("tl.sum(acc, axis=1) / HW", "tl.sum(acc, axis=1) / BLOCK_HW")], "divided by BLOCK_HW"),
        ([("first = split * per_split", "first = 0")], "every split starts at position 0"),
        ([("tl.sum(acc, axis=1) / HW", "tl.sum(acc, axis=1)")], "not divided"),
    ],
    "upsample_add": [
        ([("src_h = tl.minimum(tl.floor(h.to(tl.float32) * scale_h).to(tl.int32), CH - 1)", "src_h = h * CH // H")],
         "computed exactly"),
        ([("    y = tl.where(y > 0, y, y * slope)  # the lateral's LeakyReLU comes before the add\n", ""),
          ("tl.store(out_ptr + offs, y, mask=ok)", "tl.store(out_ptr + offs, tl.where(y > 0, y, y * slope), mask=ok)")],
         "applied after the add"),
        ([("tl.store(out_ptr + offs, y, mask=ok)", "tl.store(out_ptr + offs, y)")], "wrote outside the output"),
        ([("tl.floor(h.to(tl.float32) * scale_h)", "tl.floor(h.to(tl.float32) * scale_h + 0.5)"),
          ("tl.floor(w.to(tl.float32) * scale_w)", "tl.floor(w.to(tl.float32) * scale_w + 0.5)")], "rounded to nearest"),
    ],
    "prelu_maxpool": [
        ([("best = tl.where((v > best) | (v != v), v, best)", "best = tl.where(v > best, v, best)")], "NaN lost by the maximum"),
        ([("2 * ph + dy) * W + 2 * pw + dx", "ph + dy) * W + pw + dx")], "window stride is missing"),
        ([("slope_ptr + plane % C", "slope_ptr + plane * 0")], "slopes\\[0\\]"),
        ([("            v = tl.where(v > 0, v, v * slope)  # PReLU first: the max commutes with it only for slopes >= 0\n", ""),
          ("tl.store(out_ptr + offs, best, mask=ok)", "tl.store(out_ptr + offs, tl.where(best > 0, best, best * slope), mask=ok)")],
         "max is taken before the PReLU"),
    ],
}


def load_kernel(source: str, name: str, tmp_path: Path, tag: str):
    """Import kernel ``name`` from ``source`` written to a file (``@triton.jit`` reads its source)."""
    path = tmp_path / f"{tag}.py"
    path.write_text("import triton\nimport triton.language as tl\n\n" + source)
    spec = importlib.util.spec_from_file_location(f"planted_{tag}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, name)


def solution_source(name: str) -> str:
    fn = solution(name)
    import inspect
    return inspect.getsource(getattr(fn, "fn", fn))


def plant(name: str, replacements, tmp_path: Path, tag: str):
    source = solution_source(name)
    for old, new in replacements:
        assert source.count(old) == 1, f"{name}: {old!r} is not once in the solution"
        source = source.replace(old, new)
    return load_kernel(source, KERNEL_EXERCISES[name].kernel_name, tmp_path, tag)


@pytest.mark.parametrize("name", sorted(KERNEL_EXERCISES))
def test_solution_passes(name, capsys):
    report = check_kernel(name, solution(name))
    assert report.passed and report.cases_run == len(KERNEL_EXERCISES[name].cases)
    assert "correct on all" in capsys.readouterr().out


@pytest.mark.parametrize("name, number", [(n, i) for n in sorted(PLANTED) for i in range(len(PLANTED[n]))],
                         ids=lambda v: str(v))
def test_planted_mistake_is_named(name, number, tmp_path):
    replacements, cause = PLANTED[name][number]
    kernel = plant(name, replacements, tmp_path, f"{name}_{number}")
    report = check_kernel(name, kernel, raise_on_fail=False, verbose=False)
    assert not report.passed
    assert re.search(cause, str(report), re.S), str(report)
    with pytest.raises(AssertionError, match="WRONG"):
        check_kernel(name, kernel, verbose=False)


def test_the_report_names_element_expected_and_got(tmp_path):
    kernel = plant("conv3x3", PLANTED["conv3x3"][2][0], tmp_path, "bias")
    text = str(check_kernel("conv3x3", kernel, raise_on_fail=False, verbose=False))
    assert re.search(r"WRONG on case 1 of 3 \(N=1, .*\)\n  output\[\d+, \d+, \d+, \d+\]: expected -?\d.*, got -?\d", text), text


def test_tl_maximum_loses_nan_where_the_interpreter_drops_it(tmp_path):
    """``tl.maximum`` as the pool's max: wrong wherever it drops NaN (GPUs, Triton 3.9's interpreter);
    the diagnosis comes from the output, so it does not depend on the Triton version."""
    kernel = plant("prelu_maxpool", [("best = tl.where((v > best) | (v != v), v, best)", "best = tl.maximum(best, v)")],
                   tmp_path, "maximum")
    report = check_kernel("prelu_maxpool", kernel, raise_on_fail=False, verbose=False)
    if report.passed:  # an interpreter whose tl.maximum keeps NaN (Triton 3.6's) gives the right answer
        assert probe_maximum_keeps_nan()
    else:
        assert "NaN lost by the maximum" in str(report)


@triton.jit
def _maximum_probe(x_ptr, out_ptr):
    tl.store(out_ptr, tl.maximum(tl.load(x_ptr), 0.0))


def probe_maximum_keeps_nan() -> bool:
    out = torch.zeros(1)
    _maximum_probe[(1,)](torch.tensor([float("nan")]), out)
    return bool(out.isnan().item())


def test_a_kernel_that_raises_is_reported(tmp_path):
    kernel = plant("squeeze", [("tl.sum(acc, axis=1) / HW", "tl.sum(acc, axis=1) / undefined_name")], tmp_path, "raises")
    report = check_kernel("squeeze", kernel, raise_on_fail=False, verbose=False)
    assert not report.passed and "the kernel raised" in str(report)


def test_unknown_exercise():
    with pytest.raises(KeyError, match="known: conv3x3, depthwise"):
        check_kernel("nope", None)


def test_reexported_from_exercises():
    assert exercises.check_kernel is check_kernel


def notebook_stubs():
    """(lesson, exercise name, stub source) for every stub kernel cell in the lessons."""
    found = []
    for lesson, path in sorted(LESSONS.items()):
        for cell in nbformat.read(path, as_version=4).cells:
            if cell.cell_type == "code" and "@triton.jit" in cell.source and "# TODO" in cell.source:
                name = re.search(r'check_kernel\("(\w+)"', cell.source)
                found.append((lesson, name.group(1) if name else None, cell.source))
    return found


def test_every_lesson_has_a_stub_for_each_of_its_exercises():
    stubs = {(lesson, name) for lesson, name, _ in notebook_stubs()}
    assert stubs == {(ex.lesson, ex.name) for ex in KERNEL_EXERCISES.values()}
    assert {lesson for lesson, _ in stubs} == {"01", "02", "03", "04", "05"}


@pytest.mark.parametrize("lesson, name, source", notebook_stubs(), ids=lambda v: v if isinstance(v, str) and len(v) < 20 else "")
def test_notebook_stub_fails_with_a_named_cause(lesson, name, source, tmp_path):
    """The stub as the lesson shows it runs (its cell must not fail the notebook), is wrong, and the
    report names a mistake that a TODO line asks to fix."""
    kernel_source = source.split("\nstub_report = ")[0]
    kernel = load_kernel(kernel_source, KERNEL_EXERCISES[name].kernel_name, tmp_path, f"stub_{name}")
    report = check_kernel(name, kernel, raise_on_fail=False, verbose=False)
    assert not report.passed
    assert report.causes and "none of the usual mistakes" not in str(report) and "raised" not in str(report), str(report)
