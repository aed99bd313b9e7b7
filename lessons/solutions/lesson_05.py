"""Lesson 05, ArcFace: worked answers (checked by fused.exercises.check("05", N, answer))."""

import math


def exercise_1():
    # Only the outer ring of pixels has a tap in the padding.
    return tuple((side * side - (side - 2) ** 2) / (side * side) for side in (64, 8))


def exercise_2():
    # 64 x 8 x 8 = 4096 output rows. gemm_tiles starts from 128-wide column tiles with 64-row tiles
    # (64 x 128 = 256 programs) and only shrinks tiles while there are fewer programs than the 132 SMs;
    # the plan splits K only when the smallest tiles still leave SMs idle. An NCHW input is read by
    # scalar loads, which cap the tiles at 64 x 64: 64 row tiles x 8 column tiles = 512 programs, no split.
    return math.ceil(64 * 8 * 8 / 64) * math.ceil(512 / 64), 1


def exercise_3():
    # A PReLU with slope >= 0 never reverses the order of two values, so the max of four commutes with it.
    return lambda slope: slope >= 0


# ---- kernel exercise "prelu_maxpool": fused.exercises.check_kernel("prelu_maxpool", prelu_maxpool_kernel) ----

import triton  # noqa: E402  (the kernel exercises' imports stay with their kernels)
import triton.language as tl  # noqa: E402


@triton.jit
def prelu_maxpool_kernel(y_ptr, slope_ptr, out_ptr, total, C, H, W, PH, PW, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)  # pooled elements (n, c, ph, pw), flattened
    ok = offs < total
    pw, ph, plane = offs % PW, (offs // PW) % PH, offs // (PW * PH)  # plane = n * C + c
    slope = tl.load(slope_ptr + plane % C, mask=ok, other=0.0)
    best = tl.full((BLOCK,), float("-inf"), dtype=tl.float32)
    for dy in tl.static_range(2):
        for dx in tl.static_range(2):
            v = tl.load(y_ptr + (plane * H + 2 * ph + dy) * W + 2 * pw + dx, mask=ok, other=0.0)
            v = tl.where(v > 0, v, v * slope)  # PReLU first: the max commutes with it only for slopes >= 0
            best = tl.where((v > best) | (v != v), v, best)  # v != v: v is NaN, and NaN must win
    tl.store(out_ptr + offs, best, mask=ok)
