"""MobileNetV1 at width 0.25: RetinaFace's light backbone."""

import torch
from torch import nn

from .checks import check_feature_map
from .conv_blocks import conv_bn, conv_dw


class MobileNetV1(nn.Module):
    """A strided ``conv_bn`` then thirteen ``conv_dw`` blocks in three stages (every slope 0.1).

    ``stage1`` gives 64 channels at 1/8 of the input, ``stage2`` 128 at 1/16, ``stage3`` 256 at
    1/32. RetinaFace uses the three stage outputs; ``avg`` and ``fc`` (an ImageNet classifier) are
    not part of the detector.
    """

    def __init__(self):
        super().__init__()
        self.stage1 = nn.Sequential(
            conv_bn(3, 8, 2, leaky=0.1),
            conv_dw(8, 16, 1),
            conv_dw(16, 32, 2),
            conv_dw(32, 32, 1),
            conv_dw(32, 64, 2),
            conv_dw(64, 64, 1),
        )
        self.stage2 = nn.Sequential(
            conv_dw(64, 128, 2),
            conv_dw(128, 128, 1),
            conv_dw(128, 128, 1),
            conv_dw(128, 128, 1),
            conv_dw(128, 128, 1),
            conv_dw(128, 128, 1),
        )
        self.stage3 = nn.Sequential(
            conv_dw(128, 256, 2),
            conv_dw(256, 256, 1),
        )
        self.avg = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(256, 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_feature_map(x, 3, "MobileNetV1")
        x = self.stage1(x)
        x = self.stage2(x)
        x = self.stage3(x)
        x = self.avg(x)
        x = x.view(-1, 256)
        return self.fc(x)
