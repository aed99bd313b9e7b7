"""Rung 1 of lesson 01: a 1x1 convolution is a matrix multiply, and the epilogue is free.

Rows are output pixels ``(n, h, w)``, columns are output channels, the reduction runs over the
input channels. The bias and the LeakyReLU are applied to the fp32 tile while it is still in
registers, before the one store.
"""

import torch
import triton
import triton.language as tl


@triton.jit
def conv1x1_bias_leaky_kernel(x_ptr, w_ptr, b_ptr, out_ptr, pixels, C, HW, K, slope,
                              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    """Program (i, j): pixels i*BLOCK_M.. x channels j*BLOCK_N.. of leaky(x @ w.T + b); NCHW, w [K, C]."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)  # output pixels (n, h, w), flattened
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)  # output channels
    row_ok, col_ok = rows < pixels, cols < K  # the last tiles run past the ends: mask them
    n, hw = rows // HW, rows % HW
    x_row = x_ptr + n * (C * HW) + hw  # channel 0 of each row's pixel; channel c is c * HW further
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):  # the reduction, one block of input channels at a time
        c = c0 + tl.arange(0, BLOCK_C)
        c_ok = c < C
        a = tl.load(x_row[:, None] + c[None, :] * HW, mask=row_ok[:, None] & c_ok[None, :], other=0.0)
        b = tl.load(w_ptr + cols[None, :] * C + c[:, None], mask=c_ok[:, None] & col_ok[None, :], other=0.0)
        acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    # The epilogue: bias and LeakyReLU on the tile in registers, then one store.
    y = acc + tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    y = tl.where(y > 0, y, y * slope)  # PyTorch's formula: NaN stays NaN (tl.maximum may drop it)
    out = out_ptr + (n * (K * HW) + hw)[:, None] + cols[None, :] * HW
    tl.store(out, y.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


def conv1x1_bias_leaky(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, slope: float = 0.1,
                       BLOCK_M: int = 32, BLOCK_N: int = 16, BLOCK_C: int = 16) -> torch.Tensor:
    """``leaky_relu(conv2d(x, weight, bias), slope)`` for a 1x1 ``weight`` [K, C, 1, 1]; NCHW out."""
    x = x.contiguous()
    N, C, H, W = x.shape
    K = weight.shape[0]
    out = torch.empty(N, K, H, W, device=x.device, dtype=x.dtype)
    grid = (triton.cdiv(N * H * W, BLOCK_M), triton.cdiv(K, BLOCK_N))
    conv1x1_bias_leaky_kernel[grid](x, weight.reshape(K, C).contiguous(), bias.contiguous(), out,
                                    N * H * W, C, H * W, K, slope, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_C=BLOCK_C)
    return out
