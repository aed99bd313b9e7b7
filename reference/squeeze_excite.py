"""SEBlock: squeeze-and-excitation, a learned per-channel gate."""

import torch
from torch import nn

from .block_types import block_class


@block_class
class SEBlock(nn.Module):
    """Squeeze (global average pool) → excite (Linear → PReLU → Linear → Sigmoid) → scale.

    Each channel of ``x`` is multiplied by a gate in (0, 1) computed from the whole map: a
    reduction over H×W followed by a broadcast back over it.
    """

    def __init__(self, channel: int, reduction: int = 16):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(
            nn.Linear(channel, channel // reduction),
            nn.PReLU(),
            nn.Linear(channel // reduction, channel),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, _, _ = x.size()
        y = self.avg_pool(x).view(b, c)
        y = self.fc(y).view(b, c, 1, 1)
        return x * y
