"""Every fused model on CUDA tensors in each dtype and layout (GPU only; ``facefuse gpu-check`` runs it).

The kernel tests check each kernel's properties; the other fused-module and whole-model tests build
CPU tensors for Triton's interpreter, so on a CUDA machine they run in the interpreter. This module
is what runs the fused models themselves, compiled for the GPU: RetinaFace (both backbones) and
ArcFace IR-18 (with and without squeeze-excite) in float32 (exact and TF32), float16 and bfloat16,
NCHW and channels_last, against a float64 reference, with no block falling back.
"""

import copy

import pytest
import torch

import fused
import reference as R
from fused.tolerance import assert_close, reduction_length

MODES = {  # name → (dtype, fused precision, tolerance dtype)
    "fp32": (torch.float32, "ieee", torch.float32),
    "tf32": (torch.float32, "tf32", "tf32"),
    "fp16": (torch.float16, "ieee", torch.float16),
    "bf16": (torch.bfloat16, "ieee", torch.bfloat16),
}
LAYOUTS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}
MODELS = {  # name → (builder, input shape)
    "retinaface": (lambda: R.retinaface("mobile0.25", seed=3), (2, 3, 72, 56)),
    "retinaface-resnet50": (lambda: R.retinaface("resnet50", seed=3), (1, 3, 64, 48)),
    "arcface": (lambda: R.arcface(use_se=False, seed=3), (2, 1, 128, 128)),
    "arcface-se": (lambda: R.arcface(use_se=True, seed=3), (2, 1, 128, 128)),
}


def _outputs(out):
    return list(out) if isinstance(out, (tuple, list)) else [out]


def check_fused_model(name: str, mode: str, layout: str, device) -> None:
    """Fuse ``name`` in ``mode`` and ``layout`` on ``device``; compare with float64 on the CPU."""
    build, shape = MODELS[name]
    dtype, precision, tol_dtype = MODES[mode]
    fmt = LAYOUTS[layout]
    model = R.randomize_batchnorm(build(), seed=4).eval()
    x = torch.randn(shape, generator=torch.Generator().manual_seed(5)).to(dtype)
    with torch.no_grad():
        expected = _outputs(copy.deepcopy(model).double()(x.double()))
    net = fused.fuse(copy.deepcopy(model).to(device=device, dtype=dtype, memory_format=fmt), precision=precision)
    assert net.fuse_report.skipped == [], net.fuse_report.skipped
    with torch.inference_mode(), fused.recording() as rec:
        got = _outputs(net(x.to(device).contiguous(memory_format=fmt)))
    assert rec.fallbacks() == [], rec.fallbacks()
    assert rec.kernels(), "no Triton kernel ran"
    assert len(got) == len(expected)
    for out, exp, what in zip(got, expected, ("output 0", "output 1", "output 2")):
        assert out.dtype == dtype and out.device.type == torch.device(device).type
        assert_close(out.cpu(), exp, dtype=tol_dtype, reduction_length=reduction_length(model),
                     what=f"{name} {mode} {layout} {what}")


@pytest.mark.gpu
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("name", list(MODELS))
def test_fused_model_on_cuda(name, mode, layout, device):
    check_fused_model(name, mode, layout, device)
