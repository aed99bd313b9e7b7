"""Fused backbones whose stem is loose layers: ResNet-50's ``conv1 → bn1 → relu`` and
RetinaFace's ``body``, which holds a backbone's children directly.

A stem that is a bare ``Conv2d → BatchNorm2d [→ activation]`` run of children (not wrapped in a
block) is folded and run as one conv kernel; every other child runs as it is (fused blocks
included). This covers the 7x7 stride-2 stem of the ResNet-50 detector.

Activations are channels_last (NHWC) from the first kernel on: a stem that comes first reads
the input as given and writes NHWC (no conversion copy); otherwise the input is converted once.
Every later kernel reads and writes by strides and PyTorch's pooling keeps the layout, so the
feature maps these modules return (``FusedIntermediateLayers``' list, ``FusedResNet50``'s
``layer4`` map) are channels_last, with the reference's values and shapes: call
``.contiguous()`` where NCHW memory is needed (``.view`` of the flattened map, say).
"""

from __future__ import annotations

import torch
from torch import nn

import reference
from reference.block_types import activation_name
from reference.checks import check_feature_map
from reference.retinaface import IntermediateLayers

from .base import FusedModule, channels_last_output, conv_weights, prelu_slopes
from .conv_bn_act import activation_of, unsupported_conv
from .kernels.conv2d import conv2d_bias_act



def find_stems(module: nn.Module, keep_outputs=()) -> tuple[tuple[str, ...], ...]:
    """Runs of children ``(conv, bn[, activation])`` that one conv kernel can replace.

    A run is skipped if one of its members other than the last is in ``keep_outputs`` (an
    intermediate output someone reads).
    """
    children = list(module.named_children())
    stems = []
    for i, (name, child) in enumerate(children[:-1]):
        bn_name, bn = children[i + 1]
        if not isinstance(child, nn.Conv2d) or not isinstance(bn, nn.BatchNorm2d) or unsupported_conv(child):
            continue
        run = [name, bn_name]
        if i + 2 < len(children) and activation_name(children[i + 2][1]) is not None:
            run.append(children[i + 2][0])
        if not any(member in keep_outputs for member in run[:-1]):
            stems.append(tuple(run))
    return tuple(stems)


def _activation(module: nn.Module | None, channels: int, device):
    """``(activation, slope)`` for the conv kernel, a PReLU's slopes prepared once (at fold time)."""
    name, slope = activation_of(module)
    if name == "prelu":
        return name, prelu_slopes(module, channels, device)
    return name, slope


class _FusedStems(FusedModule):
    """Runs the children in order, each stem run as one conv kernel."""

    fuses_children = True
    stems: tuple[tuple[str, ...], ...] = ()

    @classmethod
    def inner_children(cls, module) -> tuple[str, ...]:
        stems = module.stems if isinstance(module, _FusedStems) else find_stems(module, getattr(module, "return_layers", ()))
        return tuple(name for run in stems for name in run)

    @classmethod
    def from_reference(cls, module):
        fused = super().from_reference(module)
        fused.stems = find_stems(fused, getattr(fused, "return_layers", ()))
        fused.handled_children = cls.inner_children(fused)
        return fused

    def fold(self, dtype, device):
        out = {}
        for run in self.stems:
            conv = getattr(self, run[0])
            act = getattr(self, run[2]) if len(run) == 3 else None
            out[run[0]] = (conv_weights(conv, getattr(self, run[1]), dtype, device),
                           _activation(act, conv.out_channels, device))
        return out

    def run_children(self, x: torch.Tensor, tap=()) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Run every child (stems fused), activations channels_last; return the last output and
        those of the children in ``tap``."""

        folded = self.folded(x.dtype, x.device)
        starts = {run[0]: run for run in self.stems}
        if x.dim() == 4 and next(iter(self._modules), None) not in starts:
            x = x.contiguous(memory_format=torch.channels_last)  # no stem first to write NHWC
        skip: tuple[str, ...] = ()
        taps = []
        for name, child in self.named_children():
            if name in starts:
                (weight, bias), (activation, slope) = folded[name]
                conv = getattr(self, name)
                x = conv2d_bias_act(x, weight, bias, stride=conv.stride[0], padding=conv.padding[0],
                                    activation=activation, slope=slope, precision=self.dot_precision(x),
                                    out=channels_last_output(x, conv))
                skip = starts[name][1:]
            elif name not in skip:
                x = child(x)
            if name in tap:
                taps.append(x)
        return x, taps


class FusedIntermediateLayers(_FusedStems, IntermediateLayers, block_types=("IntermediateLayers",)):
    """RetinaFace's ``body`` with any loose conv → BN → activation stem fused (ResNet-50's 7x7)."""

    def fused_forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.run_children(x, self.return_layers)[1]

    def reference_forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return IntermediateLayers.forward(self, x)


class FusedResNet50(_FusedStems, reference.ResNet50, block_types=("ResNet50",)):
    """``reference.ResNet50`` with its 7x7 stem (conv1 + bn1 + ReLU) as one conv kernel."""

    def fused_forward(self, x: torch.Tensor) -> torch.Tensor:
        check_feature_map(x, self.conv1.in_channels, "ResNet50")
        return self.run_children(x)[0]

    def reference_forward(self, x: torch.Tensor) -> torch.Tensor:
        return reference.ResNet50.forward(self, x)
