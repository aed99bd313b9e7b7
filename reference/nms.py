"""Box IoU and greedy non-maximum suppression with ``torchvision.ops`` semantics, in plain PyTorch.

Matched against torchvision's CPU kernel (``torchvision/csrc/ops/cpu/nms_kernel.cpp``, since
pytorch/vision PR #4767 "Change to stable sort in nms implementations"): boxes are visited in
``scores.sort(stable=True, dim=0, descending=True)`` order, so equal scores go lower index
first (older releases used an unstable sort there); area is ``(x2 - x1) * (y2 - y1)`` (no +1);
the overlap's width and height are ``max(0, ...)``; IoU is ``inter / (area_i + area_j - inter)``
computed in the boxes' dtype; box ``j`` is suppressed by a kept, higher-ranked box ``i`` when
``IoU > iou_threshold`` (strictly), the float IoU being compared with the threshold as a double.
A degenerate box (zero or negative area) has IoU 0 or NaN (0/0) with every box, so with a
threshold >= 0 it neither suppresses nor is suppressed.
"""

from __future__ import annotations

import math

import numpy as np
import torch

#: Box pairs whose IoU :func:`nms` computes at once: ``max(1, PAIRS_PER_CHUNK // K)`` rows of the
#: ``K x K`` matrix at a time, so memory stays ``O(PAIRS_PER_CHUNK + K)`` for any ``K`` (at most
#: about 80 MB of temporaries for float32 boxes, 150 MB for float64).
PAIRS_PER_CHUNK = 1 << 21


def _check_boxes(boxes, name: str = "boxes") -> None:
    if not isinstance(boxes, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(boxes).__name__}")
    if not boxes.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {boxes.dtype}")
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{name} must have shape [K, 4] (x1, y1, x2, y2), got {tuple(boxes.shape)}")


def _check_per_box(values, boxes: torch.Tensor, name: str, floating: bool) -> None:
    if not isinstance(values, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(values).__name__}")
    if floating and not values.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {values.dtype}")
    if not floating and (values.is_floating_point() or values.is_complex() or values.dtype == torch.bool):
        raise TypeError(f"{name} must be an integer tensor, got dtype {values.dtype}")
    if values.dim() != 1 or values.shape[0] != boxes.shape[0]:
        raise ValueError(f"{name} must have shape [{boxes.shape[0]}] (one per box), got {tuple(values.shape)}")
    if values.device != boxes.device:
        raise ValueError(f"{name} is on {values.device} but boxes are on {boxes.device}")


def _threshold(iou_threshold) -> float:
    if isinstance(iou_threshold, bool) or not isinstance(iou_threshold, (int, float)):
        raise TypeError(f"iou_threshold must be a number, got {type(iou_threshold).__name__}")
    if math.isnan(iou_threshold):
        raise ValueError("iou_threshold is NaN, which would suppress nothing; give a number such as 0.4")
    return float(iou_threshold)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``[len(a), len(b)]`` IoU of corner boxes ``(x1, y1, x2, y2)`` (torchvision's definition)."""
    _check_boxes(a, "a")
    _check_boxes(b, "b")
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    top_left = torch.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = bottom_right - top_left
    wh = torch.where(wh > 0, wh, 0)  # max(0, .) as in the kernel (also maps NaN to 0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy NMS: indices (int64, on ``boxes.device``) of the kept boxes, by decreasing score.

    Same result as ``torchvision.ops.nms`` (see the module docstring). The IoU-above-threshold
    matrix of the score-sorted boxes is never held whole: it is computed on the boxes' device a
    chunk of rows at a time (:data:`PAIRS_PER_CHUNK` pairs), skipping the rows of boxes already
    suppressed, and each chunk is copied to the CPU once for the greedy pass over its rows.
    ``iou_threshold`` may be any number but NaN (which would silently suppress nothing).
    """
    _check_boxes(boxes)
    _check_per_box(scores, boxes, "scores", floating=True)
    threshold = _threshold(iou_threshold)
    if boxes.shape[0] == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    order = torch.sort(scores, stable=True, descending=True).indices
    ranked = boxes[order]
    count = len(ranked)
    rows_per_chunk = max(1, PAIRS_PER_CHUNK // count)
    suppressed = np.zeros(count, dtype=bool)
    kept = []
    for start in range(0, count, rows_per_chunk):
        # Only the rows no kept box of an earlier chunk suppressed, against the boxes from start on.
        rows = np.flatnonzero(~suppressed[start:start + rows_per_chunk]) + start
        if len(rows) == 0:
            continue
        candidates = ranked[torch.from_numpy(rows).to(boxes.device)]
        # The kernel promotes the float IoU to double before comparing: 0.4f > 0.4 is true.
        over = (box_iou(candidates, ranked[start:]).double() > threshold).cpu().numpy()
        for row, rank in enumerate(rows):
            if suppressed[rank]:
                continue
            kept.append(rank)
            suppressed[rank + 1:] |= over[row, rank + 1 - start:]
    return order[torch.tensor(kept, dtype=torch.long, device=boxes.device)]


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """NMS within each group ``idxs`` (e.g. per image or class); boxes of different groups never interact.

    The coordinate-offset trick of torchvision: shift each group by ``idx * (span + 1)`` so that
    groups cannot overlap, then run one :func:`nms`. Unlike torchvision (which shifts by
    ``max + 1``) the span is ``max - min``, so groups stay apart with negative coordinates too.
    """
    _check_boxes(boxes)
    _check_per_box(scores, boxes, "scores", floating=True)
    _check_per_box(idxs, boxes, "idxs", floating=False)
    if boxes.shape[0] == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    span = boxes.max() - boxes.min() + 1
    offsets = idxs.to(boxes.dtype) * span
    return nms(boxes + offsets[:, None], scores, iou_threshold)
