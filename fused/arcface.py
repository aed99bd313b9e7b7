"""Fused ResNetArcFace: the stem in the conv kernel, the fused IRBlocks, and the head folded.

The stem's conv1 + bn1 + PReLU is one conv kernel. The head ``bn4 → dropout → flatten → fc5 →
bn5`` is affine in eval mode (dropout is the identity), so both BatchNorms fold exactly into
fc5: one matrix multiply (PyTorch's) replaces five ops.

Activations are channels_last (NHWC) from the stem on: the stem reads the input as given and
writes NHWC, every later kernel reads and writes by strides, and the flattened 512x8x8 map is
read in NHWC order ``(h, w, c)``. The fold permutes fc5's columns from the reference's
``(c, h, w)`` order to match (a pure permutation: the same weights, moved), so the output is
the reference's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import reference

from .base import FusedModule, channels_last_output, conv_weights, prelu_slopes
from .folding import batchnorm_affine
from .kernels.conv2d import conv2d_bias_act


def nhwc_columns(weight: torch.Tensor, channels: int) -> torch.Tensor:
    """A linear layer's ``[out, C*H*W]`` weight, whose columns are in NCHW flatten order
    ``(c, h, w)``, with its columns moved to NHWC order ``(h, w, c)`` (only moved, never changed)."""
    out = weight.shape[0]
    return weight.reshape(out, channels, -1).transpose(1, 2).reshape(out, -1).contiguous()


class FusedResNetArcFace(FusedModule, reference.ResNetArcFace, block_types=("ResNetArcFace",)):
    """``reference.ResNetArcFace`` with its stem and head fused; :func:`fused.fuse` fuses its blocks."""

    fuses_children = True
    #: The stem and the head (dropout is the identity in eval mode); the blocks in between are
    #: fused on their own and cache their own folded weights.
    handled_children = ("conv1", "bn1", "prelu", "bn4", "dropout", "fc5", "bn5")

    def fold(self, dtype, device):
        s4, t4 = batchnorm_affine(self.bn4)  # per channel of the 512x8x8 map
        s5, t5 = batchnorm_affine(self.bn5)
        channels = s4.numel()
        positions = self.fc5.in_features // channels  # h * w
        s4, t4 = s4.repeat_interleave(positions), t4.repeat_interleave(positions)  # (c, h, w) order
        w = self.fc5.weight.detach().float()
        head_weight = s5[:, None] * w * s4[None, :]
        head_bias = s5 * (w @ t4 + self.fc5.bias.detach().float()) + t5
        head_weight = nhwc_columns(head_weight, channels)
        return {
            "stem": conv_weights(self.conv1, self.bn1, dtype, device),
            "prelu": prelu_slopes(self.prelu, self.conv1.out_channels, device),
            "head": (head_weight.to(device=device, dtype=dtype), head_bias.to(device=device, dtype=dtype)),
        }

    def fused_forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        f = self.folded(x.dtype, x.device)
        weight, bias = f["stem"]
        x = conv2d_bias_act(x, weight, bias, padding=1, activation="prelu", slope=f["prelu"],
                            precision=self.dot_precision(x), out=channels_last_output(x, self.conv1))
        x = self.maxpool(x)  # PyTorch's max pool keeps channels_last
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return F.linear(x.permute(0, 2, 3, 1).flatten(1), *f["head"])  # (h, w, c) order: a view of NHWC

    def reference_forward(self, x: torch.Tensor) -> torch.Tensor:
        return reference.ResNetArcFace.forward(self, x)
