"""RetinaFace's prediction heads as one GEMM per level, stored straight into the final tensors.

Per level, the reference runs three 1x1 convs (class, box, landmark) over the same SSH map, then
for each: ``permute(0, 2, 3, 1)`` + ``contiguous`` (a copy), ``view`` to ``[N, H*W*A, V]``, and
finally ``torch.cat`` over the levels (another copy) and a softmax over the class pairs (another
pass). All of that is data movement around a tiny matrix multiply.

A 1x1 conv is a GEMM with one row per pixel ``(n, h, w)``. Stacking the three heads' weights
gives one ``[C, A*(2+4+10)]`` right matrix (32 columns for A = 2 anchors), so the SSH map is read
once. Column ``k`` of head ``i`` holds anchor ``k // V_i``, value ``k % V_i``, and after the
reference's permute and view it lands at row ``offset + pixel*A + k // V_i`` of that head's
``[N, P, V_i]`` output: the epilogue stores each column group there directly. The class softmax
over each anchor's ``V_0`` logits runs on the tile in registers before the store.

The grid is (pixel blocks, column blocks). One column tile covers all the columns unless that
leaves SMs idle (the 20x20 level at batch 16: 100 programs of 64 pixels); then the columns are
split into tiles of ``BLOCK_N``, a power of two and a multiple of ``V_0``, so every softmax group
still lies inside one program (:func:`anchor_heads_plan`).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import record, runtime
from .common import SM_COUNT, LaunchPlan, autotuned, check_launch, gemm_warps, interpreter_tile, interpreting, launch_plan, \
    needs_int64, pointwise_gemm, tuned_variants

#: The widest stacked head a launch takes (the interpreter's plan covers all columns in one tile).
MAX_COLUMNS = 256


@triton.jit
def store_head(out_ptr, y, n, first_row, cols, start, VALUES: tl.constexpr, ANCHORS: tl.constexpr,
               out_stride_n, out_stride_p, out_stride_v, row_ok):
    """Store columns ``start .. start + ANCHORS*VALUES`` of ``y`` into one head's ``[N, P, VALUES]`` output."""
    k = cols - start
    ok = (k >= 0) & (k < ANCHORS * VALUES)
    k = tl.where(ok, k, 0)
    at = (n[:, None] * out_stride_n + (first_row[:, None] + (k // VALUES)[None, :]) * out_stride_p
          + (k % VALUES)[None, :] * out_stride_v)
    tl.store(out_ptr + at, y.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & ok[None, :])


@triton.jit
def anchor_heads_kernel(
    x_ptr, weight_ptr, bias_ptr, out0_ptr, out1_ptr, out2_ptr,
    pixels, C, H, W, K, row_offset,
    x_stride_n, x_stride_c, x_stride_h, x_stride_w,
    w_stride_k, w_stride_c,
    out0_stride_n, out0_stride_p, out0_stride_v,
    out1_stride_n, out1_stride_p, out1_stride_v,
    out2_stride_n, out2_stride_p, out2_stride_v,
    ANCHORS: tl.constexpr, V0: tl.constexpr, V1: tl.constexpr, V2: tl.constexpr, SOFTMAX0: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, USE_INT64: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Program (i, j): pixels i*BLOCK_M.. times stacked head columns j*BLOCK_N.., then softmax and
    scattered stores. ``BLOCK_N`` is a multiple of ``V0``, so each softmax group is in one tile."""
    pid_m = tl.program_id(0)
    if USE_INT64:
        pid_m = pid_m.to(tl.int64)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # pixels (n, h, w), flattened
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)  # stacked head columns
    row_ok, col_ok = rows < pixels, cols < K
    pixel = rows % (H * W)
    n = rows // (H * W)
    x_row = x_ptr + n * x_stride_n + (pixel // W) * x_stride_h + (pixel % W) * x_stride_w
    acc = pointwise_gemm(x_row, x_stride_c, weight_ptr, w_stride_k, w_stride_c, cols, row_ok, col_ok, C,
                         INPUT_PRECISION, USE_INT64, BLOCK_M, BLOCK_N, BLOCK_C)
    y = acc + tl.load(bias_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]

    if SOFTMAX0:  # softmax over each anchor's V0 logits: consecutive column groups of the first head
        # NaN/Inf as torch.softmax: a NaN or +Inf logit makes its group all NaN (it reaches the sum
        # through exp), whether tl.max drops NaN (GPU max.f32, the interpreter's nanmax) or not.
        # Tiles start at multiples of BLOCK_N, a multiple of V0: the groups are the tile's own.
        groups = tl.reshape(y, (BLOCK_M, BLOCK_N // V0, V0))
        e = tl.exp(groups - tl.max(groups, 2)[:, :, None])
        probs = tl.reshape(e / tl.sum(e, 2)[:, :, None], (BLOCK_M, BLOCK_N))
        y = tl.where(cols[None, :] < ANCHORS * V0, probs, y)

    first_row = row_offset + pixel * ANCHORS  # this pixel's first anchor row in the outputs
    store_head(out0_ptr, y, n, first_row, cols, 0, V0, ANCHORS, out0_stride_n, out0_stride_p, out0_stride_v, row_ok)
    if V1 > 0:
        store_head(out1_ptr, y, n, first_row, cols, ANCHORS * V0, V1, ANCHORS,
                   out1_stride_n, out1_stride_p, out1_stride_v, row_ok)
    if V2 > 0:
        store_head(out2_ptr, y, n, first_row, cols, ANCHORS * (V0 + V1), V2, ANCHORS,
                   out2_stride_n, out2_stride_p, out2_stride_v, row_ok)


def anchor_heads_plan(N: int, C: int, H: int, W: int, K: int, *, group: int = 1, channels_last: bool = False,
                      dtype: torch.dtype = torch.float16, precision: str = "ieee",
                      interpreter: bool | None = None) -> LaunchPlan:
    """The launch :func:`anchor_heads` makes for ``x`` ``[N, C, H, W]`` and ``K`` stacked head
    columns whose consecutive groups of ``group`` columns must stay in one program (the softmax's
    ``V_0``; 1 without softmax): grid (pixel blocks, column blocks). On a GPU, as for the
    convolutions (:func:`~fused.kernels.common.gemm_tiles`): 64 pixels and 16 channels at a time
    and 8 warps for exact float32 products (FMA), 32 channels when the input tile arrives by scalar
    loads; when the launch would have fewer programs than :data:`~fused.kernels.common.SM_COUNT`,
    64 pixels instead of 128, then columns split in halves down to 16 (``tl.dot``'s minimum) while
    ``BLOCK_N`` stays a multiple of ``group`` (both powers of two, so tiles start at multiples of
    ``group`` and no group straddles two programs). Otherwise, and always in the interpreter, one
    column tile covers all ``K`` columns.
    ``interpreter=False`` gives the GPU's plan on any machine, ``True`` the interpreter's, None
    this machine's."""
    interpreter = interpreting(interpreter)
    pixels = N * H * W
    num_warps = gemm_warps(fma=False)
    block_m = min(128, max(triton.next_power_of_2(pixels), 16))
    block_n = max(triton.next_power_of_2(K), 16)
    block_c = min(max(triton.next_power_of_2(C), 16), 64)
    if not interpreter:
        vector = (channels_last and C % 8 == 0) or (not channels_last and W % 16 == 0)
        if dtype == torch.float32 and precision == "ieee":
            block_m, block_c, num_warps = min(block_m, 64), 16, gemm_warps(fma=True)
        elif not vector:
            block_c = min(block_c, 32)
        while triton.cdiv(pixels, block_m) * triton.cdiv(K, block_n) < SM_COUNT:  # spread small maps over more SMs
            if block_m > 64:
                block_m //= 2
            elif block_n > 16 and (block_n // 2) % group == 0:
                block_n //= 2
            else:
                break
    blocks = {
        "BLOCK_M": interpreter_tile(block_m, pixels, interpreter=interpreter),
        "BLOCK_N": block_n,
        "BLOCK_C": interpreter_tile(block_c, C, interpreter=interpreter, big=64, max_tile=512),
    }
    return LaunchPlan((triton.cdiv(pixels, blocks["BLOCK_M"]), triton.cdiv(K, block_n)), blocks, num_warps=num_warps)


@runtime.launcher
def anchor_heads(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    outputs,
    *,
    anchors: int,
    row_offset: int = 0,
    softmax: bool = False,
    precision: str = "ieee",
):
    """Run up to three stacked 1x1 anchor heads over ``x`` and store into ``outputs`` in place.

    ``x`` is ``[N, C, H, W]`` (any strides); ``outputs`` is a sequence of one to three tensors
    ``[N, P, V_i]``; ``weight`` is ``[anchors * sum(V_i), C]`` (or ``[.., C, 1, 1]``) with the
    heads' rows stacked in the order of ``outputs``, and ``bias`` matches it. Rows
    ``row_offset .. row_offset + H*W*anchors`` of every output are written, in the reference's
    order (pixel-major, then anchor). ``softmax=True`` applies a softmax over each anchor's values
    of the first output (``V_0`` must be a power of two, 2 for RetinaFace's class head).
    ``precision="tf32"`` (float32 inputs only, else a ValueError) lets the dot use TF32 tensor cores.
    Returns ``outputs``.
    """
    name = "anchor_heads"
    outputs = tuple(outputs)
    if x.dim() != 4:
        raise ValueError(f"{name}: x must be [N, C, H, W], got shape {tuple(x.shape)}")
    if weight.dim() == 4:
        if weight.shape[2:] != (1, 1):
            raise ValueError(f"{name}: heads are 1x1 convs, got a {tuple(weight.shape[2:])} kernel")
        weight = weight[:, :, 0, 0]
    N, C, H, W = x.shape
    if not 1 <= len(outputs) <= 3:
        raise ValueError(f"{name}: takes one to three outputs, got {len(outputs)}")
    for out in outputs:
        if out.dim() != 3 or out.shape[0] != N or out.shape[1] < row_offset + H * W * anchors:
            raise ValueError(f"{name}: each output must be [{N}, P >= {row_offset + H * W * anchors}, V], "
                             f"got {tuple(out.shape)}")
        if out.dtype != x.dtype:
            raise TypeError(f"{name}: output dtype {out.dtype} differs from x's {x.dtype}")
    values = [out.shape[2] for out in outputs] + [0] * (3 - len(outputs))
    K = anchors * sum(values)
    if weight.dim() != 2 or tuple(weight.shape) != (K, C):
        raise ValueError(f"{name}: weight has shape {tuple(weight.shape)}, expected ({K}, {C}) "
                         f"for {anchors} anchors x values {values[:len(outputs)]} over {C} channels")
    if tuple(bias.shape) != (K,):
        raise ValueError(f"{name}: bias has shape {tuple(bias.shape)}, expected ({K},)")
    if K > MAX_COLUMNS:
        raise ValueError(f"{name}: {K} stacked columns exceed {MAX_COLUMNS}; split the heads over several calls")
    if softmax and values[0] & (values[0] - 1):
        raise ValueError(f"{name}: the softmax needs a power-of-two group size, the first head has {values[0]} values")
    check_launch(name, x, weight, bias, *outputs, precision=precision)
    if runtime.tracing():  # torch.compile / torch.export: record the custom op (fused.kernels.ops)
        padded = outputs + (None,) * (3 - len(outputs))
        torch.ops.facefuse.anchor_heads(x, weight, bias, *padded, anchors, row_offset, bool(softmax), precision)
        return outputs

    pixels = N * H * W
    if pixels == 0:
        return outputs
    group = values[0] if softmax else 1
    plan = anchor_heads_plan(N, C, H, W, K, group=group, channels_last=x.stride(1) == 1, dtype=x.dtype,
                             precision=precision)
    if plan.blocks["BLOCK_N"] % group:
        raise ValueError(f"{name}: a column tile of {plan.blocks['BLOCK_N']} would split the softmax groups of "
                         f"{group} values over two programs; give anchor_heads_plan group={group}")
    padded = outputs + (outputs[0],) * (3 - len(outputs))  # absent heads: never written (V = 0)
    strides = [s for out in padded for s in out.stride()]
    args = (x, weight, bias, *padded, pixels, C, H, W, K, row_offset, *x.stride(), *weight.stride(), *strides)
    switches = dict(ANCHORS=anchors, V0=values[0], V1=values[1], V2=values[2], SOFTMAX0=bool(softmax),
                    INPUT_PRECISION=precision, USE_INT64=needs_int64(x, *outputs))
    record.kernel_launched(name)
    launch_plan(anchor_heads_kernel, plan, (pixels, K), args, switches, tuned=_tuned_kernel)
    return outputs


def _candidates(args: dict, constexprs: dict) -> list[LaunchPlan]:
    """The launches a GPU autotunes over: the GPU plan first (:func:`~fused.kernels.common.tuned_variants`)."""
    N = args["pixels"] // (args["H"] * args["W"])
    group = constexprs["V0"] if constexprs["SOFTMAX0"] else 1
    plan = anchor_heads_plan(N, args["C"], args["H"], args["W"], args["K"], group=group,
                             channels_last=args["x_stride_c"] == 1, dtype=args["x_ptr"].dtype,
                             precision=constexprs["INPUT_PRECISION"], interpreter=False)
    return tuned_variants(plan)


def _tuned_kernel():
    """The kernel under ``triton.autotune``, made on first use (see :func:`~fused.kernels.common.autotuned`).
    The outputs are written in place: ``restore_value`` undoes the timing runs."""
    key = ["pixels", "C", "H", "W", "K", "x_stride_c", "ANCHORS", "V0", "V1", "V2",
           "SOFTMAX0", "INPUT_PRECISION"]
    return autotuned(anchor_heads_kernel, key, _candidates, restore_value=["out0_ptr", "out1_ptr", "out2_ptr"])
