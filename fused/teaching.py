"""What the lessons share: the operators a call dispatches, a function's source lines, kernel
launches, and a few callables timed side by side.

    from fused.teaching import ListOps, show_lines, time_each, tolerance_dtype, watch_launches

    with torch.inference_mode(), ListOps() as listed:
        block(x)
    print(" -> ".join(listed.ops))                     # convolution -> _native_batch_norm_legit_no_training -> ...

    show_lines(conv_kernels.conv2d_bias_act_kernel, "acc = tl.zeros", "acc = tl.dot(")

    with watch_launches(conv_kernels, "conv2d_bias_act_kernel") as launches:
        fused_block(x)
    grid, blocks = launches[0]                         # the grid and the BLOCK_* sizes of the first launch

    times = time_each({"eager": lambda: block(x), "fused": lambda: fused_block(x)}, device)

    fused.assert_close(fused_block(x), expected, dtype=tolerance_dtype(x))  # "tf32" for float32 on a GPU

Pictures drawn from the launch plans are in :mod:`fused.teaching_plots`. Nothing in the kernels or
the fused modules imports this module.
"""

from __future__ import annotations

import contextlib
import inspect

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from .base import float32_precision
from .measure import timing


class ListOps(TorchDispatchMode):
    """Inside ``with ListOps() as listed:``, records the name of every PyTorch (ATen) operator that
    runs, in order, in ``listed.ops``. (``fused.recording(torch_ops=True)`` counts them instead.)"""

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def show_lines(fn, start: str, stop: str) -> None:
    """Print the source of ``fn`` (a function, or a ``@triton.jit`` kernel) from the first line
    containing ``start`` to the next line containing ``stop``. Raises ``LookupError`` when either
    line is missing, so a lesson fails in CI when the code has changed under its prose."""
    lines = inspect.getsource(getattr(fn, "fn", fn)).splitlines()
    name = getattr(getattr(fn, "fn", fn), "__qualname__", repr(fn))
    first = next((i for i, line in enumerate(lines) if start in line), None)
    if first is None:
        raise LookupError(f"show_lines: no line of {name} contains {start!r}; the source has changed, "
                          f"so update the lesson (its prose and the start line it shows)")
    last = next((i for i in range(first + 1, len(lines)) if stop in lines[i]), None)
    if last is None:
        raise LookupError(f"show_lines: no line of {name} after {start!r} contains {stop!r}; the source has "
                          f"changed, so update the lesson (its prose and the stop line it shows)")
    print("\n".join(lines[first:last + 1]))


@contextlib.contextmanager
def watch_launches(module, name: str):
    """Inside the ``with`` body, replace the ``@triton.jit`` kernel ``module.<name>`` with a stand-in
    that records each launch's grid and ``BLOCK_*`` sizes, then launches the real kernel. Yields the
    list of ``(grid, {"BLOCK_M": ..., ...})``, one per launch; the kernel is put back on exit."""
    kernel = getattr(module, name)
    launches: list[tuple] = []

    class Watch:
        def __getitem__(self, grid):
            def launch(*args, **meta):
                launches.append((grid, {k: v for k, v in meta.items() if k.startswith("BLOCK")}))
                return kernel[grid](*args, **meta)
            return launch

    setattr(module, name, Watch())
    try:
        yield launches
    finally:
        setattr(module, name, kernel)


def time_each(fns: dict, device, **options) -> dict[str, timing.Timing]:
    """Time each callable of ``fns`` (label → callable) one after the other with
    :func:`fused.measure.timing.time_callable` (``options``: ``warmup``, ``repeats``,
    ``cuda_graph``); returns label → :class:`~fused.measure.timing.Timing`."""
    return {label: timing.time_callable(fn, device, **options) for label, fn in fns.items()}


def tolerance_dtype(x: torch.Tensor):
    """The dtype to check a result computed from ``x`` with (``assert_close(..., dtype=...)``):
    ``"tf32"`` for float32 where convolutions take TF32 products by default (a GPU with TF32 tensor
    cores while ``torch.backends.cudnn.allow_tf32``: PyTorch's own convs there, and fused modules
    with ``precision="auto"``, see :func:`fused.base.float32_precision`), else ``x.dtype``. In
    Triton's interpreter (CPU) that is always ``x.dtype``."""
    if x.dtype == torch.float32 and float32_precision(x.device) == "tf32":
        return "tf32"
    return x.dtype
