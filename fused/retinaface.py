"""Fused RetinaFace: every block fused, and the heads of each level as one GEMM into the outputs.

:func:`fused.fuse` swaps the backbone's blocks, the FPN, the SSH modules and the heads. This
module adds what only the whole model can do: the reference concatenates each head type over the
three levels (``torch.cat``) after each head's ``permute`` + ``contiguous`` copy, then runs a
softmax over the class logits. Here the model allocates its three outputs once, and per level
one :func:`fused.kernels.heads.anchor_heads` launch computes the class, box and landmark convs
together (the SSH map is read once), applies the softmax in registers and stores every value at
its final place, at the level's row offset. Nothing is copied or concatenated.
"""

from __future__ import annotations

import torch

import reference
from reference.checks import check_feature_map

from .base import FusedModule, autocast_dtype
from .heads import head_weights, unsupported_head
from .kernels.heads import anchor_heads

HEADS = ("ClassHead", "BboxHead", "LandmarkHead")  # the stacked order: softmax applies to the first


class FusedRetinaFace(FusedModule, reference.RetinaFace, block_types=("RetinaFace",)):
    """``reference.RetinaFace`` with its heads fused per level; :func:`fused.fuse` fuses its blocks."""

    fuses_children = True

    @classmethod
    def unsupported_reason(cls, model: reference.RetinaFace) -> str | None:
        heads = [h for name in HEADS for h in getattr(model, name)]
        for head in heads:
            reason = unsupported_head(head)
            if reason is not None:
                return reason
        if len({(h.num_anchors, h.conv1x1.in_channels) for h in heads}) != 1:
            return "the heads differ in anchors or input channels"
        if not len(model.ClassHead) == len(model.BboxHead) == len(model.LandmarkHead):
            return "the head lists differ in length"
        return None

    @classmethod
    def inner_children(cls, model) -> tuple[str, ...]:
        """The heads, which the fused path runs per level itself (the blocks cache their own folds)."""
        return HEADS

    def fold(self, dtype, device):
        levels = zip(self.ClassHead, self.BboxHead, self.LandmarkHead)
        return {"heads": [head_weights(level, dtype, device) for level in levels]}

    def fused_forward(self, inputs: torch.Tensor):
        check_feature_map(inputs, 3, "RetinaFace")
        features = self.fpn(self.body(inputs))
        features = [self.ssh1(features[0]), self.ssh2(features[1]), self.ssh3(features[2])]
        folded = self.folded(inputs.dtype, inputs.device)
        anchors = self.ClassHead[0].num_anchors
        priors = sum(f.shape[2] * f.shape[3] * anchors for f in features)
        n = inputs.shape[0]
        scores, boxes, landmarks = (inputs.new_empty((n, priors, values)) for values in (2, 4, 10))
        offset = 0
        for feature, (weight, bias) in zip(features, folded["heads"]):
            anchor_heads(feature, weight, bias, (scores, boxes, landmarks), anchors=anchors, row_offset=offset,
                         softmax=self.phase == "test", precision=self.dot_precision(inputs))
            offset += feature.shape[2] * feature.shape[3] * anchors
        if self.phase == "test" and autocast_dtype((inputs,)) is not None:
            # The reference's softmax under autocast: float32 on CUDA (autocast runs softmax in
            # float32 there), the autocast dtype on the CPU. Ask autocast itself, on an empty tensor.
            softmax_dtype = torch.softmax(scores.new_empty((0,)), -1).dtype
            scores = scores.to(softmax_dtype)
        return boxes, scores, landmarks

    def reference_forward(self, inputs: torch.Tensor):
        return reference.RetinaFace.forward(self, inputs)
