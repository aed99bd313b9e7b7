"""Lesson 02, depthwise: worked answers (checked by fused.exercises.check("02", N, answer))."""

import math


def exercise_2():
    # BLOCK_N covers all output channels up to 256, unless so few programs leave SMs idle: stage 2
    # has one column tile, stage 3's 256 channels take two 128-wide ones.
    stage2 = math.ceil(40 * 40 / 16) * 1
    stage3 = math.ceil(20 * 20 / 16) * 2
    return stage2, stage3


def exercise_5():
    # The second block's 3x3 windows over an 8 x 8 tile read a 10 x 10 patch of the first block's output.
    return (10 * 10 - 8 * 8) / (8 * 8)


def exercise_6():
    dense = 64 * 128 * 3 * 3
    depthwise_separable = 64 * 3 * 3 + 64 * 128  # one 3x3 filter per channel, then a 1x1 64 -> 128
    return dense / depthwise_separable
