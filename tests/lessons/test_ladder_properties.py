"""Hypothesis properties of the teaching kernels (fused/ladder) against float64: batch sizes from 0,
odd channel counts and maps, stride 2, and NaN/Inf planted in the input. ``test_ladder.py`` holds
the hand-picked cases the lessons rely on; this module draws the rest."""

import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import fused
from fused import ladder
from tests.strategies import BATCH, NONFINITE, SPATIAL, plant

SMALL_CHANNELS = st.sampled_from([1, 3, 5, 8, 17])


def _inputs(seed, n, c, h, w, k, taps):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=gen)
    weight = torch.randn(k, c, taps, taps, generator=gen) / (c * taps * taps) ** 0.5
    return x, weight, torch.randn(k, generator=gen)


@given(n=BATCH, c=SMALL_CHANNELS, h=SPATIAL, w=SPATIAL, k=SMALL_CHANNELS, bad=NONFINITE, seed=st.integers(0, 99))
def test_conv_rungs_equal_float64(n, c, h, w, k, bad, seed):
    x, w1, b = _inputs(seed, n, c, h, w, k, 1)
    _, w3, _ = _inputs(seed + 1, n, c, h, w, k, 3)
    plant(x, bad, seed)
    fused.assert_close(ladder.conv1x1_bias_leaky(x, w1, b),
                       F.leaky_relu(F.conv2d(x.double(), w1.double(), b.double()), 0.1), reduction_length=c)
    fused.assert_close(ladder.conv3x3_bias_leaky(x, w3, b),
                       F.leaky_relu(F.conv2d(x.double(), w3.double(), b.double(), padding=1), 0.1),
                       reduction_length=9 * c)


@given(n=BATCH, c=SMALL_CHANNELS, h=SPATIAL, w=SPATIAL, stride=st.sampled_from([1, 2]), bad=NONFINITE,
       seed=st.integers(0, 99))
def test_depthwise_rung_equals_float64(n, c, h, w, stride, bad, seed):
    gen = torch.Generator().manual_seed(seed)
    x, weight, b = torch.randn(n, c, h, w, generator=gen), torch.randn(c, 1, 3, 3, generator=gen), torch.randn(c, generator=gen)
    plant(x, bad, seed)
    expected = F.leaky_relu(F.conv2d(x.double(), weight.double(), b.double(), stride=stride, padding=1, groups=c), 0.1)
    fused.assert_close(ladder.depthwise3x3_bias_leaky(x, weight, b, stride=stride), expected, reduction_length=9)


@given(n=BATCH, c=SMALL_CHANNELS, h=SPATIAL, w=SPATIAL, splits=st.integers(1, 4), bad=NONFINITE, seed=st.integers(0, 99))
def test_squeeze_rung_equals_float64(n, c, h, w, splits, bad, seed):
    x = torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(seed))
    plant(x, bad, seed)
    fused.assert_close(ladder.squeeze_mean(x, splits=splits), x.double().mean((2, 3)), reduction_length=h * w)


@given(n=BATCH, c=SMALL_CHANNELS, k=SMALL_CHANNELS, coarse=st.tuples(SPATIAL, SPATIAL),
       factor=st.sampled_from([1, 2, 3]), extra=st.tuples(st.integers(0, 1), st.integers(0, 1)), bad=NONFINITE,
       seed=st.integers(0, 99))
def test_upsample_add_rung_equals_float64(n, c, k, coarse, factor, extra, bad, seed):
    ch, cw = coarse
    h, w = ch * factor + extra[0], cw * factor + extra[1]  # FPN's odd sizes: the fine map is not an exact multiple
    x, weight, b = _inputs(seed, n, c, h, w, k, 1)
    up = torch.randn(n, k, ch, cw, generator=torch.Generator().manual_seed(seed + 7))
    plant(up, bad, seed)
    expected = (F.leaky_relu(F.conv2d(x.double(), weight.double(), b.double()), 0.1)
                + F.interpolate(up.double(), size=(h, w), mode="nearest"))
    fused.assert_close(ladder.lateral_upsample_add(x, weight, b, up), expected, reduction_length=c)


@given(n=BATCH, c=st.sampled_from([1, 3]), h=st.integers(2, 11), w=st.integers(2, 11), k=SMALL_CHANNELS,
       bad=NONFINITE, seed=st.integers(0, 99))
def test_stem_pool_rung_equals_float64(n, c, h, w, k, bad, seed):
    x, weight, b = _inputs(seed, n, c, h, w, k, 3)
    slopes = torch.linspace(-0.5, 0.5, k)
    plant(x, bad, seed)
    expected = F.max_pool2d(F.prelu(F.conv2d(x.double(), weight.double(), b.double(), padding=1), slopes.double()), 2)
    fused.assert_close(ladder.stem_conv_prelu_pool(x, weight, b, slopes), expected, reduction_length=9 * c)
