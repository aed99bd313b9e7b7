"""The columns of a profile beyond the reference timings: torch.compile, the fused path, a trace.

Each function fills its columns into the rows that :func:`fused.measure.profiler.profile_model`
builds; a failure (a compile error, a broken kernel, a failed CUDA graph capture) goes to the
row's note and never stops the profile.
"""

from __future__ import annotations

import copy
import os
import time

import torch
from torch import nn

from .. import runtime
from ..base import FusedModule
from ..flag import enabled
from ..fuse import fuse
from ..record import recording
from ..tolerance import reduction_length
from . import timing
from .blocks import record, run_calls
from .rows import TOTAL, Row, add_note
from .tensors import clone, compare, double
from .timing import first_line


def tolerance_dtype(fused_module: nn.Module, dtype: torch.dtype):
    """The dtype the tolerance of a fused module's output uses: ``"tf32"`` for float32 computed with TF32 dots."""
    if dtype == torch.float32:
        for m in fused_module.modules():
            if isinstance(m, FusedModule) and m.dot_precision(_sample(m, dtype)) == "tf32":
                return "tf32"
    return dtype


def _sample(module: nn.Module, dtype: torch.dtype) -> torch.Tensor:
    """An empty tensor of ``dtype`` on the module's device (where its kernels would run)."""
    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    return torch.empty(0, dtype=dtype, device=device)


def describe_run(rec, skipped_reason: str | None) -> tuple[str, str, str]:
    """``(backend, kernels, note)`` from a recording of one block's fused run."""
    counts = rec.kernel_counts()
    kernels = ", ".join(f"{name} x{n}" for name, n in sorted(counts.items()))
    fallbacks = rec.fallbacks()
    reasons = sorted({reason or "?" for _, reason in fallbacks})
    if counts and not fallbacks:
        if skipped_reason:
            return f"{runtime.backend()} (inner blocks)", kernels, f"block itself not fused: {skipped_reason}"
        return runtime.backend(), kernels, ""
    if counts and fallbacks:
        return f"{runtime.backend()} + reference fallback", kernels, "fallback: " + "; ".join(reasons)
    if fallbacks:
        return f"reference (fallback: {'; '.join(reasons)})", "", ""
    return "reference (not fused)", "", skipped_reason or "no fused module ran for this block"


def time_row(fn, device, warmup: int, repeats: int, graph: bool, row: Row, what: str):
    """Time ``fn`` (a CUDA graph replay with ``graph``); a failed capture retries without the graph
    and says so in the row's note; any other failure goes to the note and returns None."""
    try:
        return timing.time_callable(fn, device, warmup=warmup, repeats=repeats, cuda_graph=graph)
    except Exception as exc:
        if not graph:
            add_note(row, f"{what} not timed: {first_line(exc)}")
            return None
        add_note(row, f"{what} timed without a CUDA graph (capture failed: {first_line(exc)})")
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    try:
        return timing.time_callable(fn, device, warmup=warmup, repeats=repeats)
    except Exception as exc:
        add_note(row, f"{what} not timed: {first_line(exc)}")
        return None


def peak_row(fn, device, row: Row, what: str) -> int | None:
    """Peak memory of one call of ``fn`` (CUDA only); a failure goes to the row's note and returns None."""
    try:
        return timing.peak_memory_bytes(fn, device)
    except Exception as exc:
        add_note(row, f"{what} peak memory not measured: {first_line(exc)}")
        return None


def compile_columns(model, example_input, units, out_rows, total, device, warmup, repeats, mode, graph,
                    wanted, notes, say):
    """``torch.compile`` each wanted row's module (and the whole model), time it into the
    ``compile_*`` columns; return the compiled whole model (None if not compiled)."""
    rows_by_path = {r.path: r for r in out_rows}
    targets = [(u.path, u.type, u.module, (lambda cm, u=u: run_calls(cm, u.calls)), rows_by_path[u.path])
               for u in units if wanted is None or u.path in wanted]
    if wanted is None or TOTAL in wanted:
        targets.append((TOTAL, "whole model", model, (lambda cm: cm(example_input)), total))
    # max-autotune and reduce-overhead capture CUDA graphs of their own: do not nest ours
    use_graph = graph and mode == "default"
    compiled_model, streak, stop, seconds = None, 0, None, 0.0
    say(f"torch.compile (mode {mode}) of {len(targets)} row(s); the first calls compile, which takes a while")
    for i, (path, kind, module, call, row) in enumerate(targets, 1):
        if stop:
            add_note(row, f"not compiled: {stop}")
            continue
        torch._dynamo.reset()  # a fresh cache per block: no recompile limit, no stale guards
        start = time.perf_counter()
        try:
            compiled = torch.compile(module, mode=mode)
            with torch.no_grad():
                call(compiled)  # compile outside the timing
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        except Exception as exc:  # recorded in the row, never raised
            add_note(row, f"torch.compile failed: {first_line(exc)}")
            say(f"[compile {i}/{len(targets)}] {path}: torch.compile FAILED ({first_line(exc)})")
            streak += 1
            if streak >= 3:
                stop = "torch.compile failed on three rows in a row (see their notes)"
            continue
        streak = 0
        row.compile_seconds = time.perf_counter() - start
        seconds += row.compile_seconds
        with torch.no_grad():
            t = time_row(lambda: call(compiled), device, warmup, repeats, use_graph, row, "torch.compile")
            row.compile_peak_bytes = peak_row(lambda: call(compiled), device, row, "torch.compile")
        if t is not None:
            row.compile_median_ms, row.compile_min_ms = t.median_ms, t.min_ms
        if path == TOTAL:
            compiled_model = compiled
        say(f"[compile {i}/{len(targets)}] {path} ({kind}): " + (f"{t.median_ms:.4g} ms" if t else "not timed")
            + f", compiled in {row.compile_seconds:.1f} s")
    failed = [path for path, *_, row in targets if row.compile_median_ms is None]
    if failed:
        notes.append(f"torch.compile gave no time for {len(failed)} row(s) ({', '.join(failed[:4])}"
                     f"{', ...' if len(failed) > 4 else ''}): the reason is in each row's note")
    notes.append(f"torch.compile (mode {mode}): compiling took {seconds:.1f} s in all (first calls, not timed)")
    return compiled_model


def trace_runs(runs: dict, path=None, device="cpu", *, steps: int = 3):
    """Run each callable of ``runs`` (label → callable) ``steps`` times under ``torch.profiler``
    (CPU activities, plus CUDA on a GPU), each pass labelled with ``record_function``; write a
    Chrome trace to ``path`` when given. Returns the profiler (``.key_averages().table(...)``)."""
    from torch.profiler import ProfilerActivity, record_function
    from torch.profiler import profile as torch_profile

    device = torch.device(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch.no_grad(), torch_profile(activities=activities) as prof:
        for label, fn in runs.items():
            for i in range(steps):
                with record_function(f"{label} forward #{i + 1}"):
                    fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
    if path:
        folder = os.path.dirname(os.fspath(path))
        if folder:
            os.makedirs(folder, exist_ok=True)
        prof.export_chrome_trace(os.fspath(path))
    return prof


def _time_fused(fn, device, warmup: int, repeats: int, graph: bool, row: Row) -> float | None:
    """Time the fused path into ``row`` (median ms and peak memory); a failure goes to its note."""
    with torch.no_grad(), enabled(True):
        t = time_row(fn, device, warmup, repeats, graph, row, "fused")
        if t is None:
            row.fused_note = "; ".join(filter(None, [row.fused_note, "not timed (see note)"]))
            return None
        row.fused_median_ms = t.median_ms
        row.fused_peak_bytes = peak_row(fn, device, row, "fused")
    return t.median_ms


def fused_columns(model, example_input, check_input, rows, units, out_rows, total, device, dtype,
                  warmup, repeats, graph, notes, say):
    """Fill the fused columns of ``out_rows`` and ``total``; return (the fuse report as text, the fused model).

    :func:`fused.fuse` swaps the blocks of a deep copy of ``model``; each fused block runs once on
    its recorded input (of ``check_input`` when given) and is compared with a float64 run of the
    reference block; on a GPU the blocks that pass are timed too."""
    fmodel = fuse(copy.deepcopy(model))
    report = getattr(fmodel, "fuse_report", None)
    skipped = {s.path: s.reason for s in getattr(report, "skipped", [])}
    swapped = {s.path for s in getattr(report, "swapped", [])}
    on_gpu = timing.times_fused(device)

    check_units = units
    if check_input is not None and check_input is not example_input:
        check_input = check_input.to(device)
        recorded, _ = record(model, check_input, rows, count=False)
        by_path = {u.path: u for u in recorded}
        check_units = [by_path[u.path] for u in units]
    else:
        check_input = example_input

    rows_by_path = {r.path: r for r in out_rows}
    block_units = [(u, cu) for u, cu in zip(units, check_units) if u.kind == "block" and cu.calls]
    failures = []
    for i, (u, cu) in enumerate(block_units, 1):
        row = rows_by_path[u.path]
        fmod = fmodel.get_submodule(u.path) if u.path else fmodel
        expected_module = copy.deepcopy(u.module).double()
        tol_dtype = tolerance_dtype(fmod, dtype)
        try:
            with torch.no_grad(), enabled(True), recording() as rec:
                actual = [fmod(*clone(a), **clone(k)) for a, k in cu.calls]
            with torch.no_grad():
                expected = [expected_module(*double(a), **double(k)) for a, k in cu.calls]
        except Exception as exc:  # a broken kernel must not hide the rest of the profile
            row.fused_backend = "error"
            row.fused_note = first_line(exc)
            failures.append(u.path)
            say(f"[fused {i}/{len(block_units)}] {u.path}: ERROR {row.fused_note}")
            continue
        reason = skipped.get(u.path) if u.path not in swapped else None
        row.fused_backend, row.fused_kernels, row.fused_note = describe_run(rec, reason)
        err, message = compare(actual, expected, dtype=tol_dtype, reduction_length=reduction_length(u.module),
                               what=u.path)
        ok = message is None
        row.fused_max_abs_error, row.fused_within_tolerance = err, ok
        if not ok:
            failures.append(u.path)
            row.fused_note = "; ".join(filter(None, [row.fused_note, message]))
        line = f"[fused {i}/{len(block_units)}] {u.path}: {row.fused_backend}, max |err| {err:.3g} ({'ok' if ok else 'OUT OF TOLERANCE'})"
        if on_gpu and ok:  # a wrong result gets no speedup
            t = _time_fused(lambda fmod=fmod, u=u: run_calls(fmod, u.calls), device, warmup, repeats, graph, row)
            if t is not None:
                line += f", {t:.4g} ms ({row.ref_median_ms / t:.2f}x)" if row.ref_median_ms else f", {t:.4g} ms"
        say(line)

    # The whole fused model, which includes fusions above block level (ArcFace's stem and head).
    try:
        with torch.no_grad(), enabled(True), recording() as rec:
            actual = fmodel(check_input)
        with torch.no_grad():
            expected = copy.deepcopy(model).double()(check_input.double())
    except Exception as exc:
        total.fused_backend = "error"
        total.fused_note = first_line(exc)
        failures.append(TOTAL)
    else:
        total.fused_backend = runtime.backend() if rec.kernels() else "reference (not fused)"
        total.fused_kernels = ", ".join(f"{n} x{c}" for n, c in sorted(rec.kernel_counts().items()))
        err, message = compare(actual, expected, dtype=tolerance_dtype(fmodel, dtype), reduction_length=reduction_length(model),
                               what=TOTAL)
        ok = message is None
        total.fused_max_abs_error, total.fused_within_tolerance, total.fused_note = err, ok, message or ""
        if not ok:
            failures.append(TOTAL)
        line = f"whole fused model: {total.fused_backend}, max |err| {err:.3g} ({'ok' if ok else 'OUT OF TOLERANCE'})"
        if on_gpu and ok:
            t = _time_fused(lambda: fmodel(example_input), device, warmup, repeats, graph, total)
            if t is not None:
                line += f", {t:.4g} ms ({total.ref_median_ms / t:.2f}x)"
        say(line)
    if not on_gpu:
        notes.append(
            f"fused kernels ran in Triton's interpreter ({runtime.backend()}) on the CPU, once per block and once for the "
            "whole model, for correctness only: interpreter timings are not speedups, so fused times, speedups, "
            "GB/s and peak memory are left empty. Run on a CUDA GPU for those."
        )
    if check_input is not example_input:
        notes.append(
            "the fused correctness pass used a smaller input, "
            + "x".join(str(d) for d in check_input.shape)
            + ", than the timing pass (the interpreter is slow); the reference timings use "
            + "x".join(str(d) for d in example_input.shape)
        )
    notes.append(
        "fused error: largest |fused - float64 reference| over the block's outputs; 'ok' means within "
        "fused.tolerance for the model's dtype and the block's longest reduction (C_in/groups*kh*kw)."
    )
    if failures:
        notes.append(f"{len(failures)} block(s) failed the fused check: {', '.join(failures)}")
    return (str(report) if report is not None else ""), fmodel


def fused_compile_column(model, fmodel, example_input, check_input, total, device, dtype, warmup, repeats, mode,
                         graph, notes, say):
    """``torch.compile`` of the whole fused model (``fullgraph=True``: its kernels are
    ``torch.ops.facefuse`` operators) into the ``fused_compile_*`` columns of ``total``: checked
    against float64 on ``check_input``, timed on a GPU only. Returns the compiled model, or None
    if compiling failed (the reason goes to the row's note)."""
    check_input = (check_input if check_input is not None else example_input).to(device)
    torch._dynamo.reset()  # a fresh cache: no recompile limit, no stale guards
    start = time.perf_counter()
    try:
        compiled = torch.compile(fmodel, mode=mode, fullgraph=True)
        with torch.no_grad(), enabled(True):
            actual = compiled(check_input)
    except Exception as exc:  # recorded in the row, never raised
        add_note(total, f"fused + torch.compile failed: {first_line(exc)}")
        say(f"fused + torch.compile of the whole model FAILED ({first_line(exc)})")
        return None
    total.fused_compile_seconds = time.perf_counter() - start
    with torch.no_grad():
        expected = copy.deepcopy(model).double()(check_input.double())
    err, message = compare(actual, expected, dtype=tolerance_dtype(fmodel, dtype),
                           reduction_length=reduction_length(model), what="fused + torch.compile")
    total.fused_compile_max_abs_error, total.fused_compile_within_tolerance = err, message is None
    line = (f"fused + torch.compile (mode {mode}), whole model: max |err| {err:.3g} "
            f"({'ok' if message is None else 'OUT OF TOLERANCE'}), compiled in {total.fused_compile_seconds:.1f} s")
    if message is not None:
        add_note(total, message)
    elif timing.times_fused(device):
        use_graph = graph and mode == "default"  # other modes capture CUDA graphs of their own
        with torch.no_grad(), enabled(True):
            t = time_row(lambda: compiled(example_input), device, warmup, repeats, use_graph, total,
                         "fused + torch.compile")
            total.fused_compile_peak_bytes = peak_row(lambda: compiled(example_input), device, total,
                                                      "fused + torch.compile")
        if t is not None:
            total.fused_compile_median_ms = t.median_ms
            line += f", {t.median_ms:.4g} ms"
    else:
        notes.append("fused + torch.compile: the whole fused model compiled with fullgraph=True (its kernels are "
                     "torch.ops.facefuse operators) and checked against float64; on a CPU those operators run "
                     "the kernels in Triton's interpreter, so it is not timed either")
    say(line)
    return compiled
