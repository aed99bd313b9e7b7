"""Depthwise 3x3 convolution, alone and fused with the pointwise 1x1 that follows it (lesson 02).

MobileNetV1's ``conv_dw`` block is depthwise 3x3 -> BN -> LeakyReLU -> pointwise 1x1 -> BN ->
LeakyReLU, with BN already folded into the weights and biases. Two kernels:

* ``depthwise_conv_bias_act``: each output is a 9-term sum over one channel's 3x3 window. There
  is no reduction over channels, so this is nine fp32 FMAs per output, not a ``tl.dot``.
* ``conv_dw_fused``: the whole block. For a tile of output pixels, each block of channels is
  convolved depthwise in registers and fed straight into ``tl.dot`` with the pointwise weights;
  the [N, C, OH, OW] intermediate is never written to memory.

Both read every tensor through its strides (NCHW, channels_last or any view, no copies), take the
zero padding from masked loads, and accumulate in fp32 whatever the input dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import record, runtime
from .common import ACTIVATIONS, PRELU, SM_COUNT, LaunchPlan, activate, check_launch, interpreter_tile, interpreting, \
    needs_int64, new_output, packed_slope, resolve_activation, SCALAR_ACTIVATIONS

#: Zero padding on each side, fixed by the 3x3 "same" convolution. A module constant (a documented
#: test switch) so that a test can inject an off-by-one padding bug and check that the tolerance
#: policy rejects it.
PADDING = 1

#: Start ``conv_dw_fused``'s depthwise sums and its accumulator from a ``tl.dot`` of zeros (see
#: :func:`conv_dw_fused_kernel`): same values, a loop that keeps an MMA in flight. Module constants
#: so that a test can check both ways give the same bits; lesson 07 compiles both.
MMA_LAYOUT_SUMS = True
MMA_LAYOUT_ACC = True


@triton.jit
def _block_offsets(block_id, BLOCK: tl.constexpr, USE_INT64: tl.constexpr):
    """Indices ``block_id * BLOCK + [0, BLOCK)``, in int64 when offsets may pass 2**31."""
    if USE_INT64:
        block_id = tl.cast(block_id, tl.int64)  # also for a Python int loop index (interpreter)
    return block_id * BLOCK + tl.arange(0, BLOCK)


@triton.jit
def depthwise_taps(
    x_ptr, weight_ptr,
    n, oh, ow, pixel_mask,            # [BLOCK_M] output pixel coordinates
    channel, channel_mask,            # [BLOCK_C] channels
    H, W,
    x_stride_n, x_stride_c, x_stride_h, x_stride_w,
    w_stride_c, w_stride_r, w_stride_s,
    STRIDE: tl.constexpr, PADDING: tl.constexpr, zero=None,
):
    """Depthwise 3x3 sums for a [BLOCK_M pixels, BLOCK_C channels] tile, fp32, no bias.

    Each of the nine taps loads one shifted input tile and one weight per channel; taps that
    fall in the padding are masked and read as zero. The weights are rounded to x's dtype
    first, as a conv in that dtype would store them. ``zero``: a zero tile to start the sums
    from (its layout is the sums' layout, see :func:`conv_dw_fused_kernel`); None for
    ``tl.zeros``.
    """
    x_tile = n[:, None] * x_stride_n + channel[None, :] * x_stride_c
    if zero is None:
        acc = tl.zeros(x_tile.shape, dtype=tl.float32)
    else:
        acc = zero
    for i in tl.static_range(3):
        ih = oh * STRIDE + i - PADDING
        row_ok = pixel_mask & (ih >= 0) & (ih < H)
        for j in tl.static_range(3):
            iw = ow * STRIDE + j - PADDING
            tap_ok = row_ok & (iw >= 0) & (iw < W)
            x = tl.load(x_ptr + x_tile + (ih * x_stride_h + iw * x_stride_w)[:, None],
                        mask=tap_ok[:, None] & channel_mask[None, :], other=0.0)
            w = tl.load(weight_ptr + channel * w_stride_c + i * w_stride_r + j * w_stride_s,
                        mask=channel_mask, other=0.0)
            w = w.to(x_ptr.dtype.element_ty).to(tl.float32)
            acc = tl.fma(x.to(tl.float32), w[None, :], acc)
    return acc


@triton.jit
def depthwise_conv_bias_act_kernel(
    x_ptr, weight_ptr, bias_ptr, prelu_slopes_ptr, out_ptr,
    C, H, W, OH, OW, pixels,          # pixels = N * OH * OW
    x_stride_n, x_stride_c, x_stride_h, x_stride_w,
    w_stride_c, w_stride_r, w_stride_s,
    out_stride_n, out_stride_c, out_stride_h, out_stride_w,
    leaky_slope,
    STRIDE: tl.constexpr, PADDING: tl.constexpr, HAS_BIAS: tl.constexpr,
    ACTIVATION: tl.constexpr, USE_INT64: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """out[n, c] = act(bias[c] + depthwise 3x3 of x[n, c]) for BLOCK_M pixels x BLOCK_C channels.

    Pixels are flattened over (N, OH, OW) so small maps still fill a tile.
    """
    pixel = _block_offsets(tl.program_id(0), BLOCK_M, USE_INT64)
    channel = _block_offsets(tl.program_id(1), BLOCK_C, USE_INT64)
    pixel_mask = pixel < pixels
    channel_mask = channel < C
    n, oh, ow = pixel // (OH * OW), (pixel // OW) % OH, pixel % OW

    y = depthwise_taps(x_ptr, weight_ptr, n, oh, ow, pixel_mask, channel, channel_mask, H, W,
                       x_stride_n, x_stride_c, x_stride_h, x_stride_w, w_stride_c, w_stride_r, w_stride_s,
                       STRIDE, PADDING)
    if HAS_BIAS:
        y += tl.load(bias_ptr + channel, mask=channel_mask, other=0.0).to(tl.float32)[None, :]
    if ACTIVATION == PRELU:  # one slope per channel
        slope = tl.load(prelu_slopes_ptr + channel, mask=channel_mask, other=0.0)[None, :]
    else:
        slope = leaky_slope
    y = activate(y, slope, ACTIVATION)

    out = n[:, None] * out_stride_n + channel[None, :] * out_stride_c + (oh * out_stride_h + ow * out_stride_w)[:, None]
    tl.store(out_ptr + out, y.to(out_ptr.dtype.element_ty), mask=pixel_mask[:, None] & channel_mask[None, :])


@triton.jit
def mma_zeros(M: tl.constexpr, N: tl.constexpr, K: tl.constexpr, dtype: tl.constexpr, INPUT_PRECISION: tl.constexpr):
    """An fp32 [M, N] tile of +0.0 made by a tl.dot of zeros (K deep): a tensor in the MMA layout."""
    return tl.dot(tl.zeros((M, K), dtype=dtype), tl.zeros((K, N), dtype=dtype), input_precision=INPUT_PRECISION)


@triton.jit
def conv_dw_fused_kernel(
    x_ptr, dw_weight_ptr, dw_bias_ptr, pw_weight_ptr, pw_bias_ptr, out_ptr,
    C, H, W, K, OH, OW, pixels,       # pixels = N * OH * OW
    x_stride_n, x_stride_c, x_stride_h, x_stride_w,
    dw_stride_c, dw_stride_r, dw_stride_s,
    pw_stride_k, pw_stride_c,
    out_stride_n, out_stride_k, out_stride_h, out_stride_w,
    dw_slope, pw_slope,
    STRIDE: tl.constexpr, PADDING: tl.constexpr, INPUT_PRECISION: tl.constexpr, USE_INT64: tl.constexpr,
    DW_ACTIVATION: tl.constexpr, PW_ACTIVATION: tl.constexpr, MMA_LAYOUT_SUMS: tl.constexpr,
    MMA_LAYOUT_ACC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """A whole conv_dw block for BLOCK_M output pixels x BLOCK_N output channels.

    Per block of BLOCK_C input channels: depthwise 3x3 + bias + activation in registers, rounded
    to x's dtype (what the two-kernel path would store), then one tl.dot with the pointwise
    weights. Masked channels are zero on both sides of the dot, so any C works.

    Why the depthwise sums start from ``zero``, a tl.dot of zeros, instead of ``tl.zeros``: the
    pointwise dot's left operand is computed in the loop, in registers, and Triton's Hopper
    pipeliner lets such a ``wgmma`` run asynchronously (keep one in flight while the next
    block's depthwise sums are computed) only when that operand is converted from an MMA-layout
    tensor, as in attention's ``P @ V`` (``dotCanBeProperlyAsync``, rule 1a, in Triton's
    ``WGMMAPipeline.cpp``). A dot result *has* the MMA layout, and the layout propagates through
    the sums, bias and activation. Its value is exactly +0.0, as ``tl.zeros`` is, so the results
    are unchanged; it costs one small MMA per program, before the loop. ``facefuse inspect``
    shows the effect (``wgmma.wait_group 1`` in the loop instead of ``0``, column ``mma``).

    Why the accumulator starts from a tl.dot of zeros too: with ``tl.zeros``, the path that skips
    the loop (no channel block) sets the accumulator's registers with ``mov`` in a block that LLVM
    may place between the loop and its final ``wgmma.wait_group 0``; ptxas then reads them as
    defined inside the in-flight MMA's pipeline stage and serialises every MMA (warning C7515;
    mobile0.25's 16- and 64-channel tiles). A dot result needs no such ``mov``. Its K (32) differs
    from ``zero``'s (16) so the compiler cannot merge the two dots into one when ``BLOCK_N ==
    BLOCK_C``, which would need a copy on that path again.

    The launcher passes the module's :data:`MMA_LAYOUT_SUMS` and :data:`MMA_LAYOUT_ACC` (both True);
    ``False`` starts from ``tl.zeros``, for lesson 07 and the tests to compile and compare.
    """
    pixel = _block_offsets(tl.program_id(0), BLOCK_M, USE_INT64)
    out_channel = _block_offsets(tl.program_id(1), BLOCK_N, USE_INT64)
    pixel_mask = pixel < pixels
    out_channel_mask = out_channel < K
    n, oh, ow = pixel // (OH * OW), (pixel // OW) % OH, pixel % OW

    if MMA_LAYOUT_ACC:
        acc = mma_zeros(BLOCK_M, BLOCK_N, 32, x_ptr.dtype.element_ty, INPUT_PRECISION)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if MMA_LAYOUT_SUMS:
        zero = mma_zeros(BLOCK_M, BLOCK_C, 16, x_ptr.dtype.element_ty, INPUT_PRECISION)
    else:
        zero = tl.zeros((BLOCK_M, BLOCK_C), dtype=tl.float32)
    for channel_block in range(0, tl.cdiv(C, BLOCK_C)):
        channel = _block_offsets(channel_block, BLOCK_C, USE_INT64)
        channel_mask = channel < C
        mid = depthwise_taps(x_ptr, dw_weight_ptr, n, oh, ow, pixel_mask, channel, channel_mask, H, W,
                             x_stride_n, x_stride_c, x_stride_h, x_stride_w, dw_stride_c, dw_stride_r, dw_stride_s,
                             STRIDE, PADDING, zero)
        mid += tl.load(dw_bias_ptr + channel, mask=channel_mask, other=0.0).to(tl.float32)[None, :]
        mid = activate(mid, dw_slope, DW_ACTIVATION).to(x_ptr.dtype.element_ty)
        pw = tl.load(pw_weight_ptr + channel[:, None] * pw_stride_c + out_channel[None, :] * pw_stride_k,
                     mask=channel_mask[:, None] & out_channel_mask[None, :], other=0.0)
        acc = tl.dot(mid, pw.to(x_ptr.dtype.element_ty), acc, input_precision=INPUT_PRECISION)

    acc += tl.load(pw_bias_ptr + out_channel, mask=out_channel_mask, other=0.0).to(tl.float32)[None, :]
    y = activate(acc, pw_slope, PW_ACTIVATION)
    out = n[:, None] * out_stride_n + out_channel[None, :] * out_stride_k + (oh * out_stride_h + ow * out_stride_w)[:, None]
    tl.store(out_ptr + out, y.to(out_ptr.dtype.element_ty), mask=pixel_mask[:, None] & out_channel_mask[None, :])


# ----------------------------------------------------------------------------------- launchers


def _check_x(name: str, x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        got = f"rank {x.dim()} with shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name}: x must be a 4-D [N, C, H, W] tensor, got {got}")


def _check_param(name: str, what: str, t: torch.Tensor, *expected_shapes: tuple) -> None:
    """``t`` must be a floating-point tensor with one of ``expected_shapes``."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: {what} must be a tensor, got {type(t).__name__}")
    if tuple(t.shape) not in expected_shapes:
        wanted = " or ".join(str(list(s)) for s in expected_shapes)
        raise ValueError(f"{name}: {what} must have shape {wanted}, got {list(t.shape)}")
    if not t.is_floating_point():
        raise TypeError(f"{name}: {what} must be a floating-point tensor, got {t.dtype}")


def _check_stride(name: str, stride) -> None:
    if isinstance(stride, bool) or not isinstance(stride, int) or stride not in (1, 2):
        raise ValueError(f"{name}: stride must be 1 or 2, got {stride!r}")


def _output(name: str, x: torch.Tensor, out: torch.Tensor | None, shape: tuple) -> torch.Tensor:
    """A new output in x's memory format, or the caller's ``out`` after checking it fits."""
    if out is None:
        return new_output(x, shape)
    if tuple(out.shape) != shape:
        raise ValueError(f"{name}: out must have shape {list(shape)}, got {list(out.shape)}")
    if out.dtype != x.dtype:
        raise TypeError(f"{name}: out must have x's dtype {x.dtype}, got {out.dtype}")
    return out


def _out_size(size: int, stride: int) -> int:
    return (size + 2 * 1 - 3) // stride + 1


def depthwise_plan(N: int, C: int, H: int, W: int, stride: int = 1, *, channels_last: bool = False,
                   interpreter: bool | None = None) -> LaunchPlan:
    """The launch :func:`depthwise_conv_bias_act` makes for ``x`` ``[N, C, H, W]``: ~2048-element
    tiles of ``BLOCK_M`` output pixels x ``BLOCK_C`` channels, long along the axis that is
    contiguous in memory.

    channels_last: up to 64 channels side by side (coalesced loads); NCHW: 4 channels and many
    pixels, since neighbouring pixels of one channel are neighbours in memory.
    ``interpreter=False`` gives the GPU's plan on any machine, ``True`` the interpreter's, None
    this machine's.
    """
    pixels = N * _out_size(H, stride) * _out_size(W, stride)
    block_c = min(triton.next_power_of_2(C), 64 if channels_last else 4)
    block_m = interpreter_tile(min(triton.next_power_of_2(pixels), 2048 // block_c), pixels,
                               interpreter=interpreting(interpreter), max_tile=max(2048 // block_c, 1024))
    return LaunchPlan((triton.cdiv(pixels, block_m), triton.cdiv(C, block_c)), {"BLOCK_M": block_m, "BLOCK_C": block_c})


def conv_dw_fused_plan(N: int, C: int, H: int, W: int, K: int, stride: int = 1, *,
                       dtype: torch.dtype = torch.float32, precision: str = "ieee", channels_last: bool = False,
                       interpreter: bool | None = None) -> LaunchPlan:
    """The launch :func:`conv_dw_fused` makes for ``x`` ``[N, C, H, W]`` and ``K`` output channels.

    One program covers all output channels (``BLOCK_N`` >= K, up to 256): the depthwise step is
    computed once per pixel and channel, never again per output-channel tile (past K = 256 it
    runs ``cdiv(K, 256)`` times). The exception, on a GPU: when that leaves SMs idle (fewer than
    :data:`~fused.kernels.common.SM_COUNT` programs: mobile0.25's 20x20 level, 100 programs at
    batch 16, 7 at batch 1), ``BLOCK_N`` drops to 128. The trade: twice the programs for
    K = 256, each with half the MMA columns, but every pixel's depthwise step (nine loads and
    FMAs per input channel) now runs in two programs, so the depthwise work and the input reads
    double; with one program over all K, 32 SMs sat idle (at batch 16) instead. In the fused
    models' layout the 200 programs run at once (2 per SM with 4 warps, below).

    tl.dot needs every tile side >= 16. Register budget (sm_90a, checked with the compiler,
    ``facefuse inspect``, at MobileNet0.25's shapes, stride 1 and 2, batch 1 and 16, every dtype
    and float32 precision): a ``64 x BLOCK_N`` fp32 accumulator plus the nine prefetched input
    taps fit without spills with 16 input channels per step. Exact float32 products (``dtype``
    float32, ``precision`` "ieee") run on FMA units, which hold more per thread than the tensor
    cores' ``wgmma`` (which wants 64-row tiles): 32 pixels per tile there once ``BLOCK_N``
    reaches 128.

    Warps: the ``wgmma`` takes its A operand (the depthwise result) from registers computed in
    the loop; the kernel's MMA-layout zero tile lets Triton keep one in flight (see
    :func:`conv_dw_fused_kernel`), and another program on the same SM fills what waiting is
    left. With ``channels_last`` (``x`` and the output channel-contiguous, as in the fused models) and
    ``BLOCK_N`` <= 128, 4 warps (one warpgroup) give 2 or 3 programs per SM instead of one
    8-warp program (fp16 at 64 x 128: 226 registers and 2 per SM, where 8 warps took 152 and 1;
    no spills in any dtype). ``BLOCK_N`` 256 spills with 4 warps (32 to 132 bytes), and so do
    NCHW input's scalar loads (each element its own 64-bit address: 40 to 312 bytes at stride 2
    and at 64 x 128), so those keep 8 warps and one program per SM.
    ``interpreter`` as in :func:`depthwise_plan` (no split there: it pays per program).
    """
    pixels = N * _out_size(H, stride) * _out_size(W, stride)
    interpreter = interpreting(interpreter)
    fma = dtype == torch.float32 and precision == "ieee"

    def pixel_tile(block_n: int) -> int:
        block_m = min(32 if fma and block_n >= 128 else 64, max(16, triton.next_power_of_2(pixels)))
        return interpreter_tile(block_m, pixels, interpreter=interpreter)

    block_n = min(256, max(16, triton.next_power_of_2(K)))
    block_m = pixel_tile(block_n)
    if not interpreter and block_n > 128 and triton.cdiv(pixels, block_m) * triton.cdiv(K, block_n) < SM_COUNT:
        block_n = 128
        block_m = pixel_tile(block_n)
    warps = 4 if channels_last and block_n <= 128 else 8
    return LaunchPlan((triton.cdiv(pixels, block_m), triton.cdiv(K, block_n)),
                      {"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_C": 16}, num_warps=warps)


@runtime.launcher
def depthwise_conv_bias_act(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    stride: int = 1,
    activation: str = "identity",
    slope=0.0,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``act(conv2d(x, weight, bias, stride, padding=1, groups=C))`` for a 3x3 depthwise weight.

    x: [N, C, H, W] float32/float16/bfloat16, any strides. weight: [C, 1, 3, 3] (BN folded in).
    bias: [C] or None. activation/slope as :func:`common.resolve_activation`. Returns
    [N, C, OH, OW] in x's dtype, written into ``out`` when given.
    """
    name = "depthwise_conv_bias_act"
    _check_x(name, x)
    N, C, H, W = x.shape
    _check_param(name, "weight", weight, (C, 1, 3, 3))
    if bias is not None:
        _check_param(name, "bias", bias, (C,))
    _check_stride(name, stride)
    check_launch(name, x, weight, bias, out)
    code, leaky_slope, prelu_slopes = resolve_activation(activation, slope, C, x.device)
    OH, OW = _out_size(H, stride), _out_size(W, stride)
    if runtime.tracing():  # torch.compile / torch.export: record the custom op (fused.kernels.ops)
        _output(name, x, out, (N, C, OH, OW))  # checks out
        args = (x, weight, bias, stride, activation, *packed_slope(activation, leaky_slope, prelu_slopes))
        if out is None:
            return torch.ops.facefuse.depthwise_conv_bias_act(*args)
        torch.ops.facefuse.depthwise_conv_bias_act_out(*args, out)
        return out
    out = _output(name, x, out, (N, C, OH, OW))
    pixels = N * OH * OW
    if pixels == 0 or C == 0:
        return out

    plan = depthwise_plan(N, C, H, W, stride, channels_last=x.stride(1) == 1)
    record.kernel_launched(name)
    runtime.launch(depthwise_conv_bias_act_kernel, plan.grid,
        x, weight, x if bias is None else bias.contiguous(), prelu_slopes, out,
        C, H, W, OH, OW, pixels,
        *x.stride(), weight.stride(0), weight.stride(2), weight.stride(3), *out.stride(),
        leaky_slope,
        STRIDE=stride, PADDING=PADDING, HAS_BIAS=bias is not None, ACTIVATION=code,
        USE_INT64=needs_int64(x, out), num_warps=plan.num_warps, **plan.blocks,
    )
    return out


@runtime.launcher
def conv_dw_fused(
    x: torch.Tensor,
    dw_weight: torch.Tensor,
    dw_bias: torch.Tensor,
    pw_weight: torch.Tensor,
    pw_bias: torch.Tensor,
    *,
    stride: int = 1,
    dw_slope: float = 0.1,
    pw_slope: float = 0.1,
    out: torch.Tensor | None = None,
    precision: str = "ieee",
    dw_activation: str = "leaky_relu",
    pw_activation: str = "leaky_relu",
) -> torch.Tensor:
    """A MobileNetV1 conv_dw block in one kernel (BN folded in, both activations LeakyReLU by default):

    ``leaky(conv1x1(leaky(depthwise3x3(x, dw_weight, dw_bias, stride), dw_slope), pw_weight, pw_bias), pw_slope)``

    ``dw_activation``/``pw_activation`` may be any of :data:`common.SCALAR_ACTIVATIONS` instead
    (``"relu"``, ``"relu6"``, ``"identity"``: the slope is then ignored); a ReLU is not a slope-0
    LeakyReLU at -inf (0, not NaN).

    x: [N, C, H, W]; dw_weight: [C, 1, 3, 3]; dw_bias: [C]; pw_weight: [K, C, 1, 1] or [K, C];
    pw_bias: [K]. The intermediate is rounded to x's dtype, as the two-kernel path stores it.
    precision: "ieee" or "tf32" for the pointwise dot on float32 input. Returns [N, K, OH, OW].
    """
    name = "conv_dw_fused"
    _check_x(name, x)
    N, C, H, W = x.shape
    _check_param(name, "dw_weight", dw_weight, (C, 1, 3, 3))
    _check_param(name, "dw_bias", dw_bias, (C,))
    if not isinstance(pw_weight, torch.Tensor) or pw_weight.dim() not in (2, 4):
        got = list(pw_weight.shape) if isinstance(pw_weight, torch.Tensor) else type(pw_weight).__name__
        raise ValueError(f"{name}: pw_weight must be [K, C, 1, 1] or [K, C] with C = {C}, got {got}")
    K = pw_weight.shape[0]
    _check_param(name, "pw_weight", pw_weight, (K, C, 1, 1), (K, C))
    _check_param(name, "pw_bias", pw_bias, (K,))
    _check_stride(name, stride)
    for what, act in (("dw_activation", dw_activation), ("pw_activation", pw_activation)):
        if act not in SCALAR_ACTIVATIONS:
            raise ValueError(f"{name}: {what} must be one of {', '.join(map(repr, SCALAR_ACTIVATIONS))} (a "
                             f"per-channel PReLU needs the two-kernel version), got {act!r}")
    check_launch(name, x, dw_weight, dw_bias, pw_weight, pw_bias, out, precision=precision)
    OH, OW = _out_size(H, stride), _out_size(W, stride)
    if runtime.tracing():  # torch.compile / torch.export: record the custom op (fused.kernels.ops)
        _output(name, x, out, (N, K, OH, OW))  # checks out
        args = (x, dw_weight, dw_bias, pw_weight, pw_bias, stride, float(dw_slope), float(pw_slope), precision,
                dw_activation, pw_activation)
        if out is None:
            return torch.ops.facefuse.conv_dw_fused(*args)
        torch.ops.facefuse.conv_dw_fused_out(*args, out)
        return out
    out = _output(name, x, out, (N, K, OH, OW))
    pixels = N * OH * OW
    if pixels == 0 or K == 0:
        return out

    plan = conv_dw_fused_plan(N, C, H, W, K, stride, dtype=x.dtype, precision=precision,
                              channels_last=x.stride(1) == 1 and out.stride(1) == 1)
    record.kernel_launched(name)
    runtime.launch(conv_dw_fused_kernel, plan.grid,
        x, dw_weight, dw_bias.contiguous(), pw_weight, pw_bias.contiguous(), out,
        C, H, W, K, OH, OW, pixels,
        *x.stride(), dw_weight.stride(0), dw_weight.stride(2), dw_weight.stride(3),
        pw_weight.stride(0), pw_weight.stride(1), *out.stride(),
        float(dw_slope), float(pw_slope),
        STRIDE=stride, PADDING=PADDING, INPUT_PRECISION=precision, USE_INT64=needs_int64(x, out),
        DW_ACTIVATION=ACTIVATIONS[dw_activation], PW_ACTIVATION=ACTIVATIONS[pw_activation], MMA_LAYOUT_SUMS=MMA_LAYOUT_SUMS,
        MMA_LAYOUT_ACC=MMA_LAYOUT_ACC,
        num_warps=plan.num_warps, **plan.blocks,
    )
    return out
