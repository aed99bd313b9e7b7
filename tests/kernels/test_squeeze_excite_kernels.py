"""Squeeze-excite kernels (lesson 03) against float64 references.

Every check goes through ``fused.tolerance.assert_close``. Inputs to the squeeze have a nonzero
mean, like real feature maps: the policy scales its bound by the largest reference value, and the
mean of a zero-mean map can be far smaller than the terms summed to get it.
"""

import functools
import math
import re

import pytest
import torch
import triton
import triton.language as tl
from hypothesis import example, given
from hypothesis import strategies as st

from fused import record
from fused.teaching import watch_launches
from fused.kernels import squeeze_excite as se
from fused.tolerance import assert_close
from reference.squeeze_excite import SEBlock
from tests.strategies import (BATCH, CHANNELS, FIXTURE_OK, MEMORY_FORMAT, NONFINITE, SLOPE, SPATIAL, kernel_dtypes,
                              layout, plant)

SEEDS = st.integers(min_value=0, max_value=2**16)
REDUCTIONS = st.sampled_from([1, 2, 4, 16])  # hidden = max(C // r, 1)
SE_ACTIVATIONS = st.sampled_from(["identity", "relu", "leaky_relu", "prelu_shared", "prelu_channel"])
RESIDUAL_FORMATS = st.sampled_from([None, torch.contiguous_format, torch.channels_last, "strided"])
KERNELS = {"se_squeeze_partial", "se_excite", "se_scale_residual_act"}


def randn(shape, seed, dtype=torch.float32, device="cpu", mean=0.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) + mean).to(device=device, dtype=dtype)


def make_x(shape, seed, dtype, device, memory_format, non_contiguous, mean=1.0):
    return layout(randn(shape, seed, dtype, device, mean), memory_format, non_contiguous)


def make_params(channels, hidden, seed, dtype, device, shared_prelu=True):
    """fc1 [Cr, C], fc1 bias, PReLU slope(s), fc2 [C, Cr], fc2 bias, scaled like nn.Linear's init."""
    return (
        randn((hidden, channels), seed + 1, dtype, device) / channels**0.5,
        randn((hidden,), seed + 2, dtype, device) * 0.1,
        randn((1 if shared_prelu else hidden,), seed + 3, dtype, device) * 0.25,
        randn((channels, hidden), seed + 4, dtype, device) / hidden**0.5,
        randn((channels,), seed + 5, dtype, device) * 0.1,
    )


def excite64(pooled, fc1_w, fc1_b, prelu_w, fc2_w, fc2_b):
    """The excite MLP in float64 from the same (rounded) parameters."""
    z = pooled.double() @ fc1_w.double().T + fc1_b.double()
    z = torch.where(z > 0, z, z * prelu_w.double())  # PyTorch's PReLU formula
    return torch.sigmoid(z @ fc2_w.double().T + fc2_b.double())


def activation_args(kind, slope, channels, device):
    """(activation, slope) for the launcher, and the float64 slope the reference multiplies by."""
    if kind == "prelu_shared":
        slopes = torch.tensor([slope], device=device)
        return "prelu", slopes, slopes.double()
    if kind == "prelu_channel":
        slopes = slope + 0.1 * torch.arange(channels, device=device) / channels
        return "prelu", slopes, slopes.double().view(1, channels, 1, 1)
    return kind, slope, slope


def activate64(v, activation, slope64):
    if activation == "identity":
        return v
    if activation == "relu":
        return torch.relu(v)
    return torch.where(v > 0, v, v * slope64)  # PyTorch's LeakyReLU/PReLU formula, NaN and Inf included


# ----------------------------------------------------------------------------------- squeeze


@FIXTURE_OK
@given(batch=BATCH, channels=CHANNELS, height=SPATIAL, width=st.integers(1, 17), dtype=kernel_dtypes(),
       memory_format=MEMORY_FORMAT, non_contiguous=st.booleans(), seed=SEEDS, specials=NONFINITE)
def test_squeeze_is_mean_over_map(device, batch, channels, height, width, dtype, memory_format, non_contiguous,
                                  seed, specials):
    x = plant(make_x((batch, channels, height, width), seed, dtype, device, memory_format, non_contiguous), specials)
    pooled = se.se_squeeze(x)
    assert pooled.dtype == torch.float32
    assert_close(pooled, x.double().mean(dim=(2, 3)), reduction_length=height * width, what="se_squeeze")


@FIXTURE_OK
@given(batch=st.sampled_from([1, 2]), channels=st.sampled_from([3, 5, 13]), height=st.integers(30, 40),
       width=st.integers(30, 40), dtype=kernel_dtypes(), memory_format=MEMORY_FORMAT,
       non_contiguous=st.booleans(), seed=SEEDS, specials=NONFINITE)
def test_squeeze_split_over_programs(device, batch, channels, height, width, dtype, memory_format,
                                     non_contiguous, seed, specials):
    """A large map for few samples is split across programs; the partials must add up exactly once."""
    assert se.se_squeeze_plan(batch, channels, height, width).splits > 1  # several splits
    x = plant(make_x((batch, channels, height, width), seed, dtype, device, memory_format, non_contiguous),
              specials, seed)
    with record.recording() as rec:
        pooled = se.se_squeeze(x)
    assert {"se_squeeze_partial", "se_squeeze_finish"} <= rec.kernels()
    assert_close(pooled, x.double().mean(dim=(2, 3)), reduction_length=height * width, what="se_squeeze")


@triton.jit
def _squeeze_skips_last_tile(
    x_ptr, partial_ptr, batch, channels, height, width, stride_xn, stride_xc, stride_xh, stride_xw,
    positions_per_split, inv_positions,
    BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr, USE_INT64: tl.constexpr,
):
    """se_squeeze_partial_kernel with a classic bug: the loop ends at floor(H*W / BLOCK_HW) tiles."""
    channel_blocks = tl.cdiv(channels, BLOCK_C)
    n = tl.program_id(0) // channel_blocks
    c = (tl.program_id(0) % channel_blocks) * BLOCK_C + tl.arange(0, BLOCK_C)
    positions = height * width
    first = tl.program_id(1) * positions_per_split
    acc = tl.zeros([BLOCK_C, BLOCK_HW], dtype=tl.float32)
    whole_tiles = positions // BLOCK_HW * BLOCK_HW  # BUG: should be tl.cdiv(positions, BLOCK_HW) * BLOCK_HW
    for start in range(first, tl.minimum(first + positions_per_split, whole_tiles), BLOCK_HW):
        hw = start + tl.arange(0, BLOCK_HW)
        mask = (c < channels)[:, None] & (hw < positions)[None, :]
        offsets = se._tile_offsets(n, c, hw // width, hw % width, stride_xn, stride_xc, stride_xh, stride_xw)
        acc += tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    partial = tl.sum(acc, axis=1) * inv_positions
    tl.store(partial_ptr + (tl.program_id(1) * batch + n) * channels + c, partial, mask=c < channels)


def test_wrong_squeeze_kernel_is_caught(device, monkeypatch):
    x = make_x((2, 3, 33, 33), seed=7, dtype=torch.float32, device=device,
               memory_format=torch.contiguous_format, non_contiguous=False)
    expected = x.double().mean(dim=(2, 3))
    assert_close(se.se_squeeze(x), expected, reduction_length=33 * 33)
    monkeypatch.setattr(se, "se_squeeze_partial_kernel", _squeeze_skips_last_tile)
    with pytest.raises(AssertionError, match="out of tolerance"):
        assert_close(se.se_squeeze(x), expected, reduction_length=33 * 33)


# ----------------------------------------------------------------------------------- excite


@FIXTURE_OK
@given(batch=BATCH, channels=CHANNELS, reduction=REDUCTIONS, dtype=kernel_dtypes(),
       shared_prelu=st.booleans(), transposed=st.booleans(), seed=SEEDS, specials=NONFINITE)
@example(batch=1, channels=13, reduction=4, dtype=torch.float32, shared_prelu=True, transposed=False, seed=0,
         specials=(math.inf,))  # 3 hidden units padded to 4: the padding must stay 0, not 0 * Inf
def test_excite_matches_float64_mlp(device, batch, channels, reduction, dtype, shared_prelu, transposed,
                                    seed, specials):
    hidden = max(channels // reduction, 1)
    params = make_params(channels, hidden, seed, dtype, device, shared_prelu)
    if transposed:  # same values, column-major weights: the kernel reads strides
        params = tuple(p.T.contiguous().T if p.dim() == 2 else p for p in params)
    pooled = plant(randn((batch, channels), seed, torch.float32, device), specials, seed)
    gate = se.se_excite(pooled, *params)
    assert gate.dtype == torch.float32
    assert_close(gate, excite64(pooled, *params), reduction_length=channels + hidden, what="se_excite")


def gpu_excite_plan(monkeypatch):
    """Make the excite launch the GPU's plan (several programs per sample on small batches) here too."""
    monkeypatch.setattr(se, "se_excite_plan", functools.partial(se.se_excite_plan, interpreter=False))


@FIXTURE_OK
@given(batch=st.sampled_from([1, 2, 3]), channels=CHANNELS, reduction=REDUCTIONS, dtype=kernel_dtypes(),
       shared_prelu=st.booleans(), seed=SEEDS, specials=NONFINITE)
@example(batch=2, channels=37, reduction=4, dtype=torch.float32, shared_prelu=False, seed=0,
         specials=(math.inf,))  # 10 spans of 4 channels (the last one 1), hidden 9 padded to 16
def test_excite_split_over_channel_spans(device, monkeypatch, batch, channels, reduction, dtype, shared_prelu,
                                         seed, specials):
    """The GPU plan cuts a small batch's channels into spans, one program each, every one recomputing
    its sample's hidden layer: the gates match float64 (NaN and Inf where it puts them), every
    channel is written once, and a second run gives the same bits."""
    hidden = max(channels // reduction, 1)
    params = make_params(channels, hidden, seed, dtype, device, shared_prelu)
    pooled = plant(randn((batch, channels), seed, torch.float32, device), specials, seed)
    plan = se.se_excite_plan(batch, channels, hidden, interpreter=False)
    assert plan.grid[0] == batch and (plan.grid[1] > 1 or channels == 1) and plan.grid[1] <= se.MAX_EXCITE_SPANS
    with monkeypatch.context() as patch:
        gpu_excite_plan(patch)
        with watch_launches(se, "se_excite_kernel") as launches:
            gate = se.se_excite(pooled, *params)
        again = se.se_excite(pooled, *params)
    assert launches == [(plan.grid, plan.blocks)]
    assert torch.equal(gate.isnan(), again.isnan()) and torch.equal(gate.nan_to_num(), again.nan_to_num())
    assert_close(gate, excite64(pooled, *params), reduction_length=channels + hidden, what="se_excite in spans")


# ----------------------------------------------------------------------------------- scale


@FIXTURE_OK
@given(batch=BATCH, channels=CHANNELS, height=SPATIAL, width=SPATIAL, dtype=kernel_dtypes(),
       memory_format=MEMORY_FORMAT, non_contiguous=st.booleans(), residual_format=RESIDUAL_FORMATS,
       activation=SE_ACTIVATIONS, slope=SLOPE, given_out=st.booleans(), seed=SEEDS, specials=NONFINITE)
def test_scale_residual_act(device, batch, channels, height, width, dtype, memory_format, non_contiguous,
                            residual_format, activation, slope, given_out, seed, specials):
    shape = (batch, channels, height, width)
    y = plant(make_x(shape, seed, dtype, device, memory_format, non_contiguous, mean=0.0), specials[:1], seed)
    scale = torch.rand((batch, channels), generator=torch.Generator().manual_seed(seed)).to(device)
    plant(scale, specials[1:2], seed)  # a gate of 0 times an Inf is NaN, as in PyTorch
    residual = None
    expected = y.double() * scale.double()[:, :, None, None]
    if residual_format is not None:
        strided = residual_format == "strided"
        residual_memory_format = torch.contiguous_format if strided else residual_format
        residual = make_x(shape, seed + 1, dtype, device, residual_memory_format, strided, mean=0.0)
        plant(residual, specials[2:], seed + 1)
        expected = expected + residual.double()
    activation, slope, slope64 = activation_args(activation, slope, channels, device)
    out = torch.empty(shape, dtype=dtype, device=device) if given_out else None

    result = se.se_scale_residual_act(y, scale, residual, activation=activation, slope=slope, out=out)
    if given_out:
        assert result is out
    elif y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous():
        assert result.is_contiguous(memory_format=torch.channels_last)
    assert result.dtype == dtype
    assert_close(result, activate64(expected, activation, slope64), reduction_length=1,
                 what="se_scale_residual_act")


# ----------------------------------------------------------------------------------- whole block


def seblock64(channels, reduction, params):
    """The reference SEBlock in float64 holding the same (rounded) parameters."""
    block = SEBlock(channels, reduction).double()
    fc1, prelu, fc2 = block.fc[0], block.fc[1], block.fc[2]
    with torch.no_grad():
        for p, value in zip((fc1.weight, fc1.bias, prelu.weight, fc2.weight, fc2.bias), params):
            p.copy_(value.double())
    return block


@FIXTURE_OK
@given(batch=BATCH, channels=CHANNELS, reduction=REDUCTIONS, height=SPATIAL, width=SPATIAL,
       dtype=kernel_dtypes(), memory_format=MEMORY_FORMAT, non_contiguous=st.booleans(), seed=SEEDS,
       specials=NONFINITE)
def test_squeeze_excite_matches_seblock(device, batch, channels, reduction, height, width, dtype,
                                        memory_format, non_contiguous, seed, specials):
    reduction = min(reduction, channels)  # SEBlock needs hidden = C // r >= 1
    hidden = channels // reduction
    params = make_params(channels, hidden, seed, dtype, device)
    x = plant(make_x((batch, channels, height, width), seed, dtype, device, memory_format, non_contiguous),
              specials, seed)
    out = se.squeeze_excite(x, *params)
    assert out.dtype == dtype
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        assert out.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = seblock64(channels, reduction, params).cpu()(x.double().cpu())
    assert_close(out, expected, reduction_length=height * width + channels + hidden, what="squeeze_excite")


@pytest.mark.parametrize("batch, channels, size", [(2, 64, 16), (1, 512, 7)])
def test_squeeze_excite_real_widths(device, batch, channels, size):
    hidden = channels // 16
    params = make_params(channels, hidden, 3, torch.float32, device)
    x = make_x((batch, channels, size, size), 5, torch.float32, device, torch.channels_last, False)
    with torch.no_grad():
        expected = seblock64(channels, 16, params).cpu()(x.double().cpu())
    assert_close(se.squeeze_excite(x, *params), expected, reduction_length=size * size + channels + hidden)


def test_triton_kernels_ran(device):
    """A split map takes three launches, not four: the excite kernel sums the squeeze's partials."""
    params = make_params(3, 1, 0, torch.float32, device)
    x = make_x((1, 3, 33, 33), 0, torch.float32, device, torch.contiguous_format, False)
    assert se.se_squeeze_plan(1, 3, 33, 33).splits > 1
    with record.recording() as rec:
        se.squeeze_excite(x, *params)
    assert rec.kernel_counts() == {name: 1 for name in KERNELS}


@FIXTURE_OK
@given(batch=st.sampled_from([1, 2]), channels=st.sampled_from([3, 16, 40]), size=st.sampled_from([(5, 4), (33, 35)]),
       dtype=kernel_dtypes(), memory_format=MEMORY_FORMAT, gpu_plan=st.booleans(), seed=SEEDS, specials=NONFINITE)
def test_squeeze_excite_in_two_launches_is_bitwise_the_three_launch_gate(device, monkeypatch, batch, channels, size,
                                                                         dtype, memory_format, gpu_plan, seed,
                                                                         specials):
    """se_squeeze_excite sums the split partial means in se_squeeze_finish's order: the same bits
    (NaN and Inf included) with one launch fewer on a split map, with the excite's channels in
    one program per sample or in the GPU plan's spans."""
    params = make_params(channels, max(channels // 16, 1), seed, dtype, device)
    x = plant(make_x((batch, channels, *size), seed, dtype, device, memory_format, False), specials, seed)
    with monkeypatch.context() as patch:
        if gpu_plan:
            gpu_excite_plan(patch)
        with record.recording() as rec:
            gate = se.se_squeeze_excite(x, *params)
        assert rec.kernel_counts() == {"se_squeeze_partial": 1, "se_excite": 1}
        expected = se.se_excite(se.se_squeeze(x), *params)
    assert gate.dtype == torch.float32 and torch.equal(gate.isnan(), expected.isnan())
    assert torch.equal(gate.nan_to_num(), expected.nan_to_num())


def test_empty_batch_launches_nothing(device):
    params = make_params(8, 2, 0, torch.float16, device)
    x = torch.empty(0, 8, 5, 5, dtype=torch.float16, device=device)
    with record.recording() as rec:
        assert se.se_squeeze(x).shape == (0, 8)
        assert se.se_excite(torch.empty(0, 8, device=device), *params).shape == (0, 8)
        out = se.squeeze_excite(x, *params)
    assert out.shape == x.shape and out.dtype == torch.float16
    assert rec.kernels() == set()


def test_forced_int64_offsets_give_same_result(device, monkeypatch):
    params = make_params(13, 3, 1, torch.float16, device, shared_prelu=False)
    x = make_x((2, 13, 9, 11), 1, torch.float16, device, torch.channels_last, False)
    residual = make_x((2, 13, 9, 11), 2, torch.float16, device, torch.contiguous_format, True)
    slopes = torch.linspace(-0.5, 0.5, 13, device=device)

    def run():
        gate = se.se_excite(se.se_squeeze(x), *params)
        return gate, se.se_scale_residual_act(x, gate, residual, activation="prelu", slope=slopes)

    narrow = run()
    monkeypatch.setattr(se, "needs_int64", lambda *tensors: True)
    wide = run()
    for a, b in zip(narrow, wide):
        assert torch.equal(a, b)


# ----------------------------------------------------------------------------------- bad input


def test_bad_inputs_are_rejected(device):
    x = torch.randn(2, 8, 4, 4, device=device)
    params = make_params(8, 2, 0, torch.float32, device)
    pooled = torch.randn(2, 8, device=device)
    with pytest.raises(ValueError, match=r"x must be 4-D \[N, C, H, W\], got shape \(8, 4, 4\)"):
        se.se_squeeze(x[0])
    with pytest.raises(TypeError, match="unsupported dtype torch.float64"):
        se.se_squeeze(x.double())
    with pytest.raises(TypeError, match="unsupported dtype torch.int32"):
        se.squeeze_excite(x.int(), *params)
    with pytest.raises(ValueError, match=r"pooled must be 2-D \[N, C\]"):
        se.se_excite(x, *params)
    wrong = {  # parameter: (bad value, expected shape, actual shape)
        "fc1_weight": (params[0][:, :-1], "(2, 8)", "(2, 7)"),
        "fc1_bias": (params[1][:-1], "(2,)", "(1,)"),
        "prelu_weight": (params[2].expand(3), "(1,) or (2,)", "(3,)"),
        "fc2_weight": (params[3][:, :-1], "(8, 2)", "(8, 1)"),
        "fc2_bias": (params[4][:-1], "(8,)", "(7,)"),
    }
    for i, (name, (value, shape, got)) in enumerate(wrong.items()):
        bad = list(params)
        bad[i] = value
        with pytest.raises(ValueError, match=re.escape(f"{name} must have shape {shape}, got {got}")):
            se.se_excite(pooled, *bad)
    with pytest.raises(ValueError, match=re.escape("fc1_weight must have shape (hidden >= 1, 8), got (16,)")):
        se.se_excite(pooled, params[0].reshape(-1), *params[1:])
    with pytest.raises(TypeError, match="fc2_bias must be a floating-point tensor, got torch.int64"):
        se.se_excite(pooled, *params[:4], torch.zeros(8, dtype=torch.int64, device=device))
    with pytest.raises(ValueError, match=r"scale must have shape \(2, 8\), got \(8, 2\)"):
        se.se_scale_residual_act(x, pooled.T)
    with pytest.raises(ValueError, match=r"residual must have y's shape \(2, 8, 4, 4\)"):
        se.se_scale_residual_act(x, pooled, x[:1])
    with pytest.raises(ValueError, match="unknown activation 'gelu'"):
        se.se_scale_residual_act(x, pooled, activation="gelu")
    with pytest.raises(ValueError, match="PReLU has 3 slopes, expected 1 or 8"):
        se.se_scale_residual_act(x, pooled, activation="prelu", slope=torch.ones(3))


# ----------------------------------------------------------------------------------- GPU only


@pytest.mark.gpu
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_bfloat16_on_gpu(device, memory_format):
    dtype = torch.bfloat16
    params = make_params(37, 2, 0, dtype, device)
    x = make_x((3, 37, 40, 33), 0, dtype, device, memory_format, False)
    residual = make_x((3, 37, 40, 33), 1, dtype, device, memory_format, False, mean=0.0)
    pooled = se.se_squeeze(x)
    assert_close(pooled, x.double().mean(dim=(2, 3)), reduction_length=40 * 33)
    gate = se.se_excite(pooled, *params)
    assert_close(gate, excite64(pooled, *params), reduction_length=37 + 2)
    slopes = torch.linspace(-0.5, 0.5, 37, device=device)
    out = se.se_scale_residual_act(x, gate, residual, activation="prelu", slope=slopes)
    expected = x.double() * gate.double()[:, :, None, None] + residual.double()
    expected = activate64(expected, "prelu", slopes.double().view(1, 37, 1, 1))
    assert out.dtype == dtype and out.is_contiguous(memory_format=memory_format)
    assert_close(out, expected, reduction_length=1)
    with torch.no_grad():
        block = seblock64(37, 18, params).to(device)
        assert_close(se.squeeze_excite(x, *params), block(x.double()), reduction_length=40 * 33 + 37 + 2)
