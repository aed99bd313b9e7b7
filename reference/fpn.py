"""FPN: merges three backbone levels top-down into maps of one channel width."""

import torch.nn.functional as F
from torch import nn

from .block_types import block_class
from .checks import check_feature_map
from .conv_blocks import conv_bn, conv_bn1X1


@block_class
class FPN(nn.Module):
    """Feature pyramid: 1x1 laterals, nearest upsampling by explicit size, add, 3x3 merge.

    The upsampling goes to the finer map's exact size (not always 2x: 1080 rows give maps of
    135, 68 and 34 rows), so output row ``d`` reads source row ``floor(d * in / out)``.
    """

    def __init__(self, in_channels_list, out_channels: int):
        super().__init__()
        if len(in_channels_list) != 3:
            raise ValueError(f"FPN takes three input widths, got {len(in_channels_list)}")
        leaky = 0.1 if out_channels <= 64 else 0
        self.in_channels_list = list(in_channels_list)
        self.output1 = conv_bn1X1(in_channels_list[0], out_channels, stride=1, leaky=leaky)
        self.output2 = conv_bn1X1(in_channels_list[1], out_channels, stride=1, leaky=leaky)
        self.output3 = conv_bn1X1(in_channels_list[2], out_channels, stride=1, leaky=leaky)
        self.merge1 = conv_bn(out_channels, out_channels, leaky=leaky)
        self.merge2 = conv_bn(out_channels, out_channels, leaky=leaky)

    def check_inputs(self, input) -> list:
        """The three feature maps as a list (a dict's values are taken in order), checked."""
        if isinstance(input, dict):
            input = list(input.values())
        if not isinstance(input, (list, tuple)) or len(input) != 3:
            got = len(input) if isinstance(input, (list, tuple)) else type(input).__name__
            raise ValueError(f"FPN expects a list of three feature maps (finest first), got {got}")
        for i, (x, c) in enumerate(zip(input, self.in_channels_list)):
            check_feature_map(x, c, f"FPN input {i}")
        return list(input)

    def forward(self, input):
        input = self.check_inputs(input)
        output1 = self.output1(input[0])
        output2 = self.output2(input[1])
        output3 = self.output3(input[2])

        up3 = F.interpolate(output3, size=output2.shape[-2:], mode="nearest")
        output2 = self.merge2(output2 + up3)
        up2 = F.interpolate(output2, size=output1.shape[-2:], mode="nearest")
        output1 = self.merge1(output1 + up2)
        return [output1, output2, output3]
