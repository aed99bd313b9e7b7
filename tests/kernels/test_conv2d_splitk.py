"""Split-K convolutions: ``conv2d_bias_act`` as a split main loop plus a reduce kernel.

The property tests force the split (``conv2d.FORCE_SPLIT_K``, the documented test switch) so that
the split path runs in the interpreter at small shapes, and compare it with the float64 reference
over the shapes, layouts, dtypes and epilogues of the unsplit tests, NaN and Inf included. Then:
deliberately wrong splits are caught, both kernels really run, an unsplit launch is unchanged,
and the GPU plan splits exactly the launches its rule names.
"""

import importlib.util
import inspect
import math
import sys

import pytest
import torch
import triton
from hypothesis import given
from hypothesis import strategies as st

import fused.record
from fused.kernels import common, conv2d
from fused.kernels.conv2d import conv2d_bias_act
from fused.tolerance import assert_close
from tests.kernels.test_conv2d_kernel import (activations, check, folded_affine, geometries, make_inputs,
                                             output_size, reference)
from tests.spies import LaunchSpy
from tests.strategies import FIXTURE_OK, MEMORY_FORMAT, NONFINITE, kernel_dtypes, layout, plant

SPLITS = st.sampled_from([2, 3, 5, 64])


def splits(g, x) -> int:
    """``SPLIT_K`` of the launch for geometry ``g`` and input ``x`` (1: it does not split)."""
    plan = conv2d.conv2d_plan(g["N"], g["C"], g["H"], g["W"], g["K"], g["R"], g["stride"], g["padding"],
                              channels_last=x.stride(1) == 1, dtype=x.dtype)
    return plan.blocks.get("SPLIT_K", 1)


def launched(rec, g, split) -> None:
    """One conv launch, plus the reduce when the launch splits (none for an empty output)."""
    if g["N"] == 0:
        assert rec.kernel_counts() == {}
        return
    assert rec.kernel_counts() == ({"conv2d_bias_act": 1, "conv2d_splitk_reduce": 1} if split > 1
                                   else {"conv2d_bias_act": 1})


@FIXTURE_OK
@given(g=geometries(), split_k=SPLITS, dtype=kernel_dtypes(), fmt=MEMORY_FORMAT, non_contiguous=st.booleans(),
       with_bias=st.booleans(), specials=NONFINITE, data=st.data())
def test_split_conv_matches_reference(g, split_k, dtype, fmt, non_contiguous, with_bias, specials, data,
                                      monkeypatch, device):
    monkeypatch.setattr(conv2d, "FORCE_SPLIT_K", split_k)
    x, weight, bias = make_inputs(g, dtype, fmt, non_contiguous)
    plant(x, specials)
    bias = bias if with_bias else None
    activation, slope = data.draw(activations(g["K"]))
    relu_from = data.draw(st.one_of(st.none(), st.integers(0, g["K"])), label="relu_from")
    with fused.record.recording() as rec:
        y = conv2d_bias_act(x.to(device), weight.to(device), None if bias is None else bias.to(device),
                            stride=g["stride"], padding=g["padding"], activation=activation, slope=slope,
                            relu_from=relu_from)
    launched(rec, g, splits(g, x))
    expected = reference(x, weight, bias, stride=g["stride"], padding=g["padding"], activation=activation,
                         slope=slope, relu_from=relu_from)
    check(y.cpu(), expected, x, g)


@FIXTURE_OK
@given(g=geometries(), split_k=SPLITS, dtype=kernel_dtypes(), fmt=MEMORY_FORMAT, residual_fmt=MEMORY_FORMAT,
       scaled=st.booleans(), affine=st.booleans(), specials=NONFINITE, data=st.data())
def test_split_conv_epilogue_residual_and_input_affine(g, split_k, dtype, fmt, residual_fmt, scaled, affine,
                                                       specials, data, monkeypatch, device):
    monkeypatch.setattr(conv2d, "FORCE_SPLIT_K", split_k)
    x, weight, bias = make_inputs(g, dtype, fmt)
    gen = torch.Generator().manual_seed(1)
    residual = layout(torch.randn(g["N"], g["K"], *output_size(g), generator=gen).to(dtype), residual_fmt, False)
    plant(x, specials[:1])
    plant(residual, specials[1:], seed=1)
    activation, slope = data.draw(activations(g["K"]))
    kwargs = dict(stride=g["stride"], padding=g["padding"], activation=activation, slope=slope, residual=residual,
                  residual_scale=torch.rand(g["N"], g["K"], generator=gen) if scaled else None)
    launch = dict(kwargs, weight=weight)
    if affine:  # the input affine folded: scale in the weights, shift as the border bias (split 0 adds its border bias)
        kwargs.update(input_scale=torch.rand(g["C"], generator=gen) + 0.5,
                      input_shift=torch.randn(g["C"], generator=gen) + 3.0)
        launch.update(folded_affine(weight, kwargs["input_scale"], kwargs["input_shift"], g["padding"]))
    y = conv2d_bias_act(x.to(device), bias=bias.to(device), **{
        k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in launch.items()})
    check(y.cpu(), reference(x, weight, bias, **kwargs), x, g)


@FIXTURE_OK
@given(g=geometries(), split_k=SPLITS, dtype=kernel_dtypes(), fmt=MEMORY_FORMAT,
       before=st.integers(0, 5), after=st.integers(0, 5))
def test_split_conv_writes_only_its_out_slice(g, split_k, dtype, fmt, before, after, monkeypatch, device):
    """SSH writes its convolutions into channel slices of one buffer (fused/ssh.py): the reduce
    stores with ``out``'s strides, and nothing else."""
    monkeypatch.setattr(conv2d, "FORCE_SPLIT_K", split_k)
    x, weight, bias = make_inputs(g, dtype)
    sentinel = 7.0
    big = torch.full((g["N"], before + g["K"] + after, *output_size(g)), sentinel, dtype=dtype, device=device)
    big = big.contiguous(memory_format=fmt)
    out = big[:, before:before + g["K"]]
    y = conv2d_bias_act(x.to(device), weight.to(device), bias.to(device), stride=g["stride"],
                        padding=g["padding"], activation="relu", relu_from=g["K"] // 2, out=out)
    assert y is out
    expected = reference(x, weight, bias, stride=g["stride"], padding=g["padding"], activation="relu",
                         relu_from=g["K"] // 2)
    assert_close(y.cpu(), expected, reduction_length=g["C"] * g["R"] ** 2)
    untouched = torch.cat([big[:, :before], big[:, before + g["K"]:]], dim=1)
    assert bool((untouched == sentinel).all())


# A fixed split launch: 32 input channels x 9 taps, 16 channels a step, so 18 steps in 3 splits.
G = dict(N=2, C=32, K=24, H=7, W=6, R=3, stride=1, padding=1)


def run(device, **kwargs):
    x, weight, bias = make_inputs(G, torch.float32)
    return conv2d_bias_act(x.to(device), weight.to(device), bias.to(device), padding=1, **kwargs).cpu()


def expected_g():
    x, weight, bias = make_inputs(G, torch.float32)
    return reference(x, weight, bias, stride=1, padding=1)


def test_the_split_launch_runs_both_kernels(monkeypatch, device):
    monkeypatch.setattr(conv2d, "FORCE_SPLIT_K", 3)
    plan = conv2d.conv2d_plan(2, 32, 7, 6, 24, 3, 1, 1, dtype=torch.float32)
    assert plan.blocks["SPLIT_K"] == 3 and plan.blocks["BLOCK_C"] == 16 and plan.grid[2] == 3
    conv, reduce = LaunchSpy(conv2d.conv2d_bias_act_kernel), LaunchSpy(conv2d.conv2d_splitk_reduce_kernel)
    monkeypatch.setattr(conv2d, "conv2d_bias_act_kernel", conv)
    monkeypatch.setattr(conv2d, "conv2d_splitk_reduce_kernel", reduce)
    with fused.record.recording() as rec:
        y = run(device)
    assert rec.kernel_counts() == {"conv2d_bias_act": 1, "conv2d_splitk_reduce": 1}
    assert [(grid, args["SPLIT_K"]) for grid, args in conv.calls] == [(plan.grid, 3)]
    reduce_plan = conv2d.conv2d_reduce_plan(2 * 7 * 6, 24)
    assert [(grid, args["SPLIT_K"]) for grid, args in reduce.calls] == [(reduce_plan.grid, 3)]
    assert tuple(reduce.calls[0][1]["partial_ptr"].shape) == (3, 2 * 7 * 6, 24)
    assert_close(y, expected_g(), reduction_length=32 * 9)


def test_an_unsplit_launch_is_unchanged(monkeypatch, device):
    """``FORCE_SPLIT_K=1`` and the default (the interpreter never splits by itself) launch the one
    kernel with ``SPLIT_K=1``, no reduce, and the same bits; a split result is the same bits on
    every run (the reduce sums in split order, no atomics)."""
    conv = LaunchSpy(conv2d.conv2d_bias_act_kernel)
    monkeypatch.setattr(conv2d, "conv2d_bias_act_kernel", conv)
    with fused.record.recording() as rec:
        default = run(device)
        monkeypatch.setattr(conv2d, "FORCE_SPLIT_K", 1)
        unsplit = run(device)
    assert rec.kernel_counts() == {"conv2d_bias_act": 2}
    assert [args["SPLIT_K"] for _, args in conv.calls] == [1, 1] and all(len(grid) == 2 for grid, _ in conv.calls)
    assert torch.equal(default, unsplit)
    monkeypatch.setattr(conv2d, "FORCE_SPLIT_K", 3)
    first, second = run(device), run(device)
    assert torch.equal(first, second)
    assert_close(first, expected_g(), reduction_length=32 * 9)


def _drop_last_split(args):
    args["SPLIT_K"] -= 1


def test_a_reduce_that_drops_the_last_split_is_caught(monkeypatch, device):
    monkeypatch.setattr(conv2d, "FORCE_SPLIT_K", 3)
    monkeypatch.setattr(conv2d, "conv2d_splitk_reduce_kernel", LaunchSpy(conv2d.conv2d_splitk_reduce_kernel,
                                                                   _drop_last_split))
    with pytest.raises(AssertionError, match="out of tolerance"):
        assert_close(run(device), expected_g(), reduction_length=32 * 9)


def _mutant(tmp_path, name, old, new):
    """The conv kernel with one line of its source changed, as a fresh ``@triton.jit`` kernel (from a
    file, so that Triton can read its source on a GPU too)."""
    source = inspect.getsource(conv2d.conv2d_bias_act_kernel.fn)
    assert old in source
    path = tmp_path / f"{name}.py"
    path.write_text("import triton\nimport triton.language as tl\nfrom fused.kernels.conv2d import *\n"
                    "from fused.kernels.conv2d import conv2d_epilogue\n\n" + source.replace(old, new))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module.conv2d_bias_act_kernel


@pytest.mark.parametrize("new", ["last = tl.minimum(first + per_split - 1, steps)",
                                 "last = tl.minimum(first + per_split + 1, steps)"],
                         ids=["each-split-stops-a-step-early", "each-split-runs-a-step-late"])
def test_a_split_boundary_off_by_one_step_is_caught(new, tmp_path, monkeypatch, device):
    monkeypatch.setattr(conv2d, "FORCE_SPLIT_K", 3)
    run(device)  # the correct kernel passes (checked above); now the mutant
    mutant = _mutant(tmp_path, f"splitk_mutant_{abs(hash(new))}", "last = tl.minimum(first + per_split, steps)", new)
    monkeypatch.setattr(conv2d, "conv2d_bias_act_kernel", mutant)
    try:
        with pytest.raises(AssertionError, match="out of tolerance"):
            assert_close(run(device), expected_g(), reduction_length=32 * 9)
    finally:
        sys.modules.pop(mutant.fn.__module__, None)


def test_infinities_in_different_splits_sum_to_nan(monkeypatch, device):
    """+Inf in the first split's channels and -Inf in the second's: the reference sum is NaN, and so
    is the reduce's; one that dropped the last split would give +Inf."""
    monkeypatch.setattr(conv2d, "FORCE_SPLIT_K", 2)
    g = dict(N=1, C=32, K=4, H=3, W=3, R=1, stride=1, padding=0)  # 2 steps of 16 channels, one per split
    x, weight, bias = make_inputs(g, torch.float32)
    x[0, 0, 1, 1], x[0, 20, 1, 1] = math.inf, math.inf
    weight[:, 0], weight[:, 20] = 1.0, -1.0
    expected = reference(x, weight, bias, stride=1, padding=0)
    assert expected[0, :, 1, 1].isnan().all()
    with fused.record.recording() as rec:
        y = conv2d_bias_act(x.to(device), weight.to(device), bias.to(device)).cpu()
    assert rec.kernel_counts()["conv2d_splitk_reduce"] == 1
    assert_close(y, expected, reduction_length=32)
    monkeypatch.setattr(conv2d, "conv2d_splitk_reduce_kernel", LaunchSpy(conv2d.conv2d_splitk_reduce_kernel,
                                                                   _drop_last_split))
    with pytest.raises(AssertionError, match="NaN/Inf placement differs"):
        assert_close(conv2d_bias_act(x.to(device), weight.to(device), bias.to(device)).cpu(), expected,
                     reduction_length=32)


def test_int64_offsets_in_both_kernels(monkeypatch, device):
    monkeypatch.setattr(conv2d, "FORCE_SPLIT_K", 3)
    monkeypatch.setattr(common, "FORCE_INT64", True)
    conv, reduce = LaunchSpy(conv2d.conv2d_bias_act_kernel), LaunchSpy(conv2d.conv2d_splitk_reduce_kernel)
    monkeypatch.setattr(conv2d, "conv2d_bias_act_kernel", conv)
    monkeypatch.setattr(conv2d, "conv2d_splitk_reduce_kernel", reduce)
    y = run(device, activation="relu")
    assert conv.calls[0][1]["USE_INT64"] and reduce.calls[0][1]["USE_INT64"]
    x, weight, bias = make_inputs(G, torch.float32)
    assert_close(y, reference(x, weight, bias, stride=1, padding=1, activation="relu"), reduction_length=32 * 9)


# --- the GPU plan's rule -------------------------------------------------------------------------

def gpu_plan(N, C, size, K, R=3, **layout):
    return conv2d.conv2d_plan(N, C, size, size, K, R, 1, R // 2, interpreter=False, **layout)


def steps(plan, C, R=3):
    return R * R * triton.cdiv(C, plan.blocks["BLOCK_C"])


@pytest.mark.parametrize("dtype, precision", [(torch.float16, "ieee"), (torch.bfloat16, "ieee"),
                                              (torch.float32, "tf32"), (torch.float32, "ieee")])
def test_the_gpu_plan_splits_launches_below_the_sms(dtype, precision):
    """mobile0.25's ``fpn.merge2`` at batch 1 (3x3, 64 -> 64 at 40x40, 50 programs) and SSH's 20x20
    convs at batch 16 (16 -> 16 channels, 100 programs) fill the SMs with split-K, each split
    keeping SPLIT_K_MIN_STEPS steps; small launches at batch 1 stay one launch."""
    layout = dict(channels_last=True, dtype=dtype, precision=precision)
    merge2 = gpu_plan(1, 64, 40, 64, **layout)
    ssh3 = gpu_plan(16, 16, 20, 16, **layout)
    for plan, C in ((merge2, 64), (ssh3, 16)):
        assert plan.programs >= common.SM_COUNT and plan.grid[2] == plan.blocks["SPLIT_K"]
        assert steps(plan, C) >= plan.blocks["SPLIT_K"] * conv2d.SPLIT_K_MIN_STEPS
    assert merge2.blocks["SPLIT_K"] == 3 and ssh3.blocks["SPLIT_K"] == 2
    for small in (gpu_plan(1, 16, 40, 16, **layout), gpu_plan(1, 16, 20, 16, **layout)):  # 7.4 and 1.8 MFLOP
        assert "SPLIT_K" not in small.blocks and small.programs < common.SM_COUNT
    assert "SPLIT_K" not in gpu_plan(16, 64, 40, 64, **layout).blocks  # enough programs already
    few_steps = gpu_plan(1, 48, 40, 128, R=1, **layout)  # 19.7 MFLOP, but 3 steps even 16 channels a step
    assert "SPLIT_K" not in few_steps.blocks and few_steps.programs < common.SM_COUNT
    assert "SPLIT_K" not in conv2d.conv2d_plan(1, 64, 40, 40, 64, 3, 1, 1, interpreter=True).blocks
    assert conv2d.conv2d_configs(1, 64, 40, 40, 64, 3, 1, 1, channels_last=True, dtype=dtype,
                                 precision=precision) == [merge2]  # split launches launch their plan
    for pixels, K in ((1600, 64), (16 * 400, 16)):
        assert conv2d.conv2d_reduce_plan(pixels, K, interpreter=False).programs >= common.SM_COUNT
