"""Where the Triton kernels run: a CUDA GPU, or Triton's interpreter on CPU tensors.

Imported first by the ``fused`` package. On a machine without CUDA it sets ``TRITON_INTERPRET=1``
before any kernel is decorated (Triton reads the variable at decoration time), so the kernels run
on CPU tensors with nothing for the user to set. On a CUDA machine the kernels are compiled for the
GPU and need CUDA tensors; set ``TRITON_INTERPRET=1`` yourself before importing ``fused`` to
interpret them on the CPU instead.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

#: True when Triton kernels run in the interpreter (CPU tensors), False when compiled for CUDA.
INTERPRETED: bool = os.environ.get("TRITON_INTERPRET", "0") == "1"

#: dtypes every kernel accepts: fp32 accumulation, output in the input dtype.
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def backend() -> str:
    """Name of the backend the kernels use here: ``"triton"`` or ``"triton-interpreter"``."""
    return "triton-interpreter" if INTERPRETED else "triton"


def check_inputs(name: str, *tensors: torch.Tensor | None) -> None:
    """Raise a clear error if the tensors cannot go to a kernel on this machine.

    All tensors must share one device, the device must be the one the kernels run on here (CPU
    in the interpreter, CUDA otherwise), and the first tensor's dtype must be supported.
    """
    present = [t for t in tensors if t is not None]
    if not present:
        return
    first = present[0]
    if first.dtype not in SUPPORTED_DTYPES:
        raise TypeError(
            f"{name}: unsupported dtype {first.dtype}; the Triton kernels take "
            f"float32, float16 or bfloat16 (use the reference path for others)"
        )
    devices = {t.device for t in present}
    if len(devices) > 1:
        raise ValueError(f"{name}: tensors are on different devices: {sorted(map(str, devices))}")
    device = first.device
    if INTERPRETED and device.type != "cpu":
        raise RuntimeError(
            f"{name}: got a {device.type} tensor but Triton runs in interpreter mode "
            f"(TRITON_INTERPRET=1), which takes CPU tensors; unset TRITON_INTERPRET to compile "
            f"for the GPU, or move the tensors to the CPU"
        )
    if not INTERPRETED and device.type != "cuda":
        raise RuntimeError(
            f"{name}: got a {device.type} tensor, but on this CUDA machine the Triton kernels run "
            f"on the GPU. Move the model and input there with .cuda(), run the reference path "
            f"with `with fused.enabled(False):` (or FACEFUSE_FUSED=0), or set TRITON_INTERPRET=1 "
            f"before importing fused to interpret the kernels on the CPU"
        )
