"""Ready-made models with deterministic initialisation, for lessons, tests and the profiler."""

from __future__ import annotations

import torch
from torch import nn

from .arcface import ResNetArcFace
from .retinaface import RetinaFace


def _seeded(seed: int, build):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def retinaface(network_name: str = "mobile0.25", seed: int = 0) -> RetinaFace:
    """RetinaFace (``"mobile0.25"`` or ``"resnet50"``) with seeded initialisation, in eval mode."""
    return _seeded(seed, lambda: RetinaFace(network_name)).eval()


def arcface(use_se: bool = False, seed: int = 0) -> ResNetArcFace:
    """ResNetArcFace IR-18 (the released identity network when ``use_se=False``), seeded, eval mode."""
    return _seeded(seed, lambda: ResNetArcFace("IRBlock", (2, 2, 2, 2), use_se=use_se)).eval()


@torch.no_grad()
def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm random statistics and affine parameters (as trained weights have).

    Freshly initialised BN layers are identities (mean 0, var 1, weight 1, bias 0), which would let
    a wrong BN fold go unnoticed; tests and lessons call this first. PReLU slopes are randomised too.
    """
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(n, generator=g) * 0.8 + 0.6)
            m.weight.copy_(torch.rand(n, generator=g) * 0.8 + 0.6)
            m.bias.copy_(torch.randn(n, generator=g) * 0.2)
        elif isinstance(m, nn.PReLU):
            m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 0.4)
    return model
