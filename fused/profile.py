"""Block-level profile of a face model: where the time, the FLOPs and the bytes go, block by block.

``facefuse profile`` (or :func:`profile`) builds a model, runs one forward pass that records every
block's input, then times each block on its own input and counts what it computes and moves::

    from fused.profile import profile
    prof = profile("retinaface", size=320)
    print(prof.table())
    prof.save("facefuse-profile")       # profile.txt, profile.csv, profile.json, profile.png

**Rows.** A block is the outermost module that :func:`reference.block_type` names (``conv_bn``,
``conv_dw``, ``FPN``, ``SSH``, ``ClassHead``, ``IRBlock``, ...). Modules outside every block that
do work (ArcFace's stem and head, ResNet-50's stem) get a row each, typed by class name
(``Conv2d``, ``BatchNorm2d``, ...). Then ``(outside blocks)``: the whole-model time minus the sum
of the rows (what runs between modules: RetinaFace's concatenations and softmax, Python
overhead), and ``(model)``: the whole forward pass. Every Conv2d and Linear of the model belongs to
exactly one row.

**Columns.**

* ``flops``: 2 x the multiply-accumulates of every Conv2d and Linear inside the row, counted by
  hooks on those layers. Elementwise work (BatchNorm, activations, additions, upsampling,
  softmax) is *not* counted: it is small next to the convolutions and, once fused, free.
* ``min_bytes``: what an ideally fused block moves: its inputs read once, its outputs written
  once and its state (parameters and BatchNorm statistics, as stored in the model) read once,
  all in the model's dtype.
* ``eager_bytes``: an estimate of what eager PyTorch moves: for every leaf module call inside the
  row, its inputs + outputs + state. Functional ops inside a forward (``torch.cat``,
  ``F.interpolate``, ``+``, ``F.relu``) are not hooked, so they are not counted either.
* ``intensity``: ``flops / min_bytes`` (FLOP per byte), to compare with the machine's ratio of
  peak FLOP/s to bandwidth: below it a block is memory-bound, and fusion is what helps.
* ``ref_median_ms``: the block alone on its recorded input, median after warm-up
  (:func:`fused.timing.time_callable`: CUDA events on a GPU, wall clock on a CPU).
* fused columns (``fused=True``): the profiler fuses a deep copy of the model with
  :func:`fused.fuse` and runs each fused block once on the same recorded input, under
  :func:`fused.recording`: which backend ran (``triton``, ``triton-interpreter``, or
  ``reference`` with the reason), the largest absolute error against a float64 run of the
  reference block, and whether it is within :func:`fused.tolerance.tolerance`. On a GPU the fused
  block is timed too, with a speedup against the reference. On a CPU the kernels run in Triton's
  interpreter, whose timings say nothing about a GPU: fused time and speedup stay empty.
"""

from __future__ import annotations

import copy
import csv
import importlib
import json
import math
import os
import sys
from dataclasses import asdict, dataclass, field, fields

import torch
from torch import nn

import reference

from . import environment, runtime, timing
from .tolerance import assert_close, max_error, reduction_length  # noqa: F401  (reduction_length: re-exported for lessons)

# --------------------------------------------------------------------------------------------
# Rows and the profile
# --------------------------------------------------------------------------------------------

OUTSIDE = "(outside blocks)"
TOTAL = "(model)"


@dataclass
class Row:
    """One line of the profile. ``kind`` is ``"block"``, ``"module"`` (a module outside every
    block), ``"outside"`` (the whole model minus the rows) or ``"total"`` (the whole model)."""

    kind: str
    path: str
    block_type: str
    calls: int | None = None
    input_shapes: str = ""
    output_shapes: str = ""
    parameters: int | None = None
    flops: int | None = None
    min_bytes: int | None = None
    eager_bytes: int | None = None
    intensity: float | None = None
    reduction_length: int | None = None
    ref_median_ms: float | None = None
    ref_min_ms: float | None = None
    ref_max_ms: float | None = None
    timing_method: str = ""
    fused_backend: str = ""
    fused_kernels: str = ""
    fused_max_abs_error: float | None = None
    fused_within_tolerance: bool | None = None
    fused_median_ms: float | None = None
    speedup: float | None = None
    fused_note: str = ""


COLUMNS = [f.name for f in fields(Row)]
_INT_COLUMNS = {"calls", "parameters", "flops", "min_bytes", "eager_bytes", "reduction_length"}
_FLOAT_COLUMNS = {"intensity", "ref_median_ms", "ref_min_ms", "ref_max_ms", "fused_max_abs_error",
                  "fused_median_ms", "speedup"}
_BOOL_COLUMNS = {"fused_within_tolerance"}


@dataclass
class Profile:
    """The rows, the settings they were measured with, the machine, and notes for the reader."""

    rows: list[Row]
    settings: dict = field(default_factory=dict)
    environment: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    fuse_report: str = ""

    # -- access ---------------------------------------------------------------------------
    def blocks(self) -> list[Row]:
        """Rows of kind ``"block"`` and ``"module"``: one per part of the model, in run order."""
        return [r for r in self.rows if r.kind in ("block", "module")]

    def row(self, path: str) -> Row:
        for r in self.rows:
            if r.path == path:
                return r
        raise KeyError(f"no row {path!r} in the profile")

    def has_fused_times(self) -> bool:
        return any(r.fused_median_ms is not None for r in self.rows)

    # -- output ---------------------------------------------------------------------------
    def table(self) -> str:
        """The profile as aligned text, with the settings above and the notes below."""
        show_fused = any(r.fused_backend for r in self.rows)
        show_times = self.has_fused_times()
        header = ["path", "type", "input", "output", "params", "MFLOP", "min MB", "eager MB", "FLOP/B", "ref ms"]
        if show_fused:
            header += ["fused backend", "max |err|", "ok"]
        if show_times:
            header += ["fused ms", "speedup"]
        lines = []
        for r in self.rows:
            cells = [
                r.path, r.block_type, _short(r.input_shapes, 34), r.output_shapes if len(r.output_shapes) <= 24 else _short(r.output_shapes, 24),
                _fmt_int(r.parameters), _fmt(r.flops, 1e-6, 3), _fmt(r.min_bytes, 1e-6, 3),
                _fmt(r.eager_bytes, 1e-6, 3), _fmt(r.intensity, 1, 3), _fmt(r.ref_median_ms, 1, 4),
            ]
            if show_fused:
                ok = "" if r.fused_within_tolerance is None else ("yes" if r.fused_within_tolerance else "NO")
                cells += [_short(r.fused_backend, 36), _fmt(r.fused_max_abs_error, 1, 2), ok]
            if show_times:
                cells += [_fmt(r.fused_median_ms, 1, 4), "" if r.speedup is None else f"{r.speedup:.2f}x"]
            lines.append(cells)
        widths = [max(len(h), *(len(c[i]) for c in lines)) for i, h in enumerate(header)]
        numeric = set(range(4, 10)) | ({11} if show_fused else set()) | ({13, 14} if show_times else set())

        def render(cells):
            return "  ".join(c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

        s = self.settings
        title = (f"facefuse profile: {s.get('model', '?')}, input {s.get('input_shape', '?')} {s.get('dtype', '')} "
                 f"on {s.get('device', '?')}, median of {s.get('repeats', '?')} runs after {s.get('warmup', '?')} "
                 f"warm-up ({self.rows[0].timing_method if self.rows else ''})")
        out = [title, render(header), render(["-" * w for w in widths])]
        for r, cells in zip(self.rows, lines):
            if r.kind == "outside":
                out.append(render(["-" * w for w in widths]))
            out.append(render(cells))
        if self.notes:
            out.append("")
            out += [f"note: {n}" for n in self.notes]
        return "\n".join(out)

    def to_dict(self) -> dict:
        """JSON-ready: non-finite numbers (an error that could not be computed) become None."""
        rows = [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(r).items()}
                for r in self.rows]
        return {
            "settings": self.settings,
            "environment": self.environment,
            "notes": self.notes,
            "fuse_report": self.fuse_report,
            "columns": COLUMNS,
            "rows": rows,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "Profile":
        rows = [Row(**{k: v for k, v in r.items() if k in COLUMNS}) for r in data["rows"]]
        return cls(rows, data.get("settings", {}), data.get("environment", {}), data.get("notes", []),
                   data.get("fuse_report", ""))

    def write_json(self, path) -> str:
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=2, allow_nan=False, default=str)
            f.write("\n")
        return os.fspath(path)

    @classmethod
    def read_json(cls, path) -> "Profile":
        with open(path) as f:
            return cls.from_dict(json.load(f))

    def write_csv(self, path) -> str:
        """One line per row; the ``kind`` column marks the two summary lines (``outside``, ``total``)."""
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            for r in self.rows:
                writer.writerow({k: _csv_value(v) for k, v in asdict(r).items()})
        return os.fspath(path)

    def write_chart(self, path) -> str:
        """A horizontal bar chart of the median time per row (reference, and fused where timed)."""
        from matplotlib.figure import Figure  # no pyplot: the caller's backend (e.g. a notebook's) is left alone

        rows = [r for r in self.rows if r.kind in ("block", "module") or (r.kind == "outside" and (r.ref_median_ms or 0) > 0)]
        labels = [f"{r.path} [{r.block_type}]" if r.kind != "outside" else r.path for r in rows]
        ref = [r.ref_median_ms or 0.0 for r in rows]
        fused_times = [r.fused_median_ms for r in rows]
        has_fused = any(t is not None for t in fused_times)
        fig = Figure(figsize=(10, max(3.0, 0.28 * len(rows) + 1.5)))
        ax = fig.subplots()
        ys = list(range(len(rows)))
        if has_fused:
            h = 0.4
            ax.barh([y - h / 2 for y in ys], ref, height=h, label="reference (eager PyTorch)", color="#4c72b0")
            ax.barh([y + h / 2 for y in ys], [t or 0.0 for t in fused_times], height=h, label="fused (Triton)", color="#dd8452")
            ax.legend(loc="lower right")
        else:
            ax.barh(ys, ref, height=0.7, color="#4c72b0", label="reference (eager PyTorch)")
        ax.set_yticks(ys)
        ax.set_yticklabels(labels, fontsize=7)
        ax.invert_yaxis()
        method = rows[0].timing_method if rows else ""
        ax.set_xlabel(f"median time per block (ms, {method})")
        s = self.settings
        ax.set_title(f"{s.get('model', '')} {s.get('input_shape', '')} {s.get('dtype', '')} on {s.get('device', '')}", fontsize=10)
        ax.grid(axis="x", alpha=0.3)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        return os.fspath(path)

    def save(self, out_dir) -> dict[str, str]:
        """Write ``profile.txt``, ``profile.csv``, ``profile.json`` and ``profile.png`` into ``out_dir``."""
        os.makedirs(out_dir, exist_ok=True)
        paths = {
            "table": os.path.join(out_dir, "profile.txt"),
            "csv": os.path.join(out_dir, "profile.csv"),
            "json": os.path.join(out_dir, "profile.json"),
            "chart": os.path.join(out_dir, "profile.png"),
        }
        with open(paths["table"], "w") as f:
            f.write(self.table() + "\n")
        self.write_csv(paths["csv"])
        self.write_json(paths["json"])
        self.write_chart(paths["chart"])
        return paths


def read_csv(path) -> list[dict]:
    """Read a profile CSV back: numbers as int/float, ``true``/``false`` as bool, empty as None."""
    out = []
    with open(path, newline="") as f:
        for raw in csv.DictReader(f):
            out.append({k: _parse(k, v) for k, v in raw.items()})
    return out


def _csv_value(v):
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    return v


def _parse(column: str, text: str):
    if column in _INT_COLUMNS:
        return int(text) if text != "" else None
    if column in _FLOAT_COLUMNS:
        return float(text) if text != "" else None
    if column in _BOOL_COLUMNS:
        return {"true": True, "false": False}.get(text)
    return text


def _fmt(v, scale: float, digits: int) -> str:
    if v is None:
        return ""
    x = v * scale
    if x != 0 and abs(x) < 1e-3:
        return f"{x:.{max(digits - 1, 1)}e}"
    return f"{x:.{digits}g}" if abs(x) < 10 ** digits else f"{x:.0f}"


def _fmt_int(v) -> str:
    return "" if v is None else f"{v:,}"


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


# --------------------------------------------------------------------------------------------
# Tensors in nested arguments
# --------------------------------------------------------------------------------------------


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _tensors(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _tensors(o)


def _map(obj, fn):
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, tuple):
        return tuple(_map(o, fn) for o in obj)
    if isinstance(obj, list):
        return [_map(o, fn) for o in obj]
    if isinstance(obj, dict):
        return {k: _map(v, fn) for k, v in obj.items()}
    return obj


def _clone(obj):
    return _map(obj, lambda t: t.detach().clone())


def _double(obj):
    return _map(obj, lambda t: t.detach().double() if t.is_floating_point() else t.detach().clone())


def _nbytes(obj) -> int:
    return sum(t.numel() * t.element_size() for t in _tensors(obj))


def _shapes(obj) -> str:
    return ";".join("x".join(str(d) for d in t.shape) for t in _tensors(obj))


def state_bytes(module: nn.Module) -> int:
    """Bytes of a module's parameters and floating-point buffers (BN statistics), each counted once."""
    seen, total = set(), 0
    for t in list(module.parameters()) + [b for b in module.buffers() if b.is_floating_point()]:
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


def leaf_flops(module: nn.Module, output) -> int:
    """2 x MACs of one call of a Conv2d or Linear (0 for every other module)."""
    out = next(_tensors(output), None)
    if out is None:
        return 0
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return 2 * out.numel() * (module.in_channels // module.groups) * kh * kw
    if isinstance(module, nn.Linear):
        return 2 * out.numel() * module.in_features
    return 0


# --------------------------------------------------------------------------------------------
# Finding the rows and recording their inputs
# --------------------------------------------------------------------------------------------


def find_rows(model: nn.Module) -> list[tuple[str, nn.Module, str, str]]:
    """``(path, module, type, kind)`` for every block (outermost module that
    :func:`reference.block_type` names) and every leaf module outside all blocks, in
    registration order. ``kind`` is ``"block"`` or ``"module"``; the type of a module outside the
    blocks is its class name."""
    rows = []
    root_type = reference.block_type(model)
    if root_type is not None:
        return [("", model, root_type, "block")]

    def visit(prefix: str, module: nn.Module) -> None:
        for name, child in module.named_children():
            path = f"{prefix}.{name}" if prefix else name
            kind = reference.block_type(child)
            if kind is not None:
                rows.append((path, child, kind, "block"))
            elif next(child.children(), None) is None:
                rows.append((path, child, type(child).__name__, "module"))
            else:
                visit(path, child)

    visit("", model)
    return rows


@dataclass
class _Unit:
    path: str
    module: nn.Module
    type: str
    kind: str
    calls: list = field(default_factory=list)  # [(args, kwargs)] cloned at each call
    outputs: list = field(default_factory=list)  # output shapes/bytes per call
    first_call: int = -1
    flops: int = 0
    eager_bytes: int = 0
    out_bytes: int = 0


def _record(model: nn.Module, example_input, rows, *, count: bool):
    """Run ``model(example_input)`` once with hooks: every row's calls (cloned), and with
    ``count`` the FLOPs and eager bytes of every leaf module, attributed to its row."""
    units = [_Unit(p, m, t, k) for p, m, t, k in rows]
    owner = {}
    for i, u in enumerate(units):
        for m in u.module.modules():
            owner.setdefault(id(m), i)
    order = [0]
    handles = []

    def pre_hook(unit):
        def hook(module, args, kwargs):
            if unit.first_call < 0:
                unit.first_call = order[0]
                order[0] += 1
            unit.calls.append((_clone(args), _clone(kwargs)))
        return hook

    def post_hook(unit):
        def hook(module, args, kwargs, output):
            unit.outputs.append(_shapes(output))
            unit.out_bytes += _nbytes(output)
        return hook

    def leaf_hook(unit):
        def hook(module, args, output):
            unit.flops += leaf_flops(module, output)
            unit.eager_bytes += _nbytes(args) + _nbytes(output) + state_bytes(module)
        return hook

    try:
        for u in units:
            handles.append(u.module.register_forward_pre_hook(pre_hook(u), with_kwargs=True))
            if count:
                handles.append(u.module.register_forward_hook(post_hook(u), with_kwargs=True))
        if count:
            for m in model.modules():
                if next(m.children(), None) is None and id(m) in owner:
                    handles.append(m.register_forward_hook(leaf_hook(units[owner[id(m)]])))
        with torch.no_grad():
            output = model(example_input)
    finally:
        for h in handles:
            h.remove()
    return units, output


def _run_calls(module: nn.Module, calls) -> None:
    for args, kwargs in calls:
        module(*args, **kwargs)


# --------------------------------------------------------------------------------------------
# The fused side
# --------------------------------------------------------------------------------------------


def fuse_function():
    """``fused.fuse`` if this checkout has it, else None."""
    pkg = importlib.import_module("fused")
    fn = getattr(pkg, "fuse", None)
    if fn is not None and not callable(fn):  # the submodule, when the package does not re-export it
        fn = getattr(fn, "fuse", None)
    return fn if callable(fn) else None


def _fused_flag(on: bool):
    pkg = importlib.import_module("fused")
    if hasattr(pkg, "enabled"):
        return pkg.enabled(on)
    import contextlib

    return contextlib.nullcontext()


def _tolerance_dtype(fused_module: nn.Module, dtype: torch.dtype):
    if dtype == torch.float32:
        for m in fused_module.modules():
            if getattr(m, "precision", None) == "tf32":
                return "tf32"
    return dtype


def _describe_run(rec, skipped_reason: str | None) -> tuple[str, str, str]:
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


def _check_outputs(actual, expected, dtype, length: int, what: str) -> tuple[float, bool, str]:
    got, want = list(_tensors(actual)), list(_tensors(expected))
    if len(got) != len(want):
        return math.nan, False, f"{what}: {len(got)} output tensors, expected {len(want)}"
    err, ok, message = 0.0, True, ""
    for a, e in zip(got, want):
        err = max(err, max_error(a, e) if a.shape == e.shape else math.inf)
        try:
            assert_close(a, e, dtype=dtype, reduction_length=length, what=what)
        except AssertionError as exc:
            ok = False
            message = message or str(exc).splitlines()[0]
    return err, ok, message


# --------------------------------------------------------------------------------------------
# profile_model
# --------------------------------------------------------------------------------------------


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
) -> Profile:
    """Profile ``model`` on ``example_input`` block by block (see the module docstring).

    ``model`` and ``example_input`` are moved to ``device`` when it is given (default: the input's
    device). ``check_input`` (default ``example_input``) is the input of the fused correctness
    pass; on a CPU, where the kernels run in Triton's interpreter, a smaller one keeps that pass
    short. ``progress`` is called with one line of text per step (``print`` to stderr, say).
    """
    say = progress or (lambda line: None)
    device = torch.device(device) if device is not None else example_input.device
    model = model.to(device).eval()
    example_input = example_input.to(device)
    dtype = example_input.dtype
    notes: list[str] = []

    rows = find_rows(model)
    units, _ = _record(model, example_input, rows, count=True)
    uncalled = [u.path for u in units if not u.calls]
    units = sorted((u for u in units if u.calls), key=lambda u: u.first_call)
    if uncalled:
        notes.append(f"not called in the forward pass, so not profiled: {', '.join(uncalled)}")

    # -- reference columns ----------------------------------------------------------------
    out_rows: list[Row] = []
    with torch.no_grad():
        # The whole model first: its warm-up also warms every block (allocator, conv algorithms).
        whole = timing.time_callable(lambda: model(example_input), device, warmup=max(warmup, 1), repeats=repeats)
        say(f"whole model: {whole.median_ms:.4g} ms")
        for i, u in enumerate(units, 1):
            t = timing.time_callable(lambda u=u: _run_calls(u.module, u.calls), device, warmup=warmup, repeats=repeats)
            min_bytes = _nbytes(u.calls) + u.out_bytes + state_bytes(u.module)
            out_rows.append(Row(
                kind=u.kind, path=u.path, block_type=u.type, calls=len(u.calls),
                input_shapes=_shapes(u.calls[0]), output_shapes=u.outputs[0] if u.outputs else "",
                parameters=sum(p.numel() for p in u.module.parameters()),
                flops=u.flops, min_bytes=min_bytes, eager_bytes=u.eager_bytes,
                intensity=u.flops / min_bytes if min_bytes else None,
                reduction_length=reduction_length(u.module),
                ref_median_ms=t.median_ms, ref_min_ms=t.min_ms, ref_max_ms=t.max_ms, timing_method=t.method,
            ))
            say(f"[{i}/{len(units)}] {u.path} ({u.type}): {t.median_ms:.4g} ms")

    with torch.no_grad():
        model_output = model(example_input)
    total_min = _nbytes(example_input) + _nbytes(model_output) + state_bytes(model)
    total_flops = sum(u.flops for u in units)
    outside_ms = whole.median_ms - sum(r.ref_median_ms for r in out_rows)
    outside = Row(kind="outside", path=OUTSIDE, block_type="", ref_median_ms=outside_ms, timing_method=whole.method)
    total = Row(
        kind="total", path=TOTAL, block_type=type(model).__name__, calls=1,
        input_shapes=_shapes(example_input), output_shapes=_shapes(model_output),
        parameters=sum(p.numel() for p in model.parameters()), flops=total_flops, min_bytes=total_min,
        eager_bytes=sum(u.eager_bytes for u in units), intensity=total_flops / total_min if total_min else None,
        reduction_length=reduction_length(model),
        ref_median_ms=whole.median_ms, ref_min_ms=whole.min_ms, ref_max_ms=whole.max_ms, timing_method=whole.method,
    )
    notes.append(
        f"'{OUTSIDE}' is the whole-model time minus the sum of the rows: work between modules "
        "(concatenations, reshapes, softmax) and Python overhead; timing noise can make it negative."
    )
    notes.append(
        "FLOPs are 2 x MACs of Conv2d and Linear layers only (elementwise ops are not counted); "
        "eager bytes count leaf modules only (functional ops such as torch.cat are not counted)."
    )

    # -- fused columns ----------------------------------------------------------------------
    fuse_report = ""
    fuse = fuse_function() if fused else None
    if fused and fuse is None:
        notes.append("fused columns are empty: fused.fuse is not available in this checkout yet")
    elif fuse is not None:
        fuse_report = _fused_columns(
            fuse, model, example_input, check_input, rows, units, out_rows, total, device, dtype,
            warmup, repeats, notes, say,
        )

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
        "device": device.type,
        "warmup": warmup,
        "repeats": repeats,
        "fused": fused,
        "check_input_shape": "x".join(str(d) for d in (check_input if check_input is not None else example_input).shape),
        "torch_threads": torch.get_num_threads(),
    }
    all_settings.update(settings or {})
    return Profile(out_rows + [outside, total], all_settings, environ, notes, fuse_report)


def times_fused(device) -> bool:
    """True where fused timings mean something: a CUDA device with compiled (not interpreted) kernels."""
    return torch.device(device).type == "cuda" and not runtime.INTERPRETED


def _time_fused(fn, device, warmup: int, repeats: int, row: Row) -> float | None:
    """Time the fused path into ``row`` (median ms and speedup); a failure goes to its note."""
    try:
        with torch.no_grad(), _fused_flag(True):
            t = timing.time_callable(fn, device, warmup=warmup, repeats=repeats)
    except Exception as exc:
        row.fused_note = "; ".join(filter(None, [row.fused_note, f"not timed: {type(exc).__name__}: {exc}".splitlines()[0]]))
        return None
    row.fused_median_ms = t.median_ms
    row.speedup = row.ref_median_ms / t.median_ms if t.median_ms > 0 else None
    return t.median_ms if row.speedup is not None else None


def _fused_columns(fuse, model, example_input, check_input, rows, units, out_rows, total, device, dtype,
                   warmup, repeats, notes, say) -> str:
    """Fill the fused columns of ``out_rows`` and ``total``; return the fuse report as text."""
    pkg = importlib.import_module("fused")
    fmodel = fuse(copy.deepcopy(model))
    report = getattr(fmodel, "fuse_report", None)
    skipped = {s.path: s.reason for s in getattr(report, "skipped", [])}
    swapped = {s.path for s in getattr(report, "swapped", [])}
    on_gpu = times_fused(device)

    check_units = units
    if check_input is not None and check_input is not example_input:
        check_input = check_input.to(device)
        recorded, _ = _record(model, check_input, rows, count=False)
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
        tol_dtype = _tolerance_dtype(fmod, dtype)
        try:
            with torch.no_grad(), _fused_flag(True), pkg.recording() as rec:
                actual = [fmod(*_clone(a), **_clone(k)) for a, k in cu.calls]
            with torch.no_grad():
                expected = [expected_module(*_double(a), **_double(k)) for a, k in cu.calls]
        except Exception as exc:  # a broken kernel must not hide the rest of the profile
            row.fused_backend = "error"
            row.fused_note = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            failures.append(u.path)
            say(f"[fused {i}/{len(block_units)}] {u.path}: ERROR {row.fused_note}")
            continue
        reason = skipped.get(u.path) if u.path not in swapped else None
        row.fused_backend, row.fused_kernels, row.fused_note = _describe_run(rec, reason)
        err, ok, message = _check_outputs(actual, expected, tol_dtype, reduction_length(u.module), u.path)
        row.fused_max_abs_error, row.fused_within_tolerance = err, ok
        if not ok:
            failures.append(u.path)
            row.fused_note = "; ".join(filter(None, [row.fused_note, message]))
        line = f"[fused {i}/{len(block_units)}] {u.path}: {row.fused_backend}, max |err| {err:.3g} ({'ok' if ok else 'OUT OF TOLERANCE'})"
        if on_gpu and ok:  # a wrong result gets no speedup
            t = _time_fused(lambda: _run_calls(fmod, u.calls), device, warmup, repeats, row)
            if t is not None:
                line += f", {t:.4g} ms ({row.speedup:.2f}x)"
        say(line)

    # The whole fused model, which includes fusions above block level (ArcFace's stem and head).
    try:
        with torch.no_grad(), _fused_flag(True), pkg.recording() as rec:
            actual = fmodel(check_input)
        with torch.no_grad():
            expected = copy.deepcopy(model).double()(check_input.double())
    except Exception as exc:
        total.fused_backend = "error"
        total.fused_note = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        failures.append(TOTAL)
    else:
        total.fused_backend = runtime.backend() if rec.kernels() else "reference (not fused)"
        total.fused_kernels = ", ".join(f"{n} x{c}" for n, c in sorted(rec.kernel_counts().items()))
        err, ok, message = _check_outputs(actual, expected, _tolerance_dtype(fmodel, dtype), reduction_length(model), TOTAL)
        total.fused_max_abs_error, total.fused_within_tolerance, total.fused_note = err, ok, message
        if not ok:
            failures.append(TOTAL)
        line = f"whole fused model: {total.fused_backend}, max |err| {err:.3g} ({'ok' if ok else 'OUT OF TOLERANCE'})"
        if on_gpu and ok:
            t = _time_fused(lambda: fmodel(example_input), device, warmup, repeats, total)
            if t is not None:
                line += f", {t:.4g} ms ({total.speedup:.2f}x)"
        say(line)
    if not on_gpu:
        notes.append(
            f"fused kernels ran in Triton's interpreter ({runtime.backend()}) on the CPU, once per block and once for the "
            "whole model, for correctness only: interpreter timings are not speedups, so fused times and speedups are "
            "left empty. Run on a CUDA GPU for those."
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
    return str(report) if report is not None else ""


# --------------------------------------------------------------------------------------------
# Ready-made models and the whole command
# --------------------------------------------------------------------------------------------

#: The models ``facefuse profile --model`` knows, with a line about each.
MODELS = {
    "retinaface": "RetinaFace mobile0.25 (MobileNetV1 x0.25 backbone)",
    "retinaface-resnet50": "RetinaFace with the ResNet-50 backbone",
    "arcface": "ResNetArcFace IR-18 without squeeze-excite (the released identity network)",
    "arcface-se": "ResNetArcFace IR-18 with squeeze-excite",
}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
ARCFACE_SIZE = 128
#: Default RetinaFace input side: small on a CPU (the reference timing runs on a few cores).
DEFAULT_SIZE = {"cpu": 320, "cuda": 640}
#: On a CPU the fused kernels run in Triton's interpreter; their correctness pass uses this side.
CPU_CHECK_SIZE = 64
DEFAULT_REPEATS = {"cpu": (2, 10), "cuda": (10, 100)}  # (warmup, repeats)


def build_model(name: str, *, seed: int = 0, weights=None) -> nn.Module:
    """One of :data:`MODELS`, in eval mode: the released ``weights`` when given, else the seeded
    initialisation with :func:`reference.randomize_batchnorm` (so BN folding is exercised)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    if name.startswith("retinaface"):
        model = reference.retinaface("resnet50" if name.endswith("resnet50") else "mobile0.25", seed=seed)
    else:
        model = reference.arcface(use_se=name.endswith("-se"), seed=seed)
    if weights is not None:
        reference.load_weights(model, weights)
    else:
        reference.randomize_batchnorm(model, seed=seed)
    return model.eval()


def input_shape(name: str, size, batch: int) -> tuple[int, int, int, int]:
    """``[N, C, H, W]`` of the model's input; ``size`` is ``(H, W)``. ArcFace takes 128x128 only."""
    h, w = size
    if name.startswith("arcface"):
        if (h, w) != (ARCFACE_SIZE, ARCFACE_SIZE):
            raise ValueError(f"{name} takes {ARCFACE_SIZE}x{ARCFACE_SIZE} inputs only (its fc5 layer fixes the size), got {h}x{w}")
        return (batch, 1, h, w)
    if h < 32 or w < 32:
        raise ValueError(f"{name} needs an input of at least 32x32 (three levels at strides 8, 16, 32), got {h}x{w}")
    return (batch, 3, h, w)


def example_input(name: str, size, batch: int = 1, *, dtype=torch.float32, device="cpu", seed: int = 0) -> torch.Tensor:
    """A seeded standard-normal input for the model (the profile depends on shapes, not values)."""
    g = torch.Generator().manual_seed(seed + 1)
    return torch.randn(input_shape(name, size, batch), generator=g).to(device=device, dtype=dtype)


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cuda`` without CUDA is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() and not runtime.INTERPRETED else "cpu")
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device is available on this machine (use --device cpu)")
        if runtime.INTERPRETED:
            raise ValueError("--device cuda: TRITON_INTERPRET=1 is set, so the Triton kernels take CPU tensors; unset it")
        return torch.device("cuda")
    if device == "cpu":
        return torch.device("cpu")
    raise ValueError(f"unknown device {device!r}; choose auto, cpu or cuda")


def default_size(name: str, device) -> tuple[int, int]:
    if name.startswith("arcface"):
        return (ARCFACE_SIZE, ARCFACE_SIZE)
    side = DEFAULT_SIZE["cuda" if torch.device(device).type == "cuda" else "cpu"]
    return (side, side)


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
) -> Profile:
    """Build ``model`` (a name in :data:`MODELS`) and profile it; what ``facefuse profile`` runs.

    ``size`` is ``(H, W)`` or one int (default: 320 on a CPU, 640 on a GPU; ArcFace 128).
    ``check_size`` is the input side of the fused correctness pass; on a CPU it defaults to
    :data:`CPU_CHECK_SIZE` (the interpreter is slow), on a GPU to ``size``.
    """
    dev = resolve_device(device) if isinstance(device, str) else torch.device(device)
    torch_dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    dtype_name = str(torch_dtype).replace("torch.", "")
    if dev.type == "cpu" and torch_dtype != torch.float32:
        raise ValueError(f"--dtype {dtype_name} on the CPU: CPU half-precision convolutions are not what a GPU "
                         "runs, so their timings mislead; use float32 on the CPU, or --device cuda")
    size = default_size(model, dev) if size is None else _pair(size)
    warm_default, rep_default = DEFAULT_REPEATS[dev.type if dev.type == "cuda" else "cpu"]
    warmup = warm_default if warmup is None else warmup
    repeats = rep_default if repeats is None else repeats
    if batch < 1 or repeats < 1 or warmup < 0:
        raise ValueError("batch and repeats must be at least 1 and warmup at least 0")
    x = example_input(model, size, batch, dtype=torch_dtype, device=dev, seed=seed)
    check = None
    if fused and not model.startswith("arcface"):
        if check_size is not None:
            check = _pair(check_size)
        elif dev.type != "cuda" or runtime.INTERPRETED:
            check = (min(size[0], CPU_CHECK_SIZE), min(size[1], CPU_CHECK_SIZE))
        if check is not None and check != tuple(size):
            check_input = example_input(model, check, batch, dtype=torch_dtype, device=dev, seed=seed)
        else:
            check_input = None
    else:
        check_input = None
    net = build_model(model, seed=seed, weights=weights).to(device=dev, dtype=torch_dtype)
    settings = {
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
    prof = profile_model(net, x, warmup=warmup, repeats=repeats, fused=fused, device=dev,
                         check_input=check_input, settings=settings, progress=progress)
    prof.notes.insert(0, settings["initialisation"])
    return prof


def _pair(size) -> tuple[int, int]:
    if isinstance(size, int):
        return (size, size)
    h, w = size
    return (int(h), int(w))


def parse_size(text: str) -> tuple[int, int]:
    """``"320"`` → (320, 320); ``"480x640"`` → (480, 640) (H x W)."""
    parts = text.lower().replace("×", "x").split("x")
    if len(parts) not in (1, 2) or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"size must be N or HxW with positive integers (e.g. 320 or 480x640), got {text!r}")
    h, w = (int(parts[0]), int(parts[-1]))
    if h < 1 or w < 1:
        raise ValueError(f"size must be positive, got {text!r}")
    return (h, w)


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
