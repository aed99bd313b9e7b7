"""Images in, float RGB tensors out: the one conversion shared by the detection and identity pipelines.

Accepted images, values 0..255:

* a NumPy array ``H x W x 3`` (channels last, as OpenCV and PIL give them);
* a PIL image in mode ``"RGB"`` (always RGB: ``channel_order`` does not apply to it);
* a torch tensor ``[3, H, W]``, or ``[N, 3, H, W]`` for a batch.

Arrays and tensors must be ``uint8`` or floating point; other dtypes (bool, complex, wider
integers) are refused rather than guessed at, since their value range is ambiguous. A float image
whose values are all at most 1 (but not all zero) warns: it was most likely scaled to 0..1, which
the models misread. NaN and inf pass through untouched. PIL is never imported here: an object is a PIL image only if the caller
has imported PIL already.
"""

from __future__ import annotations

import sys
import warnings

import numpy as np
import torch

CHANNEL_ORDERS = ("bgr", "rgb")


def check_channel_order(channel_order) -> str:
    """Return ``channel_order`` if it is ``"bgr"`` or ``"rgb"``, else raise ValueError."""
    if channel_order not in CHANNEL_ORDERS:
        raise ValueError(f"channel_order must be 'bgr' or 'rgb', got {channel_order!r}")
    return channel_order


def check_float_dtype(dtype) -> torch.dtype:
    """Return ``dtype`` if it is a floating-point ``torch.dtype``, else raise TypeError."""
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
    return dtype


def _is_pil_image(image) -> bool:
    pil = sys.modules.get("PIL.Image")
    return pil is not None and isinstance(image, pil.Image)


_NUMPY_DTYPES = (np.uint8, np.float16, np.float32, np.float64)


def _check_dtype(ok: bool, dtype, what: str) -> None:
    if not ok:
        raise TypeError(f"{what} has dtype {dtype}; use uint8 or a floating-point dtype with values in 0..255")


def _as_chw_tensor(image) -> tuple[torch.Tensor, bool]:
    """``image`` as a ``[3, H, W]`` or ``[N, 3, H, W]`` tensor (a tensor is not copied) and whether it is RGB."""
    if _is_pil_image(image):
        if image.mode != "RGB":
            raise ValueError(f"PIL image has mode {image.mode!r}; convert it with image.convert('RGB')")
        return torch.from_numpy(np.array(image)).permute(2, 0, 1), True
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"NumPy image must have shape H x W x 3 (channels last), got {image.shape}")
        _check_dtype(image.dtype in _NUMPY_DTYPES, image.dtype, "NumPy image")
        # A copy: writable (from_numpy warns on read-only arrays) and without negative strides.
        return torch.from_numpy(np.array(image, order="C")).permute(2, 0, 1), False
    if isinstance(image, torch.Tensor):
        if image.dim() not in (3, 4) or image.shape[-3] != 3:
            raise ValueError(f"image tensor must have shape [3, H, W] or [N, 3, H, W], got {tuple(image.shape)}")
        _check_dtype(image.dtype == torch.uint8 or image.is_floating_point(), image.dtype, "image tensor")
        return image, False
    raise TypeError(f"expected a NumPy array, a PIL image or a torch tensor, got {type(image).__name__}")


_UNIT_RANGE_WARNING = (
    "a float image has no value above 1, but images are expected in 0..255: a 0..1 image is almost "
    "black to the models (detection finds no faces); multiply it by 255 (image * 255) or pass uint8"
)


def warn_if_unit_range(image: torch.Tensor) -> None:
    """Warn (``UserWarning``) if float ``image``'s largest value is above 0 and at most 1.

    Such an image was most likely scaled to 0..1, which the models silently misread. An all-zero
    (black) image, whose meaning is the same in both ranges, does not warn; NaN is ignored.
    """
    peak = float(torch.nan_to_num(image, nan=0.0).amax()) if image.numel() else 0.0
    if 0 < peak <= 1:
        warnings.warn(_UNIT_RANGE_WARNING, UserWarning, stacklevel=3)


def to_rgb(image, *, channel_order: str = "bgr", device=None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """One image, or a ``[N, 3, H, W]`` tensor batch, as a float RGB tensor of the same rank, values 0..255.

    ``channel_order`` is the order of the input's channels (``"bgr"`` as OpenCV reads them, or
    ``"rgb"``); it is ignored for PIL images, which are RGB. ``device`` defaults to the input's.
    Like ``Tensor.to``, a tensor input that needs no conversion is returned as is (not copied).
    """
    check_channel_order(channel_order)
    check_float_dtype(dtype)
    chw, is_rgb = _as_chw_tensor(image)
    if chw.shape[-2] == 0 or chw.shape[-1] == 0:
        raise ValueError(f"empty image: height {chw.shape[-2]}, width {chw.shape[-1]}")
    if chw.is_floating_point():
        warn_if_unit_range(chw)
    chw = chw.to(device=device).to(dtype)
    if not is_rgb and channel_order == "bgr":
        chw = chw.flip(-3)
    return chw


def to_rgb_list(images, *, channel_order: str = "bgr", device=None, dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    """Images (a list or tuple of single images, one image, or a ``[N, 3, H, W]`` tensor) as ``[3, H, W]`` RGB tensors.

    Sizes may differ between list items. Conversion as in :func:`to_rgb`.
    """
    if isinstance(images, (list, tuple)):
        if len(images) == 0:
            raise ValueError("got an empty list of images")
        out = [to_rgb(image, channel_order=channel_order, device=device, dtype=dtype) for image in images]
        for i, image in enumerate(out):
            if image.dim() != 3:
                raise ValueError(f"list item {i} is a batch of shape {tuple(image.shape)}; list items must be single images")
        return out
    rgb = to_rgb(images, channel_order=channel_order, device=device, dtype=dtype)
    return list(rgb) if rgb.dim() == 4 else [rgb]


def model_device_dtype(model: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    """The device and dtype of ``model``'s first parameter: where and how to build its input.

    Raises ValueError for a model in training mode (BatchNorm would normalise with the batch's
    statistics and dropout would be active): call ``model.eval()`` first.
    """
    if model.training:
        raise ValueError(f"{type(model).__name__} is in training mode; call model.eval() first")
    param = next(model.parameters(), None)
    if param is None:
        raise ValueError(f"{type(model).__name__} has no parameters to take a device and dtype from")
    return param.device, param.dtype
