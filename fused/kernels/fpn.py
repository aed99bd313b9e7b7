"""FPN's lateral 1x1 conv with the top-down upsample-and-add in its epilogue.

The reference FPN writes the lateral conv's output, reads it back with a nearest-upsampled copy
of the coarser level (itself written and read once more), and writes the sum: five passes over a
full-resolution map. Here the lateral conv (a plain GEMM: one row per pixel, one column per
output channel) finishes its tile in registers, applies bias and activation, then adds the
coarser map read at the *nearest source pixel* of each output pixel, and stores the sum once.
The upsampled tensor never exists.

Nearest upsampling by explicit size maps output row ``d`` to source row
``min(floor(d * scale), in - 1)`` with ``scale = in / out`` computed in float32, exactly as
PyTorch computes it (so odd sizes such as 68 → 135 rows pick the same rows).
"""

from __future__ import annotations

import numpy as np
import torch
import triton
import triton.language as tl

from .. import record, runtime
from .common import PRELU, LaunchPlan, activate, autotuned, check_launch, gemm_tiles, gemm_warps, launch_plan, \
    interpreting, needs_int64, new_output, packed_slope, pointwise_gemm, resolve_activation, tuned_variants


@triton.jit
def lateral_upsample_add_kernel(
    x_ptr, weight_ptr, bias_ptr, coarse_ptr, prelu_slopes_ptr, out_ptr,
    pixels, C, H, W, K, coarse_h, coarse_w, scale_h, scale_w, leaky_slope,
    x_stride_n, x_stride_c, x_stride_h, x_stride_w,
    w_stride_k, w_stride_c,
    coarse_stride_n, coarse_stride_k, coarse_stride_h, coarse_stride_w,
    out_stride_n, out_stride_k, out_stride_h, out_stride_w,
    HAS_COARSE: tl.constexpr, ACTIVATION: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    USE_INT64: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Program (i, j): pixels i*BLOCK_M.. x channels j*BLOCK_N.. of
    ``activation(x @ w + bias) + coarse[nearest source pixel]``."""
    pid_m = tl.program_id(0)
    if USE_INT64:
        pid_m = pid_m.to(tl.int64)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    if USE_INT64:
        cols = cols.to(tl.int64)
    row_ok, col_ok = rows < pixels, cols < K
    w_ = rows % W
    h_ = (rows // W) % H
    n = rows // (W * H)

    x_row = x_ptr + n * x_stride_n + h_ * x_stride_h + w_ * x_stride_w
    acc = pointwise_gemm(x_row, x_stride_c, weight_ptr, w_stride_k, w_stride_c, cols, row_ok, col_ok, C,
                         INPUT_PRECISION, USE_INT64, BLOCK_M, BLOCK_N, BLOCK_C)

    out_ok = row_ok[:, None] & col_ok[None, :]
    y = acc + tl.load(bias_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    if ACTIVATION == PRELU:  # one slope per output channel
        slope = tl.load(prelu_slopes_ptr + cols, mask=col_ok, other=0.0)[None, :]
    else:
        slope = leaky_slope
    y = activate(y, slope, ACTIVATION)
    if HAS_COARSE:  # + nearest-upsampled coarser level, read where the upsampled copy would come from
        src_h = tl.minimum(tl.floor(h_.to(tl.float32) * scale_h).to(tl.int32), coarse_h - 1)
        src_w = tl.minimum(tl.floor(w_.to(tl.float32) * scale_w).to(tl.int32), coarse_w - 1)
        coarse_row = n * coarse_stride_n + src_h * coarse_stride_h + src_w * coarse_stride_w
        y += tl.load(coarse_ptr + coarse_row[:, None] + cols[None, :] * coarse_stride_k, mask=out_ok).to(tl.float32)
    out_row = n * out_stride_n + h_ * out_stride_h + w_ * out_stride_w
    tl.store(out_ptr + out_row[:, None] + cols[None, :] * out_stride_k, y.to(out_ptr.dtype.element_ty), mask=out_ok)


def nearest_scale(in_size: int, out_size: int) -> float:
    """PyTorch's nearest-neighbour source scale ``in / out``, rounded to float32 as PyTorch rounds it."""
    return float(np.float32(in_size) / np.float32(out_size))


def lateral_upsample_add_plan(N: int, C: int, H: int, W: int, K: int, *, channels_last: bool = False,
                              dtype: torch.dtype = torch.float16, precision: str = "ieee",
                              interpreter: bool | None = None) -> LaunchPlan:
    """The launch :func:`lateral_upsample_add` makes for ``x`` ``[N, C, H, W]`` and ``K`` output
    channels: the convolutions' GEMM tiles (:func:`~fused.kernels.common.gemm_tiles`) over the
    ``N*H*W`` pixels, by shape class as in :func:`~fused.kernels.conv2d.conv2d_plan`.
    ``interpreter=False`` gives the GPU's plan on any machine, ``True`` the interpreter's, None
    this machine's."""
    pixels = N * H * W
    vector = (channels_last and C % 8 == 0) or (not channels_last and W % 16 == 0)
    interpreter = interpreting(interpreter)
    fma = dtype == torch.float32 and precision == "ieee" and not interpreter
    blocks = gemm_tiles(pixels, K, C, interpreter=interpreter, fma=fma,
                        tf32=dtype == torch.float32 and precision == "tf32", scalar_loads=not vector)
    return LaunchPlan((triton.cdiv(pixels, blocks["BLOCK_M"]), triton.cdiv(K, blocks["BLOCK_N"])), blocks,
                      num_warps=gemm_warps(fma=fma))


@runtime.launcher
def lateral_upsample_add(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    coarse: torch.Tensor | None = None,
    *,
    activation: str = "identity",
    slope=0.0,
    precision: str = "ieee",
) -> torch.Tensor:
    """``activation(conv1x1(x, weight) + bias) + interpolate(coarse, size=x.shape[-2:], mode="nearest")``.

    One kernel: the upsampled ``coarse`` is read in the epilogue, never materialised. ``x`` is
    ``[N, C, H, W]``; ``weight`` ``[K, C, 1, 1]`` (or ``[K, C]``); ``bias`` ``[K]``; ``coarse``
    ``[N, K, h, w]`` with any ``h, w`` (not only half the size), or None for the plain lateral.
    ``precision="tf32"`` (float32 inputs only, else a ValueError) lets the dot use TF32 tensor cores.
    """
    name = "lateral_upsample_add"
    if x.dim() != 4:
        raise ValueError(f"{name}: x must be [N, C, H, W], got shape {tuple(x.shape)}")
    if weight.dim() == 4:
        if weight.shape[2:] != (1, 1):
            raise ValueError(f"{name}: the lateral conv must be 1x1, got a {tuple(weight.shape[2:])} kernel")
        weight = weight[:, :, 0, 0]
    N, C, H, W = x.shape
    if weight.dim() != 2 or weight.shape[1] != C:
        raise ValueError(f"{name}: weight {tuple(weight.shape)} does not match x with {C} channels")
    K = weight.shape[0]
    if tuple(bias.shape) != (K,):
        raise ValueError(f"{name}: bias has shape {tuple(bias.shape)}, expected ({K},)")
    if coarse is not None:
        if coarse.dim() != 4 or coarse.shape[0] != N or coarse.shape[1] != K or min(coarse.shape[2:]) < 1:
            raise ValueError(f"{name}: coarse must be [{N}, {K}, h, w] with h, w >= 1, got {tuple(coarse.shape)}")
        if coarse.dtype != x.dtype:
            raise TypeError(f"{name}: coarse has dtype {coarse.dtype}, expected x's dtype {x.dtype}")
    check_launch(name, x, weight, bias, coarse, precision=precision)
    code, leaky_slope, prelu_slopes = resolve_activation(activation, slope, K, x.device)
    if runtime.tracing():  # torch.compile / torch.export: record the custom op (fused.kernels.ops)
        return torch.ops.facefuse.lateral_upsample_add(
            x, weight, bias, coarse, activation, *packed_slope(activation, leaky_slope, prelu_slopes), precision)

    out = new_output(x, (N, K, H, W))
    pixels = N * H * W
    if pixels == 0 or K == 0:
        return out
    coarse_h, coarse_w = (coarse.shape[2], coarse.shape[3]) if coarse is not None else (1, 1)
    plan = lateral_upsample_add_plan(N, C, H, W, K, channels_last=x.stride(1) == 1, dtype=x.dtype, precision=precision)
    args = (x, weight, bias, coarse if coarse is not None else prelu_slopes, prelu_slopes, out,
            pixels, C, H, W, K, coarse_h, coarse_w, nearest_scale(coarse_h, H), nearest_scale(coarse_w, W), leaky_slope,
            *x.stride(), *weight.stride(), *(coarse.stride() if coarse is not None else (0, 0, 0, 0)), *out.stride())
    switches = dict(HAS_COARSE=coarse is not None, ACTIVATION=code, INPUT_PRECISION=precision,
                    USE_INT64=needs_int64(x, coarse, out))
    record.kernel_launched(name)
    launch_plan(lateral_upsample_add_kernel, plan, (pixels, K), args, switches, tuned=_tuned_kernel)
    return out


def _candidates(args: dict, constexprs: dict) -> list[LaunchPlan]:
    """The launches a GPU autotunes over: the GPU plan first (:func:`~fused.kernels.common.tuned_variants`)."""
    N = args["pixels"] // (args["H"] * args["W"])
    plan = lateral_upsample_add_plan(N, args["C"], args["H"], args["W"], args["K"],
                                     channels_last=args["x_stride_c"] == 1, dtype=args["x_ptr"].dtype,
                                     precision=constexprs["INPUT_PRECISION"], interpreter=False)
    return tuned_variants(plan)


def _tuned_kernel():
    """The kernel under ``triton.autotune``, made on first use (see :func:`~fused.kernels.common.autotuned`)."""
    key = ["pixels", "C", "H", "W", "K", "x_stride_c", "INPUT_PRECISION"]
    return autotuned(lateral_upsample_add_kernel, key, _candidates, restore_value=["out_ptr"])
