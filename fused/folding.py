"""Folding an eval-mode BatchNorm into the convolution before it."""

from __future__ import annotations

import torch
from torch import nn


def fold_batchnorm(weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the float32 weight and bias of ``conv`` followed by ``bn`` as one convolution.

    In eval mode BatchNorm is a per-channel affine map of the conv output ``y``::

        bn(y) = (y - mean) * gamma / sqrt(var + eps) + beta

    and ``y = w * x + b`` is linear, so with ``s = gamma / sqrt(var + eps)`` per output channel::

        w' = w * s                      (each output channel's filter scaled)
        b' = (b - mean) * s + beta      (b = 0 when the conv has no bias)

    Computed in float32 whatever the model's dtype, so a half-precision model folds without
    extra rounding. Raises ValueError for a BN in training mode or without running statistics
    (its output then depends on the batch, so there is nothing to fold).
    """
    if bn.training:
        raise ValueError("cannot fold a BatchNorm in training mode: its statistics must update; call model.eval()")
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("cannot fold a BatchNorm without running statistics (track_running_stats=False)")
    if weight.shape[0] != bn.num_features:
        raise ValueError(f"conv has {weight.shape[0]} output channels but BatchNorm has {bn.num_features} features")
    var = bn.running_var.detach().float()
    mean = bn.running_mean.detach().float()
    gamma = bn.weight.detach().float() if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.detach().float() if bn.bias is not None else torch.zeros_like(var)
    scale = gamma / torch.sqrt(var + bn.eps)
    folded_weight = weight.detach().float() * scale.reshape(-1, *([1] * (weight.dim() - 1)))
    conv_bias = bias.detach().float() if bias is not None else torch.zeros_like(mean)
    folded_bias = (conv_bias - mean) * scale + beta
    return folded_weight, folded_bias


def batchnorm_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """An eval-mode BatchNorm as ``x * scale + shift`` per channel, in float32."""
    ones = torch.ones(bn.num_features, device=bn.running_var.device).reshape(-1, 1)
    scale, shift = fold_batchnorm(ones, None, bn)
    return scale.reshape(-1), shift
