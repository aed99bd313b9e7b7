"""Input checks shared by the blocks: clear errors instead of deep PyTorch ones."""

from __future__ import annotations

import torch


def check_feature_map(x, channels: int, name: str) -> None:
    """Raise TypeError/ValueError unless ``x`` is a 4-D float tensor with ``channels`` channels."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} expects a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} expects a floating-point tensor, got dtype {x.dtype}")
    if x.dim() != 4:
        raise ValueError(f"{name} expects a 4-D tensor [N, C, H, W], got shape {tuple(x.shape)}")
    if x.shape[1] != channels:
        raise ValueError(
            f"{name} expects {channels} input channels, got {x.shape[1]} (shape {tuple(x.shape)})"
        )
