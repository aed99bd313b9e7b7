"""A record of what actually ran: which Triton kernels launched, and which blocks fell back.

    with fused.recording() as rec:
        model(x)
    rec.kernels()      # {'conv2d_bias_act', ...}
    rec.fallbacks()    # [(block path, reason), ...]
    print(rec.summary())

``recording(torch_ops=True)`` also counts every PyTorch (ATen) operator that ran, so a test or a
lesson can show that no PyTorch convolution is left in a fused forward::

    with fused.recording(torch_ops=True) as rec:
        model(x)
    rec.pytorch_convolutions()   # 0 when every convolution ran in a Triton kernel

Launchers call :func:`kernel_launched`; fused modules call :func:`fell_back` when they run the
reference forward instead. Nothing is stored unless a recording is active.

A recording collects what runs in its own context: the thread that opened it (and asyncio tasks
or ``contextvars.copy_context().run`` calls started from there), never other threads' launches.
Threads started inside a recording do not inherit it (Python starts threads with a fresh
context); run their work through ``contextvars.copy_context().run`` to include it.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections import Counter
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from . import runtime


@dataclass(frozen=True)
class Event:
    """One thing that ran: a kernel launch or a fallback to the reference forward."""

    kind: str  # "kernel", "fallback" or "autocast"
    name: str  # kernel name, or the fused module's class name for a fallback
    block: str | None  # the block's path in the model, when known
    backend: str  # "triton", "triton-interpreter" or "reference"
    reason: str | None = None
    #: How the launch differed from a plain one, e.g. :data:`fused.runtime.BF16_NOTE`.
    note: str | None = None


#: ATen operators that compute a convolution.
CONVOLUTION_OPS = ("convolution", "conv2d", "_convolution", "cudnn_convolution", "mkldnn_convolution",
                   "_nnpack_spatial_convolution", "thnn_conv2d", "_slow_conv2d_forward", "conv_depthwise2d")


@dataclass
class Recording:
    events: list[Event] = field(default_factory=list)
    #: ATen operator name → calls, filled by ``recording(torch_ops=True)``.
    torch_ops: Counter = field(default_factory=Counter)

    def kernels(self) -> set[str]:
        """Names of the Triton kernels that launched."""
        return {e.name for e in self.events if e.kind == "kernel"}

    def kernel_counts(self) -> Counter:
        return Counter(e.name for e in self.events if e.kind == "kernel")

    def fallbacks(self) -> list[tuple[str | None, str | None]]:
        """``(block path, reason)`` for every block that ran the reference forward."""
        return [(e.block, e.reason) for e in self.events if e.kind == "fallback"]

    def autocasts(self) -> list[tuple[str | None, str | None]]:
        """``(block path, dtype name)`` for every fused block that ran under ``torch.autocast``:
        the dtype its kernels ran in (None for a block that keeps its input's dtype, SEBlock)."""
        return [(e.block, e.note) for e in self.events if e.kind == "autocast"]

    def blocks(self) -> dict[str | None, list[str]]:
        """Kernel names per block path, in launch order."""
        out: dict[str | None, list[str]] = {}
        for e in self.events:
            if e.kind == "kernel":
                out.setdefault(e.block, []).append(e.name)
        return out

    def pytorch_convolutions(self) -> int:
        """How many PyTorch convolution operators ran (needs ``recording(torch_ops=True)``)."""
        return sum(n for name, n in self.torch_ops.items() if name in CONVOLUTION_OPS)

    def summary(self) -> str:
        counts = self.kernel_counts()
        lines = [f"{n} x {name} ({runtime.backend()})" for name, n in sorted(counts.items())]
        lines += [f"note: {note}" for note in sorted({e.note for e in self.events if e.note})]
        lines += [f"fallback: {block}: {reason}" for block, reason in self.fallbacks()]
        lines += [f"autocast: {block}: kernels in {dtype or 'the input dtype'}" for block, dtype in self.autocasts()]
        return "\n".join(lines) if lines else "nothing recorded"


#: The recordings active in this context, innermost last.
_recordings: contextvars.ContextVar[tuple[Recording, ...]] = contextvars.ContextVar("facefuse_recordings", default=())
#: The block paths the launches in this context belong to, innermost last.
_blocks: contextvars.ContextVar[tuple[str | None, ...]] = contextvars.ContextVar("facefuse_blocks", default=())


class _CountTorchOps(TorchDispatchMode):
    """Counts every ATen operator that reaches the dispatcher (PyTorch's own kernels)."""

    def __init__(self, counts: Counter):
        super().__init__()
        self.counts = counts

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def recording(*, torch_ops: bool = False):
    """Record kernel launches and fallbacks inside the ``with`` body; with ``torch_ops``, also
    count the PyTorch operators that ran (slower: every operator goes through Python)."""
    rec = Recording()
    token = _recordings.set(_recordings.get() + (rec,))
    try:
        if torch_ops:
            with _CountTorchOps(rec.torch_ops):
                yield rec
        else:
            yield rec
    finally:
        _recordings.reset(token)


@contextlib.contextmanager
def in_block(path: str | None):
    """Attribute the launches inside the body to the block at ``path``."""
    token = _blocks.set(_blocks.get() + (path,))
    try:
        yield
    finally:
        _blocks.reset(token)


def _current_block() -> str | None:
    blocks = _blocks.get()
    return blocks[-1] if blocks else None


def kernel_launched(name: str) -> None:
    """Called by every launcher just before it launches ``name`` (see :func:`fused.runtime.launching`)."""
    if torch.compiler.is_compiling() and not runtime.INTERPRETED:
        return  # a trace of a launch (a triton_op's body traced by Inductor), not a launch
    note = runtime.launching()
    recordings = _recordings.get()
    if recordings:
        event = Event("kernel", name, _current_block(), runtime.backend(), note=note)
        for rec in recordings:
            rec.events.append(event)


def autocast(name: str, dtype: torch.dtype | None, block: str | None = None) -> None:
    """Called by a fused module that takes the fused path under ``torch.autocast``, with the dtype
    its kernels run in (None when it keeps its input's dtype)."""
    recordings = _recordings.get()
    if recordings:
        note = None if dtype is None else str(dtype).removeprefix("torch.")
        event = Event("autocast", name, block or _current_block(), runtime.backend(), note=note)
        for rec in recordings:
            rec.events.append(event)


def fell_back(name: str, reason: str, block: str | None = None) -> None:
    """Called by a fused module that ran the reference forward, with the reason."""
    recordings = _recordings.get()
    if recordings:
        event = Event("fallback", name, block or _current_block(), "reference", reason)
        for rec in recordings:
            rec.events.append(event)
