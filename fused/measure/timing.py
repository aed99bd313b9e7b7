"""Timing a callable the same way everywhere: warm-up, then the median and the minimum of many runs.

On a GPU each run is timed with CUDA events (what the GPU spent, not what Python spent). On a CPU
it is timed with the wall clock, under a fixed number of torch threads (``threads=``, else the
count an enclosing :func:`torch_threads` fixed, else :func:`cpu_threads`: the idle cores), and
with at least :data:`CPU_MIN_REPEATS` runs: on a small CPU shared with other work a slow run is
common, and the median of a handful of runs can land on one. The minimum is what the code can
do; the median what it did. Interpreter timings of Triton kernels are never speedups: the
profiler and the benchmark never time the fused path in the interpreter.
"""

from __future__ import annotations

import contextvars
import os
import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from .. import runtime

#: Fewest timed runs on a CPU, whatever ``repeats`` asks: fewer make the median a coin toss on a busy machine.
CPU_MIN_REPEATS = 7


@dataclass(frozen=True)
class Timing:
    """Median and spread of ``runs`` timed runs, in milliseconds, and how they were timed
    (``threads``: the torch CPU threads during the timing; None on a GPU)."""

    median_ms: float
    min_ms: float
    max_ms: float
    runs: int
    method: str  # "cuda-event", "cuda-graph" or "wall-clock"
    threads: int | None = None

    def __str__(self) -> str:
        where = f", {self.threads} threads" if self.threads else ""
        return f"{self.median_ms:.4g} ms (median of {self.runs}, min {self.min_ms:.4g} ms, {self.method}{where})"


def cpu_threads() -> int:
    """The torch thread count for timing on this CPU now: ``torch.get_num_threads()`` less the cores
    that other work keeps busy (the 1-minute load average), at least 1.

    On a 2-core CPU shared with other work, two torch threads wait for each other at every operator:
    RetinaFace at 160x160 took 347 ms with two threads against 11 ms with one. Read once per
    profile and then kept fixed (:func:`torch_threads`), so every row is timed alike.
    """
    threads = torch.get_num_threads()
    if not hasattr(os, "getloadavg"):
        return threads
    idle = (os.cpu_count() or 1) - int(os.getloadavg()[0] + 0.5)
    return max(1, min(threads, idle))


_FIXED_THREADS: contextvars.ContextVar[int | None] = contextvars.ContextVar("facefuse_timing_threads", default=None)


@contextmanager
def torch_threads(threads: int | None):
    """Run the block with ``torch.set_num_threads(threads)`` (None: unchanged); restore the count after.
    Inside it, :func:`time_callable` on a CPU times with ``threads`` unless told otherwise."""
    before = torch.get_num_threads()
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)
    token = _FIXED_THREADS.set(threads if threads is not None else _FIXED_THREADS.get())
    try:
        yield
    finally:
        _FIXED_THREADS.reset(token)
        torch.set_num_threads(before)


def times_fused(device) -> bool:
    """True where fused timings mean something: a CUDA device with compiled (not interpreted) kernels."""
    return torch.device(device).type == "cuda" and not runtime.INTERPRETED


def first_line(exc: BaseException) -> str:
    """``"TypeName: first line of the message"``: how a failed measurement is recorded in a note."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


def timing_method(device) -> str:
    return "cuda-event" if torch.device(device).type == "cuda" else "wall-clock"


def time_callable(fn, device="cpu", *, warmup: int = 3, repeats: int = 20, cuda_graph: bool = False,
                  threads: int | None = None) -> Timing:
    """Time ``fn()`` after ``warmup`` calls; return the median and minimum of ``repeats`` runs.

    With ``cuda_graph=True`` (CUDA only) ``fn`` is captured once in a CUDA graph and the graph is
    replayed, which removes launch overhead from microsecond kernels. On a CPU, ``threads`` is set
    for the warm-up and the runs and restored after (default: the count fixed by an enclosing
    :func:`torch_threads`, else :func:`cpu_threads`), and at least :data:`CPU_MIN_REPEATS` runs are timed.
    """
    device = torch.device(device)
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    if device.type != "cuda":
        if cuda_graph:
            raise ValueError("CUDA graphs need a CUDA device")
        if threads is None:
            threads = _FIXED_THREADS.get() or cpu_threads()
        with torch_threads(threads):
            for _ in range(warmup):
                fn()
            samples = []
            for _ in range(max(repeats, CPU_MIN_REPEATS)):
                start = time.perf_counter()
                fn()
                samples.append((time.perf_counter() - start) * 1e3)
        return _summary(samples, "wall-clock", threads)

    for _ in range(max(warmup, 1)):
        fn()
    torch.cuda.synchronize(device)
    run = fn
    method = "cuda-event"
    if cuda_graph:
        graph = torch.cuda.CUDAGraph()
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            fn()  # warm the side stream before capture
        torch.cuda.current_stream(device).wait_stream(stream)
        with torch.cuda.graph(graph):
            fn()
        run = graph.replay
        method = "cuda-graph"
        for _ in range(warmup):
            run()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
    for s, e in zip(starts, ends):
        s.record()
        run()
        e.record()
    torch.cuda.synchronize(device)
    return _summary([s.elapsed_time(e) for s, e in zip(starts, ends)], method)


def peak_memory_bytes(fn, device="cpu") -> int | None:
    """Extra device memory one call of ``fn()`` needs at its peak, in bytes; None on a CPU.

    On CUDA: the caching allocator's peak (``torch.cuda.max_memory_allocated``) during one call,
    after ``torch.cuda.reset_peak_memory_stats``, minus what was allocated before the call. It
    counts the call's outputs and temporaries, not the model's weights already in memory. A CPU
    allocator keeps no such statistic, so nothing is measured there (None), rather than guessed.
    """
    device = torch.device(device)
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    out = fn()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - before
    del out
    return max(int(peak), 0)


def _summary(samples, method: str, threads: int | None = None) -> Timing:
    return Timing(statistics.median(samples), min(samples), max(samples), len(samples), method, threads)
