"""Pieces every kernel family shares: the activation epilogue, output allocation, index width."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

#: Activation codes, chosen at compile time (``tl.constexpr``).
IDENTITY, RELU, LEAKY_RELU, PRELU = 0, 1, 2, 3
ACTIVATIONS = {"identity": IDENTITY, "relu": RELU, "leaky_relu": LEAKY_RELU, "prelu": PRELU}

INT32_MAX = 2**31 - 1


@triton.jit
def activate(y, slope, ACTIVATION: tl.constexpr):
    """Apply the activation to an fp32 tile, with PyTorch's NaN and Inf semantics.

    ``slope`` is a scalar (LeakyReLU) or a tile broadcastable to ``y`` (PReLU, one slope per
    output channel or one shared); it is ignored for identity and ReLU.

    The formulas are PyTorch's own: ReLU is ``y < 0 ? 0 : y`` (NaN stays NaN, -inf gives 0) and
    LeakyReLU/PReLU are ``y > 0 ? y : y * slope`` (so a slope of 0 turns -inf into NaN, and a
    NaN slope turns 0 into NaN, as in PyTorch). Why this is NaN-exact on the GPU as in the
    interpreter: it uses only ordered comparisons, ``tl.where`` and an IEEE multiply, which
    behave the same in numpy and in PTX (a comparison with NaN is false in both). It avoids
    ``tl.maximum``, whose default is maxnum (numpy ``fmax``, PTX ``max.f32``): it returns the
    non-NaN operand, so ``tl.maximum(NaN, 0.0)`` is 0 on both.
    """
    if ACTIVATION == 1:
        y = tl.where(y < 0, 0.0, y)
    elif ACTIVATION == 2 or ACTIVATION == 3:
        y = tl.where(y > 0, y, y * slope)
    return y


@triton.jit
def pointwise_gemm(x_row, x_stride_c, weight_ptr, w_stride_k, w_stride_c, cols, row_ok, col_ok, C,
                   INPUT_PRECISION: tl.constexpr, USE_INT64: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    """The main loop of a 1x1 convolution: ``x[rows, :] @ w[:, cols]`` as an fp32 tile.

    ``x_row`` points at channel 0 of each row's pixel; the weight is read as ``[K, C]`` by strides.
    """
    chans = tl.arange(0, BLOCK_C)
    if USE_INT64:
        chans = chans.to(tl.int64)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + chans
        c_ok = c < C
        a = tl.load(x_row[:, None] + c[None, :] * x_stride_c, mask=row_ok[:, None] & c_ok[None, :], other=0.0)
        b = tl.load(weight_ptr + cols[None, :] * w_stride_k + c[:, None] * w_stride_c,
                    mask=c_ok[:, None] & col_ok[None, :], other=0.0)
        acc = tl.dot(a, b.to(a.dtype), acc, input_precision=INPUT_PRECISION)
    return acc


_DUMMIES: dict = {}


def _dummy(device) -> torch.Tensor:
    """A one-element fp32 tensor per device, made once: kernels get it for absent slope vectors."""
    device = torch.device(device)
    if device not in _DUMMIES:
        _DUMMIES[device] = torch.zeros(1, device=device, dtype=torch.float32)
    return _DUMMIES[device]


def resolve_activation(activation: str, slope, channels: int, device) -> tuple[int, float, torch.Tensor]:
    """Check an activation request and return ``(code, leaky_slope, prelu_slopes)``.

    ``prelu_slopes`` is always an fp32 tensor of length ``channels`` (a shared PReLU slope is
    broadcast), so kernels load it the same way whether the PReLU is shared or per channel; it is
    a dummy of length 1 for the other activations. Slopes that are already a contiguous fp32
    vector of length ``channels`` on ``device`` pass through without a copy (fused modules
    prepare them once when they fold).
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; expected one of {sorted(ACTIVATIONS)}")
    code = ACTIVATIONS[activation]
    if code == PRELU:
        if not isinstance(slope, torch.Tensor):
            slope = torch.tensor([float(slope)])
        slope = slope.detach().reshape(-1).to(device=device, dtype=torch.float32)
        if slope.numel() == 1:
            slope = slope.expand(channels)
        if slope.numel() != channels:
            raise ValueError(f"PReLU has {slope.numel()} slopes, expected 1 or {channels}")
        return code, 0.0, slope.contiguous()
    dummy = _dummy(device)
    if code == LEAKY_RELU:
        if isinstance(slope, torch.Tensor):
            if slope.numel() != 1:
                raise ValueError("leaky_relu takes one scalar slope; use activation='prelu' for a vector")
            slope = float(slope)
        return code, float(slope), dummy
    return code, 0.0, dummy


def new_output(like: torch.Tensor, shape, dtype=None) -> torch.Tensor:
    """Allocate an output of ``shape`` in ``like``'s memory format (channels_last stays channels_last)."""
    channels_last = like.dim() == 4 and like.is_contiguous(memory_format=torch.channels_last) and not like.is_contiguous()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return torch.empty(shape, dtype=dtype or like.dtype, device=like.device, memory_format=fmt)


#: Extents above this get wider tiles in the interpreter (see :func:`interpreter_tile`).
INTERPRETER_BIG_PROBLEM = 512


def interpreter_tile(gpu_tile: int, extent: int, *, big: int = INTERPRETER_BIG_PROBLEM, max_tile: int = 1024) -> int:
    """The tile size to launch with along an axis of ``extent``: ``gpu_tile``, or wider in the interpreter.

    Triton's interpreter runs each program (and each loop iteration) as Python, so its cost is per
    program, not per element. For big extents (whole models in tests and lessons) it gets tiles of
    up to ``max_tile``, which makes a forward pass several times faster; extents up to ``big``
    keep the GPU tile, so the property tests still exercise indexing across several tiles.
    """
    from .. import runtime

    if runtime.INTERPRETED and extent > big:
        return max(gpu_tile, min(max_tile, triton.next_power_of_2(extent)))
    return gpu_tile


def row_tile(gpu_tile: int, rows: int, max_tile: int = 1024) -> int:
    """:func:`interpreter_tile` along the rows (output pixels) of a launch."""
    return interpreter_tile(gpu_tile, rows, max_tile=max_tile)


def needs_int64(*tensors: torch.Tensor | None) -> bool:
    """True when some element offset of these tensors may not fit in int32."""
    for t in tensors:
        if t is None or t.numel() == 0:
            continue
        span = sum((size - 1) * abs(stride) for size, stride in zip(t.shape, t.stride()))
        if span > INT32_MAX // 2:
            return True
    return False
