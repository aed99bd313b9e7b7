"""Fused conv → BatchNorm → activation: RetinaFace's conv_bn, conv_bn_no_relu and conv_bn1X1.

One Triton kernel (an implicit-GEMM convolution with a bias + activation epilogue) replaces the
three eager kernels and the two intermediate tensors between them.
"""

from __future__ import annotations

import torch
from torch import nn

import reference
from reference.block_types import ACTIVATIONS, activation_name
from reference.checks import check_feature_map

from .base import FusedModule, conv_weights
from .kernels.conv2d import conv2d_bias_act


def activation_of(act: nn.Module | None) -> tuple[str, float | torch.Tensor]:
    """An activation module (or None) as ``(name, slope)`` for the kernels.

    The name is the module's in the one activation table, :data:`reference.block_types.ACTIVATIONS`
    (the kernels apply every name of it); the slope is a LeakyReLU's ``negative_slope``, a
    PReLU's weight, or 0 for activations without a parameter. A LeakyReLU with slope 0 stays a
    LeakyReLU: unlike ReLU it turns -inf into NaN (-inf * 0). Raises ValueError for a module
    that is not in the table.
    """
    if act is None:
        return "identity", 0.0
    name = activation_name(act)
    if name is None:
        raise ValueError(f"{type(act).__name__} is not an activation the kernels apply; they apply "
                         f"{', '.join(sorted(c.__name__ for c in ACTIVATIONS))} (reference.block_types.ACTIVATIONS)")
    if name == "prelu":
        return name, act.weight
    return name, float(getattr(act, "negative_slope", 0.0))


def conv_bn_activation(seq: nn.Sequential) -> tuple[str, float]:
    """The activation after the BN of a conv-BN sequence, as ``(name, slope)`` for the kernel."""
    return activation_of(seq[2] if len(seq) > 2 else None)


def unsupported_conv(conv: nn.Conv2d) -> str | None:
    """Why the conv kernel cannot run this convolution, or None."""
    k, s, p = conv.kernel_size, conv.stride, conv.padding
    if conv.groups != 1:
        return f"groups={conv.groups} (the conv kernel takes groups=1)"
    if k[0] != k[1] or k[0] % 2 == 0:
        return f"kernel {k} is not square and odd"
    if s[0] != s[1] or p[0] != p[1] or isinstance(conv.padding, str):
        return f"non-uniform stride {s} or padding {p}"
    if conv.dilation != (1, 1) or conv.padding_mode != "zeros":
        return "dilation or non-zero padding mode"
    return None


class FusedConvBNAct(FusedModule, nn.Sequential,
                     block_types=("conv_bn", "conv_bn_no_relu", "conv_bn1X1", "conv_bn_pair")):
    """``Sequential(Conv2d, BatchNorm2d[, LeakyReLU/ReLU])`` run as one Triton kernel.

    Holds the reference sequence's own layers, so ``state_dict`` keys (``0.weight``,
    ``1.running_mean``, ...) are unchanged. Build it with :meth:`from_reference`, or with
    :func:`fused.conv_bn` and friends, which mirror the reference helpers' signatures.
    """

    @classmethod
    def unsupported_reason(cls, seq: nn.Sequential) -> str | None:
        return unsupported_conv(seq[0])

    @classmethod
    def from_reference(cls, seq: nn.Sequential) -> "FusedConvBNAct":
        kind = reference.block_type(seq) or "conv_bn"
        fused = super().from_reference(seq)
        fused.block_type = kind
        return fused

    def fold(self, dtype, device):
        weight, bias = conv_weights(self[0], self[1], dtype, device)
        return {"weight": weight, "bias": bias}

    def fused_forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = self[0]
        check_feature_map(x, conv.in_channels, f"{self.block_type} ({self.facefuse_path or 'fused'})")
        folded = self.folded(x.dtype, x.device)
        activation, slope = conv_bn_activation(self)
        precision = self.dot_precision(x)
        return conv2d_bias_act(
            x, folded["weight"], folded["bias"], stride=conv.stride[0], padding=conv.padding[0],
            activation=activation, slope=slope, precision=precision,
        )

    def reference_forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.Sequential.forward(self, x)


def conv_bn(inp: int, oup: int, stride: int = 1, leaky: float = 0) -> FusedConvBNAct:
    """Fused twin of :func:`reference.conv_bn` (same arguments, same state_dict)."""
    return FusedConvBNAct.from_reference(reference.conv_bn(inp, oup, stride, leaky))


def conv_bn_no_relu(inp: int, oup: int, stride: int) -> FusedConvBNAct:
    """Fused twin of :func:`reference.conv_bn_no_relu`."""
    return FusedConvBNAct.from_reference(reference.conv_bn_no_relu(inp, oup, stride))


def conv_bn1X1(inp: int, oup: int, stride: int, leaky: float = 0) -> FusedConvBNAct:
    """Fused twin of :func:`reference.conv_bn1X1`."""
    return FusedConvBNAct.from_reference(reference.conv_bn1X1(inp, oup, stride, leaky))
