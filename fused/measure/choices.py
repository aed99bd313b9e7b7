"""The names and sizes the measurements take, without torch: the models, sizes and defaults of
``facefuse profile`` and ``facefuse bench``. The command line builds its parsers from these before
it loads torch; :mod:`fused.measure.models` maps them to models, dtypes and layouts."""

from __future__ import annotations

#: The models ``facefuse profile --model`` knows, with a line about each.
MODELS = {
    "retinaface": "RetinaFace mobile0.25 (MobileNetV1 x0.25 backbone)",
    "retinaface-resnet50": "RetinaFace with the ResNet-50 backbone",
    "arcface": "ResNetArcFace IR-18 without squeeze-excite (the released identity network)",
    "arcface-se": "ResNetArcFace IR-18 with squeeze-excite",
}
#: The RetinaFace variants among :data:`MODELS`.
RETINAFACE_MODELS = ("retinaface", "retinaface-resnet50")
#: The dtypes by name (:data:`fused.measure.models.DTYPES` maps them to torch's).
DTYPE_NAMES = ("float32", "float16", "bfloat16")
#: The layouts by name (:data:`fused.measure.models.MEMORY_FORMATS` maps them to torch's).
MEMORY_FORMAT_NAMES = ("nchw", "channels_last")
#: ArcFace's only input side: fc5 needs the 8x8 map that a 128x128 face gives.
ARCFACE_SIZE = 128
#: Default RetinaFace input side: small on a CPU (the reference timing runs on a few cores).
DEFAULT_SIZE = {"cpu": 320, "cuda": 640}
#: On a CPU the fused kernels run in Triton's interpreter; their correctness pass uses this side.
CPU_CHECK_SIZE = 64
DEFAULT_REPEATS = {"cpu": (2, 10), "cuda": (10, 100)}  # (warmup, repeats)


def parse_size(text: str) -> tuple[int, int]:
    """``"320"`` → (320, 320); ``"480x640"`` → (480, 640) (H x W)."""
    parts = text.lower().replace("×", "x").split("x")
    if len(parts) not in (1, 2) or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"size must be N or HxW with positive integers (e.g. 320 or 480x640), got {text!r}")
    h, w = (int(parts[0]), int(parts[-1]))
    if h < 1 or w < 1:
        raise ValueError(f"size must be positive, got {text!r}")
    return (h, w)
