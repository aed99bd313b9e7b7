"""Rung 2 of lesson 01: a 3x3 convolution as nine shifted 1x1 GEMMs, padding from masks.

Tap ``(r, s)`` of output pixel ``(h, w)`` reads input pixel ``(h + r - 1, w + s - 1)`` (padding 1).
Where that falls outside the map, the load is masked and reads 0: the zero padding is never
stored anywhere. The weight ``w[k, c, r, s]`` is read as the GEMM's ``[C, K]`` tile of tap (r, s).
"""

import torch
import triton
import triton.language as tl


@triton.jit
def conv3x3_bias_leaky_kernel(x_ptr, w_ptr, b_ptr, out_ptr, N, C, H, W, K, slope,
                              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    """Program (i, j): pixels i*BLOCK_M.. x channels j*BLOCK_N.. of leaky(conv3x3(x, w, pad 1) + b)."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)  # output pixels (n, h, w), flattened
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)  # output channels
    row_ok, col_ok = rows < N * H * W, cols < K
    n, h, w = rows // (H * W), (rows // W) % H, rows % W
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for r in tl.static_range(3):  # the nine taps, unrolled at compile time
        for s in tl.static_range(3):
            ih, iw = h + r - 1, w + s - 1  # the input pixel tap (r, s) reads
            pixel_ok = row_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)  # in the padding: read 0
            x_tap = x_ptr + n * (C * H * W) + ih * W + iw
            for c0 in range(0, C, BLOCK_C):  # then the input channels, a block at a time
                c = c0 + tl.arange(0, BLOCK_C)
                c_ok = c < C
                a = tl.load(x_tap[:, None] + c[None, :] * (H * W), mask=pixel_ok[:, None] & c_ok[None, :], other=0.0)
                b = tl.load(w_ptr + cols[None, :] * (C * 9) + c[:, None] * 9 + (r * 3 + s),
                            mask=c_ok[:, None] & col_ok[None, :], other=0.0)
                acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    y = acc + tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    y = tl.where(y > 0, y, y * slope)
    out = out_ptr + (n * (K * H * W) + h * W + w)[:, None] + cols[None, :] * (H * W)
    tl.store(out, y.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


def conv3x3_bias_leaky(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, slope: float = 0.1,
                       BLOCK_M: int = 32, BLOCK_N: int = 16, BLOCK_C: int = 16) -> torch.Tensor:
    """``leaky_relu(conv2d(x, weight, bias, padding=1), slope)`` for a 3x3 ``weight``, stride 1; NCHW out."""
    x = x.contiguous()
    N, C, H, W = x.shape
    K = weight.shape[0]
    out = torch.empty(N, K, H, W, device=x.device, dtype=x.dtype)
    grid = (triton.cdiv(N * H * W, BLOCK_M), triton.cdiv(K, BLOCK_N))
    conv3x3_bias_leaky_kernel[grid](x, weight.contiguous(), bias.contiguous(), out, N, C, H, W, K, slope,
                                    BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_C=BLOCK_C)
    return out
