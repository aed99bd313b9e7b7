"""Lesson 03, squeeze-excite: worked answers (checked by fused.exercises.check("03", N, answer))."""

import math


def exercise_2():
    # 64 output rows fit one 64-row tile (the smallest wgmma tile). With fewer programs than SMs the
    # plan halves BLOCK_N down to 32 (fused/kernels/common.py, gemm_tiles): 512 / 32 = 16 column tiles.
    programs = math.ceil(64 / 64) * math.ceil(512 / 32)
    return programs, math.ceil(132 / programs)


def exercise_5():
    # splits = min(tiles, target // unsplit programs). A 64 x 64 map is 64 tiles of 64 positions
    # (32 channels x 64 positions = a 2048-element tile); 64 channels are 2 channel blocks.
    tiles = 64 * 64 // 64
    return min(tiles, 512 // (64 * 2)), min(tiles, 512 // (1 * 2))


def exercise_6():
    # Tiles of 32 channels x 64 positions (2048 elements). splits = min(tiles, 1024 // unsplit programs):
    # layer2 has 32 x 32 / 64 = 16 tiles and 128 / 32 = 4 channel blocks, so min(16, 256) = 16;
    # layer3 has 16 x 16 / 64 = 4 tiles and 8 channel blocks, so min(4, 128) = 4.
    return min(32 * 32 // 64, 1024 // (128 // 32)), min(16 * 16 // 64, 1024 // (256 // 32))


# ---- kernel exercise "squeeze": fused.exercises.check_kernel("squeeze", squeeze_partial_kernel) ----

import triton  # noqa: E402  (the kernel exercises' imports stay with their kernels)
import triton.language as tl  # noqa: E402


@triton.jit
def squeeze_partial_kernel(x_ptr, partial_ptr, planes, HW, per_split, BLOCK_P: tl.constexpr, BLOCK_HW: tl.constexpr):
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)  # planes (n, c)
    split = tl.program_id(1)
    p_ok = p < planes
    acc = tl.zeros((BLOCK_P, BLOCK_HW), dtype=tl.float32)
    first = split * per_split  # this split's first position
    for start in range(first, first + per_split, BLOCK_HW):
        hw = start + tl.arange(0, BLOCK_HW)
        ok = p_ok[:, None] & (hw < HW)[None, :]  # the map's last tile runs past its end
        acc += tl.load(x_ptr + p[:, None] * HW + hw[None, :], mask=ok, other=0.0)
    tl.store(partial_ptr + split * planes + p, tl.sum(acc, axis=1) / HW, mask=p_ok)
