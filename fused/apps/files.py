"""Images on disk: finding them, reading them (PIL, which matplotlib already needs), batching them
by size, and a progress line with images per second (what is written: :mod:`fused.apps.outputs`)."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: File extensions taken from folders (a file named on the command line is tried whatever its name).
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm"}
#: RetinaFace's smallest input side (three levels at strides 8, 16 and 32).
MIN_SIDE = 32
#: EXIF orientations that swap width and height.
_TRANSPOSED = {5, 6, 7, 8}


@dataclass
class Item:
    """One input image: where it is, the unique name its outputs get, and its size (or why it failed)."""

    path: Path
    name: str
    width: int = 0
    height: int = 0
    #: The size the model sees (after --max-size), ``(height, width)``.
    input_size: tuple[int, int] = (0, 0)
    error: str | None = None


def _unique(name: str, taken: set[str]) -> str:
    stem, dot, ext = name.rpartition(".")
    candidate, n = name, 1
    while candidate in taken:
        candidate = f"{stem}-{n}.{ext}" if dot else f"{name}-{n}"
        n += 1
    taken.add(candidate)
    return candidate


def find_images(paths, exclude=None) -> list[Item]:
    """The images ``paths`` name: files as given, folders searched recursively (sorted) for
    :data:`IMAGE_EXTENSIONS`, skipping ``exclude`` (the output folder). A path that does not exist
    becomes an item with an error. Output names are relative to each folder's parent, made unique."""
    exclude = Path(exclude).resolve() if exclude is not None else None
    items, taken = [], set()
    for given in paths:
        path = Path(given)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
                           and not (exclude and exclude in p.resolve().parents))
            for p in found:
                items.append(Item(p, _unique(str(Path(path.resolve().name) / p.relative_to(path)), taken)))
        elif path.exists():
            items.append(Item(path, _unique(path.name, taken)))
        else:
            items.append(Item(path, _unique(path.name or str(path), taken), error="no such file or folder"))
    return items


def _scaled(width: int, height: int, max_size: int | None) -> tuple[int, int]:
    """``(height, width)`` after shrinking the longer side to ``max_size`` (never enlarging)."""
    if max_size is None or max(width, height) <= max_size:
        return height, width
    s = max_size / max(width, height)
    return max(1, round(height * s)), max(1, round(width * s))


def read_size(item: Item, max_size: int | None) -> None:
    """Fill ``item``'s size from the file's header (PIL reads no pixels), or its error."""
    from PIL import Image

    try:
        with Image.open(item.path) as image:
            width, height = image.size
            if image.getexif().get(0x0112) in _TRANSPOSED:
                width, height = height, width
    except Exception as exc:  # PIL.UnidentifiedImageError, OSError, decompression bombs, ...
        item.error = f"cannot read the image ({type(exc).__name__}: {exc})"
        return
    item.width, item.height = width, height
    item.input_size = _scaled(width, height, max_size)
    if min(item.input_size) < MIN_SIDE:
        item.error = (f"image too small: {item.input_size[1]}x{item.input_size[0]} pixels"
                      f"{' after --max-size' if item.input_size != (height, width) else ''}; RetinaFace needs at "
                      f"least {MIN_SIDE}x{MIN_SIDE}")


def load(item: Item) -> tuple[np.ndarray, np.ndarray]:
    """``(full, scaled)``: the image as RGB ``uint8`` ``H x W x 3`` arrays, upright (EXIF), at full
    size and at the model's input size (the same array when not shrunk)."""
    from PIL import Image, ImageOps

    with Image.open(item.path) as image:
        image = rgb_image(ImageOps.exif_transpose(image))
    if image.size != (item.width, item.height):
        raise ValueError(f"the image's size changed since it was read ({item.width}x{item.height} -> "
                         f"{image.size[0]}x{image.size[1]})")
    full = np.asarray(image)
    if item.input_size == (item.height, item.width):
        return full, full
    scaled = image.resize(item.input_size[::-1], Image.BILINEAR)
    return full, np.asarray(scaled)


#: Pillow modes of 16-bit unsigned samples (PNG, TIFF, PGM), read as 0..65535.
_SIXTEEN_BIT = {"I;16", "I;16L", "I;16B", "I;16N"}


def rgb_image(image):
    """``image`` (any mode Pillow opens) as an 8-bit RGB PIL image, its values scaled, not clipped.

    * 8-bit modes (``L``, ``P``, ``1``, ``RGB``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``, with or
      without alpha) go through Pillow's ``convert("RGB")``; alpha is dropped. 48-bit RGB PNGs
      and TIFFs are opened by Pillow as ``RGB`` already.
    * 16-bit grayscale (``I;16``, ``I;16B``, ...) and 32-bit integer (``I``, which is how Pillow
      opens 16-bit PGMs) are read as 0..65535 and scaled by 255/65535, rounded; an ``I`` image
      with a value outside 0..65535 is refused (its scale is unknown).
    * 32-bit float (``F``, e.g. a float TIFF) is read as intensities in 0..1 and scaled by 255,
      rounded; a float image with NaN, infinity or a value outside 0..1 is refused.

    Refusals raise ValueError naming the mode, the values found and the fix. (``convert("RGB")``
    clips 16-bit and float values to 255 instead: a 16-bit image turns white, a 0..1 float black.)
    """
    from PIL import Image

    mode = image.mode
    if mode not in _SIXTEEN_BIT and mode not in ("I", "F"):
        try:
            return image.convert("RGB")
        except ValueError as exc:
            raise ValueError(f"images of Pillow mode {mode!r} cannot be converted to RGB ({exc}); save it as an "
                             f"8-bit RGB or grayscale image (PNG or JPEG)") from None
    values = np.asarray(image)
    if mode == "F":
        finite = np.isfinite(values).all()
        low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        if not finite or low < 0 or high > 1:
            found = "NaN or infinite values" if not finite else f"values from {low:g} to {high:g}"
            raise ValueError(f"a 32-bit float image (Pillow mode 'F') with {found}: facefuse reads float images as "
                             f"intensities in 0..1. Rescale it to 0..1, or save it as an 8- or 16-bit image")
        gray = np.rint(values.astype(np.float64) * 255).astype(np.uint8)
    else:
        values = values.astype(np.int64)
        if mode == "I" and values.size and (values.min() < 0 or values.max() > 65535):
            raise ValueError(f"a 32-bit integer image (Pillow mode 'I') with values from {values.min()} to "
                             f"{values.max()}: facefuse reads integer images beyond 8 bits as 16-bit (0..65535), "
                             f"so their scale is unknown. Save it as an 8- or 16-bit image")
        gray = ((values * 255 + 32767) // 65535).astype(np.uint8)
    return Image.fromarray(np.repeat(gray[:, :, None], 3, axis=2), "RGB")


def batches(items: list[Item], batch: int) -> list[list[Item]]:
    """Readable items grouped by input size (images of one size run as one batch), ``batch`` at most
    per group, the groups in order of each size's first appearance."""
    groups: dict[tuple[int, int], list[Item]] = {}
    for item in items:
        if item.error is None:
            groups.setdefault(item.input_size, []).append(item)
    return [group[i:i + batch] for group in groups.values() for i in range(0, len(group), batch)]


class Progress:
    """``label: done/total images, N images/s, K skipped`` on stderr: redrawn in place on a terminal,
    else a line every few seconds and at the end. Silent when ``quiet``."""

    def __init__(self, total: int, label: str, quiet: bool = False):
        self.total, self.label, self.quiet = total, label, quiet
        self.done = self.skipped = 0
        self.start = self.shown = time.perf_counter()
        self.tty = sys.stderr.isatty()
        self.last = ""

    def update(self, done: int = 0, skipped: int = 0) -> None:
        self.done += done
        self.skipped += skipped
        now = time.perf_counter()
        if not self.quiet and now - self.shown >= (0.2 if self.tty else 5.0):
            self._show(now, "\r" if self.tty else "\n")

    def rate(self) -> float:
        elapsed = time.perf_counter() - self.start
        return self.done / elapsed if elapsed > 0 else 0.0

    def _show(self, now: float, end: str) -> None:
        self.shown = now
        skipped = f", {self.skipped} skipped" if self.skipped else ""
        text = f"{self.label}: {self.done + self.skipped}/{self.total} images, {self.rate():.2f} images/s{skipped}"
        if not self.tty and text.split(",")[0] == self.last.split(",")[0]:
            return  # nothing new since the last line
        self.last = text
        print(("\r" if self.tty else "") + text, end=end if end == "\n" else "", file=sys.stderr, flush=True)

    def close(self) -> None:
        if not self.quiet:
            self._show(time.perf_counter(), "\n")

    def say(self, line: str) -> None:
        """A line on stderr that does not garble the progress line."""
        if self.tty and not self.quiet:
            print("\r\033[K", end="", file=sys.stderr)
        print(line, file=sys.stderr, flush=True)


def relative(path: Path) -> str:
    """``path`` relative to the working folder when it is inside it, else absolute."""
    resolved, here = Path(path).resolve(), Path.cwd().resolve()
    return str(resolved.relative_to(here)) if here in resolved.parents else str(resolved)
