"""Lesson 05, ArcFace: worked answers (checked by fused.exercises.check("05", N, answer))."""

import math


def exercise_1():
    # Only the outer ring of pixels has a tap in the padding.
    return tuple((side * side - (side - 2) ** 2) / (side * side) for side in (64, 8))


def exercise_2():
    # N * 8 * 8 = 64 output rows: one 64-row tile. With fewer programs than SMs the plan halves
    # BLOCK_N down to 32 (gemm_tiles in fused/kernels/common.py): 512 output channels in 32-wide tiles.
    return math.ceil(64 / 64) * math.ceil(512 / 32)


def exercise_3():
    # A PReLU with slope >= 0 never reverses the order of two values, so the max of four commutes with it.
    return lambda slope: slope >= 0
