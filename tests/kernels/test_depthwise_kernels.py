"""Depthwise 3x3 and fused conv_dw kernels against a float64 reference (lesson 02)."""

import functools
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given
from hypothesis import strategies as st

from fused import record
from fused.teaching import watch_launches
from fused.kernels.common import needs_int64
from fused.kernels import common, depthwise
from fused.kernels.depthwise import conv_dw_fused, depthwise_conv_bias_act
from fused.tolerance import assert_close, largest_finite
from tests.strategies import (ACTIVATIONS, BATCH, FIXTURE_OK, MEMORY_FORMAT, NONFINITE, SLOPE, SPATIAL, STRIDE,
                              kernel_dtypes, layout, plant)

#: 1 (ArcFace stem), 3 (RGB), 8 (mobile0.25's first block), 13 (not a multiple of anything),
#: 64 and, with small maps to keep the interpreter quick, 256 (the widest RetinaFace block).
DW_CHANNELS = st.sampled_from([1, 3, 8, 13, 64, 256])


def _spatial(channels: int, size: int) -> int:
    """Keep 256-channel cases at most 3x3: the interpreter runs every program one at a time."""
    return min(size, 3) if channels == 256 else size


def _leaky(y: torch.Tensor, slope) -> torch.Tensor:
    """PyTorch's LeakyReLU/PReLU formula, NaN and Inf included (slope 0 turns -inf into NaN)."""
    return torch.where(y > 0, y, y * slope)


def _act(y: torch.Tensor, activation: str, slope) -> torch.Tensor:
    return torch.relu(y) if activation == "relu" else _leaky(y, slope)


def _reference_depthwise(x, weight, bias, stride):
    """float64 depthwise conv of x with weights rounded to x's dtype, before the activation."""
    w = weight.to(x.dtype).double()
    b = None if bias is None else bias.double()
    return F.conv2d(x.double(), w, b, stride=stride, padding=1, groups=x.shape[1])


def _reference_conv_dw(x, dw_weight, dw_bias, pw_weight, pw_bias, stride, dw_slope, dw_activation="leaky_relu"):
    """float64 conv_dw before the last activation; the intermediate rounded to x's dtype like the kernel."""
    mid = _act(_reference_depthwise(x, dw_weight, dw_bias, stride), dw_activation, dw_slope).to(x.dtype).double()
    pw = pw_weight.reshape(pw_weight.shape[0], -1, 1, 1).to(x.dtype).double()
    return F.conv2d(mid, pw, pw_bias.double())


def _make_input(batch, channels, height, width, dtype, device, memory_format, non_contiguous):
    x = torch.randn(batch, channels, height, width, device=device).to(dtype)
    return layout(x, memory_format, non_contiguous)


def _output_slice(batch, channels, oh, ow, dtype, device, memory_format):
    """A [N, channels, OH, OW] channel slice of a larger tensor filled with a sentinel."""
    whole = torch.full((batch, channels + 3, oh, ow), 7.0, dtype=dtype, device=device)
    whole = whole.contiguous(memory_format=memory_format)
    return whole, whole[:, 1 : 1 + channels]


def _check_untouched(whole, channels):
    assert (whole[:, :1] == 7.0).all() and (whole[:, 1 + channels :] == 7.0).all(), "out= wrote outside its slice"


# --------------------------------------------------------------------------------- properties


@FIXTURE_OK
@given(
    channels=DW_CHANNELS, height=SPATIAL, width=SPATIAL, batch=BATCH, stride=STRIDE, dtype=kernel_dtypes(),
    memory_format=MEMORY_FORMAT, non_contiguous=st.booleans(), activation=ACTIVATIONS, slope=SLOPE,
    with_bias=st.booleans(), strided_weight=st.booleans(), into_slice=st.booleans(), specials=NONFINITE,
)
@example(channels=256, height=3, width=2, batch=2, stride=2, dtype=torch.float16,
         memory_format=torch.channels_last, non_contiguous=False, activation="leaky_relu", slope=0.1,
         with_bias=True, strided_weight=False, into_slice=True, specials=())
@example(channels=13, height=7, width=5, batch=1, stride=1, dtype=torch.float32,
         memory_format=torch.contiguous_format, non_contiguous=True, activation="prelu", slope=0.25,
         with_bias=False, strided_weight=True, into_slice=False, specials=(math.nan, math.inf, -math.inf))
@example(channels=8, height=5, width=5, batch=1, stride=1, dtype=torch.float32,
         memory_format=torch.contiguous_format, non_contiguous=False, activation="relu", slope=0.0,
         with_bias=True, strided_weight=False, into_slice=False, specials=(math.nan, math.inf, -math.inf))
def test_depthwise_matches_float64_reference(
    device, channels, height, width, batch, stride, dtype, memory_format, non_contiguous, activation, slope,
    with_bias, strided_weight, into_slice, specials,
):
    height, width = _spatial(channels, height), _spatial(channels, width)
    x = plant(_make_input(batch, channels, height, width, dtype, device, memory_format, non_contiguous), specials)
    if strided_weight:  # a [C, 1, 3, 3] view of a [3, 3, C] tensor: channels are not the outer axis
        weight = torch.randn(3, 3, channels, device=device).permute(2, 0, 1).unsqueeze(1)
    else:
        weight = torch.randn(channels, 1, 3, 3, device=device)
    bias = torch.randn(channels, device=device) if with_bias else None
    if activation == "prelu":
        slope = torch.rand(channels, device=device) - 0.5
    oh, ow = (height - 1) // stride + 1, (width - 1) // stride + 1
    whole, out = (None, None)
    if into_slice:
        whole, out = _output_slice(batch, channels, oh, ow, dtype, device, memory_format)

    actual = depthwise_conv_bias_act(x, weight, bias, stride=stride, activation=activation, slope=slope, out=out)

    before = _reference_depthwise(x, weight, bias, stride)
    if activation == "identity":
        expected = before
    else:
        expected = _act(before, activation, slope.double().reshape(1, -1, 1, 1) if activation == "prelu" else slope)
    # magnitude of the pre-activation sums, not of the output: a ReLU that zeroes a tiny output
    # must not shrink the bound below the error of the sums themselves.
    magnitude = largest_finite(before)
    assert_close(actual, expected, reduction_length=9, magnitude=magnitude, what="depthwise")
    if into_slice:
        assert actual.data_ptr() == out.data_ptr()
        _check_untouched(whole, channels)


@FIXTURE_OK
@given(
    channels=DW_CHANNELS, out_channels=st.sampled_from([1, 8, 16, 24, 64]), height=SPATIAL, width=SPATIAL,
    batch=BATCH, stride=STRIDE, dtype=kernel_dtypes(), memory_format=MEMORY_FORMAT, non_contiguous=st.booleans(),
    dw_slope=SLOPE, pw_slope=SLOPE, flat_pw_weight=st.booleans(), into_slice=st.booleans(),
    activations=st.sampled_from([("leaky_relu",) * 2, ("relu",) * 2, ("relu", "leaky_relu")]), specials=NONFINITE,
)
@example(channels=256, out_channels=64, height=3, width=3, batch=1, stride=1, dtype=torch.float32,
         memory_format=torch.channels_last, non_contiguous=False, dw_slope=0.1, pw_slope=0.1, flat_pw_weight=False,
         into_slice=True, activations=("leaky_relu",) * 2, specials=())
@example(channels=13, out_channels=24, height=6, width=7, batch=2, stride=2, dtype=torch.float16,
         memory_format=torch.contiguous_format, non_contiguous=True, dw_slope=0.0, pw_slope=-0.5,
         flat_pw_weight=True, into_slice=False, activations=("leaky_relu",) * 2, specials=(-math.inf,))
@example(channels=8, out_channels=16, height=5, width=5, batch=1, stride=1, dtype=torch.float32,
         memory_format=torch.contiguous_format, non_contiguous=False, dw_slope=0.0, pw_slope=0.0,
         flat_pw_weight=False, into_slice=False, activations=("relu",) * 2, specials=(math.nan, math.inf, -math.inf))
def test_conv_dw_fused_matches_float64_reference(
    device, channels, out_channels, height, width, batch, stride, dtype, memory_format, non_contiguous,
    dw_slope, pw_slope, flat_pw_weight, into_slice, activations, specials,
):
    height, width = _spatial(channels, height), _spatial(channels, width)
    x = plant(_make_input(batch, channels, height, width, dtype, device, memory_format, non_contiguous), specials)
    dw_weight = torch.randn(channels, 1, 3, 3, device=device) / 3
    dw_bias = torch.randn(channels, device=device)
    pw_shape = (out_channels, channels) if flat_pw_weight else (out_channels, channels, 1, 1)
    pw_weight = torch.randn(pw_shape, device=device) / channels**0.5
    pw_bias = torch.randn(out_channels, device=device)
    oh, ow = (height - 1) // stride + 1, (width - 1) // stride + 1
    whole, out = (None, None)
    if into_slice:
        whole, out = _output_slice(batch, out_channels, oh, ow, dtype, device, memory_format)

    dw_activation, pw_activation = activations
    actual = conv_dw_fused(x, dw_weight, dw_bias, pw_weight, pw_bias, stride=stride, dw_slope=dw_slope,
                           pw_slope=pw_slope, dw_activation=dw_activation, pw_activation=pw_activation, out=out)

    before = _reference_conv_dw(x, dw_weight, dw_bias, pw_weight, pw_bias, stride, dw_slope, dw_activation)
    magnitude = largest_finite(before)
    # reduction_length 9 * C, the honest bound: the fp32 depthwise sums (9 terms) carry their
    # error, and an occasional one-ulp difference when rounding them to x's dtype, into the
    # C-term pointwise dot. The magnitude is that of the pre-activation sums, as above.
    assert_close(actual, _act(before, pw_activation, pw_slope), reduction_length=9 * channels, magnitude=magnitude,
                 what="conv_dw_fused")
    if into_slice:
        assert actual.data_ptr() == out.data_ptr()
        _check_untouched(whole, out_channels)


def test_fused_tf32_precision(device):
    x = torch.randn(1, 24, 5, 6, device=device)
    args = (torch.randn(24, 1, 3, 3, device=device), torch.randn(24, device=device),
            torch.randn(32, 24, 1, 1, device=device) / 5, torch.randn(32, device=device))
    actual = conv_dw_fused(x, *args, precision="tf32")
    expected = _leaky(_reference_conv_dw(x, *args, 1, 0.1), 0.1)
    assert_close(actual, expected, dtype="tf32", reduction_length=9 * 24, what="conv_dw_fused tf32")


@pytest.mark.parametrize("dtype, precision", [(torch.float16, "ieee"), (torch.float32, "ieee"),
                                              (torch.float32, "tf32")])
@pytest.mark.parametrize("memory_format", [torch.channels_last, torch.contiguous_format])
def test_conv_dw_fused_in_the_gpu_plans_output_channel_tiles(device, monkeypatch, dtype, precision, memory_format):
    """A small map with K = 200 gets two 128-wide output-channel tiles on a GPU (too few programs
    for one 256-wide tile), so each pixel's depthwise step runs in two programs: the same result,
    the second tile's 72 columns masked, NaN and Inf where float64 puts them."""
    plan = functools.partial(depthwise.conv_dw_fused_plan, interpreter=False)
    monkeypatch.setattr(depthwise, "conv_dw_fused_plan", plan)
    x = plant(torch.randn(2, 24, 5, 6, device=device).to(dtype).contiguous(memory_format=memory_format),
              (math.nan, math.inf, -math.inf))
    args = (torch.randn(24, 1, 3, 3, device=device) / 3, torch.randn(24, device=device),
            torch.randn(200, 24, 1, 1, device=device) / 5, torch.randn(200, device=device))
    channels_last = memory_format == torch.channels_last
    chosen = plan(2, 24, 5, 6, 200, dtype=dtype, precision=precision, channels_last=channels_last)
    assert chosen.grid[1] == 2 and chosen.blocks["BLOCK_N"] == 128 and chosen.num_warps == (4 if channels_last else 8)
    with watch_launches(depthwise, "conv_dw_fused_kernel") as launches:
        actual = conv_dw_fused(x, *args, precision=precision)
    assert launches == [(chosen.grid, chosen.blocks)]
    before = _reference_conv_dw(x, *args, 1, 0.1)
    assert_close(actual, _leaky(before, 0.1), dtype="tf32" if precision == "tf32" else None,
                 reduction_length=9 * 24, magnitude=largest_finite(before), what="conv_dw_fused in two N tiles")


def test_output_keeps_memory_format(device):
    x = torch.randn(1, 8, 5, 5, device=device)
    w, b = torch.randn(8, 1, 3, 3, device=device), torch.randn(8, device=device)
    pw, pb = torch.randn(16, 8, 1, 1, device=device), torch.randn(16, device=device)
    last = x.contiguous(memory_format=torch.channels_last)
    assert depthwise_conv_bias_act(last, w, b).is_contiguous(memory_format=torch.channels_last)
    assert conv_dw_fused(last, w, b, pw, pb).is_contiguous(memory_format=torch.channels_last)
    assert depthwise_conv_bias_act(x, w, b).is_contiguous()
    assert conv_dw_fused(x[..., ::2], w, b, pw, pb).is_contiguous()


# -------------------------------------------------------------- the checks are able to fail


@pytest.mark.parametrize("kernel", ["depthwise", "fused"])
def test_wrong_padding_is_caught(device, kernel, monkeypatch):
    """An off-by-one padding (taps shifted by one pixel) must fail the tolerance policy."""
    x = torch.randn(1, 8, 6, 6, device=device)
    w, b = torch.randn(8, 1, 3, 3, device=device), torch.randn(8, device=device)
    pw, pb = torch.randn(16, 8, 1, 1, device=device), torch.randn(16, device=device)
    if kernel == "depthwise":
        run = lambda: depthwise_conv_bias_act(x, w, b)  # noqa: E731
        expected, length = _reference_depthwise(x, w, b, 1), 9
    else:
        run = lambda: conv_dw_fused(x, w, b, pw, pb)  # noqa: E731
        expected, length = _leaky(_reference_conv_dw(x, w, b, pw, pb, 1, 0.1), 0.1), 9 * 8
    assert_close(run(), expected, reduction_length=length)
    monkeypatch.setattr(depthwise, "PADDING", 0)
    with pytest.raises(AssertionError, match="out of tolerance"):
        assert_close(run(), expected, reduction_length=length)


def test_triton_kernels_really_ran(device):
    x = torch.randn(1, 8, 4, 4, device=device)
    w, b = torch.randn(8, 1, 3, 3, device=device), torch.randn(8, device=device)
    pw, pb = torch.randn(16, 8, device=device), torch.randn(16, device=device)
    with record.recording() as rec:
        depthwise_conv_bias_act(x, w, b, activation="relu")
        conv_dw_fused(x, w, b, pw, pb)
    assert {"depthwise_conv_bias_act", "conv_dw_fused"} <= rec.kernels()


def test_empty_batch_launches_nothing(device):
    x = torch.randn(0, 8, 5, 5, device=device)
    w, b = torch.randn(8, 1, 3, 3, device=device), torch.randn(8, device=device)
    pw, pb = torch.randn(16, 8, device=device), torch.randn(16, device=device)
    with record.recording() as rec:
        assert depthwise_conv_bias_act(x, w, b, stride=2).shape == (0, 8, 3, 3)
        assert conv_dw_fused(x, w, b, pw, pb).shape == (0, 16, 5, 5)
    assert rec.kernels() == set()


@pytest.mark.parametrize("stride", [1, 2])
def test_int64_offsets_give_the_same_result(device, stride, monkeypatch):
    """The int64 path (used for tensors past 2**31 elements) computes exactly what int32 does."""
    x = torch.randn(2, 13, 7, 6, device=device).contiguous(memory_format=torch.channels_last)
    w, b = torch.randn(13, 1, 3, 3, device=device), torch.randn(13, device=device)
    pw, pb = torch.randn(24, 13, device=device), torch.randn(24, device=device)
    dw32 = depthwise_conv_bias_act(x, w, b, stride=stride, activation="leaky_relu", slope=0.1)
    fused32 = conv_dw_fused(x, w, b, pw, pb, stride=stride)
    monkeypatch.setattr(common, "FORCE_INT64", True)
    assert torch.equal(depthwise_conv_bias_act(x, w, b, stride=stride, activation="leaky_relu", slope=0.1), dw32)
    assert torch.equal(conv_dw_fused(x, w, b, pw, pb, stride=stride), fused32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_zero_tiles_from_tl_dot_change_no_bit(device, dtype, monkeypatch):
    """The MMA-layout zero tiles (sums and accumulator) give exactly what tl.zeros gives, NaN and
    Inf included, for one channel block (BLOCK_N == BLOCK_C == 16) and several."""
    for channels, out_channels in ((8, 16), (40, 64)):
        x = torch.randn(2, channels, 7, 6, device=device).to(dtype).contiguous(memory_format=torch.channels_last)
        x[0, 1, 2, 3], x[1, 0, 4, 4], x[1, 2, 0, 0] = float("nan"), float("inf"), float("-inf")
        w, b = torch.randn(channels, 1, 3, 3, device=device), torch.randn(channels, device=device)
        pw, pb = torch.randn(out_channels, channels, device=device), torch.randn(out_channels, device=device)
        with record.recording() as rec:
            as_built = conv_dw_fused(x, w, b, pw, pb, stride=1)
        assert rec.kernels() == {"conv_dw_fused"}
        for sums, acc in ((False, True), (True, False), (False, False)):
            monkeypatch.setattr(depthwise, "MMA_LAYOUT_SUMS", sums)
            monkeypatch.setattr(depthwise, "MMA_LAYOUT_ACC", acc)
            other = conv_dw_fused(x, w, b, pw, pb, stride=1)
            assert torch.equal(other.isnan(), as_built.isnan())
            assert torch.equal(other.masked_fill(other.isnan(), 0), as_built.masked_fill(as_built.isnan(), 0)), \
                (channels, sums, acc)
        assert as_built.isnan().any() and not as_built.isnan().all()
        monkeypatch.undo()


# ---------------------------------------------------------------------------------- bad input


def _good_args(device, dtype=torch.float32):
    x = torch.randn(1, 8, 5, 5, device=device).to(dtype)
    return x, torch.randn(8, 1, 3, 3, device=device), torch.randn(8, device=device), \
        torch.randn(16, 8, 1, 1, device=device), torch.randn(16, device=device)


@pytest.mark.parametrize(
    "change, error, match",
    [
        (dict(x=lambda x: x[0]), ValueError, r"4-D \[N, C, H, W\].*rank 3"),
        (dict(x=lambda x: x.double()), TypeError, "unsupported dtype torch.float64"),
        (dict(x=lambda x: x.to(torch.int32)), TypeError, "unsupported dtype torch.int32"),
        (dict(w=lambda w: w[:5]), ValueError, r"weight must have shape \[8, 1, 3, 3\], got \[5, 1, 3, 3\]"),
        (dict(w=lambda w: w[..., :2]), ValueError, r"weight must have shape \[8, 1, 3, 3\], got \[8, 1, 3, 2\]"),
        (dict(w=lambda w: w.to(torch.int64)), TypeError, "weight must be a floating-point tensor"),
        (dict(b=lambda b: b[:3]), ValueError, r"bias must have shape \[8\], got \[3\]"),
        (dict(stride=3), ValueError, "stride must be 1 or 2, got 3"),
        (dict(stride=1.0), ValueError, "stride must be 1 or 2"),
    ],
)
@pytest.mark.parametrize("kernel", ["depthwise", "fused"])
def test_bad_input_is_rejected(device, kernel, change, error, match):
    x, w, b, pw, pb = _good_args(device)
    x = change.get("x", lambda t: t)(x)
    w = change.get("w", lambda t: t)(w)
    b = change.get("b", lambda t: t)(b)
    stride = change.get("stride", 1)
    with pytest.raises(error, match=match):
        if kernel == "depthwise":
            depthwise_conv_bias_act(x, w, b, stride=stride)
        else:
            conv_dw_fused(x, w, b, pw, pb, stride=stride)


def test_bad_fused_arguments_are_rejected(device):
    x, w, b, pw, pb = _good_args(device)
    wrong_channels = r"pw_weight must have shape \[16, 8, 1, 1\] or \[16, 8\], got \[16, 5, 1, 1\]"
    with pytest.raises(ValueError, match=wrong_channels):
        conv_dw_fused(x, w, b, pw[:, :5], pb)
    wrong_rank = r"pw_weight must be \[K, C, 1, 1\] or \[K, C\] with C = 8, got \[16, 8, 1\]"
    with pytest.raises(ValueError, match=wrong_rank):
        conv_dw_fused(x, w, b, pw[..., 0], pb)
    with pytest.raises(ValueError, match=r"pw_bias must have shape \[16\], got \[8\]"):
        conv_dw_fused(x, w, b, pw, pb[:8])
    with pytest.raises(ValueError, match="precision must be 'ieee' or 'tf32', got 'tf64'"):
        conv_dw_fused(x, w, b, pw, pb, precision="tf64")
    with pytest.raises(ValueError, match=r"out must have shape \[1, 16, 5, 5\]"):
        conv_dw_fused(x, w, b, pw, pb, out=torch.empty(1, 8, 5, 5, device=device))
    with pytest.raises(TypeError, match="out must have x's dtype torch.float32, got torch.float16"):
        depthwise_conv_bias_act(x, w, b, out=torch.empty(1, 8, 5, 5, device=device, dtype=torch.float16))
    with pytest.raises(ValueError, match="unknown activation 'gelu'"):
        depthwise_conv_bias_act(x, w, b, activation="gelu")
    with pytest.raises(ValueError, match="pw_activation must be one of .* got 'prelu'"):
        conv_dw_fused(x, w, b, pw, pb, pw_activation="prelu")


# ------------------------------------------------------------------------------- GPU only


@pytest.mark.gpu
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("stride", [1, 2])
def test_bfloat16_on_gpu(memory_format, stride):
    x = torch.randn(2, 40, 17, 15, device="cuda").to(torch.bfloat16).contiguous(memory_format=memory_format)
    w, b = torch.randn(40, 1, 3, 3, device="cuda") / 3, torch.randn(40, device="cuda")
    pw, pb = torch.randn(72, 40, device="cuda") / 40**0.5, torch.randn(72, device="cuda")
    before = _reference_depthwise(x, w, b, stride)
    assert_close(depthwise_conv_bias_act(x, w, b, stride=stride, activation="leaky_relu", slope=0.1),
                 _leaky(before, 0.1), reduction_length=9, magnitude=float(before.abs().max()))
    before = _reference_conv_dw(x, w, b, pw, pb, stride, 0.1)
    assert_close(conv_dw_fused(x, w, b, pw, pb, stride=stride), _leaky(before, 0.1),
                 reduction_length=9 * 40, magnitude=float(before.abs().max()))


def _bottom_right(x, out, kernel_reference, size=4):
    """Compare the last ``size`` x ``size`` outputs (stride 1) with a reference run on a crop.

    The crop holds the last ``size + 1`` rows and columns; its first output row and column see
    the crop's own zero padding, so only the last ``size`` are compared.
    """
    crop = x[..., -(size + 1):, -(size + 1):]
    expected, length = kernel_reference(crop)
    actual = out[..., -size:, -size:]
    assert_close(actual, expected[..., 1:, 1:], reduction_length=length,
                 magnitude=float(expected.abs().max()))


@pytest.mark.gpu
def test_depthwise_past_2_31_elements_on_gpu():
    """x and out hold 2**31 + 2**20 elements: the last pixels need 64-bit offsets."""
    x = torch.randn(1, 2, 32768, 32784, device="cuda", dtype=torch.float16)
    w = torch.randn(2, 1, 3, 3, device="cuda")
    assert needs_int64(x)
    out = depthwise_conv_bias_act(x, w)
    _bottom_right(x, out, lambda crop: (_reference_depthwise(crop, w, None, 1), 9))


@pytest.mark.gpu
def test_conv_dw_fused_past_2_31_elements_on_gpu():
    """x has 16 channels of 11586 x 11586 (just past 2**31 elements); out as many."""
    x = torch.randn(1, 16, 11586, 11586, device="cuda", dtype=torch.float16)
    w, b = torch.randn(16, 1, 3, 3, device="cuda") / 3, torch.randn(16, device="cuda")
    pw, pb = torch.randn(16, 16, device="cuda") / 4, torch.randn(16, device="cuda")
    assert needs_int64(x)
    out = conv_dw_fused(x, w, b, pw, pb)
    _bottom_right(x, out, lambda crop: (_leaky(_reference_conv_dw(crop, w, b, pw, pb, 1, 0.1), 0.1), 9 * 16))
