"""The rung of lesson 03: squeeze-excite's mean over H*W as a reduction across programs.

One (sample, channel) plane of a large map is thousands of numbers, and a batch of one has few
planes, so the positions are split too: program ``(i, split)`` sums its share of the positions of
``BLOCK_P`` planes and stores that partial sum. Programs cannot wait for each other, so a second,
tiny launch adds the partial sums in split order (the same order every run) and divides by H*W.
"""

import torch
import triton
import triton.language as tl


@triton.jit
def squeeze_partial_kernel(x_ptr, partial_ptr, planes, HW, per_split,
                           BLOCK_P: tl.constexpr, BLOCK_HW: tl.constexpr):
    """partial[split, p] = sum of plane p's positions split*per_split.. (per_split: a multiple of BLOCK_HW)."""
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)  # planes (n, c), flattened
    split = tl.program_id(1)
    p_ok = p < planes
    acc = tl.zeros((BLOCK_P, BLOCK_HW), dtype=tl.float32)
    first = split * per_split
    for start in range(first, first + per_split, BLOCK_HW):
        hw = start + tl.arange(0, BLOCK_HW)
        ok = p_ok[:, None] & (hw < HW)[None, :]  # the map's last tile runs past its end
        acc += tl.load(x_ptr + p[:, None] * HW + hw[None, :], mask=ok, other=0.0).to(tl.float32)
    tl.store(partial_ptr + split * planes + p, tl.sum(acc, axis=1), mask=p_ok)


@triton.jit
def squeeze_finish_kernel(partial_ptr, mean_ptr, planes, splits, inv_hw, BLOCK: tl.constexpr):
    """mean[p] = (partial[0, p] + partial[1, p] + ...) / (H*W), the splits added in order."""
    p = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = p < planes
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for split in range(0, splits):
        acc += tl.load(partial_ptr + split * planes + p, mask=ok, other=0.0)
    tl.store(mean_ptr + p, acc * inv_hw, mask=ok)


def squeeze_mean(x: torch.Tensor, splits: int = 4, BLOCK_P: int = 8, BLOCK_HW: int = 16) -> torch.Tensor:
    """``x.mean((2, 3))`` in fp32 for NCHW ``x``, each plane's positions split about ``splits`` ways."""
    x = x.contiguous()
    N, C, H, W = x.shape
    planes, HW = N * C, H * W
    per_split = triton.cdiv(triton.cdiv(HW, splits), BLOCK_HW) * BLOCK_HW  # whole tiles per split
    splits = triton.cdiv(HW, per_split)
    partial = torch.empty(splits, planes, device=x.device, dtype=torch.float32)
    squeeze_partial_kernel[(triton.cdiv(planes, BLOCK_P), splits)](x, partial, planes, HW, per_split,
                                                                    BLOCK_P=BLOCK_P, BLOCK_HW=BLOCK_HW)
    mean = torch.empty(N, C, device=x.device, dtype=torch.float32)
    squeeze_finish_kernel[(triton.cdiv(planes, 64),)](partial, mean, planes, splits, 1.0 / HW, BLOCK=64)
    return mean
