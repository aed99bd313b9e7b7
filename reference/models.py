"""Ready-made models: deterministic initialisation for lessons, tests and the profiler, or the released weights."""

from __future__ import annotations

import torch
from torch import nn

from .arcface import ResNetArcFace
from .pretrained import load_pretrained
from .retinaface import RetinaFace
from .weights import load_weights


def _seeded(seed: int, build):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def retinaface(network_name: str = "mobile0.25", seed: int = 0, *, pretrained: bool = False,
               weights_dir=None, sha256: str | None = None, progress: bool = True, weights=None) -> RetinaFace:
    """RetinaFace (``"mobile0.25"`` or ``"resnet50"``) in eval mode: seeded initialisation, or with
    ``pretrained=True`` the released weights (downloaded once into ``weights_dir``, default
    :func:`reference.pretrained.cache_dir`; ``sha256`` pins the file; see :mod:`reference.pretrained`),
    or ``weights``: a ``.pth`` file or state_dict, or an ONNX export (path or bytes), loaded with
    :func:`reference.load_weights`."""
    if pretrained and weights is not None:
        raise ValueError("pass pretrained=True or weights=..., not both")
    model = _seeded(seed, lambda: RetinaFace(network_name))
    if weights is not None:
        load_weights(model, weights)
    if pretrained:
        name = "retinaface" if network_name == "mobile0.25" else "retinaface-resnet50"
        load_pretrained(model, name, directory=weights_dir, sha256=sha256, progress=progress)
    return model.eval()


def arcface(use_se: bool = False, seed: int = 0, *, pretrained: bool = False,
            weights_dir=None, sha256: str | None = None, progress: bool = True) -> ResNetArcFace:
    """ResNetArcFace IR-18 (the released identity network when ``use_se=False``) in eval mode:
    seeded, or with ``pretrained=True`` the released weights (as in :func:`retinaface`)."""
    if pretrained and use_se:
        raise ValueError("no released weights for ResNetArcFace with squeeze-excite: the released identity "
                         "network (arcface_resnet18.pth) has use_se=False")
    model = _seeded(seed, lambda: ResNetArcFace("IRBlock", (2, 2, 2, 2), use_se=use_se))
    if pretrained:
        load_pretrained(model, "arcface", directory=weights_dir, sha256=sha256, progress=progress)
    return model.eval()


@torch.no_grad()
def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm random statistics and affine parameters (as trained weights have).

    Freshly initialised BN layers are identities (mean 0, var 1, weight 1, bias 0), which would let
    a wrong BN fold go unnoticed; tests and lessons call this first. PReLU slopes are randomised too.
    A BatchNorm built with ``affine=False`` (no weight and bias) or ``track_running_stats=False``
    (no running statistics) gets only what it has.
    """
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            mean, var = torch.randn(n, generator=g) * 0.2, torch.rand(n, generator=g) * 0.8 + 0.6
            weight, bias = torch.rand(n, generator=g) * 0.8 + 0.6, torch.randn(n, generator=g) * 0.2
            if m.running_mean is not None:  # None with track_running_stats=False
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
            if m.weight is not None:  # None with affine=False
                m.weight.copy_(weight)
                m.bias.copy_(bias)
        elif isinstance(m, nn.PReLU):
            m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 0.4)
    return model
