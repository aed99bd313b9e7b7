"""The switch between the Triton kernels and the reference forward.

Three ways to set it, latest wins: the environment variable ``FACEFUSE_FUSED`` (``0`` turns the
fused path off at import), :func:`set_enabled`, and the :func:`enabled` context manager::

    with fused.enabled(False):
        reference_out = model(x)   # same model object, reference forward
    fused_out = model(x)           # Triton kernels
"""

from __future__ import annotations

import contextlib
import os

_FALSE = {"0", "false", "no", "off"}
_enabled: bool = os.environ.get("FACEFUSE_FUSED", "1").strip().lower() not in _FALSE


def is_enabled() -> bool:
    """True when fused modules run their Triton kernels."""
    return _enabled


def set_enabled(flag: bool) -> None:
    """Turn the fused path on or off for every fused module."""
    global _enabled
    _enabled = bool(flag)


@contextlib.contextmanager
def enabled(flag: bool = True):
    """Run the body with the fused path on (``True``) or off (``False``), then restore the setting."""
    previous = _enabled
    set_enabled(flag)
    try:
        yield
    finally:
        set_enabled(previous)
