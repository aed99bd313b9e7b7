"""The residual blocks: BasicBlock, IRBlock (ArcFace) and Bottleneck (ResNet-50)."""

import torch
from torch import nn

from .block_types import block_class
from .squeeze_excite import SEBlock


def conv3x3(inplanes: int, outplanes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 conv with padding 1 and no bias."""
    return nn.Conv2d(inplanes, outplanes, kernel_size=3, stride=stride, padding=1, bias=False)


@block_class
class BasicBlock(nn.Module):
    """conv3x3 → BN → ReLU → conv3x3 → BN, plus the (downsampled) input, then ReLU."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            residual = self.downsample(x)
        out += residual
        return self.relu(out)


@block_class
class IRBlock(nn.Module):
    """ArcFace's improved residual block.

    BN → conv3x3 → BN → PReLU → conv3x3(stride) → BN → [squeeze-excite] → + residual → PReLU.
    One PReLU (one shared slope) is used twice. ``bn0`` normalises the input *before* a
    zero-padded conv, so it cannot be folded exactly into ``conv1``'s weights at the border.
    """

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None, use_se: bool = True):
        super().__init__()
        self.bn0 = nn.BatchNorm2d(inplanes)
        self.conv1 = conv3x3(inplanes, inplanes)
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.prelu = nn.PReLU()
        self.conv2 = conv3x3(inplanes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride
        self.use_se = use_se
        if self.use_se:
            self.se = SEBlock(planes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x
        out = self.bn0(x)
        out = self.prelu(self.bn1(self.conv1(out)))
        out = self.bn2(self.conv2(out))
        if self.use_se:
            out = self.se(out)
        if self.downsample is not None:
            residual = self.downsample(x)
        out += residual
        return self.prelu(out)


@block_class
class Bottleneck(nn.Module):
    """1x1 conv → BN → ReLU → 3x3 conv(stride) → BN → ReLU → 1x1 conv (×4 channels) → BN, + residual, ReLU."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            residual = self.downsample(x)
        out += residual
        return self.relu(out)


def make_layer(block, inplanes: int, planes: int, num_blocks: int, stride: int = 1, **block_kwargs) -> nn.Sequential:
    """``num_blocks`` blocks; the first changes stride/width and gets a 1x1 conv + BN downsample if needed."""
    downsample = None
    if stride != 1 or inplanes != planes * block.expansion:
        downsample = nn.Sequential(
            nn.Conv2d(inplanes, planes * block.expansion, kernel_size=1, stride=stride, bias=False),
            nn.BatchNorm2d(planes * block.expansion),
        )
    layers = [block(inplanes, planes, stride, downsample, **block_kwargs)]
    inplanes = planes * block.expansion
    layers += [block(inplanes, planes, **block_kwargs) for _ in range(1, num_blocks)]
    return nn.Sequential(*layers)
