"""Fused conv_dw, SEBlock, IRBlock, BasicBlock, Bottleneck and whole models against float64 references."""

import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import fused
import reference as R
from fused.tolerance import reduction_length
from tests.strategies import MEMORY_FORMAT, STRIDE, layout


def check_block(block, x, kernels, dtype=torch.float32):
    """Fuse ``block``; its output on ``x`` must match the float64 reference and ``kernels`` must have run."""
    block = R.randomize_batchnorm(block, seed=11).eval()
    expected = copy.deepcopy(block).double()(x.double())
    fused_block = fused.fuse(block.to(dtype))
    with torch.inference_mode(), fused.recording() as rec:
        out = fused_block(x.to(dtype))
    assert rec.fallbacks() == [], rec.fallbacks()
    assert kernels <= rec.kernels(), rec.kernels()
    fused.assert_close(out, expected, reduction_length=reduction_length(block))
    return out


# --- conv_dw / MobileNetV1 -------------------------------------------------------------------------


@given(
    channels=st.sampled_from([(1, 3), (3, 8), (8, 16), (13, 7), (16, 32)]),
    stride=STRIDE,
    size=st.tuples(st.integers(1, 9), st.integers(1, 9)),
    kernel=st.sampled_from(["fused", "two_kernels"]),
    memory_format=MEMORY_FORMAT,
    leaky=st.sampled_from([0.0, 0.1]),
)
def test_conv_dw_fused_both_kernels(channels, stride, size, kernel, memory_format, leaky):
    block = R.conv_dw(*channels, stride, leaky)
    x = layout(torch.randn(2, channels[0], *size), memory_format)
    block = R.randomize_batchnorm(block, seed=3).eval()
    expected = copy.deepcopy(block).double()(x.double())
    f = fused.fuse(block)
    f.kernel = kernel
    with torch.inference_mode(), fused.recording() as rec:
        out = f(x)
    want = {"conv_dw_fused"} if kernel == "fused" else {"depthwise_conv_bias_act", "conv2d_bias_act"}
    assert rec.kernels() == want
    fused.assert_close(out, expected, reduction_length=9 * channels[0])
    if x.dim() == 4 and x.shape[1] > 1 and min(x.shape[2:]) > 1 and memory_format == torch.channels_last:
        assert out.is_contiguous(memory_format=torch.channels_last)


def test_conv_dw_kernel_choice_is_validated():
    with pytest.raises(ValueError, match="kernel must be one of"):
        fused.conv_dw(8, 16, 1).kernel = "three_kernels"


def test_mobilenet_fused_end_to_end_runs_the_fused_conv_dw_kernel_for_every_block():
    net = R.randomize_batchnorm(R.MobileNetV1()).eval()
    x = torch.randn(1, 3, 40, 40)
    expected = copy.deepcopy(net).double()(x.double())
    net = fused.fuse(net)
    with torch.inference_mode(), fused.recording() as rec:
        out = net(x)
    fused.assert_close(out, expected, reduction_length=256 * 9)
    conv_dw_paths = {s.path for s in net.fuse_report.swapped if s.block_type == "conv_dw"}
    assert len(conv_dw_paths) == 13
    assert {p for p, names in rec.blocks().items() if names == ["conv_dw_fused"]} == conv_dw_paths


# --- squeeze-excite and residual blocks ------------------------------------------------------------


@pytest.mark.parametrize("channels, size", [(16, (5, 7)), (37, (1, 1)), (64, (9, 9))])
def test_seblock_fused_standalone(channels, size):
    out = check_block(R.SEBlock(channels), torch.randn(2, channels, *size), {"se_excite", "se_scale_residual_act"})
    assert out.shape == (2, channels, *size)


def _downsample(cin, cout, stride):
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


@pytest.mark.parametrize("use_se", [False, True], ids=["ir", "ir-se"])
@pytest.mark.parametrize("downsample", [False, True], ids=["identity", "downsample"])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
def test_irblock_fused(use_se, downsample, memory_format):
    if downsample:
        block, x = R.IRBlock(8, 16, 2, _downsample(8, 16, 2), use_se=use_se), torch.randn(2, 8, 9, 7)
    else:
        block, x = R.IRBlock(16, 16, 1, None, use_se=use_se), torch.randn(2, 16, 6, 5)
    kernels = {"conv2d_bias_act"} | ({"se_excite"} if use_se else set())
    check_block(block, layout(x, memory_format), kernels)


@pytest.mark.parametrize("downsample", [False, True], ids=["identity", "downsample"])
def test_basic_block_and_bottleneck_fused(downsample):
    ds = _downsample(8, 8, 2) if downsample else None
    check_block(R.BasicBlock(8, 8, 2 if downsample else 1, ds), torch.randn(2, 8, 7, 7), {"conv2d_bias_act"})
    ds = _downsample(8, 16, 2) if downsample else _downsample(8, 16, 1)
    check_block(R.Bottleneck(8, 4, 2 if downsample else 1, ds), torch.randn(2, 8, 7, 7), {"conv2d_bias_act"})


def test_irblock_half_precision():
    block = R.IRBlock(16, 16, 1, None, use_se=True)
    out = check_block(block, torch.randn(1, 16, 6, 6), {"conv2d_bias_act"}, dtype=torch.float16)
    assert out.dtype == torch.float16


def test_folding_bn0_into_conv1_is_wrong_at_the_border():
    """bn0 precedes a zero-padded conv: folding it into conv1's weights changes the border pixels."""
    torch.manual_seed(0)
    bn0 = R.randomize_batchnorm(nn.BatchNorm2d(4), seed=1).eval()
    conv1 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
    x = torch.randn(1, 4, 6, 6, dtype=torch.float64)
    bn0, conv1 = bn0.double(), conv1.double()
    with torch.no_grad():
        exact = conv1(bn0(x))
        scale, shift = (t.double() for t in fused.batchnorm_affine(bn0))
        naive_w = conv1.weight * scale[None, :, None, None]  # scale the input channels...
        naive_b = (conv1.weight * shift[None, :, None, None]).sum((1, 2, 3))  # ...and fold the shift as a bias
        naive = F.conv2d(x, naive_w, naive_b, padding=1)
    interior = (slice(None), slice(None), slice(1, -1), slice(1, -1))
    torch.testing.assert_close(naive[interior], exact[interior])  # exact inside...
    assert (naive - exact)[..., 0, :].abs().max() > 1e-3  # ...wrong on the border, where padding is 0, not bn0(0)
    fused_block = fused.fuse(R.randomize_batchnorm(R.IRBlock(4, 4, use_se=False), seed=1).eval())
    fused_block.bn0.load_state_dict(bn0.float().state_dict())
    fused_block.conv1.weight.data.copy_(conv1.weight.float())
    with torch.inference_mode():
        reference_out = copy.deepcopy(fused_block).double().reference_forward(x)
        fused.assert_close(fused_block(x.float()), reference_out, reduction_length=36)


# --- whole ArcFace ----------------------------------------------------------------------------------


@pytest.mark.parametrize("use_se", [False, True], ids=["ir18", "ir18-se"])
def test_arcface_fused_embedding(use_se):
    model = R.randomize_batchnorm(R.arcface(use_se=use_se, seed=2), seed=3)
    x = torch.randn(1, 1, 128, 128)
    expected = copy.deepcopy(model).double()(x.double())
    model = fused.fuse(model)
    assert isinstance(model, fused.FusedResNetArcFace)
    with torch.inference_mode(), fused.recording(torch_ops=True) as rec:
        emb = model(x)
    assert rec.fallbacks() == []
    assert rec.kernel_counts()["conv2d_bias_act"] == 1 + 8 * 2 + 3  # stem, two per block, 3 downsamples
    assert rec.pytorch_convolutions() == 0, rec.torch_ops
    with torch.inference_mode(), fused.enabled(False), fused.recording(torch_ops=True) as rec:
        model(x)
    assert rec.pytorch_convolutions() == 1 + 8 * 2 + 3  # the reference forward runs them in PyTorch
    cos = F.cosine_similarity(emb.double(), expected).min()
    assert cos >= 0.99999, cos
    fused.assert_close(emb, expected, reduction_length=512 * 9)
    assert [s.path for s in model.fuse_report.swapped][:1] == [""]


def test_arcface_head_fold_is_exact_and_cached_separately_from_the_blocks():
    """bn4 and bn5 folded into fc5 equal the eval-mode head; a block's weight change keeps the head cache."""
    model = fused.fuse(R.randomize_batchnorm(R.arcface(seed=4), seed=6))
    x = torch.randn(3, 512, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        expected = model.bn5(model.fc5(model.bn4(x.float()).reshape(3, -1))).double()
        weight, bias = model.folded(torch.float32, x.device)["head"]
        nhwc = x.float().permute(0, 2, 3, 1).reshape(3, -1)  # the fused model's map is channels_last
        fused.assert_close(F.linear(nhwc, weight, bias), expected, reduction_length=512 * 64)
        head = model.folded(torch.float32, x.device)["head"]
        model.layer1[0].conv1.weight.mul_(2)
        assert model.folded(torch.float32, x.device)["head"] is head  # not re-folded
        model.bn5.running_var.mul_(2)
        assert model.folded(torch.float32, x.device)["head"] is not head


def test_empty_batch_gives_empty_outputs_fused_and_reference():
    detector, identity = R.retinaface(), R.arcface(use_se=True)
    cases = [(detector, torch.randn(0, 3, 32, 32)), (identity, torch.randn(0, 1, 128, 128))]
    for model, x in cases:
        with torch.inference_mode():
            expected = model(x)
            got = fused.fuse(copy.deepcopy(model))(x)
        expected = expected if isinstance(expected, tuple) else (expected,)
        got = got if isinstance(got, tuple) else (got,)
        assert [g.shape for g in got] == [e.shape for e in expected]
        assert all(g.shape[0] == 0 for g in got)
    assert expected[0].shape == (0, 512)
