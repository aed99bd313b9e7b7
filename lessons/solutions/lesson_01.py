"""Lesson 01, conv + BN + LeakyReLU: worked answers (checked by fused.exercises.check("01", N, answer))."""

import math

import torch

from fused.kernels import common as kernel_common


def exercise_2():
    # 400 output rows x 32 output channels. gemm_tiles gives the GPU's tiles: BLOCK_M starts at 128 and is
    # halved (down to 64) while the launch has fewer programs than the GPU has SMs.
    tiles = kernel_common.gemm_tiles(20 * 20, 32, 64, interpreter=False)
    column_tiles = math.ceil(32 / tiles["BLOCK_N"])
    return math.ceil(400 / tiles["BLOCK_M"]) * column_tiles, math.ceil(400 / 32) * column_tiles


def exercise_6():
    def fold(weight, bn):
        # bn(y) = (y - mean) * s + beta with s = gamma / sqrt(var + eps): scale each output channel's
        # filter by s, and the (zero) conv bias becomes (0 - mean) * s + beta.
        s = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
        return weight * s.view(-1, 1, 1, 1), bn.bias.detach() - bn.running_mean * s

    return fold


# ---- kernel exercise "conv3x3": fused.exercises.check_kernel("conv3x3", conv3x3_kernel) ----

import triton  # noqa: E402  (the kernel exercises' imports stay with their kernels)
import triton.language as tl  # noqa: E402


@triton.jit
def conv3x3_kernel(x_ptr, w_ptr, b_ptr, out_ptr, N, C, H, W, K, slope, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)  # output pixels (n, h, w), flattened
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)  # output channels
    row_ok, col_ok = rows < N * H * W, cols < K
    n, h, w = rows // (H * W), (rows // W) % H, rows % W
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for c in range(0, C):
        for r in tl.static_range(3):
            for s in tl.static_range(3):
                ih, iw = h + r - 1, w + s - 1  # padding 1: tap (0, 0) reads one row up, one column left
                ok = row_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)  # taps in the padding read 0
                xv = tl.load(x_ptr + ((n * C + c) * H + ih) * W + iw, mask=ok, other=0.0)
                wv = tl.load(w_ptr + ((cols * C + c) * 3 + r) * 3 + s, mask=col_ok, other=0.0)
                acc += xv[:, None] * wv[None, :]  # a rank-1 update: one input channel, one tap
    y = acc + tl.load(b_ptr + cols, mask=col_ok, other=0.0)[None, :]
    y = tl.where(y > 0, y, y * slope)
    out = (n[:, None] * K + cols[None, :]) * (H * W) + (h * W + w)[:, None]
    tl.store(out_ptr + out, y, mask=row_ok[:, None] & col_ok[None, :])
