"""The GEMM families' GPU tiles by shape class, and their autotuned launch path.

A GPU launch autotunes over a few configurations that start with the plan. Without a GPU the
autotuned path is run here in the interpreter with a stand-in timer (``common.AUTOTUNE_TIMER``),
which also checks every candidate's output against float64: each configuration a GPU may pick
computes the same answer, NaN and Inf included.
"""

import inspect

import pytest
import torch
import torch.nn.functional as F

from fused.kernels import common, conv2d, fpn, heads
from fused.tolerance import assert_close


def test_interpreter_keeps_its_tiles():
    """Tests and lessons run the interpreter's tiles, whatever the GPU plans do."""
    assert common.gemm_tiles(6400, 64, 64, interpreter=True) == {"BLOCK_M": 1024, "BLOCK_N": 64, "BLOCK_C": 64}
    assert common.gemm_tiles(256, 8, 3, interpreter=True) == {"BLOCK_M": 128, "BLOCK_N": 16, "BLOCK_C": 16}
    assert common.gemm_tiles(6400, 64, 64, interpreter=True, fma=True, scalar_loads=True) == \
        common.gemm_tiles(6400, 64, 64, interpreter=True)


def test_gpu_tiles_by_shape_class():
    big = 16 * 80 * 80  # enough programs: no shrinking for the SMs
    assert common.gemm_tiles(big, 64, 64, interpreter=False) == {"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_C": 64}
    assert common.gemm_tiles(big, 256, 256, interpreter=False) == {"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_C": 64}
    # exact float32 on FMA units: small tiles, 16 channels at a time
    assert common.gemm_tiles(big, 256, 256, interpreter=False, fma=True) == {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_C": 16}
    # scalar input loads: half the channels per step
    assert common.gemm_tiles(big, 64, 64, interpreter=False, scalar_loads=True)["BLOCK_C"] == 32
    # ResNet-50's layer4 at batch 1 (20x20 map, 2048 channels): more, smaller programs
    plan = conv2d.conv2d_plan(1, 512, 20, 20, 2048, 1, channels_last=True, interpreter=False)
    assert plan.blocks == {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_C": 64} and plan.programs == 7 * 32
    plan = conv2d.conv2d_plan(1, 64, 80, 80, 64, 3, 1, 1, interpreter=False)
    assert plan.programs >= common.SM_COUNT and plan.blocks["BLOCK_M"] >= 64


def test_plans_see_the_layout_the_launcher_sees():
    """NCHW 3x3: scalar loads (32 channels a step); channels_last: vectors (64)."""
    nchw = conv2d.conv2d_plan(16, 64, 80, 80, 64, 3, 1, 1, interpreter=False)
    nhwc = conv2d.conv2d_plan(16, 64, 80, 80, 64, 3, 1, 1, channels_last=True, interpreter=False)
    assert (nchw.blocks["BLOCK_C"], nhwc.blocks["BLOCK_C"]) == (32, 64)
    assert fpn.lateral_upsample_add_plan(16, 64, 40, 40, 64, channels_last=True, interpreter=False).blocks["BLOCK_C"] == 64
    assert heads.anchor_heads_plan(16, 64, 40, 40, 32, dtype=torch.float32, interpreter=False).blocks == \
        {"BLOCK_M": 64, "BLOCK_N": 32, "BLOCK_C": 16}


def test_candidates_start_with_the_plan_and_stay_in_the_tile_space():
    plan = conv2d.conv2d_plan(16, 64, 40, 40, 128, 3, 2, 1, channels_last=True, interpreter=False)
    configs = conv2d.conv2d_configs(16, 64, 40, 40, 128, 3, 2, 1, channels_last=True)
    assert configs[0] == plan and len(set(map(common.config_key, configs))) == len(configs) == 4
    assert {c.num_warps for c in configs} == {4, 8} and {c.num_stages for c in configs} == {2, 3, 4}
    assert all(common.config_key(c) in common.TILE_SPACE for c in configs)
    split = conv2d.conv2d_plan(1, 64, 40, 40, 128, 3, 2, 1, channels_last=True, interpreter=False)
    assert split.blocks["SPLIT_K"] > 1  # 28 programs: split-K launches its plan, no autotuning
    assert conv2d.conv2d_configs(1, 64, 40, 40, 128, 3, 2, 1, channels_last=True) == [split]


def test_conv2d_kernel_has_one_reduction_loop():
    """Taps and channel blocks in one flat loop, so the software pipeliner overlaps loads with
    MMAs across taps (three nested loops pipelined only the innermost, channel, loop)."""
    source = inspect.getsource(conv2d.conv2d_bias_act_kernel.fn)
    loops = [line.strip() for line in source.splitlines() if line.strip().startswith("for ")]
    assert loops == ["for k in range(first, last):"]  # all R * R * c_blocks steps, or a split's share


@pytest.fixture
def autotuned_in_interpreter(monkeypatch):
    """Make the launchers take their GPU autotuning path here; return the list of timings made."""
    timings = []

    def timer(fn, quantiles=None, **_):
        fn()
        timings.append(len(timings))
        t = float(len(timings))  # the first candidate timed (the plan) is the fastest
        return [t, t, t] if quantiles else t

    monkeypatch.setattr(common, "autotuning", lambda kernel=None: True)  # common.launch_plan's switch
    monkeypatch.setattr(common, "AUTOTUNE_TIMER", timer)
    common.reset_autotuning()  # tuners made before would keep Triton's own timer
    yield timings
    common.reset_autotuning()  # and ours must not outlive the test


def _conv_case(dtype, fmt):
    x = torch.randn(2, 40, 9, 11).to(dtype).contiguous(memory_format=fmt)
    x[0, 3, 4, 5], x[1, 7, 0, 0] = float("nan"), float("inf")
    w, b = torch.randn(24, 40, 3, 3).to(dtype), torch.randn(24).to(dtype)
    residual = torch.randn(2, 24, 5, 6).to(dtype).contiguous(memory_format=fmt)
    expected = F.leaky_relu(F.conv2d(x.double(), w.double(), b.double(), stride=2, padding=1) + residual.double(), 0.1)
    return x, w, b, residual, expected


CASES = [(torch.float32, "ieee", torch.contiguous_format), (torch.float32, "tf32", torch.channels_last),
         (torch.float16, "ieee", torch.contiguous_format), (torch.float16, "ieee", torch.channels_last)]


@pytest.mark.parametrize("dtype,precision,fmt", CASES)
def test_every_conv2d_candidate_matches_reference(monkeypatch, dtype, precision, fmt):
    """Whichever configuration a GPU picks computes the same answer, NaN and Inf included."""
    x, w, b, residual, expected = _conv_case(dtype, fmt)
    configs = conv2d.conv2d_configs(2, 40, 9, 11, 24, 3, 2, 1, channels_last=fmt == torch.channels_last,
                                    dtype=dtype, precision=precision)
    for config in configs:
        monkeypatch.setattr(conv2d, "conv2d_plan", lambda *args, **kwargs: config)
        out = conv2d.conv2d_bias_act(x, w, b, stride=2, padding=1, activation="leaky_relu", slope=0.1,
                                     residual=residual, precision=precision)
        assert_close(out, expected, dtype="tf32" if precision == "tf32" else dtype, reduction_length=40 * 9,
                     what=str(config))


def test_autotuned_conv2d_times_the_candidates_and_writes_once(autotuned_in_interpreter):
    """The output is also the residual: the timing runs must not leave it changed (restore_value),
    or the residual would be added once per timing run."""
    x, w, b, residual, expected = _conv_case(torch.float32, torch.channels_last)
    out = residual.clone()
    conv2d.conv2d_bias_act(x, w, b, stride=2, padding=1, activation="leaky_relu", slope=0.1, residual=out, out=out)
    assert_close(out, expected, reduction_length=40 * 9)
    assert len(autotuned_in_interpreter) == 4
    (chosen,) = common.chosen_configs(conv2d.conv2d_bias_act_kernel).values()
    plan = conv2d.conv2d_plan(2, 40, 9, 11, 24, 3, 2, 1, channels_last=True, dtype=torch.float32, interpreter=False)
    assert (chosen.kwargs, chosen.num_warps, chosen.num_stages) == (plan.blocks, plan.num_warps, plan.num_stages)


def test_autotuned_fpn_and_heads_match_reference(autotuned_in_interpreter):
    x, coarse = torch.randn(2, 24, 6, 10), torch.randn(2, 16, 3, 5)
    w, b = torch.randn(16, 24), torch.randn(16)
    out = fpn.lateral_upsample_add(x, w, b, coarse, activation="relu")
    expected = torch.relu(F.conv2d(x.double(), w.double()[:, :, None, None], b.double())) + \
        F.interpolate(coarse.double(), size=(6, 10), mode="nearest")
    assert_close(out, expected, reduction_length=24)
    wh, bh = torch.randn(32, 24), torch.randn(32)
    outs = [torch.full((2, 140, v), 5.0) for v in (2, 4, 10)]
    heads.anchor_heads(x, wh, bh, outs, anchors=2, row_offset=10)
    y = F.conv2d(x.double(), wh.double()[:, :, None, None], bh.double()).permute(0, 2, 3, 1).reshape(2, 60, 32)
    assert_close(outs[0][:, 10:130], y[:, :, :4].reshape(2, 120, 2), reduction_length=24)
    assert_close(outs[2][:, 10:130], y[:, :, 12:].reshape(2, 120, 10), reduction_length=24)
    assert bool((outs[1][:, :10] == 5).all() and (outs[1][:, 130:] == 5).all())  # rows outside untouched
    assert len(autotuned_in_interpreter) == 8  # four candidates per family, each timed once


def test_autotuned_kernels_are_kept_until_reset(autotuned_in_interpreter):
    """One tuner per kernel, kept with its choices (a second launch of the shape times nothing),
    until reset_autotuning() forgets them."""
    x, w, b, residual, _ = _conv_case(torch.float16, torch.channels_last)
    for _ in range(2):
        conv2d.conv2d_bias_act(x, w, b, stride=2, padding=1, residual=residual)
    assert len(autotuned_in_interpreter) == 4
    assert len(common.chosen_configs(conv2d.conv2d_bias_act_kernel)) == 1
    common.reset_autotuning()
    assert common.chosen_configs(conv2d.conv2d_bias_act_kernel) == {}
    conv2d.conv2d_bias_act(x, w, b, stride=2, padding=1, residual=residual)
    assert len(autotuned_in_interpreter) == 8


def test_autotuned_launch_of_a_tiny_map_times_its_plan(autotuned_in_interpreter):
    """A map of 16 pixels gets a 16-pixel tile, which is outside TILE_SPACE; pruning used to drop
    every candidate, and a GPU raised 'No valid autotuner configs after pruning' (RetinaFace at
    96x160 hit it in the FPN). The plan is always timed."""
    x, w, b = torch.randn(1, 8, 4, 4), torch.randn(16, 8, 3, 3), torch.randn(16)
    plan = conv2d.conv2d_plan(1, 8, 4, 4, 16, 3, 1, 1, interpreter=False)
    assert plan.blocks["BLOCK_M"] == 16
    out = conv2d.conv2d_bias_act(x, w, b, padding=1)
    assert_close(out, F.conv2d(x.double(), w.double(), b.double(), padding=1), reduction_length=8 * 9)
    (chosen,) = common.chosen_configs(conv2d.conv2d_bias_act_kernel).values()
    assert chosen.kwargs["BLOCK_M"] == 16 and len(autotuned_in_interpreter) == 4
