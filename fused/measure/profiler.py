"""Block-level profile of a face model: where the time, the FLOPs and the bytes go, block by block.

``facefuse profile`` (or :func:`profile`) builds a model, runs one forward pass that records every
block's input, then times each block on its own input and counts what it computes and moves::

    from fused.measure import profile
    prof = profile("retinaface", size=320, compile=True)
    print(prof.table())
    prof.save("facefuse-profile")       # profile.txt/.csv/.json, profile.png, roofline.png

:mod:`fused.measure.rows` says what each row and column holds; :mod:`fused.measure.columns`
fills the torch.compile and fused columns.

``trace="file.json"`` writes a torch.profiler Chrome trace of a few forward passes of the
reference model (and of the compiled and fused models where they are timed): open it in
``chrome://tracing`` or https://ui.perfetto.dev.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from ..flag import enabled
from ..tolerance import reduction_length
from . import environment, timing
from .ceilings import measure as measure_ceilings
from .blocks import find_rows, record, run_calls
from .columns import compile_columns, fused_columns, fused_compile_column, peak_row, time_row, trace_runs
from .models import MEMORY_FORMATS, MODELS, build_model, example_input, profile_options
from .rows import OUTSIDE, PATHS, SUM, TOTAL, Profile, Row, flag_rows
from .tensors import nbytes, shapes, state_bytes


def profile_model(
    model: nn.Module,
    example_input: torch.Tensor,
    *,
    warmup: int = 3,
    repeats: int = 20,
    fused: bool = True,
    device=None,
    check_input: torch.Tensor | None = None,
    settings: dict | None = None,
    progress=None,
    compile=False,
    compile_mode: str = "default",
    cuda_graphs: bool = False,
    ceilings=None,
    trace=None,
    trace_steps: int = 3,
    threads: int | None = None,
) -> Profile:
    """Profile ``model`` on ``example_input`` block by block (see the module docstring).

    ``model`` and ``example_input`` are moved to ``device`` when it is given (default: the input's
    device). ``check_input`` (default ``example_input``) is the input of the fused correctness
    pass; on a CPU, where the kernels run in Triton's interpreter, a smaller one keeps that pass
    short. ``progress`` is called with one line of text per step (``print`` to stderr, say).

    ``compile``: ``True`` adds the torch.compile columns for every row and the whole model, or an
    iterable of row paths (``TOTAL`` for the whole model) to compile only those. ``cuda_graphs``
    (CUDA only) times every path as CUDA graph replays. ``ceilings``: a
    :class:`fused.measure.ceilings.Ceilings`, ``None`` to measure them now (without the cache file), or
    ``False`` for no roofline columns. ``trace``: a file name for a torch.profiler Chrome trace of
    ``trace_steps`` forward passes of each timed model. ``threads`` (CPU only): the torch thread
    count for the whole profile, default :func:`fused.measure.timing.cpu_threads` (the idle cores).
    """
    device = torch.device(device) if device is not None else example_input.device
    if device.type == "cuda":
        threads = None
    elif threads is None:
        threads = timing.cpu_threads()
    with timing.torch_threads(threads):
        return _profile_model(model, example_input, warmup, repeats, fused, device, check_input, settings,
                              progress, compile, compile_mode, cuda_graphs, ceilings, trace, trace_steps)


def _profile_model(model, example_input, warmup, repeats, fused, device, check_input, settings, progress,
                   compile, compile_mode, cuda_graphs, ceilings, trace, trace_steps) -> Profile:
    say = progress or (lambda line: None)
    if cuda_graphs and device.type != "cuda":
        raise ValueError("cuda_graphs=True needs a CUDA device")
    model = model.to(device).eval()
    example_input = example_input.to(device)
    dtype = example_input.dtype
    notes: list[str] = []
    graph = bool(cuda_graphs)

    if ceilings is None:
        say("measuring the machine's ceilings (copy bandwidth, matmul throughput)")
        ceilings = measure_ceilings(device, dtype, cache=False)
    ceil = ceilings or None

    rows = find_rows(model)
    units, _ = record(model, example_input, rows, count=True)
    uncalled = [u.path for u in units if not u.calls]
    units = sorted((u for u in units if u.calls), key=lambda u: u.first_call)
    if uncalled:
        notes.append(f"not called in the forward pass, so not profiled: {', '.join(uncalled)}")

    # -- reference columns ----------------------------------------------------------------
    out_rows: list[Row] = []
    with torch.no_grad():
        # The whole model first: its warm-up also warms every block (allocator, conv algorithms).
        total = Row(kind="total", path=TOTAL, block_type=type(model).__name__, calls=1)
        whole = time_row(lambda: model(example_input), device, max(warmup, 1), repeats, graph, total, "reference")
        if whole is None:
            raise RuntimeError(f"the reference model could not be timed: {total.note}")
        total.ref_peak_bytes = peak_row(lambda: model(example_input), device, total, "reference")
        say(f"whole model: {whole.median_ms:.4g} ms")
        for i, u in enumerate(units, 1):
            min_bytes = nbytes(u.calls) + u.out_bytes + state_bytes(u.module)
            row = Row(
                kind=u.kind, path=u.path, block_type=u.type, calls=len(u.calls),
                input_shapes=shapes(u.calls[0]), output_shapes=u.outputs[0] if u.outputs else "",
                parameters=sum(p.numel() for p in u.module.parameters()),
                flops=u.flops, min_bytes=min_bytes, eager_bytes=u.eager_bytes,
                intensity=u.flops / min_bytes if min_bytes else None,
                reduction_length=reduction_length(u.module),
            )
            run = (lambda u=u: run_calls(u.module, u.calls))
            t = time_row(run, device, warmup, repeats, graph, row, "reference")
            if t is not None:
                row.ref_median_ms, row.ref_min_ms, row.ref_max_ms, row.timing_method = t.median_ms, t.min_ms, t.max_ms, t.method
            row.ref_peak_bytes = peak_row(run, device, row, "reference")
            out_rows.append(row)
            say(f"[{i}/{len(units)}] {u.path} ({u.type}): " + (f"{t.median_ms:.4g} ms" if t else "not timed"))

        model_output = model(example_input)
    total_min = nbytes(example_input) + nbytes(model_output) + state_bytes(model)
    total_flops = sum(u.flops for u in units)
    total.input_shapes, total.output_shapes = shapes(example_input), shapes(model_output)
    total.parameters = sum(p.numel() for p in model.parameters())
    total.flops, total.min_bytes = total_flops, total_min
    total.eager_bytes = sum(u.eager_bytes for u in units)
    total.intensity = total_flops / total_min if total_min else None
    total.reduction_length = reduction_length(model)
    total.ref_median_ms, total.ref_min_ms, total.ref_max_ms = whole.median_ms, whole.min_ms, whole.max_ms
    total.timing_method = whole.method
    del model_output

    # -- torch.compile columns ------------------------------------------------------------
    compiled_model = None
    if compile:
        wanted = None if compile is True else set(compile)
        compiled_model = compile_columns(model, example_input, units, out_rows, total, device, warmup, repeats,
                                          compile_mode, graph, wanted, notes, say)

    # -- fused columns ----------------------------------------------------------------------
    fuse_report, fmodel = "", None
    if fused:
        fuse_report, fmodel = fused_columns(
            model, example_input, check_input, rows, units, out_rows, total, device, dtype,
            warmup, repeats, graph, notes, say,
        )

    # -- fused + torch.compile: the whole fused model, its kernels as torch.ops.facefuse ops --
    fused_compiled = None
    if fused and fmodel is not None and compile and (compile is True or TOTAL in set(compile)):
        fused_compiled = fused_compile_column(model, fmodel, example_input, check_input, total, device, dtype,
                                              warmup, repeats, compile_mode, graph, notes, say)

    # -- totals, bandwidth, roofline, speedups ----------------------------------------------
    summed, outside = summary_rows(out_rows, total, notes)
    all_rows = out_rows + [summed, outside, total]
    for r in all_rows:
        derive(r, ceil)

    notes.append(
        f"'{SUM}' adds the rows up; '{OUTSIDE}' is the whole-model time minus that sum: work between modules "
        "(concatenations, reshapes, softmax) and Python overhead; timing noise can make it slightly negative "
        "(more than that is flagged, as is an outside time above the sum)."
    )
    notes.append(
        "FLOPs are 2 x MACs of Conv2d and Linear layers only (elementwise ops are not counted); "
        "eager bytes count leaf modules only (functional ops such as torch.cat are not counted)."
    )
    if ceil is not None:
        notes.append(
            f"GB/s is effective bandwidth: the row's minimal bytes (min MB) over its time; %BW compares it with "
            f"the measured copy bandwidth ({ceil.copy_gbps:.3g} GB/s, the memory roofline). 'bound' compares "
            f"FLOP/B with the ridge point of the measured ceilings ({ceil.ridge:.3g} FLOP/B = matmul "
            f"{ceil.matmul_flops / 1e9:.4g} GFLOP/s {ceil.matmul_dtype} / copy bandwidth): below it a block is memory-bound."
        )
    notes.extend(flag_rows(all_rows, ceil))
    if device.type != "cuda":
        notes.append("peak memory is measured on CUDA only (torch.cuda.max_memory_allocated around one call); the "
                     "CPU allocator keeps no peak statistic, so the peak columns are empty here.")
    if compile and device.type == "cpu":
        notes.append("torch.compile on the CPU uses Inductor's C++ backend: its times are CPU times, comparable with "
                     "the reference column, not with a GPU. compile_seconds (CSV/JSON) is how long the first, "
                     "compiling call took.")
    elif not compile:
        notes.append("torch.compile columns are empty: not requested (facefuse profile --compile, or compile=True).")
    if graph:
        notes.append("every path was timed as CUDA graph replays: launch overhead removed (torch.compile too, "
                     "except in modes that capture their own graphs)")

    # -- trace --------------------------------------------------------------------------------
    if trace:
        runs = {"reference": lambda: model(example_input)}
        if compiled_model is not None:
            runs["torch.compile"] = lambda: compiled_model(example_input)
        if fmodel is not None and timing.times_fused(device):
            def fused_run():
                with enabled(True):
                    return fmodel(example_input)
            runs["fused"] = fused_run
            if fused_compiled is not None:
                runs["fused + torch.compile"] = lambda: fused_compiled(example_input)
        say(f"tracing {trace_steps} forward passes of: {', '.join(runs)}")
        trace_runs(runs, trace, device, steps=trace_steps)
        notes.append(f"torch.profiler Chrome trace of {trace_steps} forward passes of {', '.join(runs)} written to "
                     f"{os.fspath(trace)} (open it in chrome://tracing or ui.perfetto.dev)"
                     + ("" if "fused" in runs or fmodel is None else
                        "; the fused model is not traced on a CPU: in Triton's interpreter the trace shows Python, not kernels"))
    if compile:
        torch._dynamo.reset()  # free the compiled graphs

    environ = environment.describe(device)
    if device.type == "cpu" and hasattr(os, "getloadavg"):
        load, cores = os.getloadavg()[0], os.cpu_count() or 1
        if load > 0.75 * cores:
            notes.append(f"the machine was busy (load average {load:.1f} on {cores} cores): CPU timings are noisy; "
                         "rerun on an idle machine before reading much into small differences")
    all_settings = {
        "model": type(model).__name__,
        "input_shape": "x".join(str(d) for d in example_input.shape),
        "dtype": str(dtype).replace("torch.", ""),
        "memory_format": "channels_last" if example_input.dim() == 4 and not example_input.is_contiguous()
        and example_input.is_contiguous(memory_format=torch.channels_last) else "nchw",
        "device": device.type,
        "warmup": warmup,
        "repeats": repeats if device.type == "cuda" else max(repeats, timing.CPU_MIN_REPEATS),
        "fused": fused,
        "compile": bool(compile),
        "compile_mode": compile_mode if compile else None,
        "cuda_graphs": graph,
        "check_input_shape": "x".join(str(d) for d in (check_input if check_input is not None else example_input).shape),
        "torch_threads": torch.get_num_threads(),
        "trace": os.fspath(trace) if trace else None,
    }
    all_settings.update(settings or {})
    return Profile(all_rows, all_settings, environ, notes, fuse_report, ceil.to_dict() if ceil is not None else {})


def summary_rows(out_rows: list[Row], total: Row, notes: list[str]) -> tuple[Row, Row]:
    """``(sum of blocks)`` and ``(outside blocks)``: the rows added up, and the model minus that sum."""
    def add(column):
        values = [getattr(r, column) for r in out_rows]
        return sum(values) if values and all(v is not None for v in values) else None

    summed = Row(kind="sum", path=SUM, block_type="", calls=len(out_rows), flops=add("flops"),
                 min_bytes=add("min_bytes"), eager_bytes=add("eager_bytes"), parameters=add("parameters"),
                 timing_method=total.timing_method)
    if summed.flops is not None and summed.min_bytes:
        summed.intensity = summed.flops / summed.min_bytes
    outside = Row(kind="outside", path=OUTSIDE, block_type="", timing_method=total.timing_method)
    for p, label in PATHS:
        column = f"{p}_median_ms"
        value = add(column)
        setattr(summed, column, value)
        if value is None and any(getattr(r, column) is not None for r in out_rows):
            missing = [r.path for r in out_rows if getattr(r, column) is None]
            notes.append(f"'{SUM}' has no {label} time: {len(missing)} row(s) were not timed on that path "
                         f"({', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''})")
        if value is not None and getattr(total, column) is not None:
            setattr(outside, column, getattr(total, column) - value)
    return summed, outside


def derive(row: Row, ceil) -> None:
    """Bandwidth, % of the copy roofline, bound and speedups of one row, from its times."""
    for p, _ in PATHS:
        ms = getattr(row, f"{p}_median_ms")
        if row.kind != "outside" and row.min_bytes and ms and ms > 0:
            gbps = row.min_bytes / (ms * 1e-3) / 1e9
            setattr(row, f"{p}_gbps", gbps)
            if ceil is not None:
                setattr(row, f"{p}_bw_pct", 100.0 * gbps / ceil.copy_gbps)
    if ceil is not None and row.kind != "outside" and row.intensity is not None:
        row.bound = ceil.bound(row.intensity)
    if row.kind == "outside":
        return
    ref, comp, fus = row.ref_median_ms, row.compile_median_ms, row.fused_median_ms
    if ref and comp and comp > 0:
        row.compile_speedup = ref / comp
    if ref and fus and fus > 0:
        row.speedup = ref / fus
    if comp and fus and fus > 0:
        row.speedup_vs_compile = comp / fus
    both = row.fused_compile_median_ms
    if ref and both and both > 0:
        row.fused_compile_speedup = ref / both
    if comp and both and both > 0:
        row.fused_compile_vs_compile = comp / both


def profile(
    model: str = "retinaface",
    *,
    size=None,
    batch: int = 1,
    dtype="float32",
    device="auto",
    warmup: int | None = None,
    repeats: int | None = None,
    fused: bool = True,
    seed: int = 0,
    weights=None,
    check_size=None,
    progress=None,
    compile=False,
    compile_mode: str = "default",
    memory_format: str = "nchw",
    cuda_graphs: bool = False,
    ceilings=None,
    trace=None,
    threads: int | None = None,
) -> Profile:
    """Build ``model`` (a name in :data:`MODELS`) and profile it; what ``facefuse profile`` runs.

    The options are checked by :func:`fused.measure.models.profile_options` (a ValueError names
    a bad one): ``size`` is ``(H, W)`` or one int (default: 320 on a CPU, 640 on a GPU; ArcFace
    128); ``check_size`` is the input side of the fused correctness pass (default on a CPU:
    :data:`~fused.measure.models.CPU_CHECK_SIZE`, the interpreter is slow; on a GPU: ``size``).
    ``memory_format`` is ``"nchw"`` or ``"channels_last"`` (model and input). ``compile``,
    ``compile_mode``, ``cuda_graphs``, ``ceilings`` and ``trace`` are passed to
    :func:`profile_model`, and ``threads`` too (``compile`` is off by default here: compiling every block takes a
    minute or two on a small CPU).
    """
    opts = profile_options(model, size=size, batch=batch, dtype=dtype, device=device, warmup=warmup,
                           repeats=repeats, fused=fused, check_size=check_size, memory_format=memory_format,
                           cuda_graphs=cuda_graphs, weights=weights)
    dev, size, layout = opts.device, opts.size, MEMORY_FORMATS[memory_format]
    x = example_input(model, size, batch, dtype=opts.dtype, device=dev, seed=seed).contiguous(memory_format=layout)
    check_input = None
    if opts.check_size is not None:
        check_input = example_input(model, opts.check_size, batch, dtype=opts.dtype, device=dev, seed=seed)
        check_input = check_input.contiguous(memory_format=layout)
    net = build_model(model, seed=seed, weights=weights).to(device=dev, dtype=opts.dtype, memory_format=layout)
    settings = {
        "memory_format": memory_format,
        "model": model,
        "model_description": MODELS[model],
        "size": list(size),
        "batch": batch,
        "seed": seed,
        "weights": os.fspath(weights) if weights is not None else None,
        "initialisation": (f"weights loaded from {os.fspath(weights)}" if weights is not None else
                           f"seeded initialisation (seed {seed}) with reference.randomize_batchnorm, "
                           "so BatchNorm folding is exercised; not trained weights"),
    }
    prof = profile_model(net, x, warmup=opts.warmup, repeats=opts.repeats, fused=fused, device=dev,
                         check_input=check_input, settings=settings, progress=progress, compile=compile,
                         compile_mode=compile_mode, cuda_graphs=cuda_graphs, ceilings=ceilings, trace=trace,
                         threads=threads)
    prof.notes.insert(0, settings["initialisation"])
    return prof
