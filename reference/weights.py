"""Loading released weights safely and strictly.

Files are read with ``torch.load(..., weights_only=True)``: only tensors and plain containers are
unpickled, never arbitrary objects (whose unpickling can run code). A file that cannot be read
raises :class:`WeightFileError` naming the file, what is wrong with it and the fix; weights that do
not fit the model raise :class:`WeightsMismatchError` naming every offending key, and leave the
model unchanged.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping

import torch
from torch import nn

#: How a file written by ``torch.save`` begins: a zip archive (PyTorch >= 1.6) or a pickle (older).
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTOCOL = b"\x80"


class WeightFileError(ValueError):
    """A weight file cannot be read; the message names the file, the problem and the fix."""

    def __init__(self, source: str, problem: str):
        self.source, self.problem = source, problem
        super().__init__(f"weight file {source}: {problem}")


class WeightsMismatchError(ValueError):
    """The weights do not fit the model; the message lists every missing, unexpected, misshapen or mistyped key."""

    def __init__(self, missing, unexpected, misshapen, mistyped=(), *, source: str | None = None):
        self.missing, self.unexpected = [str(k) for k in missing], [str(k) for k in unexpected]
        self.misshapen, self.mistyped = list(misshapen), list(mistyped)
        lines = [f"weights{'' if source is None else ' from ' + source} do not match the model:"]
        if self.missing:
            lines.append(f"  missing keys ({len(self.missing)}): " + ", ".join(self.missing))
        if self.unexpected:
            lines.append(f"  unexpected keys ({len(self.unexpected)}): " + ", ".join(self.unexpected))
        for key, want, got in self.misshapen:
            lines.append(f"  wrong shape for {key}: model has {tuple(want)}, weights have {tuple(got)}")
        for key, problem in self.mistyped:
            lines.append(f"  wrong value for {key}: {problem}")
        super().__init__("\n".join(lines))


def _describe(path_or_file) -> str:
    if isinstance(path_or_file, (str, os.PathLike)):
        return repr(os.fspath(path_or_file))
    name = getattr(path_or_file, "name", None)
    return repr(name) if isinstance(name, str) else f"<{type(path_or_file).__name__}>"


def _header(path_or_file) -> bytes:
    """The first bytes of a file or file-like object (whose position is restored)."""
    if isinstance(path_or_file, (str, os.PathLike)):
        with open(path_or_file, "rb") as f:
            return f.read(64)
    position = path_or_file.tell()
    try:
        return bytes(path_or_file.read(64))
    finally:
        path_or_file.seek(position)


def _as_text(head: bytes) -> str | None:
    """``head`` as text if it is printable UTF-8 (possibly cut inside a character), else None."""
    for end in range(len(head), max(len(head) - 4, 0), -1):
        try:
            text = head[:end].decode("utf-8")
        except UnicodeDecodeError:
            continue
        return text if all(c.isprintable() or c.isspace() for c in text) else None
    return None


def _not_torch_save(head: bytes) -> str:
    """Why ``head`` is not the start of a ``torch.save`` file, with a likely cause."""
    if head[8:9] == b"{" and b"\x00" in head[:8]:
        return ("is not a torch.save file; it looks like a .safetensors file: load it with "
                "safetensors.torch.load_file(path) and pass the resulting dict")
    text = _as_text(head)
    if text is not None:
        start = text.strip().splitlines()[0][:40] if text.strip() else ""
        if start.startswith("version https://git-lfs"):
            return ("is a Git LFS pointer, not the weights: fetch the real file "
                    "(git lfs pull) or download it again")
        return (f"is a text file (it begins {start!r}), not a torch.save file: perhaps an error "
                "page saved instead of the weights; download it again")
    return f"is not a torch.save file (it begins {head[:8]!r}); give the .pth/.pt file the weights were saved to"


#: What every loader says of a 0-byte file.
EMPTY_FILE = "is empty (0 bytes); the download or copy was probably interrupted: fetch it again"


def check_weight_path(path, *, kind: str = "weight file") -> str:
    """``path`` as a string once it names an existing, non-empty file: the checks every weight
    loader (``.pth`` or ONNX) makes before reading. A folder or an empty file raises
    :class:`WeightFileError`, a missing path ``FileNotFoundError``, each naming the fix; ``kind``
    names the file the user should give ("the path of the <kind> inside it")."""
    source, path = _describe(path), os.fspath(path)
    if os.path.isdir(path):
        raise WeightFileError(source, f"is a folder, not a file; give the path of the {kind} inside it")
    if not os.path.exists(path):
        raise FileNotFoundError(f"no weight file at {source}; check the path")
    if os.path.getsize(path) == 0:
        raise WeightFileError(source, EMPTY_FILE)
    return path


def _load_file(path_or_file):
    """``torch.load(weights_only=True)`` onto the CPU, with every failure as a :class:`WeightFileError`."""
    source = _describe(path_or_file)
    if isinstance(path_or_file, (str, os.PathLike)):
        check_weight_path(path_or_file)
    head = _header(path_or_file)
    if not head:
        raise WeightFileError(source, EMPTY_FILE)
    if not (head.startswith(_ZIP_MAGIC) or head.startswith(_PICKLE_PROTOCOL)):
        raise WeightFileError(source, _not_torch_save(head))
    try:
        return torch.load(path_or_file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" not in str(exc).lower() and "weights_only" not in str(exc):
            raise WeightFileError(source, f"cannot be unpickled ({exc}); it is damaged: fetch it again") from exc
        reason = next((line.split("error:", 1)[1].split(". ")[0].strip()
                       for line in str(exc).splitlines() if "WeightsUnpickler error:" in line), "see the chained error")
        raise WeightFileError(
            source,
            "holds more than tensors and plain containers, so torch.load(weights_only=True) refuses it "
            f"({reason}). Loading with weights_only=True is deliberate: unpickling arbitrary objects can run "
            "code. If the file holds a whole pickled model from a source you trust, load it once with "
            "torch.load(path, weights_only=False) and save model.state_dict() instead",
        ) from exc
    except MemoryError:
        raise
    except Exception as exc:
        what = "a zip archive" if head.startswith(_ZIP_MAGIC) else "a pickle"
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise WeightFileError(
            source,
            f"is truncated or damaged: it starts as {what} written by torch.save but cannot be read "
            f"({type(exc).__name__}: {first}); the download or copy was probably interrupted: fetch it again",
        ) from exc


def _is_file_like(x) -> bool:
    return hasattr(x, "read") and hasattr(x, "seek") and hasattr(x, "tell")


def read_state_dict(path_or_state_dict) -> dict[str, torch.Tensor]:
    """Read a state_dict from a file (``weights_only=True``, onto the CPU) or take a mapping as is.

    ``path_or_state_dict``: a path (``str`` or ``os.PathLike``), an open binary file (e.g.
    ``io.BytesIO``) or a mapping. ``bytes`` are refused: they could be a path or a file's contents
    (pass ``os.fsdecode(path)`` or ``io.BytesIO(contents)``). Checkpoints that nest the weights
    under ``"state_dict"`` are unwrapped, and a ``module.`` prefix (left by ``nn.DataParallel``) is
    stripped from every key. Unreadable files raise :class:`WeightFileError`.
    """
    source = None
    if isinstance(path_or_state_dict, (bytes, bytearray)):
        raise TypeError(
            f"weights given as {type(path_or_state_dict).__name__} ({bytes(path_or_state_dict[:40])!r}...): "
            "pass a path as a str or pathlib.Path (os.fsdecode(path) converts a bytes path), "
            "or a file's contents as io.BytesIO(contents)"
        )
    if isinstance(path_or_state_dict, (str, os.PathLike)) or _is_file_like(path_or_state_dict):
        source = _describe(path_or_state_dict)
        state = _load_file(path_or_state_dict)
    else:
        state = path_or_state_dict
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        if source is None:
            raise TypeError(f"expected a state_dict (a mapping of names to tensors), got {type(state).__name__}")
        raise WeightFileError(source, f"holds a {type(state).__name__}, not a state_dict (a mapping of names to "
                              "tensors); save model.state_dict() instead")
    prefix = "module."
    out = {}
    for k, v in state.items():
        out[k[len(prefix):] if isinstance(k, str) and k.startswith(prefix) else k] = v
    return out


def _kind(dtype: torch.dtype) -> str:
    if dtype == torch.bool:
        return "bool"
    if dtype.is_complex:
        return "complex"
    return "float" if dtype.is_floating_point else "int"


def _value_problem(own: torch.Tensor, value) -> str | None:
    """Why ``value`` cannot be copied into ``own`` without loss or guessing (None if it can)."""
    if not isinstance(value, torch.Tensor):
        hint = "; convert it with torch.from_numpy" if type(value).__module__ == "numpy" else ""
        return f"a {type(value).__module__}.{type(value).__qualname__}, not a torch.Tensor{hint}"
    if value.layout != torch.strided or value.is_quantized or value.device.type == "meta":
        return f"a {value.layout} {value.device.type} tensor{' (quantized)' if value.is_quantized else ''}; expected an ordinary dense tensor with data"
    want, got = _kind(own.dtype), _kind(value.dtype)
    if got != want and not (want == "float" and got == "int"):
        return f"dtype {value.dtype} cannot be copied into the model's {own.dtype} without loss"
    return None


def load_weights(model: nn.Module, path_or_state_dict) -> nn.Module:
    """Load weights into ``model`` strictly and return it; a failed load leaves ``model`` unchanged.

    ``path_or_state_dict`` as in :func:`read_state_dict`. Every key, value (a tensor: floating
    point or integer for a floating-point entry, integer for an integer one) and shape is checked
    before anything is copied; a mismatch raises
    :class:`WeightsMismatchError` naming every missing, unexpected, misshapen and mistyped key. If
    copying still fails, the previous values are put back before the error propagates. An ONNX
    export (a ``.onnx`` path, or contents that begin as ONNX does, bytes included) goes to
    :func:`reference.load_onnx_weights`.
    """
    from .onnx_weights import load_onnx_weights, looks_like_onnx

    if looks_like_onnx(path_or_state_dict):
        return load_onnx_weights(model, path_or_state_dict)
    is_file = isinstance(path_or_state_dict, (str, os.PathLike)) or _is_file_like(path_or_state_dict)
    source = _describe(path_or_state_dict) if is_file else None
    state = read_state_dict(path_or_state_dict)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mistyped = [(k, problem) for k in own if k in state and (problem := _value_problem(own[k], state[k]))]
    misshapen = [
        (k, own[k].shape, state[k].shape)
        for k in own
        if k in state and isinstance(state[k], torch.Tensor) and state[k].shape != own[k].shape
    ]
    if missing or unexpected or misshapen or mistyped:
        raise WeightsMismatchError(missing, unexpected, misshapen, mistyped, source=source)
    backup = {k: v.detach().clone() for k, v in own.items()}
    try:
        model.load_state_dict(state, strict=True)
    except BaseException:
        # Copied straight back (no load hooks to fail again); ``own`` shares the model's storage.
        with torch.no_grad():
            for k, v in own.items():
                v.copy_(backup[k])
        raise
    return model
