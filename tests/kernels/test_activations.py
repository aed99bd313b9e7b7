"""The one activation table (``reference.block_types.ACTIVATIONS``) and the kernels' epilogue
(``fused.kernels.common.activate``) agree: every activation a block may end with is applied by
the kernels as its ``torch.nn.functional`` function, NaN and ±Inf included."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fused.kernels import common
from fused.kernels.conv2d import conv2d_bias_act
from fused.kernels.depthwise import conv_dw_fused, depthwise_conv_bias_act
from reference.block_types import ACTIVATIONS, activation_name

VALUES = [math.nan, math.inf, -math.inf, -7.5, -1.0, -0.0, 0.0, 0.5, 5.99, 6.0, 6.01, 100.0]
SLOPE = 0.2


def functional(name, y):
    """``torch.nn.functional.<name>`` as the reference block's module applies it."""
    if name == "leaky_relu":
        return F.leaky_relu(y, SLOPE)
    if name == "prelu":
        return F.prelu(y, torch.full((y.shape[1],), SLOPE, dtype=y.dtype))
    return getattr(F, name)(y)


def same(a, b):
    return torch.equal(a.isnan(), b.isnan()) and torch.equal(torch.nan_to_num(a), torch.nan_to_num(b))


def test_the_table_and_the_kernel_codes_name_the_same_activations():
    assert set(ACTIVATIONS.values()) | {"identity"} == set(common.ACTIVATIONS)
    assert set(common.SCALAR_ACTIVATIONS) == set(common.ACTIVATIONS) - {"prelu"}
    assert activation_name(nn.ReLU6()) == "relu6" and activation_name(nn.Hardtanh(0, 6)) is None


@pytest.mark.parametrize("name", sorted(ACTIVATIONS.values()))
def test_every_activation_of_the_table_is_its_functional_in_the_kernels(name):
    x = torch.tensor(VALUES).reshape(-1, 1, 1, 1)  # one value per sample: a product never mixes values
    slope = torch.full((1,), SLOPE) if name == "prelu" else SLOPE
    expected = functional(name, x)  # PyTorch's float32 result: the kernels compute in float32 too
    one = torch.ones(1, 1, 1, 1)  # the 1x1 conv as the identity: y = x exactly
    out = conv2d_bias_act(x, one, None, activation=name, slope=slope, precision="ieee")
    assert same(out, expected), (name, out.flatten(), expected.flatten())
    dw = torch.zeros(1, 1, 3, 3)
    dw[:, :, 1, 1] = 1  # the depthwise 3x3 as the identity
    out = depthwise_conv_bias_act(x, dw, None, activation=name, slope=slope)
    assert same(out, expected), (name, out.flatten())
    if name in common.SCALAR_ACTIVATIONS:
        out = conv_dw_fused(x, dw, torch.zeros(1), one, torch.zeros(1), dw_activation="identity",
                            pw_activation=name, dw_slope=0.0, pw_slope=SLOPE)
        assert same(out, expected), (name, out.flatten())
