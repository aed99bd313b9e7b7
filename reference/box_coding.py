"""RetinaFace's box and landmark coding: offsets relative to the priors ↔ normalised coordinates.

Priors are ``(cx, cy, w, h)``; boxes are corners ``(x1, y1, x2, y2)``; both are normalised by the
image size. Every function broadcasts over leading dimensions (``loc [N, P, 4]`` with
``priors [P, 4]``) and follows the operation order of the released RetinaFace code.
"""

from __future__ import annotations

import torch

from .retinaface import VARIANCE


def _check(x: torch.Tensor, last: int, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() == 0 or x.shape[-1] != last:
        raise ValueError(f"{name} must have {last} values in its last dimension, got shape {tuple(x.shape)}")


def _split_priors(priors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    _check(priors, 4, "priors")
    return priors[..., :2], priors[..., 2:]


def decode_boxes(loc: torch.Tensor, priors: torch.Tensor, variances=VARIANCE) -> torch.Tensor:
    """Box offsets ``[..., 4]`` → corners: centre ``p_xy + loc_xy * v0 * p_wh``, size ``p_wh * exp(loc_wh * v1)``."""
    _check(loc, 4, "loc")
    p_xy, p_wh = _split_priors(priors)
    centre = p_xy + loc[..., :2] * variances[0] * p_wh
    size = p_wh * torch.exp(loc[..., 2:] * variances[1])
    top_left = centre - size / 2
    return torch.cat([top_left, top_left + size], dim=-1)


def encode_boxes(boxes: torch.Tensor, priors: torch.Tensor, variances=VARIANCE) -> torch.Tensor:
    """Corners ``[..., 4]`` → box offsets: the inverse of :func:`decode_boxes` (for training and tests)."""
    _check(boxes, 4, "boxes")
    p_xy, p_wh = _split_priors(priors)
    centre = (boxes[..., :2] + boxes[..., 2:]) / 2
    size = boxes[..., 2:] - boxes[..., :2]
    offset_xy = (centre - p_xy) / (variances[0] * p_wh)
    offset_wh = torch.log(size / p_wh) / variances[1]
    return torch.cat([offset_xy, offset_wh], dim=-1)


def decode_landmarks(pre: torch.Tensor, priors: torch.Tensor, variances=VARIANCE) -> torch.Tensor:
    """Landmark offsets ``[..., 10]`` → five points ``[..., 10]`` (x, y interleaved): ``p_xy + ldm_k * v0 * p_wh``."""
    _check(pre, 10, "landmarks")
    p_xy, p_wh = _split_priors(priors)
    points = p_xy[..., None, :] + pre.unflatten(-1, (5, 2)) * variances[0] * p_wh[..., None, :]
    return points.flatten(-2)


def encode_landmarks(landmarks: torch.Tensor, priors: torch.Tensor, variances=VARIANCE) -> torch.Tensor:
    """Five points ``[..., 10]`` → landmark offsets: the inverse of :func:`decode_landmarks`."""
    _check(landmarks, 10, "landmarks")
    p_xy, p_wh = _split_priors(priors)
    offsets = (landmarks.unflatten(-1, (5, 2)) - p_xy[..., None, :]) / (variances[0] * p_wh[..., None, :])
    return offsets.flatten(-2)
