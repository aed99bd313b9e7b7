"""The switch between the Triton kernels and the reference forward.

Three ways to set it, latest wins: the environment variable ``FACEFUSE_FUSED`` (``0`` turns the
fused path off at import), :func:`set_enabled`, and the :func:`enabled` context manager::

    with fused.enabled(False):
        reference_out = model(x)   # same model object, reference forward
    fused_out = model(x)           # Triton kernels

Both also take ``block_types``, to switch only the fused modules of those block types (as named
by :func:`reference.block_type`: ``"SSH"``, ``"FPN"``, ``"conv_dw"``, ``"RetinaFace"``, ...)::

    with fused.enabled(False, block_types={"SSH"}):
        out = model(x)             # every block fused except the SSH modules
"""

from __future__ import annotations

import contextlib
import os

_FALSE = {"0", "false", "no", "off"}
_enabled: bool = os.environ.get("FACEFUSE_FUSED", "1").strip().lower() not in _FALSE
_disabled_types: frozenset[str] = frozenset()


def is_enabled(block_type: str | None = None) -> bool:
    """True when fused modules (of ``block_type``, if given) run their Triton kernels."""
    return _enabled and (block_type is None or block_type not in _disabled_types)


def disabled_block_types() -> frozenset[str]:
    """The block types switched off on their own (the global switch aside)."""
    return _disabled_types


def _types(block_types) -> frozenset[str]:
    if isinstance(block_types, str):
        return frozenset([block_types])
    types = frozenset(block_types)
    if not all(isinstance(t, str) for t in types):
        raise TypeError(f"block_types must be block type names (strings), got {sorted(map(repr, types))}")
    return types


def set_enabled(flag: bool, block_types=None) -> None:
    """Turn the fused path on or off for every fused module, or only for those of ``block_types``."""
    global _enabled, _disabled_types
    if block_types is None:
        _enabled = bool(flag)
    elif flag:
        _disabled_types = _disabled_types - _types(block_types)
    else:
        _disabled_types = _disabled_types | _types(block_types)


@contextlib.contextmanager
def enabled(flag: bool = True, block_types=None):
    """Run the body with the fused path on (``True``) or off (``False``) — for every fused module,
    or only for those of ``block_types`` — then restore the previous setting."""
    global _enabled, _disabled_types
    previous = (_enabled, _disabled_types)
    set_enabled(flag, block_types)
    try:
        yield
    finally:
        _enabled, _disabled_types = previous
