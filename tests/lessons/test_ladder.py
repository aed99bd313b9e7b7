"""The teaching kernels of fused/ladder: each fits one screen and matches float64, tails, borders,
stride 2, odd sizes and NaN included (the lessons show them on larger inputs)."""

import inspect

import pytest
import torch
import torch.nn.functional as F

import fused
from fused import ladder

KERNELS = [ladder.conv1x1_bias_leaky_kernel, ladder.conv3x3_bias_leaky_kernel, ladder.depthwise3x3_bias_leaky_kernel,
           ladder.squeeze_partial_kernel, ladder.squeeze_finish_kernel, ladder.lateral_upsample_add_kernel,
           ladder.stem_conv_prelu_pool_kernel]


@pytest.mark.parametrize("kernel", KERNELS, ids=lambda k: k.fn.__name__)
def test_fits_one_screen(kernel):
    assert len(inspect.getsource(kernel.fn).splitlines()) <= 40


def randn(gen, *shape, scale=1.0):
    return torch.randn(*shape, generator=gen) * scale


def test_gemm1x1_and_conv3x3():
    gen = torch.Generator().manual_seed(0)
    x, b = randn(gen, 2, 17, 3, 5), randn(gen, 18)
    x[0, 4, 1, 2] = float("nan")
    w1, w3 = randn(gen, 18, 17, 1, 1, scale=0.3), randn(gen, 18, 17, 3, 3, scale=0.1)
    fused.assert_close(ladder.conv1x1_bias_leaky(x, w1, b), F.leaky_relu(F.conv2d(x.double(), w1.double(), b.double()), 0.1),
                       reduction_length=17)
    fused.assert_close(ladder.conv3x3_bias_leaky(x, w3, b),
                       F.leaky_relu(F.conv2d(x.double(), w3.double(), b.double(), padding=1), 0.1), reduction_length=17 * 9)


@pytest.mark.parametrize("stride", [1, 2])
def test_depthwise(stride):
    gen = torch.Generator().manual_seed(stride)
    x, w, b = randn(gen, 2, 18, 5, 7), randn(gen, 18, 1, 3, 3), randn(gen, 18)
    expected = F.leaky_relu(F.conv2d(x.double(), w.double(), b.double(), stride=stride, padding=1, groups=18), 0.1)
    fused.assert_close(ladder.depthwise3x3_bias_leaky(x, w, b, stride=stride), expected, reduction_length=9)


def test_squeeze():
    x = randn(torch.Generator().manual_seed(3), 3, 3, 7, 9)
    x[2, 1, 6, 8] = float("inf")
    fused.assert_close(ladder.squeeze_mean(x, splits=3), x.double().mean((2, 3)), reduction_length=63)


def test_upsample_add_takes_pytorchs_float32_rows():
    gen = torch.Generator().manual_seed(4)
    x, coarse, w, b = randn(gen, 1, 3, 82, 2), randn(gen, 1, 5, 2, 2), randn(gen, 5, 3, 1, 1), randn(gen, 5)
    expected = F.leaky_relu(F.conv2d(x.double(), w.double(), b.double()), 0.1) + F.interpolate(
        coarse.double(), size=(82, 2), mode="nearest")
    fused.assert_close(ladder.lateral_upsample_add(x, w, b, coarse), expected, reduction_length=3)


def test_stem_pool_keeps_nan():
    gen = torch.Generator().manual_seed(5)
    x, w, b, slopes = randn(gen, 2, 1, 7, 9), randn(gen, 18, 1, 3, 3), randn(gen, 18), torch.linspace(-0.5, 0.5, 18)
    x[1, 0, 3, 3] = float("nan")
    expected = F.max_pool2d(F.prelu(F.conv2d(x.double(), w.double(), b.double(), padding=1), slopes.double()), 2)
    got = ladder.stem_conv_prelu_pool(x, w, b, slopes)
    assert got.isnan().any()
    fused.assert_close(got, expected, reduction_length=9)
