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
