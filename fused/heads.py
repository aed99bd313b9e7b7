"""Fused prediction heads: a 1x1 conv stored straight into ``[N, H*W*anchors, values]``.

The reference head runs its conv, then ``permute`` + ``contiguous`` (a full copy) and ``view``.
The fused head is one GEMM whose epilogue stores each column where the permute would have put it
(:func:`fused.kernels.heads.anchor_heads`). Inside a fused RetinaFace the three heads of a level
go further: one GEMM for all three, written into the model's final outputs, softmax included
(see :mod:`fused.retinaface`).
"""

from __future__ import annotations

import torch

import reference
from reference.checks import check_feature_map
from reference.heads import _AnchorHead

from .base import FusedModule
from .kernels.heads import anchor_heads


def head_weights(heads, dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
    """The heads' 1x1 conv weights stacked as ``[sum of outputs, C]`` in ``dtype`` (output
    channels innermost, for coalesced loads) and their biases as one float32 vector."""
    weight = torch.cat([h.conv1x1.weight.detach()[:, :, 0, 0] for h in heads])
    bias = torch.cat([h.conv1x1.bias.detach().float() for h in heads])
    return weight.to(dtype).t().contiguous().t().to(device), bias.to(device)


def unsupported_head(head) -> str | None:
    conv = head.conv1x1
    if conv.kernel_size != (1, 1) or conv.stride != (1, 1) or conv.padding != (0, 0) or conv.bias is None:
        return "the head conv is not a 1x1 stride-1 conv with bias"
    return None


class _FusedAnchorHead(FusedModule):
    """What the three fused heads share."""

    handled_children = ("conv1x1",)

    @classmethod
    def unsupported_reason(cls, head) -> str | None:
        return unsupported_head(head)

    def fold(self, dtype, device):
        return head_weights([self], dtype, device)

    def fused_forward(self, x: torch.Tensor) -> torch.Tensor:
        check_feature_map(x, self.conv1x1.in_channels, f"{type(self).__name__} ({self.facefuse_path or 'fused'})")
        n, _, h, w = x.shape
        out = torch.empty((n, h * w * self.num_anchors, self.values), dtype=x.dtype, device=x.device)
        anchor_heads(x, *self.folded(x.dtype, x.device), (out,), anchors=self.num_anchors,
                     precision=self.dot_precision(x))
        return out

    def reference_forward(self, x: torch.Tensor) -> torch.Tensor:
        return _AnchorHead.forward(self, x)


class FusedClassHead(_FusedAnchorHead, reference.ClassHead, block_types=("ClassHead",)):
    """``reference.ClassHead`` (face/background scores) as one ``anchor_heads`` launch."""


class FusedBboxHead(_FusedAnchorHead, reference.BboxHead, block_types=("BboxHead",)):
    """``reference.BboxHead`` (box offsets) as one ``anchor_heads`` launch."""


class FusedLandmarkHead(_FusedAnchorHead, reference.LandmarkHead, block_types=("LandmarkHead",)):
    """``reference.LandmarkHead`` (landmark offsets) as one ``anchor_heads`` launch."""
