"""The switch between the Triton kernels and the reference forward.

The setting is a global switch plus a set of block types switched off on their own. A fused
module takes the fused path only when the global switch is on **and** its block type is not
switched off. Block types are named as by :func:`reference.block_type` (``"SSH"``, ``"FPN"``,
``"conv_dw"``, ``"RetinaFace"``, ...; every key of :data:`fused.REGISTRY`); an unknown name is an
error that lists the valid ones.

Three ways to set it:

* the environment variable ``FACEFUSE_FUSED``, read once at import: ``1``/``true``/``yes``/``on``
  (or unset, or empty) turn the fused path on, ``0``/``false``/``no``/``off`` off (any case);
  any other value makes ``import fused`` raise;
* :func:`set_enabled`, which changes the process-wide setting (or, inside a ``with
  fused.enabled(...)`` block, that block's setting, undone when the block ends);
* the :func:`enabled` context manager, which sets the flag for the body of the ``with`` in the
  current thread (more exactly, the current :mod:`contextvars` context) only, and restores
  exactly the previous setting on exit::

    with fused.enabled(False):
        reference_out = model(x)   # same model object, reference forward
    fused_out = model(x)           # Triton kernels

How the two parts combine: ``set_enabled(flag)`` / ``enabled(flag)`` without ``block_types``
set the global switch and clear every per-type setting (``enabled(True)`` means everything
fused); with ``block_types`` they switch off (``False``) or back on (``True``) only those types
and keep the global switch as it is, so ``set_enabled(True, block_types={"SSH"})`` while the
global switch is off leaves SSH modules on the reference path::

    with fused.enabled(False, block_types={"SSH"}):
        out = model(x)             # every block fused except the SSH modules

Threads. Each thread sees the process-wide setting until it enters its own ``enabled()`` block;
one thread's ``enabled()`` never changes what another thread sees, and overlapping blocks in
several threads each restore their own previous setting. Python starts a thread with a fresh
context, so a thread started inside a ``with fused.enabled(...)`` block does not inherit it:
run its work with ``contextvars.copy_context().run(...)`` to carry the setting over. asyncio
tasks copy the context they are created in, so they do inherit it.

``torch.compile``. Dynamo cannot read a ContextVar, so while it traces, the flag is the setting
most recently put in force in the process (the process-wide one, or the ``enabled()`` block most
recently entered or left, in any thread), kept as plain values that the compiled code is guarded
on: any change re-traces, or reuses the code compiled for that setting. In one thread this is
exactly the setting in force; threads that hold different ``enabled()`` blocks while calling one
compiled model may run the path another thread's setting selected (see the documentation's
"torch.compile and export" page, docs/compile.md).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import threading
from dataclasses import dataclass

import torch

from .registry import REGISTRY

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def parse_environment(value: str | None) -> bool:
    """``FACEFUSE_FUSED``'s value as on (True) or off (False); raise ValueError for anything else."""
    if value is None or not value.strip():
        return True
    word = value.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError(
        f"FACEFUSE_FUSED={value!r} is not a valid setting: use one of {', '.join(_TRUE)} (fused "
        f"path on; also the default when unset) or {', '.join(_FALSE)} (reference path)"
    )


@dataclass(frozen=True)
class _Setting:
    on: bool
    off_types: frozenset[str] = frozenset()

    def changed(self, flag: bool, types: frozenset[str] | None) -> "_Setting":
        if types is None:
            return _Setting(flag)
        return _Setting(self.on, self.off_types - types if flag else self.off_types | types)


_process_setting = _Setting(parse_environment(os.environ.get("FACEFUSE_FUSED")))
_process_lock = threading.Lock()
#: The setting of the innermost ``enabled()`` block in this context; None outside any block.
_context_setting: contextvars.ContextVar[_Setting | None] = contextvars.ContextVar("facefuse_flag", default=None)


#: The setting most recently put in force, in any thread: the process-wide setting, or the
#: setting of the ``enabled()`` block most recently entered or left, as plain values that
#: ``torch.compile`` (Dynamo, which cannot read a ContextVar) reads and guards on. In a single
#: thread it is exactly the setting in force. See :func:`_current`.
_last_in_force: tuple[bool, tuple[str, ...]] = (_process_setting.on, ())


def _put_in_force(setting: _Setting) -> None:
    global _last_in_force
    _last_in_force = (setting.on, tuple(sorted(setting.off_types)))


def _current() -> _Setting:
    if torch.compiler.is_dynamo_compiling():
        # Dynamo reads the setting last put in force and guards on its value: a later change,
        # either way, re-traces (or reuses the code compiled for that setting).
        on, off = _last_in_force
        return _Setting(on, frozenset(off))
    setting = _context_setting.get()
    return _process_setting if setting is None else setting


def is_enabled(block_type: str | None = None) -> bool:
    """True when fused modules (of ``block_type``, if given) run their Triton kernels here."""
    setting = _current()
    return setting.on and (block_type is None or block_type not in setting.off_types)


def disabled_block_types() -> frozenset[str]:
    """The block types switched off on their own here (the global switch aside)."""
    return _current().off_types


def known_block_types() -> frozenset[str]:
    """Every block type name the flag accepts: those :func:`fused.fuse` can fuse."""
    return frozenset(REGISTRY)


def _checked_flag(flag) -> bool:
    if isinstance(flag, bool) or (isinstance(flag, int) and flag in (0, 1)):
        return bool(flag)
    raise TypeError(f"the fused flag must be True or False, got {flag!r}")


def _checked_types(block_types) -> frozenset[str] | None:
    if block_types is None:
        return None
    types = frozenset([block_types]) if isinstance(block_types, str) else frozenset(block_types)
    if not all(isinstance(t, str) for t in types):
        raise TypeError(f"block_types must be block type names (strings), got {sorted(map(repr, types))}")
    unknown = types - known_block_types()
    if unknown:
        raise ValueError(f"unknown block type(s) {sorted(unknown)}; valid names: {sorted(known_block_types())}")
    return types


def set_enabled(flag: bool, block_types=None) -> None:
    """Turn the fused path on or off for every fused module, or only for those of ``block_types``.

    Changes the process-wide setting, which every thread sees outside its own ``enabled()``
    blocks; called inside a ``with fused.enabled(...)`` block, changes that block's setting
    instead (restored when the block ends). See the module docstring for how the global switch
    and ``block_types`` combine.
    """
    global _process_setting
    flag, types = _checked_flag(flag), _checked_types(block_types)
    setting = _context_setting.get()
    if setting is not None:
        _context_setting.set(setting.changed(flag, types))
        _put_in_force(_context_setting.get())
        return
    with _process_lock:
        _process_setting = _process_setting.changed(flag, types)
        _put_in_force(_process_setting)


@contextlib.contextmanager
def enabled(flag: bool = True, block_types=None):
    """Run the body with the fused path on (``True``) or off (``False``) — for every fused module,
    or only for those of ``block_types`` — in this thread only, then restore the previous setting."""
    flag, types = _checked_flag(flag), _checked_types(block_types)
    token = _context_setting.set(_current().changed(flag, types))
    _put_in_force(_current())
    try:
        yield
    finally:
        _context_setting.reset(token)
        _put_in_force(_current())
