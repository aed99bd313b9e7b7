"""Lesson 03, squeeze-excite: worked answers (checked by fused.exercises.check("03", N, answer))."""

import math

from fused.kernels import squeeze_excite as se_kernels


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
    return tuple(se_kernels.se_squeeze_plan(*shape, interpreter=False).splits
                 for shape in [(1, 64, 64, 64), (64, 64, 64, 64), (1, 512, 8, 8)])
