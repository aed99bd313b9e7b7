"""Lesson 02, depthwise: worked answers (checked by fused.exercises.check("02", N, answer))."""

import math


def exercise_2():
    # BLOCK_N covers all output channels up to 256, unless so few programs leave SMs idle: stage 2
    # has one column tile, stage 3's 256 channels take two 128-wide ones.
    stage2 = math.ceil(40 * 40 / 16) * 1
    stage3 = math.ceil(20 * 20 / 16) * 2
    return stage2, stage3


def exercise_5():
    # The second block's 3x3 windows over an 8 x 8 tile read a 10 x 10 patch of the first block's output.
    return (10 * 10 - 8 * 8) / (8 * 8)


def exercise_6():
    dense = 64 * 128 * 3 * 3
    depthwise_separable = 64 * 3 * 3 + 64 * 128  # one 3x3 filter per channel, then a 1x1 64 -> 128
    return dense / depthwise_separable


# ---- kernel exercise "depthwise": fused.exercises.check_kernel("depthwise", depthwise_kernel) ----

import triton  # noqa: E402  (the kernel exercises' imports stay with their kernels)
import triton.language as tl  # noqa: E402


@triton.jit
def depthwise_kernel(x_ptr, w_ptr, b_ptr, out_ptr, N, C, H, W, OH, OW, stride, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)  # output elements (n, c, oh, ow), flattened
    ok = offs < N * C * OH * OW
    ow, oh = offs % OW, (offs // OW) % OH
    plane = offs // (OW * OH)  # n * C + c
    c = plane % C
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for r in tl.static_range(3):
        for s in tl.static_range(3):
            ih, iw = oh * stride + r - 1, ow * stride + s - 1
            tap_ok = ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            xv = tl.load(x_ptr + (plane * H + ih) * W + iw, mask=tap_ok, other=0.0)
            wv = tl.load(w_ptr + c * 9 + r * 3 + s, mask=ok, other=0.0)  # channel c's own filter
            acc += xv * wv
    acc += tl.load(b_ptr + c, mask=ok, other=0.0)
    tl.store(out_ptr + offs, acc, mask=ok)
