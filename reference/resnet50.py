"""ResNet-50 body for RetinaFace's 'resnet50' config, built from the seed's Bottleneck."""

import torch
from torch import nn

from .residual_blocks import Bottleneck, make_layer


class ResNet50(nn.Module):
    """Stem (7x7 conv stride 2 → BN → ReLU → 3x3 max-pool stride 2) and layers of 3/4/6/3 Bottlenecks.

    Keys follow torchvision's ResNet-50 up to ``layer4`` (its classifier is not part of the
    detector). ``forward`` returns the output of ``layer4``; RetinaFace taps layer2/3/4 through
    :class:`reference.retinaface.IntermediateLayers`.
    """

    def __init__(self, layers=(3, 4, 6, 3)):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        inplanes = 64
        for i, (planes, stride, n) in enumerate(zip((64, 128, 256, 512), (1, 2, 2, 2), layers), start=1):
            setattr(self, f"layer{i}", make_layer(Bottleneck, inplanes, planes, n, stride))
            inplanes = planes * Bottleneck.expansion

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))
