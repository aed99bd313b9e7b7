"""The fused convolution kernel against a float64 reference, for every shape and epilogue it takes.

Each property test draws a geometry (batch, channels, size, kernel, stride, padding), a dtype and
memory layouts, runs ``conv2d_bias_act`` and compares with ``F.conv2d`` in float64 through the
project's one tolerance policy (reduction length ``C * R * R``).
"""

import math

import pytest
import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from hypothesis import given
from hypothesis import strategies as st

import fused
import fused.record
from fused.kernels import common, conv2d
from fused.folding import fold_input_affine
from fused.kernels.conv2d import conv2d_bias_act
from fused.tolerance import assert_close
from tests.spies import LaunchSpy
from tests.strategies import (ACTIVATIONS, BATCH, CHANNELS, FIXTURE_OK, MEMORY_FORMAT, NONFINITE, SLOPE, SPATIAL,
                              STRIDE, kernel_dtypes, layout, plant)



@st.composite
def geometries(draw):
    """Shapes of one convolution; padding is R//2 ("same") or 0 when the input is big enough."""
    R = draw(st.sampled_from([1, 3, 3, 5]))
    H, W = draw(SPATIAL), draw(SPATIAL)
    padding = draw(st.sampled_from([R // 2, 0]))
    if min(H, W) + 2 * padding < R:
        padding = R // 2
    return dict(N=draw(BATCH), C=draw(CHANNELS), K=draw(CHANNELS), H=H, W=W, R=R,
                stride=draw(STRIDE), padding=padding)


@st.composite
def activations(draw, K):
    """``(activation, slope)``; PReLU slopes are shared (one) or per output channel (K)."""
    activation = draw(ACTIVATIONS)
    if activation != "prelu":
        return activation, draw(SLOPE)
    count = draw(st.sampled_from([1, K]))
    return activation, torch.tensor(draw(st.lists(SLOPE, min_size=count, max_size=count)))


def output_size(g):
    return ((g["H"] + 2 * g["padding"] - g["R"]) // g["stride"] + 1,
            (g["W"] + 2 * g["padding"] - g["R"]) // g["stride"] + 1)


def make_inputs(g, dtype, memory_format=torch.contiguous_format, non_contiguous=False, seed=0):
    """x in the requested layout, a weight scaled so outputs stay O(1), and an fp32 bias."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(g["N"], g["C"], g["H"], g["W"], generator=gen).to(dtype)
    weight = torch.randn(g["K"], g["C"], g["R"], g["R"], generator=gen) / math.sqrt(g["C"] * g["R"] ** 2)
    bias = torch.randn(g["K"], generator=gen)
    return layout(x, memory_format, non_contiguous), weight, bias


def reference(x, weight, bias, *, stride, padding, activation="identity", slope=0.0, residual=None,
              residual_scale=None, input_scale=None, input_shift=None, relu_from=None):
    """The same computation in float64 (weights rounded to x.dtype first, as the kernel does).

    Activations use PyTorch's formulas (``y > 0 ? y : y * slope``), so NaN and Inf come out
    where PyTorch puts them."""
    x64 = x.double()
    if input_scale is not None:  # affine on the real pixels, then F.conv2d zero-pads
        x64 = x64 * input_scale.double()[None, :, None, None] + input_shift.double()[None, :, None, None]
    y = F.conv2d(x64, weight.to(x.dtype).double(), None if bias is None else bias.double(),
                 stride=stride, padding=padding)
    if residual is not None:
        r = residual.double()
        if residual_scale is not None:
            r = r * residual_scale.double()[:, :, None, None]
        y = y + r
    relu = torch.relu(y)
    if activation == "relu":
        y = relu
    elif activation == "leaky_relu":
        y = torch.where(y > 0, y, y * slope)
    elif activation == "prelu":
        y = torch.where(y > 0, y, y * torch.as_tensor(slope).double().reshape(1, -1, 1, 1))
    if relu_from is not None:
        y = torch.cat([y[:, :relu_from], relu[:, relu_from:]], dim=1)
    return y


def check(actual, expected, x, g, dtype=None):
    """Values within the policy, dtype of x, and x's memory format (channels_last stays so)."""
    assert actual.dtype == x.dtype
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        assert actual.is_contiguous(memory_format=torch.channels_last)
    else:
        assert actual.is_contiguous()
    assert_close(actual, expected, dtype=dtype, reduction_length=g["C"] * g["R"] ** 2)


@FIXTURE_OK
@given(g=geometries(), dtype=kernel_dtypes(), fmt=MEMORY_FORMAT, non_contiguous=st.booleans(),
       weight_fmt=MEMORY_FORMAT, fp32_weight=st.booleans(), with_bias=st.booleans(), specials=NONFINITE,
       data=st.data())
def test_conv_bias_activation_matches_reference(g, dtype, fmt, non_contiguous, weight_fmt, fp32_weight,
                                                with_bias, specials, data, device):
    x, weight, bias = make_inputs(g, dtype, fmt, non_contiguous)
    plant(x, specials)
    weight = weight.to(torch.float32 if fp32_weight else dtype).contiguous(memory_format=weight_fmt)
    bias = bias if with_bias else None
    activation, slope = data.draw(activations(g["K"]))
    relu_from = data.draw(st.one_of(st.none(), st.integers(0, g["K"])), label="relu_from")
    y = conv2d_bias_act(x.to(device), weight.to(device), None if bias is None else bias.to(device),
                        stride=g["stride"], padding=g["padding"], activation=activation, slope=slope,
                        relu_from=relu_from)
    expected = reference(x, weight, bias, stride=g["stride"], padding=g["padding"],
                         activation=activation, slope=slope, relu_from=relu_from)
    check(y.cpu(), expected, x, g)


@FIXTURE_OK
@given(g=geometries(), dtype=kernel_dtypes(), fmt=MEMORY_FORMAT, residual_fmt=MEMORY_FORMAT,
       non_contiguous=st.booleans(), scaled=st.booleans(), specials=NONFINITE, data=st.data())
def test_residual_and_scale_are_added_before_activation(g, dtype, fmt, residual_fmt, non_contiguous,
                                                       scaled, specials, data, device):
    x, weight, bias = make_inputs(g, dtype, fmt)
    gen = torch.Generator().manual_seed(1)
    residual = layout(torch.randn(g["N"], g["K"], *output_size(g), generator=gen).to(dtype),
                      residual_fmt, non_contiguous)
    plant(x, specials[:1])
    plant(residual, specials[1:], seed=1)
    residual_scale = torch.rand(g["N"], g["K"], generator=gen) if scaled else None
    activation, slope = data.draw(activations(g["K"]))
    kwargs = dict(stride=g["stride"], padding=g["padding"], activation=activation, slope=slope,
                  residual=residual, residual_scale=residual_scale)
    y = conv2d_bias_act(x.to(device), weight.to(device), bias.to(device), **{
        k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()})
    check(y.cpu(), reference(x, weight, bias, **kwargs), x, g)


def folded_affine(weight, scale, shift, padding):
    """``conv2d_bias_act`` arguments for ``conv(pad(x*scale + shift), weight)``: the folded weight
    and ``border_bias`` (what FusedIRBlock does with its ``bn0``)."""
    folded, border_bias = fold_input_affine(weight, scale, shift, padding)
    return dict(weight=folded, border_bias=border_bias)


def run_affine(x, weight, bias, scale, shift, device, **kwargs):
    args = folded_affine(weight, scale, shift, kwargs["padding"])
    return conv2d_bias_act(x.to(device), args["weight"].to(device), bias.to(device),
                           border_bias=args["border_bias"].to(device), **kwargs).cpu()


@FIXTURE_OK
@given(g=geometries(), dtype=kernel_dtypes(), fmt=MEMORY_FORMAT, specials=NONFINITE)
def test_input_affine_leaves_zero_padding_zero(g, dtype, fmt, specials, device):
    # Shift of +3 makes a mistake visible: padding taps that got the shift would add 3*w.
    x, weight, bias = make_inputs(g, dtype, fmt)
    plant(x, specials)
    gen = torch.Generator().manual_seed(2)
    scale, shift = torch.rand(g["C"], generator=gen) + 0.5, torch.randn(g["C"], generator=gen) + 3.0
    kwargs = dict(stride=g["stride"], padding=g["padding"], activation="relu")
    y = run_affine(x, weight, bias, scale, shift, device, **kwargs)
    check(y, reference(x, weight, bias, input_scale=scale, input_shift=shift, **kwargs), x, g)


ODD = st.integers(1, 4).map(lambda n: 2 * n + 1)


@FIXTURE_OK
@given(N=st.integers(1, 2), C=st.integers(1, 6), K=st.integers(1, 6), H=ODD, W=ODD, stride=st.sampled_from([1, 2]),
       dtype=kernel_dtypes(), fmt=MEMORY_FORMAT, specials=NONFINITE,
       bad_shift=st.sampled_from([None, math.nan, math.inf, -math.inf]), data=st.data())
def test_border_bias_matches_float64_at_the_borders(N, C, K, H, W, stride, dtype, fmt, specials, bad_shift, data,
                                                 device):
    """The folded input affine (scale in the weights, shift as a bias per border class) against float64
    ``conv(pad(x*scale + shift))`` on odd sizes, stride 1 and 2, padding 1: every output touches
    the border classes, NaN/Inf in x propagate, and a non-finite shift does as the reference does."""
    g = dict(N=N, C=C, K=K, H=H, W=W, R=3, stride=stride, padding=1)
    x, weight, bias = make_inputs(g, dtype, fmt)
    plant(x, specials)
    gen = torch.Generator().manual_seed(3)
    scale = torch.rand(C, generator=gen) + 0.5
    shift = torch.randn(C, generator=gen) + 3.0
    if bad_shift is not None:
        shift[data.draw(st.integers(0, C - 1))] = bad_shift
    kwargs = dict(stride=stride, padding=1)
    check(run_affine(x, weight, bias, scale, shift, device, **kwargs),
          reference(x, weight, bias, input_scale=scale, input_shift=shift, **kwargs), x, g)


def test_a_shift_folded_into_a_plain_bias_is_caught(device):
    """A planted wrong fold: every pixel given the interior's bias (the shift's taps added at
    padded pixels too: a plain bias), which is exact inside and wrong at the border. The check
    rejects it."""
    g = dict(N=1, C=3, K=4, H=5, W=7, R=3, stride=2, padding=1)
    x, weight, bias = make_inputs(g, torch.float32)
    scale, shift = torch.full((3,), 0.75), torch.full((3,), 3.0)
    args = folded_affine(weight, scale, shift, 1)
    wrong_bias = bias + args["border_bias"][0]  # row 0: no tap off the image
    y = conv2d_bias_act(x.to(device), args["weight"].to(device), wrong_bias.to(device), stride=2, padding=1).cpu()
    expected = reference(x, weight, bias, stride=2, padding=1, input_scale=scale, input_shift=shift)
    with pytest.raises(AssertionError):
        check(y, expected, x, g)
    interior = expected[:, :, 1:-1, 1:-1]  # the planted fold is right away from the border: the border catches it
    assert_close(y[:, :, 1:-1, 1:-1], interior, reduction_length=27)


@FIXTURE_OK
@given(g=geometries(), dtype=kernel_dtypes(), fmt=MEMORY_FORMAT,
       before=st.integers(0, 5), after=st.integers(0, 5))
def test_out_writes_only_its_channel_slice(g, dtype, fmt, before, after, device):
    x, weight, bias = make_inputs(g, dtype)
    OH, OW = output_size(g)
    sentinel = 7.0
    big = torch.full((g["N"], before + g["K"] + after, OH, OW), sentinel, dtype=dtype, device=device)
    big = big.contiguous(memory_format=fmt)
    out = big[:, before:before + g["K"]]
    y = conv2d_bias_act(x.to(device), weight.to(device), bias.to(device), stride=g["stride"],
                        padding=g["padding"], activation="leaky_relu", slope=0.1, out=out)
    assert y is out
    expected = reference(x, weight, bias, stride=g["stride"], padding=g["padding"],
                         activation="leaky_relu", slope=0.1)
    assert_close(y.cpu(), expected, reduction_length=g["C"] * g["R"] ** 2)
    untouched = torch.cat([big[:, :before], big[:, before + g["K"]:]], dim=1)
    assert bool((untouched == sentinel).all())


def test_the_triton_kernel_ran(device):
    g = dict(N=1, C=3, K=8, H=5, W=5, R=3, stride=1, padding=1)
    x, weight, bias = make_inputs(g, torch.float32)
    with fused.record.recording() as rec:
        conv2d_bias_act(x.to(device), weight.to(device), bias.to(device), padding=1)
    assert "conv2d_bias_act" in rec.kernels()


def test_empty_batch_returns_empty_output_without_launching(device):
    g = dict(N=0, C=3, K=8, H=5, W=7, R=3, stride=2, padding=1)
    x, weight, bias = make_inputs(g, torch.float16)
    with fused.record.recording() as rec:
        y = conv2d_bias_act(x.to(device), weight.to(device), bias.to(device), stride=2, padding=1)
    assert y.shape == (0, 8, 3, 4) and y.dtype == torch.float16
    assert rec.kernels() == set()


def _pad_off_by_one(args):
    args["padding"] += 1


def _swap_tap_axes(args):
    args["w_stride_r"], args["w_stride_s"] = args["w_stride_s"], args["w_stride_r"]


@pytest.mark.parametrize("bug", [_pad_off_by_one, _swap_tap_axes],
                         ids=["padding-off-by-one", "taps-transposed"])
def test_a_wrong_kernel_is_caught(bug, monkeypatch, device):
    g = dict(N=2, C=5, K=13, H=7, W=6, R=3, stride=1, padding=1)
    x, weight, bias = make_inputs(g, torch.float32)
    expected = reference(x, weight, bias, stride=1, padding=1)
    monkeypatch.setattr(conv2d, "conv2d_bias_act_kernel", LaunchSpy(conv2d.conv2d_bias_act_kernel, bug))
    y = conv2d_bias_act(x.to(device), weight.to(device), bias.to(device), padding=1)
    with pytest.raises(AssertionError, match="out of tolerance"):
        assert_close(y.cpu(), expected, reduction_length=g["C"] * g["R"] ** 2)


@triton.jit
def _activate_dropping_nan(y, slope, ACTIVATION: tl.constexpr):
    """A ReLU that returns 0 for a NaN, as the epilogue's old ``tl.maximum(y, 0.0)`` did on the GPU.
    Written with a comparison (false for NaN), so it drops NaN on every backend and Triton release:
    ``tl.maximum`` itself keeps NaN in Triton 3.6's interpreter (np.maximum) and drops it in 3.9's
    (np.fmax) and on the GPU (maxnum)."""
    if ACTIVATION == 1:
        y = tl.where(y > 0, y, 0.0)
    elif ACTIVATION == 2 or ACTIVATION == 3:
        y = tl.where(y >= 0, y, y * slope)
    return y


def test_a_nan_dropping_kernel_is_caught(monkeypatch, device):
    g = dict(N=1, C=5, K=13, H=7, W=6, R=3, stride=1, padding=1)
    x, weight, bias = make_inputs(g, torch.float32)
    plant(x, (math.nan, -math.inf, math.inf))
    expected = reference(x, weight, bias, stride=1, padding=1, activation="relu")
    run = lambda: conv2d_bias_act(x.to(device), weight.to(device), bias.to(device), padding=1,  # noqa: E731
                                  activation="relu").cpu()
    assert_close(run(), expected, reduction_length=g["C"] * g["R"] ** 2)
    monkeypatch.setattr(conv2d, "activate", _activate_dropping_nan)
    # a fresh JIT function, so the GPU compiles the kernel again with the patched epilogue
    monkeypatch.setattr(conv2d, "conv2d_bias_act_kernel", triton.jit(conv2d.conv2d_bias_act_kernel.fn))
    with pytest.raises(AssertionError, match="NaN/Inf placement differs"):
        assert_close(run(), expected, reduction_length=g["C"] * g["R"] ** 2)


def test_int64_offsets_give_the_same_result(monkeypatch, device):
    g = dict(N=2, C=37, K=24, H=9, W=11, R=3, stride=2, padding=1)
    x, weight, bias = make_inputs(g, torch.float16, torch.channels_last)
    spy = LaunchSpy(conv2d.conv2d_bias_act_kernel)
    monkeypatch.setattr(conv2d, "conv2d_bias_act_kernel", spy)
    conv2d_bias_act(x.to(device), weight.to(device), bias.to(device), stride=2, padding=1)
    monkeypatch.setattr(common, "FORCE_INT64", True)
    y = conv2d_bias_act(x.to(device), weight.to(device), bias.to(device), stride=2, padding=1,
                        activation="relu")
    assert [args["USE_INT64"] for _, args in spy.calls] == [False, True]
    check(y.cpu(), reference(x, weight, bias, stride=2, padding=1, activation="relu"), x, g)


def test_int64_is_chosen_for_offsets_past_int32():
    # Meta tensors have shapes and strides but no memory, so a 2**31-element input costs nothing.
    huge = torch.empty(1, 8, 16384, 16400, dtype=torch.float16, device="meta")
    assert common.needs_int64(huge)
    spread = torch.empty(2, 8, 64, 64, device="meta").as_strided((2, 8, 64, 64), (2**31, 1, 512, 8))
    assert common.needs_int64(spread)  # few elements, but batch 1 starts past 2**31
    assert not common.needs_int64(torch.empty(3, 64, 13, 13, device="meta"))


def _bad(**overrides):
    """Valid arguments for a 3x3 conv of a [2, 3, 6, 6] input, with some replaced."""
    args = dict(x=torch.randn(2, 3, 6, 6), weight=torch.randn(4, 3, 3, 3), bias=torch.zeros(4), padding=1)
    return args | overrides


@pytest.mark.parametrize(
    "args, error, match",
    [
        (_bad(weight=torch.randn(4, 5, 3, 3)), ValueError, "5 input channels but x has 3"),
        (_bad(x=torch.randn(3, 6, 6)), ValueError, "4-D"),
        (_bad(weight=torch.randn(4, 3, 3)), ValueError, "4-D"),
        (_bad(weight=torch.randn(4, 3, 2, 2)), ValueError, "odd"),
        (_bad(weight=torch.randn(4, 3, 3, 1)), ValueError, "square"),
        (_bad(x=torch.randn(2, 3, 6, 6, dtype=torch.float64)), TypeError, "unsupported dtype torch.float64"),
        (_bad(x=torch.ones(2, 3, 6, 6, dtype=torch.int32)), TypeError, "unsupported dtype torch.int32"),
        (_bad(weight=torch.ones(4, 3, 3, 3, dtype=torch.int32)), TypeError, "weight must be a floating"),
        (_bad(weight=torch.randn(4, 3, 3, 3, device="meta")), ValueError, "different devices"),
        (_bad(activation="gelu"), ValueError, "unknown activation 'gelu'"),
        (_bad(activation="prelu", slope=torch.ones(3)), ValueError, "PReLU has 3 slopes, expected 1 or 4"),
        (_bad(x=torch.randn(2, 3, 6, 6).half(), precision="tf32"), ValueError, "tf32.*float32 inputs only"),
        (_bad(precision="fast"), ValueError, "precision must be"),
        (_bad(bias=torch.zeros(5)), ValueError, r"bias has shape \(5,\), expected \(4,\)"),
        (_bad(residual=torch.zeros(2, 4, 5, 6)), ValueError, "residual has shape"),
        (_bad(residual=torch.zeros(2, 4, 6, 6), residual_scale=torch.ones(2, 5)), ValueError,
         "residual_scale has shape"),
        (_bad(residual_scale=torch.ones(2, 4)), ValueError, "needs a residual"),
        (_bad(border_bias=torch.ones(4)), ValueError, r"border_bias has shape \(4,\), expected \(16, 4\)"),
        (_bad(border_bias=torch.ones(16, 4, dtype=torch.float64)), TypeError, "border_bias must be float32"),
        (_bad(out=torch.zeros(2, 4, 6, 6, dtype=torch.float16)), TypeError, "out has dtype"),
        (_bad(out=torch.zeros(2, 4, 3, 3)), ValueError, "out has shape"),
        (_bad(x=torch.randn(2, 3, 2, 2), padding=0), ValueError, "smaller than the 3x3 kernel"),
        (_bad(stride=0), ValueError, "stride >= 1"),
        (_bad(stride=(2, 2)), ValueError, "integers stride"),
        (_bad(relu_from=5), ValueError, r"relu_from must be an integer channel index in \[0, 4\]"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_bad_input_is_rejected_with_a_clear_message(args, error, match, device):
    args = {k: v.to(device) if isinstance(v, torch.Tensor) and v.device.type != "meta" else v
            for k, v in args.items()}
    x, weight = args.pop("x"), args.pop("weight")
    with pytest.raises(error, match=match):
        conv2d_bias_act(x, weight, **args)


# --- GPU only: real bf16, TF32 tensor cores, and offsets past 2**31 -----------------------------


@pytest.mark.gpu
@FIXTURE_OK
@given(g=geometries(), fmt=MEMORY_FORMAT, data=st.data())
def test_bfloat16_matches_reference(g, fmt, data, device):
    x, weight, bias = make_inputs(g, torch.bfloat16, fmt)
    activation, slope = data.draw(activations(g["K"]))
    y = conv2d_bias_act(x.to(device), weight.to(device), bias.to(device), stride=g["stride"],
                        padding=g["padding"], activation=activation,
                        slope=slope.to(device) if isinstance(slope, torch.Tensor) else slope)
    expected = reference(x, weight, bias, stride=g["stride"], padding=g["padding"],
                         activation=activation, slope=slope)
    check(y.cpu(), expected, x, g)


@pytest.mark.gpu
@FIXTURE_OK
@given(g=geometries(), fmt=MEMORY_FORMAT)
def test_tf32_option_matches_reference_within_tf32_tolerance(g, fmt, device):
    x, weight, bias = make_inputs(g, torch.float32, fmt)
    y = conv2d_bias_act(x.to(device), weight.to(device), bias.to(device), stride=g["stride"],
                        padding=g["padding"], precision="tf32")
    expected = reference(x, weight, bias, stride=g["stride"], padding=g["padding"])
    check(y.cpu(), expected, x, g, dtype="tf32")


@pytest.mark.gpu
def test_offsets_past_int32_on_gpu(device):
    if torch.cuda.get_device_properties(device).total_memory < 24 * 2**30:
        pytest.skip("needs a GPU with 24 GB for a 4.3 GB input and an 8.6 GB output")
    # x has 2 * 8 * 11600 * 11600 > 2**31 elements (4.3 GB in fp16); check the far corner.
    N, C, K, H, W = 2, 8, 16, 11600, 11600
    x = torch.randn(N, C, H, W, dtype=torch.float16, device=device)
    assert x.numel() > 2**31
    weight = torch.randn(K, C, 3, 3, device=device) / math.sqrt(C * 9)
    bias = torch.randn(K, device=device)
    y = conv2d_bias_act(x, weight, bias, padding=1, activation="relu")
    corner = x[-1:, :, -5:, -5:]  # its last 3x3 outputs see only this crop and the zero border
    expected = reference(corner, weight, bias, stride=1, padding=1, activation="relu")[..., -3:, -3:]
    assert_close(y[-1:, :, -3:, -3:].cpu(), expected.cpu(), reduction_length=C * 9)
    del x, y
    torch.cuda.empty_cache()
