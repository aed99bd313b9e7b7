"""Lesson 00, a tour of the blocks: worked answers (checked by fused.exercises.check("00", N, answer))."""

import torch

import reference as R
from fused.measure import profile_model


def exercise_1():
    # The profiler's rows carry each block's FLOPs. Every map of RetinaFace scales with H x W when the
    # side is a multiple of 32, so the share at 64 x 64 is the share at 320 x 320, and much quicker.
    prof = profile_model(R.retinaface("resnet50"), torch.randn(1, 3, 64, 64), warmup=0, repeats=1, fused=False)
    total = sum(r.flops for r in prof.blocks())
    return sum(r.flops for r in prof.blocks() if r.block_type == "Bottleneck") / total


def exercise_2():
    # Strides 8, 16 and 32 give 60 x 80, 30 x 40 and 15 x 20 pixels, two anchors each.
    return 2 * (60 * 80 + 30 * 40 + 15 * 20)


def exercise_3():
    # fc5: 32768 -> 512. FLOPs 2 * B * 32768 * 512; bytes: input, weights, bias and output in float32.
    batch, n_in, n_out = 8, 512 * 8 * 8, 512
    flops = 2 * batch * n_in * n_out
    nbytes = 4 * (batch * n_in + n_in * n_out + n_out + batch * n_out)
    return flops / nbytes
