"""ResNetArcFace: the face identity network (grayscale 128x128 → 512-d embedding)."""

import torch
from torch import nn

from .residual_blocks import BasicBlock, Bottleneck, IRBlock, make_layer

BLOCKS = {"IRBlock": IRBlock, "BasicBlock": BasicBlock, "Bottleneck": Bottleneck}


class ResNetArcFace(nn.Module):
    """Stem (conv → BN → PReLU → 2x2 max-pool), four residual layers, then BN → dropout → fc → BN.

    The released identity network is ``ResNetArcFace('IRBlock', (2, 2, 2, 2), use_se=False)``.
    Input ``[N, 1, 128, 128]`` (grayscale in [-1, 1]); output ``[N, 512]``, not normalised.
    """

    def __init__(self, block="IRBlock", layers=(2, 2, 2, 2), use_se: bool = True):
        super().__init__()
        if isinstance(block, str):
            if block not in BLOCKS:
                raise ValueError(f"unknown block {block!r}; expected one of {sorted(BLOCKS)}")
            block = BLOCKS[block]
        if len(layers) != 4:
            raise ValueError(f"layers must give four block counts, got {tuple(layers)}")
        self.use_se = use_se
        kwargs = {"use_se": use_se} if block is IRBlock else {}
        self.inplanes = 64
        self.conv1 = nn.Conv2d(1, 64, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.prelu = nn.PReLU()
        self.maxpool = nn.MaxPool2d(kernel_size=2, stride=2)
        widths, strides = (64, 128, 256, 512), (1, 2, 2, 2)
        inplanes = 64
        for i, (planes, stride, n) in enumerate(zip(widths, strides, layers), start=1):
            setattr(self, f"layer{i}", make_layer(block, inplanes, planes, n, stride, **kwargs))
            inplanes = planes * block.expansion
        self.bn4 = nn.BatchNorm2d(inplanes)
        self.dropout = nn.Dropout()
        self.fc5 = nn.Linear(inplanes * 8 * 8, 512)
        self.bn5 = nn.BatchNorm1d(512)

        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_normal_(m.weight)
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0)
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    @staticmethod
    def check_input(x) -> None:
        """Raise TypeError/ValueError unless ``x`` is a float tensor of shape ``[N, 1, 128, 128]``."""
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"ResNetArcFace expects a floating-point tensor, got {getattr(x, 'dtype', type(x).__name__)}")
        if x.dim() != 4 or tuple(x.shape[1:]) != (1, 128, 128):
            raise ValueError(f"ResNetArcFace expects input of shape [N, 1, 128, 128], got {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x = self.maxpool(self.prelu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)
        x = self.dropout(self.bn4(x))
        x = x.flatten(1)  # view(N, -1), but also defined for an empty batch
        return self.bn5(self.fc5(x))
