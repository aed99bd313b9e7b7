"""Fused conv_dw: MobileNetV1's depthwise-separable block (six eager kernels) in one or two kernels.

``conv_dw`` is depthwise 3x3 → BN → LeakyReLU → pointwise 1x1 → BN → LeakyReLU. Two fused
versions exist, and the record names the one that ran:

* ``"fused"``: one kernel (:func:`fused.kernels.depthwise.conv_dw_fused`); the depthwise result
  stays in registers and feeds the pointwise GEMM, so the intermediate tensor never touches memory;
* ``"two_kernels"``: the depthwise kernel then the conv kernel (the intermediate is written once).

``FusedConvDW.kernel`` picks one per module; :func:`fused.fuse` leaves the default, ``"fused"``,
until GPU measurements say where the two-kernel version is faster.
"""

from __future__ import annotations

import torch
from torch import nn

from reference.checks import check_feature_map

from .base import FusedModule, conv_weights, kernel_weight
from .conv_bn_act import activation_of
from .folding import fold_batchnorm
from .kernels.common import SCALAR_ACTIVATIONS
from .kernels.conv2d import conv2d_bias_act
from .kernels.depthwise import conv_dw_fused, depthwise_conv_bias_act

KERNELS = ("fused", "two_kernels")


class FusedConvDW(FusedModule, nn.Sequential, block_types=("conv_dw",)):
    """``reference.conv_dw`` with BN folded and the whole block run by Triton kernels."""

    @classmethod
    def unsupported_reason(cls, seq: nn.Sequential) -> str | None:
        dw, pw = seq[0], seq[3]
        if dw.stride[0] != dw.stride[1] or dw.stride[0] not in (1, 2):
            return f"depthwise stride {dw.stride} (the kernel takes 1 or 2)"
        if pw.stride != (1, 1) or pw.padding != (0, 0):
            return "pointwise conv with stride or padding"
        for index in (2, 5):
            name, _ = activation_of(seq[index])
            if name not in SCALAR_ACTIVATIONS:
                return f"{type(seq[index]).__name__} after layer {index - 1} (the conv_dw kernels take activations with one scalar slope)"
        return None

    @property
    def kernel(self) -> str:
        return self.__dict__.get("_kernel", "fused")

    @kernel.setter
    def kernel(self, value: str) -> None:
        if value not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got {value!r}")
        self.__dict__["_kernel"] = value

    def fold(self, dtype, device):
        dw_weight, dw_bias = fold_batchnorm(self[0].weight, self[0].bias, self[1])
        pw_weight, pw_bias = conv_weights(self[3], self[4], dtype, device)
        return {
            "dw_weight": kernel_weight(dw_weight, dtype).to(device),  # channels innermost: vector loads
            "dw_bias": dw_bias.to(device),
            "pw_weight": pw_weight,
            "pw_bias": pw_bias,
        }

    def fused_forward(self, x: torch.Tensor) -> torch.Tensor:
        check_feature_map(x, self[0].in_channels, f"conv_dw ({self.facefuse_path or 'fused'})")
        f = self.folded(x.dtype, x.device)
        stride = self[0].stride[0]
        precision = self.dot_precision(x)
        (dw_activation, dw_slope), (pw_activation, pw_slope) = activation_of(self[2]), activation_of(self[5])
        if self.kernel == "fused":
            return conv_dw_fused(
                x, f["dw_weight"], f["dw_bias"], f["pw_weight"], f["pw_bias"], stride=stride,
                dw_slope=dw_slope, pw_slope=pw_slope, dw_activation=dw_activation, pw_activation=pw_activation,
                precision=precision,
            )
        mid = depthwise_conv_bias_act(x, f["dw_weight"], f["dw_bias"], stride=stride, activation=dw_activation, slope=dw_slope)
        return conv2d_bias_act(mid, f["pw_weight"], f["pw_bias"], activation=pw_activation, slope=pw_slope, precision=precision)

    def reference_forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.Sequential.forward(self, x)


def conv_dw(inp: int, oup: int, stride: int, leaky: float = 0.1) -> FusedConvDW:
    """Fused twin of :func:`reference.conv_dw` (same arguments, same state_dict)."""
    import reference

    return FusedConvDW.from_reference(reference.conv_dw(inp, oup, stride, leaky))
