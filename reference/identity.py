"""The identity pipeline: face crops → ResNetArcFace's grayscale 128x128 input → 512-d embeddings.

As the face-restoration pipelines feed the identity network: image normalised to [-1, 1]
(``x / 127.5 - 1``), grayscale ``0.2989 R + 0.5870 G + 0.1140 B``, bilinear resize to 128x128
(``align_corners=False``, no antialiasing). Images are accepted as by the detection pipeline
(:mod:`reference.images`); ``channel_order`` defaults to ``"bgr"`` like :func:`reference.detect`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .images import check_float_dtype, model_device_dtype, to_rgb, to_rgb_list

#: Grayscale weights of the R, G and B channels.
GRAY_WEIGHTS = (0.2989, 0.5870, 0.1140)
#: ResNetArcFace's input height and width.
ARCFACE_SIZE = 128


def _pixel_bounds(i: int, box: list[float], height: int, width: int) -> tuple[int, int, int, int]:
    """Box ``i`` rounded outward to whole pixels and clamped to the image: ``(left, top, right, bottom)``."""
    x1, y1, x2, y2 = box
    if not all(math.isfinite(v) for v in box):
        raise ValueError(f"box {i} {tuple(box)} is not finite")
    if x2 <= x1 or y2 <= y1:
        raise ValueError(f"box {i} {tuple(box)} has no area (needs x2 > x1 and y2 > y1)")
    left, top = max(math.floor(x1), 0), max(math.floor(y1), 0)
    right, bottom = min(math.ceil(x2), width), min(math.ceil(y2), height)
    if right <= left or bottom <= top:
        raise ValueError(f"box {i} {tuple(box)} lies outside the {height}x{width} image")
    return left, top, right, bottom


def crop_faces(image, boxes, *, channel_order: str = "bgr") -> list[torch.Tensor]:
    """Crop ``boxes`` (``[k, 4]`` ``(x1, y1, x2, y2)`` in pixels, e.g. ``Detections.boxes``) from one image.

    Each box is rounded outward to whole pixels and clamped to the image. Returns ``k`` float
    tensors ``[3, h, w]``, values 0..255, in ``channel_order`` (a PIL image, always RGB, is
    returned in that order too), so that the same ``channel_order`` goes to :func:`embed`.
    """
    rgb = to_rgb(image, channel_order=channel_order)
    if rgb.dim() != 3:
        raise ValueError(f"crop_faces takes one image, got a batch of shape {tuple(rgb.shape)}")
    boxes = torch.as_tensor(boxes).detach()
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape [k, 4] (x1, y1, x2, y2), got {tuple(boxes.shape)}")
    height, width = rgb.shape[1:]
    crops = []
    for i, box in enumerate(boxes.double().tolist()):
        left, top, right, bottom = _pixel_bounds(i, box, height, width)
        crop = rgb[:, top:bottom, left:right]
        crops.append(crop.flip(0) if channel_order == "bgr" else crop.clone())
    return crops


def arcface_input(faces, *, channel_order: str = "bgr", device=None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """ResNetArcFace's input ``[N, 1, 128, 128]`` from face images of any sizes.

    ``faces``: one image, a ``[N, 3, H, W]`` tensor, or a list/tuple of images whose sizes may
    differ (each is resized on its own; an empty list gives an empty batch); NumPy ``H x W x 3``, PIL RGB or tensor ``[3, H, W]``,
    ``uint8`` or float, values 0..255. Computed in float32 (or float64), then cast to ``dtype``.
    """
    compute = torch.promote_types(check_float_dtype(dtype), torch.float32)
    images = [] if isinstance(faces, (list, tuple)) and not faces else \
        to_rgb_list(faces, channel_order=channel_order, device=device, dtype=compute)
    if not images:  # no faces: an empty list, or an empty [0, 3, H, W] batch
        return torch.empty(0, 1, ARCFACE_SIZE, ARCFACE_SIZE, dtype=dtype, device=device)
    wr, wg, wb = GRAY_WEIGHTS
    resized = []
    for rgb in images:
        r, g, b = rgb / 127.5 - 1
        gray = wr * r + wg * g + wb * b
        size = (ARCFACE_SIZE, ARCFACE_SIZE)
        resized.append(F.interpolate(gray[None, None], size=size, mode="bilinear", align_corners=False))
    return torch.cat(resized).to(dtype)


def embed(model: torch.nn.Module, faces, *, channel_order: str = "bgr") -> torch.Tensor:
    """``[N, 512]`` identity embeddings (not normalised) of ``faces`` (as in :func:`arcface_input`).

    No faces (``[]``, e.g. the crops of an image where nothing was detected) give ``[0, 512]``.

    The input is built on the model's device and in its dtype; the model (eval mode) runs under
    ``torch.inference_mode()``. The result is an ordinary tensor (safe to modify in place).
    """
    device, dtype = model_device_dtype(model)
    x = arcface_input(faces, channel_order=channel_order, device=device, dtype=dtype)
    with torch.inference_mode():
        embeddings = model(x)
    return embeddings.clone()


def _as_embeddings(x, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor of embeddings, got {getattr(x, 'dtype', type(x).__name__)}")
    if x.dim() not in (1, 2):
        raise ValueError(f"{name} must have shape [N, D] (or [D] for one embedding), got {tuple(x.shape)}")
    return x.reshape(-1, x.shape[-1])


def cosine_similarity(a: torch.Tensor, b: torch.Tensor | None = None, *, eps: float = 1e-8) -> torch.Tensor:
    """``[Na, Nb]`` cosine similarities between the rows of ``a`` and of ``b`` (default ``a``).

    Computed in float32 or better and clamped to [-1, 1]; a zero vector has similarity 0 with
    everything (its norm is floored at ``eps``). Without ``b`` the matrix is exactly symmetric
    (a matrix product alone is not, to rounding).
    """
    a = _as_embeddings(a, "a")
    other = a if b is None else _as_embeddings(b, "b")
    if a.shape[1] != other.shape[1]:
        raise ValueError(f"embeddings have different sizes: a {tuple(a.shape)}, b {tuple(other.shape)}")
    dtype = torch.promote_types(torch.promote_types(a.dtype, other.dtype), torch.float32)
    a_unit, b_unit = (F.normalize(x.to(dtype), dim=1, eps=eps) for x in (a, other))
    similarity = a_unit @ b_unit.T
    if b is None:
        similarity = (similarity + similarity.T) / 2
    return similarity.clamp(-1, 1)
