"""Lesson 05, ArcFace: worked answers (checked by fused.exercises.check("05", N, answer))."""

import math


def exercise_1():
    # Only the outer ring of pixels has a tap in the padding.
    return tuple((side * side - (side - 2) ** 2) / (side * side) for side in (64, 8))


def exercise_2():
    # 64 x 8 x 8 = 4096 output rows. gemm_tiles starts from 128-wide column tiles with 64-row tiles
    # (64 x 128 = 256 programs) and only shrinks tiles while there are fewer programs than the 132 SMs;
    # the plan splits K only when the smallest tiles still leave SMs idle. An NCHW input is read by
    # scalar loads, which cap the tiles at 64 x 64: 64 row tiles x 8 column tiles = 512 programs, no split.
    return math.ceil(64 * 8 * 8 / 64) * math.ceil(512 / 64), 1


def exercise_3():
    # A PReLU with slope >= 0 never reverses the order of two values, so the max of four commutes with it.
    return lambda slope: slope >= 0
