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
        image = ImageOps.exif_transpose(image).convert("RGB")
    if image.size != (item.width, item.height):
        raise ValueError(f"the image's size changed since it was read ({item.width}x{item.height} -> "
                         f"{image.size[0]}x{image.size[1]})")
    full = np.asarray(image)
    if item.input_size == (item.height, item.width):
        return full, full
    scaled = image.resize(item.input_size[::-1], Image.BILINEAR)
    return full, np.asarray(scaled)


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
