"""The detection pipeline: images → RetinaFace → faces (boxes, scores, landmarks) in input pixels.

``detect(model, images)`` = :func:`prepare_images` → ``model(x)`` → :func:`postprocess`. It only
calls the model, so it runs a :func:`fused.fuse`-d model, or one with the fused path switched off,
unchanged.
"""

from __future__ import annotations

import numbers
import operator
from dataclasses import dataclass

import numpy as np
import torch

from .box_coding import decode_boxes, decode_landmarks
from .images import check_float_dtype, model_device_dtype, to_rgb, to_rgb_list
from .nms import nms
from .priors import priors
from .retinaface import BGR_MEAN, num_priors


@dataclass
class Detections:
    """The faces found in one image, by decreasing score, in the input image's pixels.

    ``boxes`` ``[k, 4]`` as ``(x1, y1, x2, y2)``; ``scores`` ``[k]``; ``landmarks`` ``[k, 5, 2]``
    as ``(x, y)`` of the left eye, right eye, nose, left and right mouth corners.
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    landmarks: torch.Tensor

    def __len__(self) -> int:
        return self.scores.shape[0]

    def to(self, device) -> "Detections":
        """The same detections on ``device``."""
        return Detections(self.boxes.to(device), self.scores.to(device), self.landmarks.to(device))

    def numpy(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(boxes, scores, landmarks)`` as NumPy arrays (copied to the CPU)."""
        return tuple(t.detach().cpu().numpy() for t in (self.boxes, self.scores, self.landmarks))


def prepare_images(images, *, channel_order: str = "bgr", device=None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """RetinaFace's input ``[N, 3, H, W]``: BGR, values 0..255 minus the mean (104, 117, 123).

    ``images``: one image or a list/tuple of images of one size (NumPy ``H x W x 3``, PIL RGB,
    tensor ``[3, H, W]``), or a tensor batch ``[N, 3, H, W]``; ``uint8`` or float, values 0..255.
    ``channel_order`` (``"bgr"`` as OpenCV reads images, or ``"rgb"``) is that of the arrays and
    tensors; PIL images are always RGB and ignore it. See :mod:`reference.images`.
    """
    compute = torch.promote_types(check_float_dtype(dtype), torch.float32)
    if isinstance(images, (list, tuple)):
        items = to_rgb_list(images, channel_order=channel_order, device=device, dtype=compute)
        sizes = sorted({tuple(item.shape[-2:]) for item in items})
        if len(sizes) > 1:
            raise ValueError(
                f"images in one batch must have one size, got (height, width) sizes {sizes}; "
                "call detect once per size"
            )
        rgb = torch.stack(items)
    else:
        rgb = to_rgb(images, channel_order=channel_order, device=device, dtype=compute)
        if rgb.dim() == 3:
            rgb = rgb[None]
    mean = torch.tensor(BGR_MEAN, dtype=compute, device=rgb.device)[:, None, None]
    return (rgb.flip(1) - mean).to(dtype)


def _check_outputs(loc, conf, landms, height: int, width: int) -> None:
    expected = num_priors(height, width)
    for x, name, last in ((loc, "boxes", 4), (conf, "scores", 2), (landms, "landmarks", 10)):
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"{name} output must be a floating-point tensor, got {getattr(x, 'dtype', type(x).__name__)}")
        if x.dim() != 3 or x.shape[2] != last:
            raise ValueError(f"{name} output must have shape [N, P, {last}], got {tuple(x.shape)}")
        if x.shape[:2] != loc.shape[:2]:
            raise ValueError(f"{name} output has shape {tuple(x.shape)} but boxes have {tuple(loc.shape)}")
    if loc.shape[1] != expected:
        raise ValueError(
            f"the model predicted {loc.shape[1]} priors but a {height}x{width} input has {expected}; "
            "height and width must be those of the model's input"
        )


def _check_count(value, name: str) -> int:
    """``value`` as an int if it is a positive integer (Python or NumPy), else raise ValueError."""
    try:
        count = operator.index(value) if not isinstance(value, bool) else None
    except TypeError:
        count = None
    if count is None or count <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return count


def _check_fraction(value, name: str) -> float:
    """``value`` as a float if it is a number in [0, 1] (not NaN), else raise ValueError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value <= 1:
        hint = f"; for {value}% give {value / 100}" if isinstance(value, numbers.Real) and 1 < value <= 100 else ""
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}{hint}")
    return float(value)


def _check_limits(conf, iou, top_k, keep_top_k, names: tuple[str, str]) -> tuple[float, float, int, int]:
    return (
        _check_fraction(conf, names[0]), _check_fraction(iou, names[1]),
        _check_count(top_k, "top_k"), _check_count(keep_top_k, "keep_top_k"),
    )


def _select(boxes, scores, landmarks, conf_threshold: float, iou_threshold: float, top_k: int, keep_top_k: int) -> Detections:
    """One image: threshold, best ``top_k`` by score (stable), NMS, best ``keep_top_k``."""
    candidates = torch.nonzero(scores > conf_threshold).squeeze(1)
    candidates = candidates[torch.sort(scores[candidates], stable=True, descending=True).indices[:top_k]]
    keep = candidates[nms(boxes[candidates], scores[candidates], iou_threshold)][:keep_top_k]
    return Detections(boxes[keep], scores[keep], landmarks[keep])


def postprocess(
    loc: torch.Tensor,
    conf: torch.Tensor,
    landms: torch.Tensor,
    height: int,
    width: int,
    *,
    conf_threshold: float = 0.8,
    iou_threshold: float = 0.4,
    top_k: int = 5000,
    keep_top_k: int = 750,
) -> list[Detections]:
    """RetinaFace's raw outputs for ``height x width`` inputs → one :class:`Detections` per image.

    ``loc [N, P, 4]``, ``conf [N, P, 2]`` (softmaxed; column 1 is "face") and ``landms [N, P, 10]``
    are decoded against the priors in float32 (half outputs are upcast), scaled to pixels; faces
    scoring above ``conf_threshold`` are kept, the ``top_k`` best go through NMS at
    ``iou_threshold`` and the ``keep_top_k`` best survivors are returned. Both thresholds must be
    numbers in [0, 1], ``top_k`` and ``keep_top_k`` positive ints.
    """
    conf_threshold, iou_threshold, top_k, keep_top_k = _check_limits(
        conf_threshold, iou_threshold, top_k, keep_top_k, ("conf_threshold", "iou_threshold")
    )
    _check_outputs(loc, conf, landms, height, width)
    dtype = torch.promote_types(loc.dtype, torch.float32)
    anchors = priors(height, width, device=loc.device, dtype=dtype)
    scale = torch.tensor([width, height], dtype=dtype, device=loc.device)
    boxes = decode_boxes(loc.to(dtype), anchors) * scale.repeat(2)
    landmarks = decode_landmarks(landms.to(dtype), anchors).unflatten(-1, (5, 2)) * scale
    scores = conf[..., 1].to(dtype)
    return [
        _select(*per_image, conf_threshold, iou_threshold, top_k, keep_top_k)
        for per_image in zip(boxes, scores, landmarks)
    ]


def detect(
    model: torch.nn.Module,
    images,
    conf: float = 0.8,
    iou: float = 0.4,
    *,
    channel_order: str = "bgr",
    top_k: int = 5000,
    keep_top_k: int = 750,
) -> list[Detections]:
    """Detect faces: one :class:`Detections` per image (``images`` as in :func:`prepare_images`).

    ``conf`` (score threshold) and ``iou`` (NMS overlap threshold) are numbers in [0, 1];
    ``top_k`` (candidates entering NMS) and ``keep_top_k`` (faces returned) positive ints; all are
    checked before the model runs. The input is built on the model's device and in its dtype
    (those of its first parameter) and the model runs under ``torch.inference_mode()``; the
    returned tensors are ordinary tensors. ``model`` must be a RetinaFace in phase ``"test"`` and
    eval mode.
    """
    conf, iou, top_k, keep_top_k = _check_limits(conf, iou, top_k, keep_top_k, ("conf", "iou"))
    phase = getattr(model, "phase", None)
    if phase != "test":
        raise ValueError(
            f"detect needs a RetinaFace in phase 'test' (softmaxed scores), got phase {phase!r}; "
            "build it with RetinaFace(network_name, phase='test')"
        )
    device, dtype = model_device_dtype(model)
    x = prepare_images(images, channel_order=channel_order, device=device, dtype=dtype)
    with torch.inference_mode():
        loc, scores, landms = model(x)
    return postprocess(
        loc, scores, landms, x.shape[2], x.shape[3],
        conf_threshold=conf, iou_threshold=iou, top_k=top_k, keep_top_k=keep_top_k,
    )
