"""RetinaFace's convolution helpers: a conv, an eval-mode BatchNorm and a LeakyReLU in a row.

Each helper returns an ``nn.Sequential`` whose indices are the state_dict positions of the
released weights (``0`` conv, ``1`` BN, ``2`` activation, ...). All convolutions have no bias;
every LeakyReLU is in-place; a slope of 0 is a ReLU. These sequences are what the conv+BN+act
kernels fuse: in eager PyTorch each is three kernels and two intermediate tensors.
"""

from torch import nn


def conv_bn(inp: int, oup: int, stride: int = 1, leaky: float = 0) -> nn.Sequential:
    """3x3 conv (padding 1) → BN → LeakyReLU(leaky)."""
    return nn.Sequential(
        nn.Conv2d(inp, oup, 3, stride, 1, bias=False),
        nn.BatchNorm2d(oup),
        nn.LeakyReLU(negative_slope=leaky, inplace=True),
    )


def conv_bn_no_relu(inp: int, oup: int, stride: int) -> nn.Sequential:
    """3x3 conv (padding 1) → BN, no activation (SSH applies one ReLU after its concat)."""
    return nn.Sequential(
        nn.Conv2d(inp, oup, 3, stride, 1, bias=False),
        nn.BatchNorm2d(oup),
    )


def conv_bn1X1(inp: int, oup: int, stride: int, leaky: float = 0) -> nn.Sequential:
    """1x1 conv (padding 0) → BN → LeakyReLU(leaky): FPN's lateral connections."""
    return nn.Sequential(
        nn.Conv2d(inp, oup, 1, stride, padding=0, bias=False),
        nn.BatchNorm2d(oup),
        nn.LeakyReLU(negative_slope=leaky, inplace=True),
    )


def conv_dw(inp: int, oup: int, stride: int, leaky: float = 0.1) -> nn.Sequential:
    """Depthwise-separable conv: depthwise 3x3 → BN → LeakyReLU → pointwise 1x1 → BN → LeakyReLU.

    The depthwise conv has one 3x3 filter per channel (``groups=inp``); the pointwise conv mixes
    channels. MobileNetV1 is thirteen of these.
    """
    return nn.Sequential(
        nn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False),
        nn.BatchNorm2d(inp),
        nn.LeakyReLU(negative_slope=leaky, inplace=True),
        nn.Conv2d(inp, oup, 1, 1, 0, bias=False),
        nn.BatchNorm2d(oup),
        nn.LeakyReLU(negative_slope=leaky, inplace=True),
    )
