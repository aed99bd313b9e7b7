"""``anchor_heads`` with its columns split over programs, as GPU plans do on small maps.

The interpreter's plan covers all the stacked head columns in one tile; a GPU's splits them when a
launch would leave SMs idle (``BLOCK_N`` < ``K``). These tests run that split here by giving the
launcher the GPU plan, and check against float64 that every softmax group stays whole, NaN and Inf
included, and that the columns past ``K`` are never stored.
"""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fused.kernels import common, heads
from fused.tolerance import assert_close
from tests.fused.test_fused_retinaface import heads_reference
from tests.strategies import BATCH, CHANNELS, MEMORY_FORMAT, NONFINITE, SPATIAL, kernel_dtypes, layout, plant

GPU_PLAN = heads.anchor_heads_plan


def gpu_plans(used):
    """A stand-in for ``heads.anchor_heads_plan`` that gives the GPU's plan and notes it in ``used``."""
    def plan(*args, **kwargs):
        used.append(GPU_PLAN(*args, **{**kwargs, "interpreter": False}))
        return used[-1]
    return plan


def run_heads(x, weights, biases, values, anchors, softmax, offset=0):
    """Launch the heads into NaN-filled outputs (3 spare rows); return the outputs and the reference."""
    rows = x.shape[2] * x.shape[3] * anchors
    outs = [torch.full((x.shape[0], offset + rows + 3, v), math.nan, dtype=x.dtype) for v in values]
    heads.anchor_heads(x, torch.cat(weights).to(x.dtype), torch.cat(biases), outs, anchors=anchors,
                       row_offset=offset, softmax=softmax)
    return outs, heads_reference(x, weights, biases, values, anchors, softmax)


@given(n=BATCH, c=CHANNELS, size=st.tuples(SPATIAL, SPATIAL), anchors=st.sampled_from([1, 2, 3]),
       values=st.sampled_from([(2, 4, 10), (2, 4), (1, 3, 5), (4, 10), (8, 1), (32,)]), softmax=st.booleans(),
       offset=st.sampled_from([0, 5]), dtype=kernel_dtypes(), fmt=MEMORY_FORMAT, non_contiguous=st.booleans(),
       specials=NONFINITE)
def test_column_tiles_keep_softmax_groups_whole(n, c, size, anchors, values, softmax, offset, dtype, fmt,
                                                non_contiguous, specials):
    """GPU plans of small maps split the columns (16 a tile, or the softmax group when wider):
    every head lands where permute, view and cat put it, softmax groups whole, NaN/Inf included."""
    gen = torch.Generator().manual_seed(c * 7 + anchors)
    x = plant(layout(torch.randn(n, c, *size, generator=gen).to(dtype), fmt, non_contiguous), specials)
    weights = [torch.randn(anchors * v, c, generator=gen) / math.sqrt(c) for v in values]
    biases = [torch.randn(anchors * v, generator=gen) for v in values]
    rows, K = size[0] * size[1] * anchors, anchors * sum(values)
    used = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(heads, "anchor_heads_plan", gpu_plans(used))
        outs, expected = run_heads(x, weights, biases, values, anchors, softmax, offset)
    if n:
        (plan,) = used
        group = values[0] if softmax else 1
        assert plan.blocks["BLOCK_N"] % group == 0
        assert plan.grid[1] == math.ceil(K / plan.blocks["BLOCK_N"]) > (K > max(16, group))  # split when it can
    for out, want in zip(outs, expected):
        assert out[:, :offset].isnan().all() and out[:, offset + rows:].isnan().all()  # nothing outside its rows
        assert_close(out[:, offset:offset + rows], want, reduction_length=c)


def test_softmax_of_nan_and_inf_logits_in_a_column_tile(monkeypatch):
    """NaN, +Inf and -Inf logits in the class groups of a split launch come out as torch.softmax
    gives them; the box columns of the same pixels come from the second tile, exact."""
    x = torch.tensor([-math.inf, math.inf, math.nan, 1.0, -2.0]).reshape(1, 1, 1, 5)
    weights = [torch.tensor([[1.0], [2.0], [1.0], [-1.0], [0.5], [0.25]]), torch.ones(12, 1), torch.ones(18, 1)]
    biases = [torch.tensor([0.0, 1.0, -1.0, 0.0, 0.0, 0.0]), torch.zeros(12), torch.zeros(18)]
    used = []
    monkeypatch.setattr(heads, "anchor_heads_plan", gpu_plans(used))
    outs, expected = run_heads(x, weights, biases, (2, 4, 6), 3, True)
    assert used[0].blocks["BLOCK_N"] == 16 and used[0].grid == (1, 3)
    assert expected[0].isnan().any() and torch.isfinite(expected[0]).any()
    for out, want in zip(outs, expected):
        assert_close(out[:, :15], want, reduction_length=1)


def test_a_tile_that_would_cut_a_softmax_group_is_refused(monkeypatch):
    """A plan whose column tile is narrower than the softmax group would split groups over two
    programs: the launcher refuses it with an error naming the fix."""
    x = torch.randn(1, 8, 2, 3)
    w, b = torch.randn(64, 8), torch.randn(64)
    out = torch.empty(1, 12, 32)
    cut = common.LaunchPlan((1, 4), {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_C": 16})
    monkeypatch.setattr(heads, "anchor_heads_plan", lambda *args, **kwargs: cut)
    with pytest.raises(ValueError, match="would split the softmax groups of 32 values.*group=32"):
        heads.anchor_heads(x, w, b, (out,), anchors=2, softmax=True)
    heads.anchor_heads(x, w, b, (out,), anchors=2)  # without softmax the same tiles are right
    (expected,) = heads_reference(x, [w], [b], (32,), 2, False)
    assert_close(out, expected, reduction_length=8)


def test_a_cut_softmax_pair_fails_the_check():
    """What a tile boundary through a softmax pair would produce (each half normalised alone, so
    1.0) must fail the same check the split kernel passes."""
    x = torch.randn(1, 8, 3, 4)
    w, b = torch.randn(6, 8), torch.randn(6)
    (expected,) = heads_reference(x, [w], [b], (2,), 3, True)
    logits = expected.log()  # softmax is shift-invariant: these give the same groups
    flat = logits.reshape(1, -1, 6)  # per pixel, 3 anchors x 2 classes; a boundary after column 3
    cut = torch.cat([flat[..., :2].softmax(-1), torch.ones_like(flat[..., 2:4]), flat[..., 4:].softmax(-1)], -1)
    with pytest.raises(AssertionError):
        assert_close(cut.reshape(expected.shape).float(), expected, reduction_length=8)


def test_gpu_plans_split_columns_only_where_sms_would_idle():
    """mobile0.25 and ResNet-50 heads (K = 32): 20x20 at batch 16 splits into 16-column tiles and
    fills the SMs; 40x40 and 80x80 keep one column tile; a wide softmax group bounds the split."""
    for C in (64, 256):
        for dtype, precision in ((torch.float16, "ieee"), (torch.float32, "tf32"), (torch.float32, "ieee")):
            plan = GPU_PLAN(16, C, 20, 20, 32, group=2, dtype=dtype, precision=precision, interpreter=False)
            assert plan.blocks["BLOCK_N"] == 16 and plan.grid == (100, 2) and plan.programs >= common.SM_COUNT
            for size in (40, 80):
                plan = GPU_PLAN(16, C, size, size, 32, group=2, dtype=dtype, precision=precision, interpreter=False)
                assert plan.grid[1] == 1 and plan.blocks["BLOCK_N"] == 32
    assert GPU_PLAN(1, 64, 20, 20, 64, group=32, interpreter=False).blocks["BLOCK_N"] == 32
    assert GPU_PLAN(1, 64, 20, 20, 32, group=2, interpreter=True).grid[1] == 1  # the interpreter: one tile
    for candidate in common.tuned_variants(GPU_PLAN(16, 64, 20, 20, 32, group=2, interpreter=False)):
        assert common.config_key(candidate) in common.TILE_SPACE and candidate.blocks["BLOCK_N"] == 16


def test_autotuned_split_launch_matches_reference(monkeypatch):
    """The GPU's autotuned path (a grid over pixels and columns from the chosen config), run here
    with a stand-in timer: every candidate a GPU may pick splits the columns and computes the same."""
    timings = []

    def timer(fn, quantiles=None, **_):
        fn()
        timings.append(len(timings))
        return [1.0] * 3 if quantiles else 1.0

    monkeypatch.setattr(common, "autotuning", lambda kernel=None: True)
    monkeypatch.setattr(common, "AUTOTUNE_TIMER", timer)
    common.reset_autotuning()
    try:
        x = torch.randn(2, 24, 5, 7)
        x[1, 3, 2, 2] = math.nan
        weights = [torch.randn(2 * v, 24) for v in (2, 4, 10)]
        biases = [torch.randn(2 * v) for v in (2, 4, 10)]
        outs, expected = run_heads(x, weights, biases, (2, 4, 10), 2, True, offset=4)
        for out, want in zip(outs, expected):
            assert_close(out[:, 4:74], want, reduction_length=24)
            assert out[:, :4].isnan().all() and out[:, 74:].isnan().all()
        assert len(timings) == 4
        (chosen,) = common.chosen_configs(heads.anchor_heads_kernel).values()
        assert chosen.kwargs["BLOCK_N"] == 16
    finally:
        common.reset_autotuning()
