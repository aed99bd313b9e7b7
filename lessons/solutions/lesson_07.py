"""Lesson 07, the compiler's view: worked answers (checked by fused.exercises.check("07", N, answer))."""

import math


def exercise_1():
    # An H100 SM: 65,536 registers allocated per warp in units of 256, 228 KB of shared memory with
    # 1 KB reserved per program, 2,048 threads, 32 programs.
    registers, warps, shared = 34, 4, 8704
    per_warp = math.ceil(registers * 32 / 256) * 256  # 1088 -> 1280
    limits = {"threads": 2048 // (warps * 32), "registers": 65536 // per_warp // warps,
              "shared": 228 * 1024 // (shared + 1024), "blocks": 32}
    limiter = min(limits, key=limits.get)
    return limits[limiter], limiter


def exercise_2():
    # The plan's tile for merge1 in channels_last is 64 pixels x 32 output channels, 4 warps.
    block_m, block_n, block_c, threads = 64, 32, 32, 128
    return (block_m * block_c + block_c * block_n) * 2 // 16 // threads


def exercise_3():
    # Count from the dry run: what facefuse inspect records, nothing compiled.
    from fused.exercises import launches_at

    return sum(math.prod(launch["grid"]) < 132 for launch in launches_at("retinaface", (640, 640), 16))
