"""SSH, FPN and the heads fused; whole RetinaFace fused end to end, with no PyTorch convolution left.

Kernel property tests compare with float64 PyTorch through the one tolerance policy; module and
model tests compare the fused forward with a float64 copy of the reference.
"""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import fused
import reference as R
from fused.kernels.fpn import lateral_upsample_add, nearest_scale
from fused.kernels.heads import anchor_heads
from fused.tolerance import assert_close, reduction_length
from tests.strategies import BATCH, CHANNELS, MEMORY_FORMAT, NONFINITE, SLOPE, SPATIAL, kernel_dtypes, layout, plant

# --- the lateral + upsample-add kernel ------------------------------------------------------------


def lateral_reference(x, weight, bias, coarse, activation, slope):
    y = F.conv2d(x.double(), weight.to(x.dtype).double(), bias.double())
    if activation == "relu":
        y = torch.relu(y)
    elif activation == "leaky_relu":
        y = torch.where(y > 0, y, y * slope)  # PyTorch's formula: slope 0 turns -inf into NaN
    if coarse is not None:
        y = y + F.interpolate(coarse.double(), size=y.shape[-2:], mode="nearest")
    return y


@given(n=BATCH, c=CHANNELS, k=CHANNELS, size=st.tuples(SPATIAL, SPATIAL), coarse_size=st.tuples(SPATIAL, SPATIAL),
       with_coarse=st.booleans(), activation=st.sampled_from(["identity", "relu", "leaky_relu"]), slope=SLOPE,
       dtype=kernel_dtypes(), fmt=MEMORY_FORMAT, non_contiguous=st.booleans(), specials=NONFINITE)
def test_lateral_upsample_add_matches_conv_interpolate_add(n, c, k, size, coarse_size, with_coarse, activation,
                                                          slope, dtype, fmt, non_contiguous, specials):
    gen = torch.Generator().manual_seed(n * 1000 + c * 10 + k)
    x = plant(layout(torch.randn(n, c, *size, generator=gen).to(dtype), fmt, non_contiguous), specials[:2])
    weight = torch.randn(k, c, 1, 1, generator=gen) / math.sqrt(c)
    bias = torch.randn(k, generator=gen)
    coarse = layout(torch.randn(n, k, *coarse_size, generator=gen).to(dtype), fmt) if with_coarse else None
    if coarse is not None:
        plant(coarse, specials[2:] or specials[:1], seed=1)
    with fused.recording() as rec:
        y = lateral_upsample_add(x, weight.to(dtype), bias, coarse, activation=activation, slope=slope)
    assert y.dtype == dtype and y.shape == (n, k, *size)
    assert rec.kernel_counts()["lateral_upsample_add"] == (1 if n else 0)
    assert_close(y, lateral_reference(x, weight, bias, coarse, activation, slope), reduction_length=c)


@pytest.mark.parametrize("coarse_rows, rows", [(34, 68), (68, 135), (135, 270), (3, 5), (7, 3), (5, 5), (1, 9),
                                               (13, 12), (6, 10), (14, 20), (255, 509)])
def test_upsample_picks_the_same_source_rows_as_pytorch(coarse_rows, rows):
    """With a zero conv the kernel returns the upsampled map itself: bitwise what F.interpolate gives,
    also for sizes that are not 2x (1080 rows give 135, 68 and 34)."""
    coarse = torch.arange(coarse_rows * 2, dtype=torch.float32).reshape(1, 1, coarse_rows, 2)
    x = torch.zeros(1, 1, rows, 3)
    y = lateral_upsample_add(x, torch.zeros(1, 1, 1, 1), torch.zeros(1), coarse)
    assert torch.equal(y, F.interpolate(coarse, size=(rows, 3), mode="nearest"))
    sources = [math.floor(d * coarse_rows / rows) for d in range(rows)]
    assert torch.equal(y[0, 0, :, 0], coarse[0, 0, sources, 0])  # the spec's floor(d * in / out)
    assert nearest_scale(coarse_rows, rows) == float(torch.tensor(coarse_rows, dtype=torch.float32) / rows)


def test_lateral_kernel_rejects_bad_arguments():
    x, w, b = torch.randn(1, 4, 3, 3), torch.randn(5, 4, 1, 1), torch.randn(5)
    with pytest.raises(ValueError, match="must be 1x1"):
        lateral_upsample_add(x, torch.randn(5, 4, 3, 3), b)
    with pytest.raises(ValueError, match="does not match x with 4 channels"):
        lateral_upsample_add(x, torch.randn(5, 3, 1, 1), b)
    with pytest.raises(ValueError, match=r"coarse must be \[1, 5, h, w\]"):
        lateral_upsample_add(x, w, b, torch.randn(1, 4, 2, 2))
    with pytest.raises(TypeError, match="coarse has dtype"):
        lateral_upsample_add(x, w, b, torch.randn(1, 5, 2, 2, dtype=torch.float16))


# --- the anchor-heads kernel ------------------------------------------------------------------------


def heads_reference(x, weights, biases, values, anchors, softmax):
    """Each head as the reference computes it: 1x1 conv, permute, view; softmax over the first."""
    outs = []
    for i, (w, b, v) in enumerate(zip(weights, biases, values)):
        y = F.conv2d(x.double(), w.to(x.dtype).double()[:, :, None, None], b.double())
        y = y.permute(0, 2, 3, 1).reshape(x.shape[0], x.shape[2] * x.shape[3] * anchors, v)
        outs.append(y.softmax(-1) if softmax and i == 0 else y)
    return outs


@given(n=BATCH, c=CHANNELS, size=st.tuples(SPATIAL, SPATIAL), anchors=st.sampled_from([1, 2, 3]),
       values=st.sampled_from([(2, 4, 10), (2,), (4,), (10,), (2, 4), (1, 3, 5)]), softmax=st.booleans(),
       offset=st.sampled_from([0, 5]), dtype=kernel_dtypes(), fmt=MEMORY_FORMAT, non_contiguous=st.booleans(),
       specials=NONFINITE)
def test_anchor_heads_store_where_permute_view_and_cat_would(n, c, size, anchors, values, softmax, offset, dtype,
                                                             fmt, non_contiguous, specials):
    softmax = softmax and values[0] in (1, 2, 4)
    gen = torch.Generator().manual_seed(c * 7 + anchors)
    x = plant(layout(torch.randn(n, c, *size, generator=gen).to(dtype), fmt, non_contiguous), specials)
    weights = [torch.randn(anchors * v, c, generator=gen) / math.sqrt(c) for v in values]
    biases = [torch.randn(anchors * v, generator=gen) for v in values]
    rows = size[0] * size[1] * anchors
    outs = [torch.full((n, offset + rows + 3, v), float("nan"), dtype=dtype) for v in values]
    anchor_heads(x, torch.cat(weights).to(dtype), torch.cat(biases), outs, anchors=anchors, row_offset=offset,
                 softmax=softmax)
    for out, expected in zip(outs, heads_reference(x, weights, biases, values, anchors, softmax)):
        assert out[:, :offset].isnan().all() and out[:, offset + rows:].isnan().all()  # nothing outside its rows
        assert_close(out[:, offset:offset + rows], expected, reduction_length=c)


def test_softmax_of_nan_and_inf_logits_is_torch_softmax():
    """Groups of logits holding NaN, +Inf or -Inf (mixed signs too) come out as torch.softmax gives them."""
    x = torch.tensor([-math.inf, math.inf, math.nan, 1.0, -2.0]).reshape(1, 1, 1, 5)
    w = torch.tensor([[1.0], [2.0], [1.0], [-1.0], [0.5], [0.25]])  # 3 anchors x 2 logits, each its own sign mix
    b = torch.tensor([0.0, 1.0, -1.0, 0.0, 0.0, 0.0])
    out = torch.full((1, 15, 2), 7.0)
    anchor_heads(x, w, b, (out,), anchors=3, softmax=True)
    (expected,) = heads_reference(x, [w], [b], (2,), 3, True)
    assert expected.isnan().any() and torch.isfinite(expected).any()
    assert_close(out, expected, reduction_length=1)


def test_a_wrong_row_order_is_rejected():
    """Anchor-major order (a plausible bug) must fail the same check the kernel passes."""
    x = torch.randn(1, 8, 3, 4)
    w, b = torch.randn(4 * 2, 8), torch.randn(4 * 2)
    out = torch.empty(1, 24, 4)
    anchor_heads(x, w, b, (out,), anchors=2)
    (expected,) = heads_reference(x, [w], [b], (4,), 2, False)
    assert_close(out, expected, reduction_length=8)
    anchor_major = expected.reshape(1, 12, 2, 4).transpose(1, 2).reshape(1, 24, 4)
    with pytest.raises(AssertionError):
        assert_close(anchor_major.float(), expected, reduction_length=8)


def test_anchor_heads_reject_bad_arguments():
    x = torch.randn(1, 8, 2, 2)
    out = torch.empty(1, 8, 2)
    with pytest.raises(ValueError, match=r"expected \(4, 8\)"):
        anchor_heads(x, torch.randn(4, 7), torch.randn(4), (out,), anchors=2)
    with pytest.raises(ValueError, match="P >= 9"):
        anchor_heads(x, torch.randn(4, 8), torch.randn(4), (out,), anchors=2, row_offset=1)
    with pytest.raises(ValueError, match="power-of-two"):
        anchor_heads(x, torch.randn(6, 8), torch.randn(6), (torch.empty(1, 8, 3),), anchors=2, softmax=True)
    with pytest.raises(ValueError, match="one to three outputs"):
        anchor_heads(x, torch.randn(4, 8), torch.randn(4), (), anchors=2)
    with pytest.raises(TypeError, match="output dtype"):
        anchor_heads(x, torch.randn(4, 8), torch.randn(4), (out.half(),), anchors=2)


# --- SSH, FPN and heads as fused modules --------------------------------------------------------


def fused_and_expected(block, *inputs, dtype=torch.float32):
    """Fuse a randomised copy of ``block``; return (fused output, float64 reference output, recording)."""
    block = R.randomize_batchnorm(block, seed=5).eval()
    expected = copy.deepcopy(block).double()(*[_double(i) for i in inputs])
    fused_block = fused.fuse(block.to(dtype))
    inputs = [_to(i, dtype) for i in inputs]
    with torch.inference_mode():
        fused_block(*inputs)  # fold once, so the recording below sees the forward only
        with fused.recording(torch_ops=True) as rec:
            out = fused_block(*inputs)
    assert rec.fallbacks() == []
    return out, expected, rec


def _double(x):
    return [t.double() for t in x] if isinstance(x, list) else x.double()


def _to(x, dtype):
    return [t.to(dtype) for t in x] if isinstance(x, list) else x.to(dtype)


@given(channels=st.sampled_from([(1, 4), (3, 8), (8, 12), (13, 20), (64, 64), (16, 68)]), n=BATCH,
       size=st.tuples(SPATIAL, SPATIAL), dtype=kernel_dtypes(), fmt=MEMORY_FORMAT)
def test_ssh_fused_writes_branches_into_one_buffer(channels, n, size, dtype, fmt):
    """Out widths above 64 use LeakyReLU slope 0 (68); the branches land in their channel slices."""
    in_channel, out_channel = channels
    x = torch.randn(n, in_channel, *size).contiguous(memory_format=fmt)
    out, expected, rec = fused_and_expected(R.SSH(in_channel, out_channel), x, dtype=dtype)
    assert out.shape == expected.shape and out.dtype == dtype
    if n:
        # 5 convs, one shared launch (on a GPU a big enough one splits K and adds a reduce)
        assert rec.kernel_counts()["conv2d_bias_act"] == 4
        assert rec.kernels() <= {"conv2d_bias_act", "conv2d_splitk_reduce"}
        assert rec.torch_ops["cat"] == 0 and rec.torch_ops["relu"] == 0 and rec.pytorch_convolutions() == 0
    assert_close(out, expected, dtype=dtype, reduction_length=9 * max(in_channel, out_channel // 4))


@pytest.mark.parametrize("rows", [(135, 68, 34), (9, 5, 3), (8, 4, 2), (5, 5, 5), (7, 9, 2)])
def test_fpn_fused_upsamples_by_explicit_size(rows):
    """135/68/34 rows is what a 1080-row image gives; the sizes need not be 2x apart at all."""
    widths = (3, 2, 1)
    maps = [torch.randn(2, c, h, w) for c, h, w in zip((8, 16, 32), rows, widths)]
    out, expected, rec = fused_and_expected(R.FPN([8, 16, 32], 16), maps)
    assert rec.kernel_counts() == {"lateral_upsample_add": 3, "conv2d_bias_act": 2}
    assert rec.torch_ops["upsample_nearest2d"] == 0 and rec.pytorch_convolutions() == 0
    for o, e in zip(out, expected):
        assert_close(o, e, reduction_length=9 * 16)


@pytest.mark.parametrize("head", [R.ClassHead, R.BboxHead, R.LandmarkHead])
@pytest.mark.parametrize("anchors", [2, 3])
def test_heads_fused_on_their_own(head, anchors):
    x = torch.randn(2, 24, 5, 3)
    out, expected, rec = fused_and_expected(head(24, anchors), x)
    assert rec.kernel_counts() == {"anchor_heads": 1} and rec.torch_ops["permute"] == 0
    assert out.shape == expected.shape and out.is_contiguous()
    assert_close(out, expected, reduction_length=24)


def test_fused_blocks_give_clear_errors_on_bad_input():
    ssh, fpn, head = (fused.fuse(m.eval()) for m in (R.SSH(8, 16), R.FPN([8, 16, 32], 16), R.ClassHead(8, 2)))
    with torch.inference_mode():
        with pytest.raises(ValueError, match="expects 8 input channels, got 3"):
            ssh(torch.randn(1, 3, 4, 4))
        with pytest.raises(ValueError, match="three feature maps"):
            fpn([torch.randn(1, 8, 4, 4)] * 2)
        with pytest.raises(ValueError, match="expects 8 input channels"):
            head(torch.randn(1, 9, 4, 4))
        with pytest.raises(TypeError, match="floating-point"):
            ssh(torch.ones(1, 8, 4, 4, dtype=torch.int32))


# --- whole models -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name, size, batch", [
    ("mobile0.25", (64, 64), 2), ("mobile0.25", (37, 53), 1), ("resnet50", (33, 47), 1),
])
def test_fused_retinaface_equals_the_reference_with_no_pytorch_convolution(name, size, batch):
    model = R.randomize_batchnorm(R.retinaface(name, seed=3), seed=4)
    x = torch.randn(batch, 3, *size)
    expected = copy.deepcopy(model).double()(x.double())
    model = fused.fuse(model)
    assert model.fuse_report.skipped == []
    with torch.inference_mode():
        model(x)  # fold once, so the recording below sees the forward only
        with fused.recording(torch_ops=True) as rec:
            outputs = model(x)
    assert rec.fallbacks() == []
    assert rec.pytorch_convolutions() == 0, rec.torch_ops
    for op in ("cat", "upsample_nearest2d", "softmax", "_softmax", "permute", "batch_norm"):
        assert rec.torch_ops[op] == 0, (op, rec.torch_ops)
    assert rec.kernel_counts()["anchor_heads"] == 3
    assert outputs[0].shape == (batch, R.num_priors(*size), 4)
    for out, exp, what in zip(outputs, expected, ("boxes", "scores", "landmarks")):
        assert out.is_contiguous()
        assert_close(out, exp, reduction_length=reduction_length(model), what=what)


def test_fused_retinaface_in_half_precision_channels_last_and_train_phase():
    model = R.randomize_batchnorm(R.retinaface(seed=5), seed=6)
    x = torch.randn(1, 3, 48, 40)
    expected = copy.deepcopy(model).double()(x.double())
    half = fused.fuse(copy.deepcopy(model).half())
    with torch.inference_mode():
        got = half(x.half().contiguous(memory_format=torch.channels_last))
    for out, exp in zip(got, expected):
        assert out.dtype == torch.float16
        assert_close(out, exp, dtype=torch.float16, reduction_length=reduction_length(model))
    logits_model = copy.deepcopy(model)
    logits_model.phase = "train"  # the train phase returns class logits, not probabilities
    expected = copy.deepcopy(logits_model).double()(x.double())
    with torch.inference_mode():
        got = fused.fuse(logits_model).eval()(x)
    assert_close(got[1], expected[1], reduction_length=reduction_length(model))
    assert (got[1] < 0).any()


def test_resnet50_on_its_own_fuses_its_7x7_stem():
    model = R.randomize_batchnorm(R.ResNet50(layers=(1, 1, 1, 1)).eval(), seed=2)
    x = torch.randn(1, 3, 29, 35)
    expected = copy.deepcopy(model).double()(x.double())
    model = fused.fuse(model)
    assert isinstance(model, fused.FusedResNet50) and model.stems == (("conv1", "bn1", "relu"),)
    with torch.inference_mode(), fused.recording(torch_ops=True) as rec:
        out = model(x)
    assert rec.pytorch_convolutions() == 0 and rec.fallbacks() == []
    assert_close(out, expected, reduction_length=reduction_length(model))


def test_stems_that_expose_an_intermediate_output_are_left_alone():
    from torch import nn

    from fused.stems import find_stems

    layers = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                           nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4),
                           nn.Conv2d(4, 4, (3, 1)), nn.BatchNorm2d(4))
    assert find_stems(layers) == (("0", "1", "2"), ("3", "4"))  # the non-square conv is not a stem
    assert find_stems(layers, keep_outputs={"1"}) == (("3", "4"),)  # someone reads bn's output
    assert find_stems(layers, keep_outputs={"2"}) == (("0", "1", "2"), ("3", "4"))  # the last member may be read
