"""Squeeze-excite (lesson 03): pool, a tiny MLP, and the channel scale fused into its consumer.

SEBlock computes ``x * sigmoid(fc2(prelu(fc1(mean_hw(x)))))[..., None, None]``. Eager PyTorch
reads ``x`` for the pool, then reads it again and writes a scaled copy, which IRBlock reads back to
add the residual and apply PReLU. Here three kernels do the work:

* ``se_squeeze``: the per-(n, c) mean over H*W, with large maps split across programs;
* ``se_excite``: the MLP (it is tiny: C x C/16 weights), one program per sample, or on a GPU
  per span of a sample's channels when the batch is too small to fill the SMs. Inside the fused
  modules ``se_squeeze_excite`` runs both, and the excite kernel sums the squeeze's split partial
  means itself, so the small ``se_squeeze_finish`` launch is never needed there;
* ``se_scale_residual_act``: ``activate(y * scale[n, c] + residual)``, so the scaled tensor is
  never written on its own.

``squeeze_excite`` chains them into a standalone SEBlock.
"""

from __future__ import annotations

import dataclasses

import torch
import triton
import triton.language as tl

from .. import record, runtime
from .common import PRELU, SM_COUNT, LaunchPlan, activate, check_launch, interpreter_tile, interpreting, \
    needs_int64, new_output, packed_slope, resolve_activation

#: Elements in one [BLOCK_C, BLOCK_HW] tile of the squeeze and scale kernels.
TILE_ELEMENTS = 2048
#: Programs the squeeze aims for on a GPU, so a few samples on a large map still fill every SM.
TARGET_PROGRAMS = 1024
#: ... and in Triton's interpreter, which pays per program.
INTERPRETER_TARGET_PROGRAMS = 16
#: Most programs the excite gives one sample on a GPU (each recomputes the sample's hidden layer).
MAX_EXCITE_SPANS = 16


@triton.jit
def _tile_offsets(n, c, h, w, t_stride_n, t_stride_c, t_stride_h, t_stride_w):
    """Element offsets of the [channels, positions] tile at sample ``n`` of a tensor ``t`` (any strides)."""
    return n * t_stride_n + c[:, None] * t_stride_c + h[None, :] * t_stride_h + w[None, :] * t_stride_w


@triton.jit
def se_squeeze_partial_kernel(
    x_ptr, partial_ptr,
    N, C, H, W,
    x_stride_n, x_stride_c, x_stride_h, x_stride_w,
    positions_per_split, inv_positions,
    BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr, USE_INT64: tl.constexpr,
):
    """partial[split, n, c] = sum of x[n, c] over this split's positions, divided by H*W.

    Program (n * channel_blocks + channel_block, split) covers BLOCK_C channels and the
    ``positions_per_split`` flat positions (a multiple of BLOCK_HW) starting at
    ``split * positions_per_split``. Accumulation is fp32 whatever x's dtype.
    """
    channel_blocks = tl.cdiv(C, BLOCK_C)
    n = tl.program_id(0) // channel_blocks
    c = (tl.program_id(0) % channel_blocks) * BLOCK_C + tl.arange(0, BLOCK_C)
    split = tl.program_id(1)
    if USE_INT64:
        n = n.to(tl.int64)
        c = c.to(tl.int64)
    positions = H * W
    first = split * positions_per_split
    acc = tl.zeros([BLOCK_C, BLOCK_HW], dtype=tl.float32)
    for start in range(first, tl.minimum(first + positions_per_split, positions), BLOCK_HW):
        hw = start + tl.arange(0, BLOCK_HW)
        if USE_INT64:
            hw = hw.to(tl.int64)
        # splits are whole tiles, so only the map's last tile runs past the end
        mask = (c < C)[:, None] & (hw < positions)[None, :]
        offsets = _tile_offsets(n, c, hw // W, hw % W, x_stride_n, x_stride_c, x_stride_h, x_stride_w)
        acc += tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    partial = tl.sum(acc, axis=1) * inv_positions
    tl.store(partial_ptr + (split * N + n) * C + c, partial, mask=c < C)


@triton.jit
def se_squeeze_finish_kernel(partial_ptr, mean_ptr, count, splits, BLOCK: tl.constexpr):
    """mean[i] = sum over splits of partial[split, i], for the ``count`` = N*C entries."""
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < count
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for split in range(0, splits):
        acc += tl.load(partial_ptr + split * count + offsets, mask=mask, other=0.0)
    tl.store(mean_ptr + offsets, acc, mask=mask)


@triton.jit
def se_excite_kernel(
    pooled_ptr, fc1_weight_ptr, fc1_bias_ptr, prelu_weight_ptr, fc2_weight_ptr, fc2_bias_ptr, gate_ptr,
    C, hidden, splits,
    pooled_stride_split, pooled_stride_n, pooled_stride_c,
    fc1_stride_out, fc1_stride_in, fc1_bias_stride, prelu_stride,
    fc2_stride_out, fc2_stride_in, fc2_bias_stride,
    BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_HIDDEN: tl.constexpr, USE_INT64: tl.constexpr,
):
    """gate[n, c] = sigmoid(fc2(prelu(fc1(pooled[n]))))[c] in fp32, for sample ``n`` and one span of ``c``.

    Program (n, j) computes sample n's whole hidden layer, then the gates of the j-th of
    ``num_programs(1)`` equal spans of channels (whole BLOCK_N tiles): every program of a sample
    computes the same hidden vector, with the same tiles in the same order, bit for bit, so the
    split does not change which hidden values a gate sees. ``pooled`` is ``splits`` partial means
    ``[splits, N, C]`` summed here in split order, as ``se_squeeze_finish_kernel`` sums them (one
    split: the mean itself).

    Both layers are matrix-vector products, done as broadcast-multiply-and-sum over BLOCK_C
    (fc1) or BLOCK_N (fc2) channels at a time (tl.dot needs 16 rows; one sample has one). The
    hidden vector stays in registers between the layers. A shared PReLU slope has ``prelu_stride`` 0.
    """
    n = tl.program_id(0)
    if USE_INT64:
        n = n.to(tl.int64)
    r = tl.arange(0, BLOCK_HIDDEN)
    r_mask = r < hidden
    # fc1: z[r] = sum_c fc1_weight[r, c] * pooled[n, c] + fc1_bias[r]
    z = tl.zeros([BLOCK_HIDDEN], dtype=tl.float32)
    for c_start in range(0, C, BLOCK_C):
        c = c_start + tl.arange(0, BLOCK_C)
        c_mask = c < C
        pooled = pooled_ptr + n * pooled_stride_n + c * pooled_stride_c
        p = tl.load(pooled, mask=c_mask, other=0.0).to(tl.float32)
        for split in range(1, splits):
            p += tl.load(pooled + split * pooled_stride_split, mask=c_mask, other=0.0).to(tl.float32)
        w1 = tl.load(fc1_weight_ptr + r[:, None] * fc1_stride_out + c[None, :] * fc1_stride_in,
                     mask=r_mask[:, None] & c_mask[None, :], other=0.0)
        z += tl.sum(w1.to(tl.float32) * p[None, :], axis=1)
    z += tl.load(fc1_bias_ptr + r * fc1_bias_stride, mask=r_mask, other=0.0).to(tl.float32)
    slope = tl.load(prelu_weight_ptr + r * prelu_stride, mask=r_mask, other=0.0).to(tl.float32)
    # Padded lanes must be exactly 0 for fc2: their fc1 sums are 0 * pooled, NaN when pooled has an Inf.
    hid = tl.where(r_mask, activate(z, slope, PRELU), 0.0)
    # fc2: gate[c] = sigmoid(sum_r fc2_weight[c, r] * hid[r] + fc2_bias[c]) over this program's span
    span = tl.cdiv(tl.cdiv(C, tl.num_programs(1)), BLOCK_N) * BLOCK_N
    first = tl.program_id(1) * span
    for c_start in range(first, tl.minimum(first + span, C), BLOCK_N):
        c = c_start + tl.arange(0, BLOCK_N)
        c_mask = c < C
        w2 = tl.load(fc2_weight_ptr + c[:, None] * fc2_stride_out + r[None, :] * fc2_stride_in,
                     mask=c_mask[:, None] & r_mask[None, :], other=0.0)
        logit = tl.sum(w2.to(tl.float32) * hid[None, :], axis=1)
        logit += tl.load(fc2_bias_ptr + c * fc2_bias_stride, mask=c_mask, other=0.0).to(tl.float32)
        tl.store(gate_ptr + n * C + c, tl.sigmoid(logit), mask=c_mask)


@triton.jit
def se_scale_residual_act_kernel(
    y_ptr, scale_ptr, residual_ptr, prelu_slopes_ptr, out_ptr,
    C, H, W, leaky_slope,
    y_stride_n, y_stride_c, y_stride_h, y_stride_w,
    scale_stride_n, scale_stride_c,
    res_stride_n, res_stride_c, res_stride_h, res_stride_w,
    out_stride_n, out_stride_c, out_stride_h, out_stride_w,
    HAS_RESIDUAL: tl.constexpr, ACTIVATION: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr, USE_INT64: tl.constexpr,
):
    """out = activate(y * scale[n, c] + residual) on one [BLOCK_C, BLOCK_HW] tile of sample n.

    Program (n * channel_blocks + channel_block, position_block). The per-channel scale (and
    PReLU slope) is loaded once per tile and broadcast along the positions; fp32 math, output
    stored in out's dtype.
    """
    channel_blocks = tl.cdiv(C, BLOCK_C)
    n = tl.program_id(0) // channel_blocks
    c = (tl.program_id(0) % channel_blocks) * BLOCK_C + tl.arange(0, BLOCK_C)
    hw = tl.program_id(1) * BLOCK_HW + tl.arange(0, BLOCK_HW)
    if USE_INT64:
        n = n.to(tl.int64)
        c = c.to(tl.int64)
        hw = hw.to(tl.int64)
    h = hw // W
    w = hw % W
    c_mask = c < C
    mask = c_mask[:, None] & (hw < H * W)[None, :]

    scale = tl.load(scale_ptr + n * scale_stride_n + c * scale_stride_c, mask=c_mask, other=0.0)
    y = tl.load(y_ptr + _tile_offsets(n, c, h, w, y_stride_n, y_stride_c, y_stride_h, y_stride_w), mask=mask)
    v = y.to(tl.float32) * scale.to(tl.float32)[:, None]
    if HAS_RESIDUAL:
        r_offsets = _tile_offsets(n, c, h, w, res_stride_n, res_stride_c, res_stride_h, res_stride_w)
        v += tl.load(residual_ptr + r_offsets, mask=mask).to(tl.float32)
    if ACTIVATION == PRELU:
        v = activate(v, tl.load(prelu_slopes_ptr + c, mask=c_mask, other=0.0)[:, None], ACTIVATION)
    else:
        v = activate(v, leaky_slope, ACTIVATION)
    o_offsets = _tile_offsets(n, c, h, w, out_stride_n, out_stride_c, out_stride_h, out_stride_w)
    tl.store(out_ptr + o_offsets, v.to(out_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------------- launchers


def _tile_sizes(C: int, positions: int) -> tuple[int, int]:
    """(BLOCK_C, BLOCK_HW): up to 32 channels, and enough positions to fill a ~2K-element tile."""
    block_c = min(triton.next_power_of_2(C), 32)
    block_hw = min(triton.next_power_of_2(positions), TILE_ELEMENTS // block_c)
    return block_c, block_hw


@dataclasses.dataclass(frozen=True)
class SqueezePlan:
    """The launches :func:`se_squeeze` makes: ``partial`` (grid ``(N * channel blocks, splits)``),
    then ``finish`` to sum the splits, None with one split."""

    partial: LaunchPlan
    finish: LaunchPlan | None
    splits: int
    positions_per_split: int

    @property
    def programs(self) -> int:
        """Programs of the partial launch, the one that reads ``x``."""
        return self.partial.programs


def se_squeeze_plan(N: int, C: int, H: int, W: int, *, interpreter: bool | None = None) -> SqueezePlan:
    """The launches :func:`se_squeeze` makes for ``x`` ``[N, C, H, W]``.

    Without a split there are N * ceil(C / BLOCK_C) programs, too few for one or two samples on a
    large map; the H*W positions are then cut into up to enough splits to reach about
    :data:`TARGET_PROGRAMS` programs on a GPU (:data:`INTERPRETER_TARGET_PROGRAMS` in the
    interpreter, which pays per program), each split a whole number of BLOCK_HW tiles.
    ``interpreter=False`` gives the GPU's plan on any machine, ``True`` the interpreter's, None
    this machine's.
    """
    target = INTERPRETER_TARGET_PROGRAMS if interpreting(interpreter) else TARGET_PROGRAMS
    block_c, block_hw = _tile_sizes(C, H * W)
    tiles = triton.cdiv(H * W, block_hw)
    unsplit = N * triton.cdiv(C, block_c)
    splits = max(1, min(tiles, target // max(unsplit, 1)))
    tiles_per_split = triton.cdiv(tiles, splits)
    splits = triton.cdiv(tiles, tiles_per_split)  # no empty splits
    partial = LaunchPlan((unsplit, splits), {"BLOCK_C": block_c, "BLOCK_HW": block_hw})
    finish = None
    if splits > 1:
        block = min(triton.next_power_of_2(N * C), 1024)
        finish = LaunchPlan((triton.cdiv(N * C, block),), {"BLOCK": block})
    return SqueezePlan(partial, finish, splits, tiles_per_split * block_hw)


def se_excite_plan(N: int, C: int, hidden: int, *, interpreter: bool | None = None) -> LaunchPlan:
    """The launch :func:`se_excite` makes for ``N`` samples, ``C`` channels and ``hidden`` units:
    grid ``(N, spans)``, each program the gates of one span of a sample's channels.

    In the interpreter, which pays per program, one program per sample (one span). On a GPU one
    program per sample leaves SMs idle at ArcFace's batch 64 (64 programs for 132 SMs), so the
    channels are cut into power-of-two spans (whole ``BLOCK_N`` tiles) until ``N * spans``
    reaches :data:`~fused.kernels.common.SM_COUNT`, at most :data:`MAX_EXCITE_SPANS` per sample.
    The price: every program of a sample recomputes its hidden layer, reading all of fc1 (``C x
    C/16`` weights), while fc2's weights are still read once; past a few spans a program's time
    is mostly that recomputation, so more spans would only multiply fc1's reads.
    ``interpreter=False`` gives the GPU's plan on any machine, ``True`` the interpreter's, None
    this machine's.
    """
    block_hidden = triton.next_power_of_2(hidden)
    block_c = max(1, min(triton.next_power_of_2(C), TILE_ELEMENTS // block_hidden))
    block_n, spans = block_c, 1
    if not interpreting(interpreter):
        span = triton.next_power_of_2(C)
        while N * triton.cdiv(C, span) < SM_COUNT and span > 1 and triton.cdiv(C, span // 2) <= MAX_EXCITE_SPANS:
            span //= 2
        block_n, spans = min(span, block_c), triton.cdiv(C, span)
    return LaunchPlan((N, spans), {"BLOCK_C": block_c, "BLOCK_N": block_n, "BLOCK_HIDDEN": block_hidden})


def se_scale_residual_act_plan(N: int, C: int, H: int, W: int, *, interpreter: bool | None = None) -> LaunchPlan:
    """The launch :func:`se_scale_residual_act` makes for ``y`` ``[N, C, H, W]``: ~2048-element
    tiles of up to 32 channels x ``BLOCK_HW`` positions (wider in the interpreter on big maps).
    ``interpreter`` as in :func:`se_squeeze_plan`."""
    block_c, block_hw = _tile_sizes(C, H * W)
    block_hw = interpreter_tile(block_hw, H * W, interpreter=interpreting(interpreter), max_tile=4096)
    return LaunchPlan((N * triton.cdiv(C, block_c), triton.cdiv(H * W, block_hw)), {"BLOCK_C": block_c, "BLOCK_HW": block_hw})


def _check_4d(name: str, what: str, t: torch.Tensor) -> None:
    if t.dim() != 4:
        raise ValueError(f"{name}: {what} must be 4-D [N, C, H, W], got shape {tuple(t.shape)}")


def _squeeze_checked(name: str, x: torch.Tensor) -> bool:
    """Check ``x`` for the squeeze; False for an empty batch or no channels (nothing to launch)."""
    check_launch(name, x)
    _check_4d(name, "x", x)
    batch, channels, height, width = x.shape
    if batch == 0 or channels == 0:
        return False
    if height * width == 0:
        raise ValueError(f"{name}: the mean over an empty {height}x{width} map is undefined")
    return True


def _squeeze_partials(x: torch.Tensor):
    """Launch the squeeze's first stage on a checked, non-empty ``x``: ``(partial [splits, N, C], plan)``."""
    batch, channels, height, width = x.shape
    plan = se_squeeze_plan(batch, channels, height, width)
    partial = torch.empty(plan.splits, batch, channels, dtype=torch.float32, device=x.device)
    record.kernel_launched("se_squeeze_partial")
    runtime.launch(se_squeeze_partial_kernel, plan.partial.grid,
        x, partial, batch, channels, height, width, *x.stride(),
        plan.positions_per_split, 1.0 / (height * width),
        USE_INT64=needs_int64(x), num_warps=plan.partial.num_warps, **plan.partial.blocks,
    )
    return partial, plan


@runtime.launcher(float32_result=True)
def se_squeeze(x: torch.Tensor) -> torch.Tensor:
    """Per-(n, c) mean of ``x`` [N, C, H, W] (any strides) over H*W, as float32 [N, C].

    Two stages instead of a grid-wide barrier: Triton programs cannot wait for each other (the
    programs of one launch need not all be resident, so a program spinning on the others could
    deadlock), so the end of a launch is the barrier. Each program writes the fp32 partial mean of
    its split of H*W to ``partial[split, n, c]``; a tiny second launch sums over the splits. Unlike
    ``tl.atomic_add`` into a zeroed buffer, the summation order is fixed, so the result is
    bit-identical run to run, and no zero-fill is needed. With one split the partials are the mean
    and the second launch is skipped.
    """
    if not _squeeze_checked("se_squeeze", x):
        return torch.empty(x.shape[0], x.shape[1], dtype=torch.float32, device=x.device)
    if runtime.tracing():  # torch.compile / torch.export: record the custom op (fused.kernels.ops)
        return torch.ops.facefuse.se_squeeze(x)
    partial, plan = _squeeze_partials(x)
    if plan.finish is None:
        return partial[0]
    mean = torch.empty(x.shape[0], x.shape[1], dtype=torch.float32, device=x.device)
    record.kernel_launched("se_squeeze_finish")
    runtime.launch(se_squeeze_finish_kernel, plan.finish.grid,
        partial, mean, mean.numel(), plan.splits, num_warps=plan.finish.num_warps, **plan.finish.blocks,
    )
    return mean


def _check_param(name: str, what: str, t, *shapes: tuple[int, ...]) -> None:
    """Raise unless ``t`` is a floating-point tensor of one of ``shapes``."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: {what} must be a tensor, got {type(t).__name__}")
    if not t.dtype.is_floating_point:
        raise TypeError(f"{name}: {what} must be a floating-point tensor, got {t.dtype}")
    if tuple(t.shape) not in shapes:
        expected = " or ".join(str(s) for s in shapes)
        raise ValueError(f"{name}: {what} must have shape {expected}, got {tuple(t.shape)}")


def _check_mlp(name: str, channels: int, fc1_weight, fc1_bias, prelu_weight, fc2_weight, fc2_bias) -> int:
    """Check the excite MLP's parameters against ``channels``; return its hidden width."""
    if not isinstance(fc1_weight, torch.Tensor) or fc1_weight.dim() != 2 or fc1_weight.shape[0] < 1:
        shape = tuple(fc1_weight.shape) if isinstance(fc1_weight, torch.Tensor) else type(fc1_weight).__name__
        raise ValueError(f"{name}: fc1_weight must have shape (hidden >= 1, {channels}), got {shape}")
    hidden = fc1_weight.shape[0]
    _check_param(name, "fc1_weight", fc1_weight, (hidden, channels))
    _check_param(name, "fc1_bias", fc1_bias, (hidden,))
    _check_param(name, "prelu_weight", prelu_weight, (1,), (hidden,))
    _check_param(name, "fc2_weight", fc2_weight, (channels, hidden))
    _check_param(name, "fc2_bias", fc2_bias, (channels,))
    return hidden


def _launch_excite(partial, fc1_weight, fc1_bias, prelu_weight, fc2_weight, fc2_bias) -> torch.Tensor:
    """Launch the excite kernel on ``partial`` ``[splits, N, C]`` (summed over splits); the gate [N, C]."""
    splits, batch, channels = partial.shape
    hidden = fc1_weight.shape[0]
    gate = torch.empty(batch, channels, dtype=torch.float32, device=partial.device)
    plan = se_excite_plan(batch, channels, hidden)
    prelu_stride = 0 if prelu_weight.numel() == 1 else prelu_weight.stride(0)  # 0: one shared slope
    record.kernel_launched("se_excite")
    runtime.launch(se_excite_kernel, plan.grid,
        partial, fc1_weight, fc1_bias, prelu_weight, fc2_weight, fc2_bias, gate,
        channels, hidden, splits, *partial.stride(),
        *fc1_weight.stride(), fc1_bias.stride(0), prelu_stride,
        *fc2_weight.stride(), fc2_bias.stride(0),
        USE_INT64=needs_int64(partial), num_warps=plan.num_warps, **plan.blocks,
    )
    return gate


@runtime.launcher(float32_result=True)
def se_excite(pooled, fc1_weight, fc1_bias, prelu_weight, fc2_weight, fc2_bias) -> torch.Tensor:
    """The SE gate ``sigmoid(fc2(prelu(fc1(pooled))))`` as float32 [N, C].

    ``pooled`` [N, C]; fc1 ``[Cr, C]``, ``[Cr]``; ``prelu_weight`` one shared slope ``[1]`` or
    ``[Cr]``; fc2 ``[C, Cr]``, ``[C]``. Parameters may be any float dtype and strides; they are
    upcast to fp32 inside the kernel, so no converted copies are made per call.
    """
    name = "se_excite"
    check_launch(name, pooled, fc1_weight, fc1_bias, prelu_weight, fc2_weight, fc2_bias)
    if pooled.dim() != 2:
        raise ValueError(f"{name}: pooled must be 2-D [N, C], got shape {tuple(pooled.shape)}")
    batch, channels = pooled.shape
    _check_mlp(name, channels, fc1_weight, fc1_bias, prelu_weight, fc2_weight, fc2_bias)
    if batch == 0 or channels == 0:
        return torch.empty(batch, channels, dtype=torch.float32, device=pooled.device)
    if runtime.tracing():  # torch.compile / torch.export: record the custom op (fused.kernels.ops)
        return torch.ops.facefuse.se_excite(pooled, fc1_weight, fc1_bias, prelu_weight, fc2_weight, fc2_bias)
    return _launch_excite(pooled[None], fc1_weight, fc1_bias, prelu_weight, fc2_weight, fc2_bias)


@runtime.launcher(float32_result=True)
def se_squeeze_excite(x, fc1_weight, fc1_bias, prelu_weight, fc2_weight, fc2_bias) -> torch.Tensor:
    """``se_excite(se_squeeze(x), ...)`` in two launches whatever the map size: the excite kernel
    sums the squeeze's split partial means itself, in the order ``se_squeeze_finish`` does, so the
    gate is bit for bit the three-launch one. x [N, C, H, W] (any strides); parameters as
    :func:`se_excite`. Returns the float32 gate [N, C].
    """
    name = "se_squeeze_excite"
    check_launch(name, x, fc1_weight, fc1_bias, prelu_weight, fc2_weight, fc2_bias)
    _check_4d(name, "x", x)
    _check_mlp(name, x.shape[1], fc1_weight, fc1_bias, prelu_weight, fc2_weight, fc2_bias)
    if not _squeeze_checked(name, x):
        return torch.empty(x.shape[0], x.shape[1], dtype=torch.float32, device=x.device)
    if runtime.tracing():  # torch.compile / torch.export: record the custom op (fused.kernels.ops)
        return torch.ops.facefuse.se_squeeze_excite(x, fc1_weight, fc1_bias, prelu_weight, fc2_weight, fc2_bias)
    partial, _ = _squeeze_partials(x)
    return _launch_excite(partial, fc1_weight, fc1_bias, prelu_weight, fc2_weight, fc2_bias)


@runtime.launcher
def se_scale_residual_act(
    y: torch.Tensor,
    scale: torch.Tensor,
    residual: torch.Tensor | None = None,
    *,
    activation: str = "identity",
    slope=0.0,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``out = activate(y * scale[n, c] + residual)``: the SE scale fused into its consumer.

    ``y`` [N, C, H, W] and ``residual`` (same shape, or None) any strides; ``scale`` [N, C]
    (float32 from ``se_excite``). ``activation``/``slope`` as ``common.resolve_activation``
    (``"prelu"`` takes a shared or per-channel slope tensor). For IRBlock this adds the residual
    and applies PReLU, so the scaled tensor is never written on its own. The result has y's dtype
    and memory format unless ``out`` is given.
    """
    name = "se_scale_residual_act"
    check_launch(name, y, scale, residual, out)
    _check_4d(name, "y", y)
    batch, channels, height, width = y.shape
    if tuple(scale.shape) != (batch, channels):
        raise ValueError(f"{name}: scale must have shape {(batch, channels)}, got {tuple(scale.shape)}")
    if not scale.dtype.is_floating_point:
        raise TypeError(f"{name}: scale must be a floating-point tensor, got {scale.dtype}")
    for what, t in (("residual", residual), ("out", out)):
        if t is not None and t.shape != y.shape:
            raise ValueError(f"{name}: {what} must have y's shape {tuple(y.shape)}, got {tuple(t.shape)}")
        if t is not None and t.dtype not in runtime.SUPPORTED_DTYPES:
            raise TypeError(f"{name}: {what} has unsupported dtype {t.dtype}")
    code, leaky_slope, prelu_slopes = resolve_activation(activation, slope, channels, y.device)
    if runtime.tracing():  # torch.compile / torch.export: record the custom op (fused.kernels.ops)
        args = (y, scale, residual, activation, *packed_slope(activation, leaky_slope, prelu_slopes))
        if out is None:
            return torch.ops.facefuse.se_scale_residual_act(*args)
        torch.ops.facefuse.se_scale_residual_act_out(*args, out)
        return out
    if out is None:
        out = new_output(y, y.shape)
    if y.numel() == 0:
        return out
    plan = se_scale_residual_act_plan(batch, channels, height, width)
    res = y if residual is None else residual  # a dummy pointer when there is no residual
    record.kernel_launched("se_scale_residual_act")
    runtime.launch(se_scale_residual_act_kernel, plan.grid,
        y, scale, res, prelu_slopes, out,
        channels, height, width, leaky_slope,
        *y.stride(), *scale.stride(), *res.stride(), *out.stride(),
        HAS_RESIDUAL=residual is not None, ACTIVATION=code,
        USE_INT64=needs_int64(y, residual, out), num_warps=plan.num_warps, **plan.blocks,
    )
    return out


def squeeze_excite(x, fc1_weight, fc1_bias, prelu_weight, fc2_weight, fc2_bias) -> torch.Tensor:
    """The standalone fused SEBlock: ``x * gate[n, c]`` in x's dtype and memory format (three launches)."""
    gate = se_squeeze_excite(x, fc1_weight, fc1_bias, prelu_weight, fc2_weight, fc2_bias)
    return se_scale_residual_act(x, gate)
