"""The rung of lesson 04: FPN's top-down upsample-and-add, in a 1x1 conv's epilogue.

``out = leaky(conv1x1(x) + b) + coarse[nearest source pixel]``: the lateral of :mod:`.gemm1x1`,
then the coarser level read at the pixel ``F.interpolate(mode="nearest", size=...)`` would copy
there, so the upsampled map is never written. Output row ``h`` reads source row
``min(floor(h * scale), coarse_h - 1)`` with ``scale = coarse_h / H`` rounded to float32 and the
product taken in float32, as PyTorch computes it: the exact ``h * coarse_h // H`` differs at some
sizes (lesson 04, section 5).
"""

import torch
import triton
import triton.language as tl

from ..kernels.fpn import nearest_scale


@triton.jit
def lateral_upsample_add_kernel(x_ptr, w_ptr, b_ptr, coarse_ptr, out_ptr, pixels, C, H, W, K, CH, CW,
                                scale_h, scale_w, slope,
                                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    """Program (i, j): pixels i*BLOCK_M.. x channels j*BLOCK_N.. of leaky(x @ w.T + b) + up(coarse)."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)  # output pixels (n, h, w)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok, col_ok = rows < pixels, cols < K
    n, h, w = rows // (H * W), (rows // W) % H, rows % W
    x_row = x_ptr + n * (C * H * W) + h * W + w
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):  # the lateral 1x1 conv: rung 1 of lesson 01
        c = c0 + tl.arange(0, BLOCK_C)
        c_ok = c < C
        a = tl.load(x_row[:, None] + c[None, :] * (H * W), mask=row_ok[:, None] & c_ok[None, :], other=0.0)
        b = tl.load(w_ptr + cols[None, :] * C + c[:, None], mask=c_ok[:, None] & col_ok[None, :], other=0.0)
        acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    y = acc + tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    y = tl.where(y > 0, y, y * slope)  # the lateral's activation comes before the add
    # The nearest source pixel, in float32 as PyTorch computes it, clamped to the coarse map.
    src_h = tl.minimum(tl.floor(h.to(tl.float32) * scale_h).to(tl.int32), CH - 1)
    src_w = tl.minimum(tl.floor(w.to(tl.float32) * scale_w).to(tl.int32), CW - 1)
    out_ok = row_ok[:, None] & col_ok[None, :]
    up = tl.load(coarse_ptr + (n * (K * CH * CW) + src_h * CW + src_w)[:, None] + cols[None, :] * (CH * CW), mask=out_ok)
    y += up.to(tl.float32)
    out = out_ptr + (n * (K * H * W) + h * W + w)[:, None] + cols[None, :] * (H * W)
    tl.store(out, y.to(out_ptr.dtype.element_ty), mask=out_ok)


def lateral_upsample_add(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, coarse: torch.Tensor,
                         slope: float = 0.1, BLOCK_M: int = 32, BLOCK_N: int = 16, BLOCK_C: int = 16) -> torch.Tensor:
    """``leaky_relu(conv2d(x, weight, bias), slope) + F.interpolate(coarse, size=x's, mode="nearest")``."""
    x, coarse = x.contiguous(), coarse.contiguous()
    N, C, H, W = x.shape
    K, CH, CW = weight.shape[0], coarse.shape[2], coarse.shape[3]
    out = torch.empty(N, K, H, W, device=x.device, dtype=x.dtype)
    grid = (triton.cdiv(N * H * W, BLOCK_M), triton.cdiv(K, BLOCK_N))
    lateral_upsample_add_kernel[grid](x, weight.reshape(K, C).contiguous(), bias.contiguous(), coarse, out,
                                      N * H * W, C, H, W, K, CH, CW, nearest_scale(CH, H), nearest_scale(CW, W), slope,
                                      BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_C=BLOCK_C)
    return out
