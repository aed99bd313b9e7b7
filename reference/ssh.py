"""SSH: the single-stage headless context module applied to each FPN level."""

import torch
import torch.nn.functional as F
from torch import nn

from .block_types import block_class
from .checks import check_feature_map
from .conv_blocks import conv_bn, conv_bn_no_relu


@block_class
class SSH(nn.Module):
    """Three branches of growing receptive field (3x3, 5x5 and 7x7 as stacked 3x3 convs).

    The branches give ``out//2``, ``out//4`` and ``out//4`` channels; they are concatenated in
    that order and passed through one ReLU. The 5x5 and 7x7 branches share their first conv.
    """

    def __init__(self, in_channel: int, out_channel: int):
        super().__init__()
        if out_channel % 4 != 0:
            raise ValueError(f"SSH out_channel must be a multiple of 4, got {out_channel}")
        leaky = 0.1 if out_channel <= 64 else 0
        self.in_channel = in_channel
        self.conv3X3 = conv_bn_no_relu(in_channel, out_channel // 2, stride=1)
        self.conv5X5_1 = conv_bn(in_channel, out_channel // 4, stride=1, leaky=leaky)
        self.conv5X5_2 = conv_bn_no_relu(out_channel // 4, out_channel // 4, stride=1)
        self.conv7X7_2 = conv_bn(out_channel // 4, out_channel // 4, stride=1, leaky=leaky)
        self.conv7x7_3 = conv_bn_no_relu(out_channel // 4, out_channel // 4, stride=1)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        check_feature_map(input, self.in_channel, "SSH")
        conv3X3 = self.conv3X3(input)
        conv5X5_1 = self.conv5X5_1(input)
        conv5X5 = self.conv5X5_2(conv5X5_1)
        conv7X7_2 = self.conv7X7_2(conv5X5_1)
        conv7X7 = self.conv7x7_3(conv7X7_2)
        out = torch.cat([conv3X3, conv5X5, conv7X7], dim=1)
        return F.relu(out)
