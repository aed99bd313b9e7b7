"""The models ``facefuse profile`` and ``facefuse bench`` know, their inputs, and the options of a profile.

:func:`profile_options` checks and resolves every option of :func:`fused.measure.profiler.profile`
(device, dtype, sizes, repeats, layout, CUDA graphs, weights file). The profiler and the command
line both call it, so each check, and its message, exists once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

import reference

from .. import runtime
from .choices import (ARCFACE_SIZE, CPU_CHECK_SIZE, DEFAULT_REPEATS, DEFAULT_SIZE, DTYPE_NAMES,  # noqa: F401
                      MEMORY_FORMAT_NAMES, MODELS, RETINAFACE_MODELS, parse_size)

DTYPES = dict(zip(DTYPE_NAMES, (torch.float32, torch.float16, torch.bfloat16)))
MEMORY_FORMATS = dict(zip(MEMORY_FORMAT_NAMES, (torch.contiguous_format, torch.channels_last)))


def build_model(name: str, *, seed: int = 0, weights=None) -> nn.Module:
    """One of :data:`MODELS`, in eval mode: the released ``weights`` when given, else the seeded
    initialisation with :func:`reference.randomize_batchnorm` (so BN folding is exercised)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    if name.startswith("retinaface"):
        model = reference.retinaface("resnet50" if name.endswith("resnet50") else "mobile0.25", seed=seed)
    else:
        model = reference.arcface(use_se=name.endswith("-se"), seed=seed)
    if weights is not None:
        reference.load_weights(model, weights)
    else:
        reference.randomize_batchnorm(model, seed=seed)
    return model.eval()


def input_shape(name: str, size, batch: int) -> tuple[int, int, int, int]:
    """``[N, C, H, W]`` of the model's input; ``size`` is ``(H, W)``. ArcFace takes 128x128 only."""
    h, w = size
    if name.startswith("arcface"):
        if (h, w) != (ARCFACE_SIZE, ARCFACE_SIZE):
            raise ValueError(f"{name} takes {ARCFACE_SIZE}x{ARCFACE_SIZE} inputs only (fc5 needs the 8x8 map that a "
                             f"{ARCFACE_SIZE}x{ARCFACE_SIZE} face gives), got {h}x{w}")
        return (batch, 1, h, w)
    if h < 32 or w < 32:
        raise ValueError(f"{name} needs an input of at least 32x32 (three levels at strides 8, 16, 32), got {h}x{w}")
    return (batch, 3, h, w)


def example_input(name: str, size, batch: int = 1, *, dtype=torch.float32, device="cpu", seed: int = 0) -> torch.Tensor:
    """A seeded standard-normal input for the model (the profile depends on shapes, not values)."""
    g = torch.Generator().manual_seed(seed + 1)
    return torch.randn(input_shape(name, size, batch), generator=g).to(device=device, dtype=dtype)


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cuda`` without CUDA is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() and not runtime.INTERPRETED else "cpu")
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device is available on this machine (use --device cpu)")
        if runtime.INTERPRETED:
            raise ValueError("--device cuda: TRITON_INTERPRET=1 is set, so the Triton kernels take CPU tensors; unset it")
        return torch.device("cuda")
    if device == "cpu":
        return torch.device("cpu")
    raise ValueError(f"unknown device {device!r}; choose auto, cpu or cuda")


def default_size(name: str, device) -> tuple[int, int]:
    if name.startswith("arcface"):
        return (ARCFACE_SIZE, ARCFACE_SIZE)
    side = DEFAULT_SIZE["cuda" if torch.device(device).type == "cuda" else "cpu"]
    return (side, side)


def pair(size) -> tuple[int, int]:
    """``(H, W)`` from one int or a pair."""
    if isinstance(size, int):
        return (size, size)
    h, w = size
    return (int(h), int(w))


@dataclass(frozen=True)
class ProfileOptions:
    """The checked, resolved options of one profile (see :func:`profile_options`)."""

    model: str
    device: torch.device
    dtype: torch.dtype
    size: tuple[int, int]
    batch: int
    warmup: int
    repeats: int
    check_size: tuple[int, int] | None  # the fused correctness pass's input side, when it differs from size
    memory_format: str
    cuda_graphs: bool

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).replace("torch.", "")


def profile_options(model: str = "retinaface", *, size=None, batch: int = 1, dtype="float32", device="auto",
                    warmup: int | None = None, repeats: int | None = None, fused: bool = True, check_size=None,
                    memory_format: str = "nchw", cuda_graphs: bool = False, weights=None) -> ProfileOptions:
    """Check the options of a profile and fill in the defaults; a ValueError names the bad option.

    ``size`` is ``(H, W)`` or one int (default: 320 on a CPU, 640 on a GPU; ArcFace 128).
    ``check_size`` is the input side of the fused correctness pass; on a CPU it defaults to
    :data:`CPU_CHECK_SIZE` (the interpreter is slow), on a GPU to ``size``; ArcFace checks at its
    only size.
    """
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; choose from {', '.join(MODELS)}")
    dev = resolve_device(device) if isinstance(device, str) else torch.device(device)
    if isinstance(dtype, str) and dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose from {', '.join(DTYPES)}")
    torch_dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    dtype_name = str(torch_dtype).replace("torch.", "")
    if dev.type == "cpu" and torch_dtype != torch.float32:
        raise ValueError(f"--dtype {dtype_name} on the CPU: CPU half-precision convolutions are not what a GPU "
                         "runs, so their timings mislead; use float32 on the CPU, or --device cuda")
    size = default_size(model, dev) if size is None else pair(size)
    try:
        input_shape(model, size, batch)
    except ValueError as exc:
        raise ValueError(f"--size: {exc}") from None
    if check_size is not None:
        check_size = pair(check_size)
        try:
            input_shape(model, check_size, batch)
        except ValueError as exc:
            raise ValueError(f"--check-size: {exc}") from None
    warm_default, rep_default = DEFAULT_REPEATS["cuda" if dev.type == "cuda" else "cpu"]
    warmup = warm_default if warmup is None else warmup
    repeats = rep_default if repeats is None else repeats
    if batch < 1 or repeats < 1 or warmup < 0:
        raise ValueError("batch and repeats must be at least 1 and warmup at least 0")
    if memory_format not in MEMORY_FORMATS:
        raise ValueError(f"unknown memory format {memory_format!r}; choose {' or '.join(MEMORY_FORMATS)}")
    if cuda_graphs and dev.type != "cuda":
        raise ValueError("CUDA graphs need a CUDA device (--device cuda): they capture GPU kernel launches")
    if weights is not None and not os.path.isfile(weights):
        raise ValueError(f"--weights: no file at {os.fspath(weights)!r}")
    check = None
    if fused and not model.startswith("arcface"):
        if check_size is not None:
            check = check_size
        elif dev.type != "cuda" or runtime.INTERPRETED:
            check = (min(size[0], CPU_CHECK_SIZE), min(size[1], CPU_CHECK_SIZE))
        if check == tuple(size):
            check = None
    return ProfileOptions(model, dev, torch_dtype, tuple(size), batch, warmup, repeats, check, memory_format,
                          bool(cuda_graphs))
