"""RetinaFace's anchor boxes ("priors"), in the order of the model's outputs."""

from __future__ import annotations

import functools
import numbers

import torch

from .images import check_float_dtype
from .retinaface import MIN_SIZES, STEPS


def _check_size(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def priors(height: int, width: int, *, device=None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The ``[P, 4]`` priors ``(cx, cy, w, h)`` of a ``height x width`` input, normalised by its size.

    For each level (min sizes ``MIN_SIZES[k]``, stride ``STEPS[k]``), each row ``i`` of
    ``ceil(height / step)``, each column ``j`` of ``ceil(width / step)`` and each min size ``m``:
    ``[(j + 0.5) * step / width, (i + 0.5) * step / height, m / width, m / height]``; that
    (level, row, column, anchor) order is the order of ``RetinaFace``'s ``P`` outputs.
    Computed in float64 (the same operations in the same order as the formula), then cast.

    The result is cached per ``(height, width, device, dtype)`` and the **same tensor is returned
    to every caller: do not modify it in place** (clone it first).
    """
    height, width = _check_size(height, "height"), _check_size(width, "width")
    device = torch.device("cpu") if device is None else torch.device(device)
    return _priors(height, width, device, check_float_dtype(dtype))


@functools.lru_cache(maxsize=16)
@torch.inference_mode(False)  # a cached inference tensor could not be saved for backward later
def _priors(height: int, width: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    levels = []
    for min_sizes, step in zip(MIN_SIZES, STEPS):
        rows, cols = -(-height // step), -(-width // step)  # ceil
        cy = (torch.arange(rows, dtype=torch.float64) + 0.5) * step / height
        cx = (torch.arange(cols, dtype=torch.float64) + 0.5) * step / width
        cy, cx = torch.meshgrid(cy, cx, indexing="ij")  # [rows, cols]
        sizes = torch.tensor([[m / width, m / height] for m in min_sizes], dtype=torch.float64)
        centres = torch.stack([cx, cy], dim=-1)[:, :, None, :].expand(rows, cols, len(min_sizes), 2)
        wh = sizes.expand(rows, cols, len(min_sizes), 2)
        levels.append(torch.cat([centres, wh], dim=-1).reshape(-1, 4))
    return torch.cat(levels).to(device=device, dtype=dtype)
