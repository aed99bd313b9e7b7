"""Where kernels run: any import order, threads, bfloat16 in the interpreter, wrong devices."""

import copy
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

import fused
import reference as R
from fused.kernels.conv2d import conv2d_bias_act
from fused.kernels.depthwise import depthwise_conv_bias_act
from fused.kernels.heads import anchor_heads
from fused.tolerance import reduction_length

ROOT = Path(__file__).resolve().parents[2]
interpreter_only = pytest.mark.skipif(not fused.runtime.INTERPRETED, reason="about Triton's interpreter")

# Runs every kernel family (and a library function called as a tensor method) and checks the
# results against the reference forward; prints "ok" and what was rebuilt.
FAMILIES = """
import reference as R, fused, triton, triton.language as tl
from fused.kernels.depthwise import depthwise_conv_bias_act
torch.manual_seed(0)
with torch.inference_mode():
    for model, x in [(R.retinaface(seed=1), torch.randn(1, 3, 32, 32)),
                     (R.SEBlock(32), torch.randn(2, 32, 5, 7)),
                     (R.IRBlock(16, 16, use_se=True), torch.randn(1, 16, 6, 6))]:
        with fused.enabled(False):
            expected = [e.double() for e in torch.atleast_1d(model.eval()(x))]
        fused.fuse(model)
        with fused.recording() as rec:
            out = torch.atleast_1d(model(x))
        assert rec.kernels() and not rec.fallbacks(), (rec.kernels(), rec.fallbacks())
        for o, e in zip(out, expected):
            fused.assert_close(o, e, reduction_length=fused.reduction_length(model))
    x, w = torch.randn(1, 4, 5, 5), torch.randn(4, 1, 3, 3)
    fused.assert_close(depthwise_conv_bias_act(x, w), torch.nn.functional.conv2d(
        x.double(), w.double(), padding=1, groups=4), reduction_length=9)

@triton.jit
def row_sums(x_ptr, out_ptr, BLOCK: tl.constexpr):
    rows = tl.load(x_ptr + tl.arange(0, BLOCK)[:, None] * BLOCK + tl.arange(0, BLOCK)[None, :])
    tl.store(out_ptr + tl.arange(0, BLOCK), rows.sum(axis=1))

x, out = torch.randn(16, 16), torch.empty(16)
row_sums[(1,)](x, out, BLOCK=16)
assert torch.allclose(out, x.sum(1), atol=1e-5)
print("ok", fused.runtime.REBUILT_LIBRARY_FUNCTIONS > 0)
"""

IMPORTED_FIRST = {
    "fused first": "",
    "triton first": "import triton",
    "torch._dynamo first": "import torch._dynamo",
    "torch.compile first": "torch.compile(lambda t: t * 2)(torch.ones(3))",
    # works on a CUDA machine too: the interpreter asked for after triton was imported
    "triton first, then TRITON_INTERPRET=1": "import triton, os; os.environ['TRITON_INTERPRET'] = '1'",
}


@pytest.mark.parametrize("before", list(IMPORTED_FIRST), ids=list(IMPORTED_FIRST))
def test_every_kernel_works_whatever_was_imported_before_fused(before):
    if not fused.runtime.INTERPRETED and "TRITON_INTERPRET" not in before:
        pytest.skip("runs the kernels on CPU tensors, in Triton's interpreter")
    code = f"import torch\n{IMPORTED_FIRST[before]}\n{FAMILIES}"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    rebuilt = before != "fused first"  # Triton's library was built for the compiler: fused rebuilt it
    assert result.stdout.split()[-2:] == ["ok", str(rebuilt)]


# --- threads ----------------------------------------------------------------------------------


def run_in_threads(*jobs):
    """Run each job in its own thread, all started together; re-raise the first error."""
    errors, start = [], threading.Barrier(len(jobs))

    def run(job):
        try:
            start.wait()
            job()
        except BaseException as error:  # noqa: BLE001 - handed to the test
            errors.append(error)

    threads = [threading.Thread(target=run, args=(job,)) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def test_two_threads_run_fused_modules_at_once_and_both_get_the_right_answer(device):
    torch.manual_seed(0)
    cases = []
    for model, x in [(R.randomize_batchnorm(R.conv_dw(16, 24, 1)), torch.randn(2, 16, 9, 9)),
                     (R.SEBlock(32), torch.randn(2, 32, 6, 6))]:
        model.eval()
        with torch.inference_mode():
            expected = copy.deepcopy(model).double()(x.double())
        cases.append((fused.fuse(model).to(device), x.to(device), expected))

    def job(model, x, expected):
        def run():
            for _ in range(4):
                with torch.inference_mode(), fused.recording() as rec:
                    out = model(x)
                assert rec.kernels() and not rec.fallbacks()
                fused.assert_close(out.cpu(), expected, reduction_length=reduction_length(model))
        return run

    run_in_threads(*(job(*case) for case in cases))


# --- bfloat16 ---------------------------------------------------------------------------------


def bf16_case(model, inputs, device):
    """``model`` in bfloat16, its fused outputs and the float64 reference of the same bf16 weights."""
    model = model.eval().to(torch.bfloat16)
    inputs = [x.to(torch.bfloat16) for x in inputs]
    with torch.inference_mode():
        expected = copy.deepcopy(model).double()(*(x.double() for x in inputs))
        model = fused.fuse(model).to(device)
        with fused.recording() as rec:
            out = model(*(x.to(device) for x in inputs))
    return out, expected, rec


@pytest.mark.parametrize("name", ["retinaface", "SEBlock", "IRBlock", "conv_bn"])
def test_bfloat16_results_are_right_on_every_backend(name, device):
    torch.manual_seed(1)
    model, inputs = {
        "retinaface": (lambda: R.randomize_batchnorm(R.retinaface(seed=2)), [torch.randn(1, 3, 32, 32)]),
        "SEBlock": (lambda: R.SEBlock(32), [torch.randn(2, 32, 5, 7)]),
        "IRBlock": (lambda: R.randomize_batchnorm(R.IRBlock(16, 16, use_se=True)), [torch.randn(1, 16, 6, 6)]),
        "conv_bn": (lambda: R.randomize_batchnorm(R.conv_bn(8, 24, 1, 0.1)), [torch.randn(2, 8, 7, 9)]),
    }[name]
    model = model()
    out, expected, rec = bf16_case(model, inputs, device)
    assert rec.kernels() and not rec.fallbacks()
    for o, e in zip(torch.atleast_1d(out), torch.atleast_1d(expected)):
        assert o.dtype == torch.bfloat16
        fused.assert_close(o.cpu(), e, reduction_length=reduction_length(model))
    if fused.runtime.INTERPRETED:
        assert {e.note for e in rec.events} == {fused.runtime.BF16_NOTE}
        assert fused.runtime.BF16_NOTE in rec.summary()
    else:
        assert {e.note for e in rec.events} == {None}


@interpreter_only
def test_bfloat16_launchers_called_directly_write_only_their_outputs():
    torch.manual_seed(2)
    b = torch.bfloat16
    x, weight, bias = torch.randn(1, 8, 6, 6).to(b), torch.randn(5, 8, 3, 3).to(b), torch.randn(5)
    expected = torch.nn.functional.conv2d(x.double(), weight.double(), bias.double(), padding=1)
    # `out` a channel slice of a larger buffer (as SSH does): the rest of the buffer is untouched
    buffer = torch.full((1, 9, 6, 6), 7.0, dtype=b)
    out = conv2d_bias_act(x, weight, bias, padding=1, out=buffer[:, 2:7])
    assert out.dtype == b and out.data_ptr() == buffer[:, 2:7].data_ptr()
    fused.assert_close(buffer[:, 2:7], expected, reduction_length=72)
    assert (buffer[:, :2] == 7).all() and (buffer[:, 7:] == 7).all()
    # a channels-last result keeps its memory format
    y = conv2d_bias_act(x.contiguous(memory_format=torch.channels_last), weight, bias, padding=1)
    assert y.dtype == b and y.is_contiguous(memory_format=torch.channels_last)
    fused.assert_close(y, expected, reduction_length=72)
    dw = torch.randn(8, 1, 3, 3).to(b)
    fused.assert_close(depthwise_conv_bias_act(x, dw), torch.nn.functional.conv2d(
        x.double(), dw.double(), padding=1, groups=8), reduction_length=9)
    # outputs written in place, passed as a generator
    outputs = [torch.zeros(1, 72, 2, dtype=b), torch.zeros(1, 72, 4, dtype=b)]
    head_w, head_b = torch.randn(12, 8).to(b), torch.randn(12)
    returned = anchor_heads(x, head_w, head_b, (o for o in outputs), anchors=2)
    assert all(r is o for r, o in zip(returned, outputs))
    full = torch.einsum("nchw,kc->nhwk", x.double(), head_w.double()) + head_b.double()
    fused.assert_close(outputs[0], full[..., :4].reshape(1, 72, 2), reduction_length=8)
    fused.assert_close(outputs[1], full[..., 4:].reshape(1, 72, 4), reduction_length=8)
    # errors still name the real dtypes
    with pytest.raises(TypeError, match="bfloat16"):
        conv2d_bias_act(x, weight, padding=1, out=torch.empty(1, 5, 6, 6))


# --- devices ----------------------------------------------------------------------------------


def test_meta_tensors_get_an_error_about_meta_tensors():
    x, w = torch.empty(1, 3, 8, 8, device="meta"), torch.empty(4, 3, 3, 3, device="meta")
    with pytest.raises(RuntimeError, match="meta tensors") as error:
        conv2d_bias_act(x, w)
    assert "TRITON_INTERPRET" not in str(error.value)
    model = fused.fuse(R.conv_bn(3, 4, 1).eval()).to("meta")
    with torch.inference_mode(), pytest.raises(RuntimeError, match=r"fused.enabled\(False\)"):
        model(x)
    with torch.inference_mode(), fused.enabled(False):
        assert model(x).shape == (1, 4, 8, 8)



def test_cpu_tensors_with_the_interpreter_off_and_no_cuda_say_so(monkeypatch):
    monkeypatch.setattr(fused.runtime, "INTERPRETED", False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="no CUDA GPU and Triton's interpreter is off") as error:
        fused.runtime.check_inputs("conv2d_bias_act", torch.randn(1, 3, 4, 4))
    assert "CUDA machine" not in str(error.value)
    with pytest.raises(RuntimeError, match="meta tensors"):
        fused.runtime.check_inputs("conv2d_bias_act", torch.empty(1, 3, 4, 4, device="meta"))


def test_an_interpreter_that_numpy_breaks_gets_a_clear_error(monkeypatch):
    """Triton 3.6's interpreter calls int() on one-element arrays, which numpy 2.4 refuses with a
    bare TypeError at nearly every kernel; the launch says why and how to fix it instead."""
    from fused import runtime

    class InterpreterError(Exception):  # how Triton's interpreter wraps it
        pass

    class Broken:
        def __getitem__(self, grid):
            def run(*args, **kwargs):
                raise InterpreterError(repr(TypeError(runtime.NUMPY_SCALAR_ERROR)))

            return run

    monkeypatch.setattr(runtime, "INTERPRETED", True)
    with pytest.raises(RuntimeError, match=r"numpy<2\.4.*GPU, which compiles the kernels, is not affected"):
        runtime.launch(Broken(), (1,))
    monkeypatch.setattr(runtime, "INTERPRETED", False)  # compiled for a GPU: the error is not the interpreter's
    with pytest.raises(InterpreterError, match="0-dimensional"):
        runtime.launch(Broken(), (1,))
