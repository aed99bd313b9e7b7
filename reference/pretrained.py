"""The released weights: downloaded once into a cache, atomically, then loaded strictly.

``reference.retinaface(pretrained=True)`` and ``reference.arcface(pretrained=True)`` call
:func:`load_pretrained`. A file is looked for in the cache folder (:func:`cache_dir`:
``$FACEFUSE_WEIGHTS_DIR``, else torch hub's ``<torch.hub.get_dir()>/checkpoints``); if it is not
there it is downloaded from :data:`RELEASED` (or from the mirror ``$FACEFUSE_WEIGHTS_URL``) into
a temporary file in that folder, checked (the optional sha256 pin, then a strict
``weights_only=True`` load into the model) and only then renamed into place, so the cache never
holds a partial or wrong file. Without a network, :class:`WeightsDownloadError` says where to put
the file by hand.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .weights import WeightFileError, WeightsMismatchError, load_weights

#: Environment variable naming the cache folder (default: torch hub's ``checkpoints`` folder).
DIR_VARIABLE = "FACEFUSE_WEIGHTS_DIR"
#: Environment variable naming a mirror: files are fetched from ``<mirror>/<file name>``.
URL_VARIABLE = "FACEFUSE_WEIGHTS_URL"


@dataclass(frozen=True)
class Release:
    """One released weight file: its name, where it is published, and its sha256 if pinned."""

    filename: str
    url: str
    #: None: not pinned here (the project has not recorded the published file's hash); pass
    #: ``sha256=`` to pin it yourself (the hash is printed after each download).
    sha256: str | None = None


_FACEXLIB = "https://github.com/xinntao/facexlib/releases/download/v0.1.0/"
#: The released files, by the model names of ``facefuse profile --model``.
RELEASED = {
    "retinaface": Release("detection_mobilenet0.25_Final.pth", _FACEXLIB + "detection_mobilenet0.25_Final.pth"),
    "retinaface-resnet50": Release("detection_Resnet50_Final.pth", _FACEXLIB + "detection_Resnet50_Final.pth"),
    "arcface": Release("arcface_resnet18.pth",
                       "https://github.com/TencentARC/GFPGAN/releases/download/v0.1.0/arcface_resnet18.pth"),
}


class WeightsDownloadError(OSError):
    """A released file could not be downloaded; the message says how to place it by hand."""


def cache_dir(directory=None) -> Path:
    """The folder released weights are cached in: ``directory``, else ``$FACEFUSE_WEIGHTS_DIR``,
    else ``<torch.hub.get_dir()>/checkpoints`` (where ``torch.hub`` keeps downloaded weights)."""
    if directory is not None:
        return Path(directory).expanduser()
    if os.environ.get(DIR_VARIABLE):
        return Path(os.environ[DIR_VARIABLE]).expanduser()
    return Path(torch.hub.get_dir()) / "checkpoints"


def _release(name: str) -> Release:
    if name not in RELEASED:
        raise ValueError(f"no released weights named {name!r}; choose from {', '.join(RELEASED)}")
    return RELEASED[name]


def weights_path(name: str, directory=None) -> Path:
    """Where the released file of ``name`` (a key of :data:`RELEASED`) is cached (it may not exist)."""
    return cache_dir(directory) / _release(name).filename


def is_cached(name: str, directory=None) -> bool:
    """Whether the released file of ``name`` is in the cache (nothing is downloaded)."""
    return weights_path(name, directory).is_file()


def download_url(name: str) -> str:
    """The URL the file of ``name`` is fetched from: ``<$FACEFUSE_WEIGHTS_URL>/<file name>`` if the
    variable is set (a URL, or a local folder), else the release's own URL."""
    release = _release(name)
    mirror = os.environ.get(URL_VARIABLE, "").strip()
    if not mirror:
        return release.url
    if "://" not in mirror:  # a local folder
        mirror = Path(mirror).expanduser().resolve().as_uri()
    return f"{mirror.rstrip('/')}/{release.filename}"


class _Progress:
    """A download progress bar on stderr: tqdm's if tqdm is installed, else one line redrawn."""

    def __init__(self, total: int | None, label: str):
        self.total, self.label, self.done, self.shown = total, label, 0, 0.0
        self.bar = None
        if importlib.util.find_spec("tqdm") is not None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=label, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr)

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif time.monotonic() - self.shown > 0.25:
            self._draw("\r")

    def _draw(self, end: str) -> None:
        self.shown = time.monotonic()
        of = f" of {self.total / 2**20:.1f}" if self.total else ""
        percent = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        print(f"\r{self.label}: {self.done / 2**20:.1f}{of} MiB{percent}", end=end, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        else:
            self._draw("\n")


def _place_by_hand(name: str, url: str, target: Path) -> str:
    return (f"To use the weights without a network here, download {url} elsewhere and copy it to {target} "
            f"(or set {DIR_VARIABLE} to the folder that holds {target.name}, or {URL_VARIABLE} to a mirror that "
            f"serves it), or load any copy with reference.load_weights(model, path)")


def _download(name: str, url: str, target: Path, progress: bool, timeout: float) -> Path:
    """Fetch ``url`` into a temporary file next to ``target``; return its path (the caller renames it)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, part = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                response = urllib.request.urlopen(url, timeout=timeout)
            except (urllib.error.URLError, OSError, ValueError) as exc:  # ValueError: not a URL
                reason = f"HTTP {exc.code} {exc.reason}" if isinstance(exc, urllib.error.HTTPError) else \
                    str(getattr(exc, "reason", exc))
                raise WeightsDownloadError(
                    f"could not download {target.name} from {url} ({reason}). " + _place_by_hand(name, url, target)
                ) from exc
            with response:
                length = response.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                bar = _Progress(total, f"downloading {target.name}") if progress else None
                received = 0
                try:
                    while chunk := response.read(1 << 20):
                        out.write(chunk)
                        received += len(chunk)
                        if bar:
                            bar.update(len(chunk))
                except Exception as exc:  # a reset connection, http.client.IncompleteRead, a timeout
                    raise WeightsDownloadError(f"the download of {target.name} from {url} broke off after "
                                               f"{received} bytes ({type(exc).__name__}: {exc}); try again") from exc
                finally:
                    if bar:
                        bar.close()
        if total is not None and received != total:
            raise WeightsDownloadError(f"the download of {target.name} from {url} is truncated: {received} of "
                                       f"{total} bytes arrived; try again")
        return Path(part)
    except BaseException:
        os.unlink(part)
        raise


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _check_sha256(path: Path, want: str | None, source: str) -> str:
    got = _sha256(path)
    if want is not None and got != want.lower():
        raise WeightFileError(source, f"has sha256 {got}, but {want.lower()} was pinned: the file is not the one "
                              "expected (damaged, tampered with, or a different release)")
    return got


def _naming(exc: Exception, source: str, note: str) -> Exception:
    """``exc`` (a weight-file error) again, naming ``source`` and ending with ``note``."""
    if isinstance(exc, WeightsMismatchError):
        renamed = WeightsMismatchError(exc.missing, exc.unexpected, exc.misshapen, exc.mistyped, source=source)
        renamed.args = (f"{renamed}\n{note}",)
        return renamed
    return WeightFileError(source, f"{exc.problem}; {note}")


def load_pretrained(model: nn.Module, name: str, *, directory=None, sha256: str | None = None,
                    progress: bool = True, timeout: float = 60.0) -> nn.Module:
    """Load the released weights ``name`` (a key of :data:`RELEASED`) into ``model``; return it.

    The cached file is used if present, else downloaded (see the module's docstring). ``sha256``
    pins the file's hash (default: :data:`RELEASED`'s pin, None for every file today); a cached
    file is checked against a pin too. Errors: :class:`WeightsDownloadError` (no network, HTTP
    error), :class:`WeightFileError` (truncated, not a weight file, sha256 mismatch),
    :class:`WeightsMismatchError` (wrong keys or shapes); none leaves a file in the cache.
    """
    release = _release(name)
    if sha256 is not None and (not isinstance(sha256, str) or len(sha256) != 64
                               or any(c not in "0123456789abcdef" for c in sha256.lower())):
        raise ValueError(f"sha256 must be 64 hexadecimal digits, got {sha256!r}")
    pin = sha256 if sha256 is not None else release.sha256
    target = weights_path(name, directory)
    if target.is_file():
        try:
            if pin:
                _check_sha256(target, pin, repr(str(target)))
            return load_weights(model, target)
        except (WeightFileError, WeightsMismatchError) as exc:
            raise _naming(exc, repr(str(target)), f"delete {target} and it is downloaded again") from exc
    url = download_url(name)
    part = _download(name, url, target, progress, timeout)
    try:
        digest = _check_sha256(part, pin, repr(url))
        try:
            load_weights(model, part)
        except (WeightFileError, WeightsMismatchError) as exc:
            raise _naming(exc, repr(url), "nothing was saved to the cache") from exc
        os.replace(part, target)
    except BaseException:
        if part.exists():
            os.unlink(part)
        raise
    if progress:
        print(f"saved {target} (sha256 {digest})", file=sys.stderr)
    return model
