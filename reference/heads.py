"""RetinaFace's prediction heads: a 1x1 conv per FPN level, reshaped to one row per anchor."""

import torch
from torch import nn

from .block_types import block_class
from .checks import check_feature_map


class _AnchorHead(nn.Module):
    """A 1x1 conv (with bias) giving ``num_anchors * values`` channels, as ``[N, H*W*anchors, values]``."""

    values = 0

    def __init__(self, inchannels: int = 512, num_anchors: int = 3):
        super().__init__()
        self.num_anchors = num_anchors
        self.conv1x1 = nn.Conv2d(inchannels, num_anchors * self.values, kernel_size=(1, 1), stride=1, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_feature_map(x, self.conv1x1.in_channels, type(self).__name__)
        out = self.conv1x1(x)
        out = out.permute(0, 2, 3, 1).contiguous()
        n, h, w, _ = out.shape  # explicit sizes (not -1), so an empty batch reshapes too
        return out.view(n, h * w * self.num_anchors, self.values)


@block_class
class ClassHead(_AnchorHead):
    """Face / not-face logits: ``[N, H*W*anchors, 2]``."""

    values = 2


@block_class
class BboxHead(_AnchorHead):
    """Box offsets (dx, dy, dw, dh) relative to the priors: ``[N, H*W*anchors, 4]``."""

    values = 4


@block_class
class LandmarkHead(_AnchorHead):
    """Five landmark offsets (x, y pairs): ``[N, H*W*anchors, 10]``."""

    values = 10


def make_class_head(fpn_num: int = 3, inchannels: int = 64, anchor_num: int = 2) -> nn.ModuleList:
    """One ClassHead per FPN level."""
    return nn.ModuleList([ClassHead(inchannels, anchor_num) for _ in range(fpn_num)])


def make_bbox_head(fpn_num: int = 3, inchannels: int = 64, anchor_num: int = 2) -> nn.ModuleList:
    """One BboxHead per FPN level."""
    return nn.ModuleList([BboxHead(inchannels, anchor_num) for _ in range(fpn_num)])


def make_landmark_head(fpn_num: int = 3, inchannels: int = 64, anchor_num: int = 2) -> nn.ModuleList:
    """One LandmarkHead per FPN level."""
    return nn.ModuleList([LandmarkHead(inchannels, anchor_num) for _ in range(fpn_num)])
