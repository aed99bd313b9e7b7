"""NaN and ±Inf inputs: every fused block puts them exactly where the float64 reference does.

One non-finite input element spreads through each convolution to every output whose window
touches it, and an activation may turn it into something else (ReLU: -inf -> 0; LeakyReLU(0):
-inf -> NaN). ``assert_close`` compares NaN/Inf placement exactly, so these tests fail on a
kernel that drops a NaN (``tl.maximum``), on a ReLU run as a slope-0 LeakyReLU and vice versa.
"""

import copy
import math

import pytest
import torch
from torch import nn

import fused
import reference as R
from fused.tolerance import assert_close, reduction_length

SPECIALS = {"nan": math.nan, "+inf": math.inf, "-inf": -math.inf}


def planted(shape, value, seed=0, where=((0, 1, 2, 3),)):
    """A random input with ``value`` planted at the given [n, c, h, w] positions (clipped to the shape)."""
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    for index in where:
        x[tuple(min(i, s - 1) for i, s in zip(index, shape))] = value
    return x


def check(block, inputs, seed=11):
    """Fuse a randomised copy of ``block``; its outputs on ``inputs`` must match the float64 reference."""
    block = R.randomize_batchnorm(block, seed=seed).eval()
    with torch.no_grad():
        expected = copy.deepcopy(block).double()(*[[t.double() for t in i] if isinstance(i, list) else i.double()
                                                   for i in inputs])
    fused_block = fused.fuse(block)
    with torch.inference_mode(), fused.recording() as rec:
        got = fused_block(*inputs)
    assert rec.fallbacks() == [], rec.fallbacks()
    assert rec.kernels(), "no fused kernel ran"
    got = got if isinstance(got, (tuple, list)) else (got,)
    expected = expected if isinstance(expected, (tuple, list)) else (expected,)
    nonfinite = 0
    for g, e in zip(got, expected):
        assert_close(g, e, reduction_length=reduction_length(block))
        nonfinite += int((~torch.isfinite(e)).sum())
    assert nonfinite, "the planted value reached no output: the test checks nothing"
    return got, expected


def _downsample(cin, cout, stride):
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


def _conv_dw_relu(cin, cout):
    """A conv_dw whose activations are nn.ReLU (a structure the block type accepts)."""
    seq = R.conv_dw(cin, cout, 1, 0.0)
    seq[2], seq[5] = nn.ReLU(inplace=True), nn.ReLU(inplace=True)
    return seq


#: name: (builder, input shape); inputs hold 6x7 maps so a planted value leaves finite outputs too.
BLOCKS = {
    "conv_bn leaky 0": (lambda: R.conv_bn(4, 8, 1, leaky=0), (2, 4, 6, 7)),
    "conv_bn leaky 0.1": (lambda: R.conv_bn(4, 8, 1, leaky=0.1), (2, 4, 6, 7)),
    "conv_bn_no_relu": (lambda: R.conv_bn_no_relu(4, 8, 2), (2, 4, 6, 7)),
    "conv_bn1X1 leaky 0": (lambda: R.conv_bn1X1(4, 8, 1, leaky=0), (2, 4, 6, 7)),
    "conv_bn1X1 leaky 0.1": (lambda: R.conv_bn1X1(4, 8, 1, leaky=0.1), (2, 4, 6, 7)),
    "conv_dw leaky 0.1": (lambda: R.conv_dw(4, 8, 1, 0.1), (2, 4, 6, 7)),
    "conv_dw leaky 0 stride 2": (lambda: R.conv_dw(4, 8, 2, 0.0), (2, 4, 6, 7)),
    "conv_dw relu": (lambda: _conv_dw_relu(4, 8), (2, 4, 6, 7)),
    "SEBlock": (lambda: R.SEBlock(48), (2, 48, 5, 4)),  # 3 hidden units: the excite kernel pads them to 4
    "IRBlock": (lambda: R.IRBlock(8, 8, 1, None, use_se=False), (2, 8, 6, 7)),
    "IRBlock downsample": (lambda: R.IRBlock(4, 8, 2, _downsample(4, 8, 2), use_se=False), (2, 4, 6, 7)),
    "IRBlock SE": (lambda: R.IRBlock(48, 48, 1, None, use_se=True), (2, 48, 6, 7)),
    "IRBlock SE downsample": (lambda: R.IRBlock(8, 16, 2, _downsample(8, 16, 2), use_se=True), (2, 8, 6, 7)),
    "BasicBlock": (lambda: R.BasicBlock(4, 4, 1, None), (2, 4, 6, 7)),
    "BasicBlock downsample": (lambda: R.BasicBlock(4, 8, 2, _downsample(4, 8, 2)), (2, 4, 6, 7)),
    "Bottleneck": (lambda: R.Bottleneck(4, 2, 1, _downsample(4, 8, 1)), (2, 4, 6, 7)),
    "SSH leaky 0.1": (lambda: R.SSH(8, 16), (2, 8, 6, 7)),
    "SSH leaky 0": (lambda: R.SSH(8, 68), (2, 8, 6, 7)),
    "ClassHead": (lambda: R.ClassHead(8, 2), (2, 8, 3, 4)),
    "BboxHead": (lambda: R.BboxHead(8, 3), (2, 8, 3, 4)),
    "LandmarkHead": (lambda: R.LandmarkHead(8, 2), (2, 8, 3, 4)),
}


@pytest.mark.parametrize("special", list(SPECIALS))
@pytest.mark.parametrize("name", list(BLOCKS))
def test_block_puts_nan_and_inf_where_the_reference_does(name, special):
    build, shape = BLOCKS[name]
    check(build(), [planted(shape, SPECIALS[special])])


@pytest.mark.parametrize("special", list(SPECIALS))
@pytest.mark.parametrize("out_channels", [16, 68], ids=["leaky 0.1", "leaky 0"])
def test_fpn_puts_nan_and_inf_where_the_reference_does(out_channels, special):
    """A value planted in the coarsest map reaches the finer ones through the upsample-adds."""
    value = SPECIALS[special]
    maps = [torch.randn(1, 8, 8, 6), torch.randn(1, 16, 4, 3), planted((1, 32, 2, 2), value, where=((0, 3, 1, 0),))]
    got, expected = check(R.FPN([8, 16, 32], out_channels), [maps])
    assert not torch.isfinite(expected[0]).all()


def test_ssh_relu_branch_gives_zero_for_minus_inf():
    """SSH's conv3X3 branch is ReLU'd: -inf there must give 0, not NaN (a slope-0 LeakyReLU's -inf * 0)."""
    ssh = R.SSH(8, 68)
    got, expected = check(ssh, [planted((1, 8, 5, 5), -math.inf, where=((0, 0, 2, 2),))])
    conv3x3 = expected[0][:, :34]
    assert (conv3x3 == 0).any() and not conv3x3.isnan().any()  # the case this test is about occurs


@pytest.mark.parametrize("name, special, size", [
    ("resnet50", "nan", (64, 64)), ("resnet50", "-inf", (40, 48)),
    ("mobile0.25", "nan", (64, 64)), ("mobile0.25", "+inf", (64, 64)), ("mobile0.25", "-inf", (64, 64)),
])
def test_retinaface_with_one_bad_pixel_gives_nan_where_the_reference_does(name, special, size):
    """One NaN pixel makes every ResNet-50 output NaN in the reference: the fused model must not
    return plausible boxes instead (it did, when its ReLUs were ``tl.maximum``)."""
    model = R.retinaface(name, seed=3)
    x = planted((1, 3, *size), SPECIALS[special], where=((0, 1, 20, 30),))
    got, expected = check(model, [x], seed=4)
    if name == "resnet50" and special == "nan":
        assert all(e.isnan().all() for e in expected)


def test_arcface_with_one_bad_pixel_gives_nan_where_the_reference_does():
    check(R.arcface(use_se=True, seed=2), [planted((1, 1, 128, 128), math.nan, where=((0, 0, 60, 70),))], seed=3)
