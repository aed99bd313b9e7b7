"""The rung of lesson 05: ArcFace's stem, conv 3x3 + PReLU + 2x2 max-pool, in one kernel.

Each program owns a tile of *pooled* output pixels. For each of the four pixels a pooling window
covers, it computes the conv (bias folded from ``bn1``) and the PReLU in registers, and keeps the
running maximum, so the full-resolution map is neither written nor read back. The stem has one
input channel, a 9-term reduction: too short for ``tl.dot``, so the taps are rank-1 updates.
The maximum propagates NaN, as ``torch.max_pool2d`` does: ``tl.maximum`` and a plain
``where(y > best, y, best)`` may both drop it.
"""

import torch
import triton
import triton.language as tl


@triton.jit
def stem_conv_prelu_pool_kernel(x_ptr, w_ptr, b_ptr, slope_ptr, out_ptr, N, C, H, W, K, PH, PW,
                                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Program (i, j): pooled pixels i*BLOCK_M.. x channels j*BLOCK_N.. of maxpool2(prelu(conv3x3(x) + b))."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)  # pooled pixels (n, ph, pw)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok, col_ok = rows < N * PH * PW, cols < K
    n, ph, pw = rows // (PH * PW), (rows // PW) % PH, rows % PW
    bias = tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    slope = tl.load(slope_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    best = tl.full((BLOCK_M, BLOCK_N), float("-inf"), dtype=tl.float32)
    for dy in tl.static_range(2):  # the four conv pixels of each pooling window
        for dx in tl.static_range(2):
            h, w = 2 * ph + dy, 2 * pw + dx
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for c in range(0, C):
                for r in tl.static_range(3):
                    for s in tl.static_range(3):
                        ih, iw = h + r - 1, w + s - 1
                        ok = row_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
                        xv = tl.load(x_ptr + ((n * C + c) * H + ih) * W + iw, mask=ok, other=0.0)
                        wv = tl.load(w_ptr + cols * (C * 9) + c * 9 + (r * 3 + s), mask=col_ok, other=0.0)
                        acc += xv.to(tl.float32)[:, None] * wv.to(tl.float32)[None, :]
            y = acc + bias
            y = tl.where(y > 0, y, y * slope)  # PReLU, one slope per channel
            best = tl.where((y > best) | (y != y), y, best)  # a max that keeps NaN (y != y: y is NaN)
    out = out_ptr + (n * (K * PH * PW) + ph * PW + pw)[:, None] + cols[None, :] * (PH * PW)
    tl.store(out, best.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


def stem_conv_prelu_pool(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, slopes: torch.Tensor,
                         BLOCK_M: int = 64, BLOCK_N: int = 64) -> torch.Tensor:
    """``max_pool2d(prelu(conv2d(x, weight, bias, padding=1), slopes), 2)``; ``slopes``: one or K values.

    The default tile covers the stem's 64 output channels in one program (and in the interpreter,
    which pays per program, a 24 x 24 patch in three)."""
    x = x.contiguous()
    N, C, H, W = x.shape
    K = weight.shape[0]
    slopes = slopes.reshape(-1).expand(K).contiguous()
    out = torch.empty(N, K, H // 2, W // 2, device=x.device, dtype=x.dtype)
    grid = (triton.cdiv(N * (H // 2) * (W // 2), BLOCK_M), triton.cdiv(K, BLOCK_N))
    stem_conv_prelu_pool_kernel[grid](x, weight.contiguous(), bias.contiguous(), slopes, out,
                                      N, C, H, W, K, H // 2, W // 2, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N)
    return out
