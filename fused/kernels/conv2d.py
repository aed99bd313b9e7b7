"""Convolution + bias + residual + activation as one implicit-GEMM Triton kernel.

A convolution is a matrix multiply in disguise. Lay the output out as a matrix with one row per
output pixel ``(n, oh, ow)`` (``N*OH*OW`` rows) and one column per output channel ``k``. Each
output element is a dot product over the reduction axis ``(r, s, c)``: every kernel tap
``(r, s)`` times every input channel ``c``. Row ``(n, oh, ow)`` of the left matrix holds the input
values the kernel window sees, ``x[n, c, oh*stride - padding + r, ow*stride - padding + s]``; the
right matrix is the weight ``w[k, c, r, s]``.

``im2col`` would build that left matrix in memory (``R*R`` times the input). The *implicit* GEMM
never builds it: for each tap ``(r, s)`` and each block of channels, the kernel computes those
addresses from the strides, loads an ``[BLOCK_M, BLOCK_C]`` tile straight from ``x`` (masked to
zero where the window falls in the padding), and feeds it to ``tl.dot`` with a ``[BLOCK_C,
BLOCK_N]`` weight tile, accumulating in fp32. Because the accumulator tile stays in registers,
the bias, the residual add and the activation are applied to it before the single store: the
"fusion" is that none of them reads or writes the output again.

The taps and channel blocks are walked by **one** loop of ``R*R*ceil(C/BLOCK_C)`` steps, not
three nested loops. Triton software-pipelines the loop that feeds a ``tl.dot``: it issues the
loads of the next ``num_stages - 1`` steps (asynchronous copies to shared memory where the
addresses allow, ``cp.async``) while the tensor cores work on this one. Nested, only the
innermost channel loop was pipelined, and with ``C <= BLOCK_C`` it had one step, so every MMA
waited for its loads; flat, the loads of the next tap overlap the MMAs of this one.

**Split-K.** A small map gives few programs (1600 pixels x 64 channels is 50 tiles) and leaves
most of a GPU's 132 SMs idle while each program walks the whole reduction. Then
:func:`conv2d_plan` may split the step loop: program ``(i, j, split)`` runs its contiguous share
of the ``R*R*c_blocks`` steps and stores its fp32 partial tile into a ``[SPLIT_K, pixels, K]``
workspace, and a second kernel, :func:`conv2d_splitk_reduce_kernel`, sums the partials in split
order and applies the epilogue (:func:`conv2d_epilogue`, the one both kernels use). Why two
launches, as cuBLAS does it deterministically, rather than one kernel adding into the output: a
bias, a residual or an activation needs the complete sum; partial sums added by atomics arrive in
a different order on every run (so the bits change); and a program that finishes the tile when a
counter says it came last relies on memory ordering between programs, a race that Triton's
interpreter, running one program at a time, would never show. The rule (GPU plans only, :data:`SPLIT_K_MIN_FLOPS`, :data:`SPLIT_K_MIN_STEPS`): split a
launch with fewer programs than SMs that computes at least 2**24 FLOPs into about
``SM_COUNT / programs`` parts of at least 4 steps each (halving ``BLOCK_C``, down to 16, to
make steps); a smaller launch stays one launch, since at batch 1 a second launch costs more than
the idle SMs. ``SPLIT_K=1`` compiles exactly the unsplit kernel. Split launches do not autotune.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import record, runtime
from .common import PRELU, RELU, SM_COUNT, LaunchPlan, activate, autotuned, check_launch, gemm_tiles, gemm_warps, \
    interpreter_tile, interpreting, launch_plan, needs_int64, new_output, packed_slope, resolve_activation, \
    tuned_variants

#: Split-K (see the module docstring): a GPU launch with fewer programs than SMs splits its
#: reduction when it computes at least this many FLOPs (2 per multiply-add); smaller launches
#: stay one launch, since a second launch would cost more than the idle SMs.
SPLIT_K_MIN_FLOPS = 2**24
#: ... and gives each split at least this many steps of the main loop, so that each still pipelines.
SPLIT_K_MIN_STEPS = 4
#: A documented test switch: an integer makes every launch, in the interpreter too, split its
#: reduction into that many parts (at most one per step; tiles as the GPU rule narrows them), so
#: the tests run the split path on the CPU. None (normal use): :func:`conv2d_plan` decides.
FORCE_SPLIT_K: int | None = None


@triton.jit
def conv2d_bias_act_kernel(
    x_ptr, weight_ptr, bias_ptr, residual_ptr, residual_scale_ptr,
    border_bias_ptr, prelu_slopes_ptr, out_ptr,
    pixels, C, H, W, K, OH, OW,  # pixels = N*OH*OW, the GEMM's rows
    conv_stride, padding, leaky_slope, relu_from,
    x_stride_n, x_stride_c, x_stride_h, x_stride_w,
    w_stride_k, w_stride_c, w_stride_r, w_stride_s,
    res_stride_n, res_stride_k, res_stride_h, res_stride_w,
    res_scale_stride_n, res_scale_stride_k,
    out_stride_n, out_stride_k, out_stride_h, out_stride_w,
    partial_ptr, partial_stride_split, partial_stride_m,  # the split-K workspace (SPLIT_K > 1)
    R: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
    HAS_RESIDUAL_SCALE: tl.constexpr, HAS_BORDER_BIAS: tl.constexpr, ACTIVATION: tl.constexpr,
    HAS_RELU_FROM: tl.constexpr, INPUT_PRECISION: tl.constexpr, USE_INT64: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, SPLIT_K: tl.constexpr,
):
    """Program (i, j) computes output pixels i*BLOCK_M.. x output channels j*BLOCK_N.. of
    conv(x, w) in fp32, then applies the epilogue once.

    The reduction over ``(r, s, c)`` is one flat loop of ``R*R*c_blocks`` steps (tap-major): step
    ``k`` reads tap ``k // c_blocks`` and channel block ``k % c_blocks``. One loop, not three
    nested ones, so Triton's software pipeliner prefetches the next tiles while the tensor cores
    work on this one, across taps as well as channel blocks. With ``SPLIT_K > 1`` program
    (i, j, split) runs the split-th of ``SPLIT_K`` contiguous shares of those steps and stores its
    fp32 tile into the ``partial`` workspace instead (:func:`conv2d_splitk_reduce_kernel` finishes).

    ``HAS_BORDER_BIAS``: after the loop, each output pixel adds row ``((a*P + b)*P + c)*P + d`` of
    ``border_bias`` (``P = padding + 1``), where ``a, b, c, d`` count its window's taps that fall
    off the top, bottom, left and right of the image (split 0 only, under split-K): the conv of
    a per-channel constant input with zero padding, which is how an input BatchNorm's shift
    enters once its scale is folded into the weights (:func:`fused.folding.fold_input_affine`),
    so the A tile stays a plain load. One 2-D load, like a residual's.
    """
    pid_m = tl.program_id(0)
    if USE_INT64:  # offsets may pass 2**31: do all index arithmetic in int64
        pid_m = pid_m.to(tl.int64)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # output pixels (n, oh, ow), flattened
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)  # output channels k
    chans = tl.arange(0, BLOCK_C)  # input channels within a block
    if USE_INT64:
        cols = cols.to(tl.int64)
        chans = chans.to(tl.int64)
    row_ok, col_ok = rows < pixels, cols < K
    ow = rows % OW
    oh = (rows // OW) % OH
    n = rows // (OW * OH)
    # Top-left corner of each row's window (tap r, s reads ih0 + r, iw0 + s), and its address.
    ih0 = oh * conv_stride - padding
    iw0 = ow * conv_stride - padding
    x_corner = x_ptr + n * x_stride_n + ih0 * x_stride_h + iw0 * x_stride_w
    w_cols = weight_ptr + cols * w_stride_k

    c_blocks = tl.cdiv(C, BLOCK_C)
    steps = R * R * c_blocks
    if SPLIT_K == 1:
        first, last = 0, steps
    else:  # program (i, j, split) walks its contiguous share of the steps
        per_split = tl.cdiv(steps, SPLIT_K)
        first = tl.program_id(2) * per_split
        last = tl.minimum(first + per_split, steps)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(first, last):
        tap = k // c_blocks
        if USE_INT64:
            tap = tap.to(tl.int64)
        r = tap // R
        s = tap % R
        c = (k % c_blocks) * BLOCK_C + chans
        c_ok = c < C
        # Where tap (r, s) reads the input; outside [0, H) x [0, W) is zero padding.
        pixel_ok = row_ok & (ih0 >= -r) & (ih0 < H - r) & (iw0 >= -s) & (iw0 < W - s)
        x_ok = pixel_ok[:, None] & c_ok[None, :]
        x_tap = x_corner + (r * x_stride_h + s * x_stride_w)
        a = tl.load(x_tap[:, None] + c[None, :] * x_stride_c, mask=x_ok, other=0.0)
        b = tl.load(w_cols[None, :] + (r * w_stride_r + s * w_stride_s) + c[:, None] * w_stride_c,
                    mask=c_ok[:, None] & col_ok[None, :], other=0.0)
        acc = tl.dot(a, b.to(x_ptr.dtype.element_ty), acc, input_precision=INPUT_PRECISION)
    if HAS_BORDER_BIAS:  # one row of the table per output pixel, by how many taps fall off each side
        P1 = padding + 1
        cls = tl.maximum(-ih0, 0) * P1 + tl.maximum(ih0 + R - H, 0)
        cls = (cls * P1 + tl.maximum(-iw0, 0)) * P1 + tl.maximum(iw0 + R - W, 0)
        bias_rows = row_ok
        if SPLIT_K > 1:  # one split adds it; the reduce sums the splits
            bias_rows = rows < tl.where(tl.program_id(2) == 0, pixels, 0)
        acc += tl.load(border_bias_ptr + cls[:, None] * K + cols[None, :],
                       mask=bias_rows[:, None] & col_ok[None, :], other=0.0)
    if SPLIT_K == 1:
        conv2d_epilogue(acc, n, oh, ow, cols, row_ok, col_ok, bias_ptr, residual_ptr, residual_scale_ptr,
                        prelu_slopes_ptr, out_ptr, leaky_slope, relu_from,
                        res_stride_n, res_stride_k, res_stride_h, res_stride_w, res_scale_stride_n,
                        res_scale_stride_k, out_stride_n, out_stride_k, out_stride_h, out_stride_w,
                        HAS_BIAS, HAS_RESIDUAL, HAS_RESIDUAL_SCALE, ACTIVATION, HAS_RELU_FROM)
    else:  # this split's fp32 partial tile; conv2d_splitk_reduce_kernel sums them and finishes
        split = tl.program_id(2)
        if USE_INT64:
            split = split.to(tl.int64)
        at = partial_ptr + split * partial_stride_split + rows[:, None] * partial_stride_m + cols[None, :]
        tl.store(at, acc, mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def conv2d_epilogue(acc, n, oh, ow, cols, row_ok, col_ok, bias_ptr, residual_ptr, residual_scale_ptr,
                    prelu_slopes_ptr, out_ptr, leaky_slope, relu_from,
                    res_stride_n, res_stride_k, res_stride_h, res_stride_w, res_scale_stride_n,
                    res_scale_stride_k, out_stride_n, out_stride_k, out_stride_h, out_stride_w,
                    HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr, HAS_RESIDUAL_SCALE: tl.constexpr,
                    ACTIVATION: tl.constexpr, HAS_RELU_FROM: tl.constexpr):
    """The epilogue on an fp32 tile of output pixels ``(n, oh, ow)`` x channels ``cols``: bias,
    scaled residual, activation, then one store. The one epilogue of both the unsplit kernel
    and the split-K reduce."""
    out_ok = row_ok[:, None] & col_ok[None, :]
    y = acc
    if HAS_BIAS:
        y += tl.load(bias_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    if HAS_RESIDUAL:
        res_row = n * res_stride_n + oh * res_stride_h + ow * res_stride_w
        res = tl.load(residual_ptr + res_row[:, None] + cols[None, :] * res_stride_k, mask=out_ok)
        res = res.to(tl.float32)
        if HAS_RESIDUAL_SCALE:  # squeeze-excite: one scale per (n, k)
            scale_at = n[:, None] * res_scale_stride_n + cols[None, :] * res_scale_stride_k
            res *= tl.load(residual_scale_ptr + scale_at, mask=out_ok).to(tl.float32)
        y += res
    if ACTIVATION == PRELU:  # one slope per output channel
        slope = tl.load(prelu_slopes_ptr + cols, mask=col_ok, other=0.0)[None, :]
    else:
        slope = leaky_slope
    if HAS_RELU_FROM:  # channels relu_from.. take a ReLU (not a slope-0 LeakyReLU: -inf must give 0)
        y = tl.where(cols[None, :] >= relu_from, activate(y, 0.0, RELU), activate(y, slope, ACTIVATION))
    else:
        y = activate(y, slope, ACTIVATION)
    out_row = n * out_stride_n + oh * out_stride_h + ow * out_stride_w
    tl.store(out_ptr + out_row[:, None] + cols[None, :] * out_stride_k,
             y.to(out_ptr.dtype.element_ty), mask=out_ok)


@triton.jit
def conv2d_splitk_reduce_kernel(
    partial_ptr, bias_ptr, residual_ptr, residual_scale_ptr, prelu_slopes_ptr, out_ptr,
    pixels, K, OH, OW, leaky_slope, relu_from,
    partial_stride_split, partial_stride_m,
    res_stride_n, res_stride_k, res_stride_h, res_stride_w,
    res_scale_stride_n, res_scale_stride_k,
    out_stride_n, out_stride_k, out_stride_h, out_stride_w,
    HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr, HAS_RESIDUAL_SCALE: tl.constexpr,
    ACTIVATION: tl.constexpr, HAS_RELU_FROM: tl.constexpr, USE_INT64: tl.constexpr, SPLIT_K: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """The second launch of a split-K convolution: program (i, j) sums the ``SPLIT_K`` fp32
    partial tiles of output pixels i*BLOCK_M.. x channels j*BLOCK_N.. in split order (the same
    sum on every run), then applies :func:`conv2d_epilogue`."""
    pid_m = tl.program_id(0)
    if USE_INT64:
        pid_m = pid_m.to(tl.int64)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    if USE_INT64:
        cols = cols.to(tl.int64)
    row_ok, col_ok = rows < pixels, cols < K
    ow = rows % OW
    oh = (rows // OW) % OH
    n = rows // (OW * OH)
    ok = row_ok[:, None] & col_ok[None, :]
    at = partial_ptr + rows[:, None] * partial_stride_m + cols[None, :]
    acc = tl.load(at, mask=ok, other=0.0)
    for _ in tl.static_range(1, SPLIT_K):  # one split after the other: a fixed order of the sum
        at += partial_stride_split
        acc += tl.load(at, mask=ok, other=0.0)
    conv2d_epilogue(acc, n, oh, ow, cols, row_ok, col_ok, bias_ptr, residual_ptr, residual_scale_ptr,
                    prelu_slopes_ptr, out_ptr, leaky_slope, relu_from,
                    res_stride_n, res_stride_k, res_stride_h, res_stride_w, res_scale_stride_n,
                    res_scale_stride_k, out_stride_n, out_stride_k, out_stride_h, out_stride_w,
                    HAS_BIAS, HAS_RESIDUAL, HAS_RESIDUAL_SCALE, ACTIVATION, HAS_RELU_FROM)


def conv2d_plan(N: int, C: int, H: int, W: int, K: int, R: int, stride: int = 1, padding: int = 0, *,
                channels_last: bool = False, dtype: torch.dtype = torch.float16, precision: str = "ieee",
                interpreter: bool | None = None) -> LaunchPlan:
    """The launch :func:`conv2d_bias_act` makes for ``x`` ``[N, C, H, W]`` and a ``[K, C, R, R]``
    weight: one program per ``BLOCK_M`` output pixels x ``BLOCK_N`` output channels, tiles by
    shape class (:func:`~fused.kernels.common.gemm_tiles`). ``channels_last``: ``x``'s channels
    are contiguous (``x.stride(1) == 1``); ``dtype`` and ``precision`` are ``x``'s and the dot's.
    ``interpreter=False`` gives the GPU's plan on any machine, ``True`` the interpreter's, None
    this machine's. On a GPU the launch may autotune over :func:`conv2d_configs`, which starts
    with this plan."""
    OH, OW = (H + 2 * padding - R) // stride + 1, (W + 2 * padding - R) // stride + 1
    pixels = N * OH * OW
    # The input tile arrives as vectors when it is contiguous along channels (channels_last, 8+
    # channels), or along pixels with aligned rows (NCHW 1x1, stride 1, width a multiple of 16).
    vector = (channels_last and C % 8 == 0) or (not channels_last and R == 1 and stride == 1 and OW % 16 == 0)
    interpreter = interpreting(interpreter)
    fma = dtype == torch.float32 and precision == "ieee" and not interpreter
    blocks = gemm_tiles(pixels, K, C, interpreter=interpreter, fma=fma,
                        tf32=dtype == torch.float32 and precision == "tf32", scalar_loads=not vector)
    grid = (triton.cdiv(pixels, blocks["BLOCK_M"]), triton.cdiv(K, blocks["BLOCK_N"]))
    flops = 2 * pixels * K * C * R * R
    if FORCE_SPLIT_K is not None:
        wanted = FORCE_SPLIT_K
    elif interpreter or grid[0] * grid[1] >= SM_COUNT or flops < SPLIT_K_MIN_FLOPS:
        wanted = 1
    else:
        wanted = triton.cdiv(SM_COUNT, grid[0] * grid[1])
    split, block_c = _split_k(wanted, R * R, C, blocks["BLOCK_C"], forced=FORCE_SPLIT_K is not None)
    if split > 1:
        blocks, grid = {**blocks, "BLOCK_C": block_c, "SPLIT_K": split}, (*grid, split)
    return LaunchPlan(grid, blocks, num_warps=gemm_warps(fma=fma))


def _split_k(wanted: int, taps: int, C: int, block_c: int, *, forced: bool) -> tuple[int, int]:
    """``(SPLIT_K, BLOCK_C)`` for a reduction of ``taps`` x ``C``, ``wanted`` splits asked for:
    ``BLOCK_C`` halved (down to 16) until each split has :data:`SPLIT_K_MIN_STEPS` steps, then
    at most as many splits as keep that many steps each (any number up to one step each when
    ``forced``), and none empty. ``(1, block_c)`` when it does not split."""
    if wanted <= 1:
        return 1, block_c
    narrow = block_c
    while narrow > 16 and taps * triton.cdiv(C, narrow) < wanted * SPLIT_K_MIN_STEPS:
        narrow //= 2
    steps = taps * triton.cdiv(C, narrow)
    split = min(wanted, steps if forced else steps // SPLIT_K_MIN_STEPS)
    if split <= 1:
        return 1, block_c
    return triton.cdiv(steps, triton.cdiv(steps, split)), narrow  # no split left without steps


def conv2d_reduce_plan(pixels: int, K: int, *, interpreter: bool | None = None) -> LaunchPlan:
    """The launch of a split-K convolution's reduce (:func:`conv2d_bias_act`, when
    :func:`conv2d_plan` has ``SPLIT_K``): one program per ``BLOCK_M`` output pixels x ``BLOCK_N``
    channels, tiles halved (down to 16 x 16) until the launch has :data:`SM_COUNT` programs; it
    reads ``SPLIT_K`` fp32 values and writes one per output element."""
    block_m = interpreter_tile(64, pixels, interpreter=interpreting(interpreter))
    block_n = min(max(triton.next_power_of_2(K), 16), 64)
    while triton.cdiv(pixels, block_m) * triton.cdiv(K, block_n) < SM_COUNT and max(block_m, block_n) > 16:
        if block_m > 16:
            block_m //= 2
        else:
            block_n //= 2
    return LaunchPlan((triton.cdiv(pixels, block_m), triton.cdiv(K, block_n)), {"BLOCK_M": block_m, "BLOCK_N": block_n})


def conv2d_configs(N: int, C: int, H: int, W: int, K: int, R: int, stride: int = 1, padding: int = 0, *,
                   channels_last: bool = False, dtype: torch.dtype = torch.float16,
                   precision: str = "ieee") -> list[LaunchPlan]:
    """The launches a GPU autotunes over (:func:`~fused.kernels.common.autotuned`): the GPU plan
    of :func:`conv2d_plan` first, then the same tiles with 2 or 4 pipeline stages, and with 8
    warps; none of them spills at the models' shapes (checked on the compiler's output). A split-K
    plan is its own only candidate: split launches do not autotune (they launch their plan)."""
    plan = conv2d_plan(N, C, H, W, K, R, stride, padding, channels_last=channels_last, dtype=dtype,
                       precision=precision, interpreter=False)
    return [plan] if "SPLIT_K" in plan.blocks else tuned_variants(plan)


def _candidates(args: dict, constexprs: dict) -> list[LaunchPlan]:
    """:func:`conv2d_configs` for one launch, from the kernel's arguments."""
    N = args["pixels"] // (args["OH"] * args["OW"])
    return conv2d_configs(N, args["C"], args["H"], args["W"], args["K"], constexprs["R"], args["conv_stride"],
                          args["padding"], channels_last=args["x_stride_c"] == 1, dtype=args["x_ptr"].dtype,
                          precision=constexprs["INPUT_PRECISION"])


def _tuned_kernel():
    """The kernel under ``triton.autotune`` (made on first use: only a GPU can time configs).
    A timing run rewrites ``out``; ``restore_value`` puts it back, so ``out`` may alias an input."""
    key = ["pixels", "C", "H", "W", "K", "conv_stride", "padding", "x_stride_c", "R", "INPUT_PRECISION"]
    return autotuned(conv2d_bias_act_kernel, key, _candidates, restore_value=["out_ptr"])


def _check_shape(name: str, t: torch.Tensor | None, expected: tuple[int, ...]) -> None:
    if t is not None and tuple(t.shape) != expected:
        raise ValueError(f"conv2d_bias_act: {name} has shape {tuple(t.shape)}, expected {expected}")


def _or(t: torch.Tensor | None, dummy: torch.Tensor) -> torch.Tensor:
    """``t`` (1-D vectors made contiguous: the kernel indexes them densely), or the dummy."""
    if t is None:
        return dummy
    return t.contiguous() if t.dim() == 1 else t


def _strides(t: torch.Tensor | None, ndim: int) -> tuple[int, ...]:
    return tuple(t.stride()) if t is not None else (0,) * ndim


@runtime.launcher
def conv2d_bias_act(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    stride: int = 1,
    padding: int = 0,
    activation: str = "identity",
    slope=0.0,
    residual: torch.Tensor | None = None,
    residual_scale: torch.Tensor | None = None,
    border_bias: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    precision: str = "ieee",
    relu_from: int | None = None,
) -> torch.Tensor:
    """``activation(conv2d(x, weight) + border_bias + bias + residual*residual_scale)``.

    One kernel launch; the epilogue runs on the accumulator in registers. ``x`` is ``[N, C, H, W]``
    in float32/float16/bfloat16 with any strides; ``weight`` is ``[K, C, R, R]`` (R odd), cast to
    ``x.dtype`` for the dot; accumulation is fp32 and the result is stored in ``x.dtype``.
    ``border_bias`` (float32 ``[(padding+1)**4, K]``): each output pixel adds the row of its
    border class, the counts of window taps off each side of the image (see
    :func:`fused.folding.fold_input_affine`, which folds an input BatchNorm this way so the zero
    padding stays zero; row 0, nothing off, is the interior). ``out`` may be any
    preallocated ``[N, K, OH, OW]`` view, e.g. a channel slice of a concatenation buffer.
    ``precision="tf32"`` lets float32 dots use TF32 tensor cores; the default is exact fp32.
    ``relu_from``: output channels from this index on take a ReLU instead of ``activation``, so
    two convs of one input with different activations (SSH's) can share a launch.
    """
    name = "conv2d_bias_act"
    if x.dim() != 4 or weight.dim() != 4:
        raise ValueError(f"{name}: x and weight must be 4-D ([N, C, H, W] and [K, C, R, R]); "
                         f"got x {tuple(x.shape)} and weight {tuple(weight.shape)}")
    N, C, H, W = x.shape
    K, weight_c, R, R2 = weight.shape
    if weight_c != C:
        raise ValueError(f"{name}: weight expects {weight_c} input channels but x has {C} "
                         f"(x {tuple(x.shape)}, weight {tuple(weight.shape)})")
    if R != R2 or R % 2 == 0:
        raise ValueError(f"{name}: kernel must be square with odd size, got {R}x{R2}")
    if not weight.is_floating_point():
        raise TypeError(f"{name}: weight must be a floating-point tensor, got {weight.dtype}")
    check_launch(name, x, weight, bias, residual, residual_scale, border_bias, out, precision=precision)
    if not isinstance(stride, int) or not isinstance(padding, int) or stride < 1 or padding < 0:
        raise ValueError(f"{name}: need integers stride >= 1 and padding >= 0, "
                         f"got stride={stride!r}, padding={padding!r}")
    OH, OW = (H + 2 * padding - R) // stride + 1, (W + 2 * padding - R) // stride + 1
    if OH < 1 or OW < 1:
        raise ValueError(f"{name}: input {H}x{W} with padding {padding} is smaller than the {R}x{R} kernel")
    _check_shape("bias", bias, (K,))
    _check_shape("residual", residual, (N, K, OH, OW))
    _check_shape("residual_scale", residual_scale, (N, K))
    _check_shape("border_bias", border_bias, ((padding + 1) ** 4, K))
    _check_shape("out", out, (N, K, OH, OW))
    if residual_scale is not None and residual is None:
        raise ValueError(f"{name}: residual_scale needs a residual to scale")
    if border_bias is not None and border_bias.dtype != torch.float32:
        raise TypeError(f"{name}: border_bias must be float32 (it is added to the fp32 accumulator), "
                        f"got {border_bias.dtype}")
    if out is not None and out.dtype != x.dtype:
        raise TypeError(f"{name}: out has dtype {out.dtype}, expected x's dtype {x.dtype}")
    code, leaky_slope, prelu_slopes = resolve_activation(activation, slope, K, x.device)
    if relu_from is not None and (isinstance(relu_from, bool) or not isinstance(relu_from, int)
                                  or not 0 <= relu_from <= K):
        raise ValueError(f"{name}: relu_from must be an integer channel index in [0, {K}], got {relu_from!r}")
    if runtime.tracing():  # torch.compile / torch.export: record the custom op (fused.kernels.ops)
        args = (x, weight, bias, stride, padding, activation, *packed_slope(activation, leaky_slope, prelu_slopes),
                residual, residual_scale, border_bias, precision, relu_from)
        if out is None:
            return torch.ops.facefuse.conv2d_bias_act(*args)
        torch.ops.facefuse.conv2d_bias_act_out(*args, out)
        return out

    if out is None:
        out = new_output(x, (N, K, OH, OW))
    pixels = N * OH * OW
    if pixels == 0 or K == 0:
        return out

    shape = (N, C, H, W, K, R, stride, padding)
    layout = {"channels_last": x.stride(1) == 1, "dtype": x.dtype, "precision": precision}
    plan = conv2d_plan(*shape, **layout)
    split = plan.blocks.get("SPLIT_K", 1)
    # split-K: each split's fp32 partial sums, [SPLIT_K, pixels, K] (from the caching allocator)
    partials = torch.empty((split, pixels, K), dtype=torch.float32, device=x.device) if split > 1 else None
    dummy = prelu_slopes  # stands in for absent tensors; the kernel never reads it for them
    relu_start = K if relu_from is None else relu_from
    epilogue = (*_strides(residual, 4), *_strides(residual_scale, 2), *out.stride())
    args = (x, weight, _or(bias, dummy), _or(residual, dummy), _or(residual_scale, dummy),
            _or(border_bias, dummy) if border_bias is None else border_bias.contiguous(), prelu_slopes, out,
            pixels, C, H, W, K, OH, OW, stride, padding, leaky_slope, relu_start,
            *x.stride(), *weight.stride(), *epilogue, _or(partials, dummy), *_strides(partials, 3)[:2])
    switches = dict(
        R=R, HAS_BIAS=bias is not None, HAS_RESIDUAL=residual is not None,
        HAS_RESIDUAL_SCALE=residual_scale is not None, HAS_BORDER_BIAS=border_bias is not None,
        ACTIVATION=code, HAS_RELU_FROM=relu_from is not None, INPUT_PRECISION=precision,
        USE_INT64=needs_int64(x, weight, residual, residual_scale, out, partials),
    )
    record.kernel_launched(name)
    if split == 1:
        launch_plan(conv2d_bias_act_kernel, plan, (pixels, K), args, {**switches, "SPLIT_K": 1}, tuned=_tuned_kernel)
        return out
    runtime.launch(conv2d_bias_act_kernel, plan.grid, *args, **switches, **plan.blocks,
                   num_warps=plan.num_warps, num_stages=plan.num_stages)
    reduce = conv2d_reduce_plan(pixels, K)
    record.kernel_launched("conv2d_splitk_reduce")
    runtime.launch(conv2d_splitk_reduce_kernel, reduce.grid,
                   partials, _or(bias, dummy), _or(residual, dummy), _or(residual_scale, dummy), prelu_slopes, out,
                   pixels, K, OH, OW, leaky_slope, relu_start, *partials.stride()[:2], *epilogue,
                   **{k: switches[k] for k in ("HAS_BIAS", "HAS_RESIDUAL", "HAS_RESIDUAL_SCALE", "ACTIVATION",
                                               "HAS_RELU_FROM", "USE_INT64")},
                   SPLIT_K=split, **reduce.blocks, num_warps=reduce.num_warps, num_stages=reduce.num_stages)
    return out
