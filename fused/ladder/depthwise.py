"""The rung of lesson 02: a depthwise 3x3 convolution, nine FMAs per output and no ``tl.dot``.

Channel ``c`` of the output reads only channel ``c`` of the input, through its own 3x3 filter
``w[c, 0, r, s]``. There is no sum over channels, so nothing for a matrix multiply to do: each
lane of the ``[BLOCK_M pixels, BLOCK_C channels]`` tile accumulates its nine taps on its own.
"""

import torch
import triton
import triton.language as tl


@triton.jit
def depthwise3x3_bias_leaky_kernel(x_ptr, w_ptr, b_ptr, out_ptr, N, C, H, W, OH, OW, slope,
                                   STRIDE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    """Program (i, j): output pixels i*BLOCK_M.. x channels j*BLOCK_C.. of leaky(depthwise3x3(x) + b)."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)  # output pixels (n, oh, ow), flattened
    chans = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)  # channels, each with its own filter
    row_ok, c_ok = rows < N * OH * OW, chans < C
    n, oh, ow = rows // (OH * OW), (rows // OW) % OH, rows % OW
    plane = n[:, None] * C + chans[None, :]  # the (n, c) plane of each lane
    acc = tl.zeros((BLOCK_M, BLOCK_C), dtype=tl.float32)
    for r in tl.static_range(3):
        for s in tl.static_range(3):
            ih, iw = oh * STRIDE + r - 1, ow * STRIDE + s - 1  # padding 1
            ok = row_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            x = tl.load(x_ptr + plane * (H * W) + (ih * W + iw)[:, None], mask=ok[:, None] & c_ok[None, :], other=0.0)
            w = tl.load(w_ptr + chans * 9 + (r * 3 + s), mask=c_ok, other=0.0)  # one weight per channel
            acc += x.to(tl.float32) * w.to(tl.float32)[None, :]  # an FMA per lane, no tl.dot
    y = acc + tl.load(b_ptr + chans, mask=c_ok, other=0.0).to(tl.float32)[None, :]
    y = tl.where(y > 0, y, y * slope)
    out = out_ptr + plane * (OH * OW) + (oh * OW + ow)[:, None]
    tl.store(out, y.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & c_ok[None, :])


def depthwise3x3_bias_leaky(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, stride: int = 1,
                            slope: float = 0.1, BLOCK_M: int = 32, BLOCK_C: int = 16) -> torch.Tensor:
    """``leaky_relu(conv2d(x, weight, bias, stride, padding=1, groups=C), slope)``, weight [C, 1, 3, 3]."""
    x = x.contiguous()
    N, C, H, W = x.shape
    OH, OW = (H - 1) // stride + 1, (W - 1) // stride + 1
    out = torch.empty(N, C, OH, OW, device=x.device, dtype=x.dtype)
    grid = (triton.cdiv(N * OH * OW, BLOCK_M), triton.cdiv(C, BLOCK_C))
    depthwise3x3_bias_leaky_kernel[grid](x, weight.contiguous(), bias.contiguous(), out, N, C, H, W, OH, OW, slope,
                                         STRIDE=stride, BLOCK_M=BLOCK_M, BLOCK_C=BLOCK_C)
    return out
