"""fused.teaching_plots: every drawing runs, and draws what the plans and the launches say."""

import math

import torch
from matplotlib.figure import Figure

import fused
import reference as R
from fused import teaching_plots
from fused.kernels import conv2d as conv_kernels


def test_implicit_gemm_draws_the_plan():
    figure, drawn = teaching_plots.implicit_gemm(1, 64, 20, 20, 32, 3, 1, 1)
    plan = conv_kernels.conv2d_plan(1, 64, 20, 20, 32, 3, 1, 1, interpreter=False)
    assert isinstance(figure, Figure)
    assert (drawn["rows"], drawn["columns"], drawn["reduction"]) == (400, 32, 576)
    assert {k: drawn[k] for k in ("BLOCK_M", "BLOCK_N", "BLOCK_C")} == {k: plan.blocks[k] for k in ("BLOCK_M", "BLOCK_N", "BLOCK_C")}
    assert drawn["programs"] == math.prod(plan.grid) and drawn["steps"] == 9 * math.ceil(64 / plan.blocks["BLOCK_C"])
    figure.canvas.draw()  # everything it drew renders


def test_program_tile_counts_the_masked_lanes():
    # Row tile 0 at tap (0, 0) of a 20 x 20 map with padding 1: the first output row and column read the padding.
    figure, drawn = teaching_plots.program_tile(1, 64, 20, 20, 32, 3, 1, 1, program=0, tap=(0, 0))
    bm = conv_kernels.conv2d_plan(1, 64, 20, 20, 32, 3, 1, 1, interpreter=False).blocks["BLOCK_M"]
    first_row = min(bm, 20)
    column_zero = len([r for r in range(bm) if r % 20 == 0 and r >= 20])
    assert drawn["in_padding"] == first_row + column_zero and drawn["reads"] + drawn["in_padding"] == bm
    _, last = teaching_plots.program_tile(1, 64, 20, 20, 32, 3, 1, 1, program=math.ceil(400 / bm) - 1, tap=(1, 1))
    assert last["past_the_end"] == math.ceil(400 / bm) * bm - 400 and last["in_padding"] == 0
    figure.canvas.draw()


def test_split_k_draws_the_plans_shares():
    figure, drawn = teaching_plots.split_k(1, 512, 8, 8, 512, 3, 1, 1)
    plan = conv_kernels.conv2d_plan(1, 512, 8, 8, 512, 3, 1, 1, interpreter=False)
    assert drawn["SPLIT_K"] == plan.blocks["SPLIT_K"] > 1 and drawn["programs"] == math.prod(plan.grid)
    shares = drawn["shares"]
    assert shares[0][0] == 0 and shares[-1][1] == drawn["steps"] and all(a[1] == b[0] for a, b in zip(shares, shares[1:]))
    assert drawn["partial_bytes"] == plan.blocks["SPLIT_K"] * 64 * 512 * 4
    figure.canvas.draw()


def test_ssh_buffer_records_where_each_launch_writes():
    ssh = fused.fuse(R.randomize_batchnorm(R.SSH(64, 64), seed=1).eval())
    figure, drawn = teaching_plots.ssh_buffer(ssh, torch.randn(2, 64, 2, 3))
    assert drawn["output_offset_planes"] == 16 and drawn["planes"] == 16 + 2 * 64 and drawn["contiguous"]
    launches = dict(drawn["launches"])
    assert launches["conv5X5_1 | conv3X3"] == list(range(0, 48)) + list(range(64, 112))
    assert launches["conv5X5_2"] == list(range(48, 64)) + list(range(112, 128))
    assert launches["conv7x7_3"] == list(range(64, 80)) + list(range(128, 144))  # over sample 1's scratch, written last
    assert [name for name, _ in drawn["launches"]][-1] == "conv7x7_3"
    figure.canvas.draw()
