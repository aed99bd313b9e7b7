"""Block-level profile of a face model: where the time, the FLOPs and the bytes go, block by block.

``facefuse profile`` (or :func:`profile`) builds a model, runs one forward pass that records every
block's input, then times each block on its own input and counts what it computes and moves::

    from fused.profile import profile
    prof = profile("retinaface", size=320, compile=True)
    print(prof.table())
    prof.save("facefuse-profile")       # profile.txt/.csv/.json, profile.png, roofline.png

**Rows.** A block is the outermost module that :func:`reference.block_type` names (``conv_bn``,
``conv_dw``, ``FPN``, ``SSH``, ``ClassHead``, ``IRBlock``, ...). Modules outside every block that
do work (ArcFace's stem and head, ResNet-50's stem) get a row each, typed by class name
(``Conv2d``, ``BatchNorm2d``, ...). Three summary rows follow: ``(sum of blocks)``, the rows
added up; ``(outside blocks)``, the whole-model time minus that sum (what runs between modules:
RetinaFace's concatenations and softmax, Python overhead); and ``(model)``, the whole forward
pass, timed as one. Every Conv2d and Linear of the model belongs to exactly one row.

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
* ``intensity``: ``flops / min_bytes`` (FLOP per byte). ``bound`` compares it with the ridge
  point of the machine's *measured* ceilings (:mod:`fused.ceilings`: copy bandwidth and matmul
  throughput): below the ridge a block is memory-bound, and fusion is what helps.
* ``ref_median_ms``: the block alone on its recorded input, median after warm-up
  (:func:`fused.timing.time_callable`: CUDA events on a GPU, optionally CUDA graph replays; wall
  clock on a CPU).
* ``compile_*`` (``compile=True``): ``torch.compile`` of the reference block (Inductor: Triton on a
  GPU, C++ on a CPU), timed the same way; ``compile_seconds`` is how long the first call took
  (compiling). A compile failure goes to the row's ``note``, never raised.
* ``*_gbps``: effective bandwidth, ``min_bytes`` over the path's time; ``*_bw_pct``: that as a
  percentage of the measured copy bandwidth (the memory roofline). ``*_peak_bytes``: extra
  device memory at the peak of one call (CUDA only: :func:`fused.timing.peak_memory_bytes`; the
  CPU allocator keeps no peak statistic, so these stay empty there).
* fused columns (``fused=True``): the profiler fuses a deep copy of the model with
  :func:`fused.fuse` and runs each fused block once on the same recorded input, under
  :func:`fused.recording`: which backend ran (``triton``, ``triton-interpreter``, or
  ``reference`` with the reason), the largest absolute error against a float64 run of the
  reference block, and whether it is within :func:`fused.tolerance.tolerance`. On a GPU the fused
  block is timed too, with speedups against the reference (``speedup``) and against
  torch.compile (``speedup_vs_compile``). On a CPU the kernels run in Triton's interpreter, whose
  timings say nothing about a GPU: fused times and speedups stay empty, and a note says why.

``trace="file.json"`` writes a torch.profiler Chrome trace of a few forward passes of the
reference model (and of the compiled and fused models where they are timed): open it in
``chrome://tracing`` or https://ui.perfetto.dev.
"""

from __future__ import annotations

import copy
import csv
import importlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field, fields

import torch
from torch import nn

import reference

from . import ceilings as _ceilings
from . import environment, runtime, timing
from .tolerance import assert_close, max_error, reduction_length  # noqa: F401  (reduction_length: re-exported for lessons)

# --------------------------------------------------------------------------------------------
# Rows and the profile
# --------------------------------------------------------------------------------------------

SUM = "(sum of blocks)"
OUTSIDE = "(outside blocks)"
TOTAL = "(model)"

#: The timed paths: (column prefix, label in tables and charts).
PATHS = (("ref", "reference (eager PyTorch)"), ("compile", "torch.compile"), ("fused", "fused (Triton)"))


@dataclass
class Row:
    """One line of the profile. ``kind`` is ``"block"``, ``"module"`` (a module outside every
    block), ``"sum"`` (the rows added up), ``"outside"`` (the whole model minus that sum) or
    ``"total"`` (the whole model)."""

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
    bound: str = ""
    reduction_length: int | None = None
    # reference (eager PyTorch)
    ref_median_ms: float | None = None
    ref_min_ms: float | None = None
    ref_max_ms: float | None = None
    timing_method: str = ""
    ref_gbps: float | None = None
    ref_bw_pct: float | None = None
    ref_peak_bytes: int | None = None
    # torch.compile of the reference
    compile_median_ms: float | None = None
    compile_seconds: float | None = None
    compile_speedup: float | None = None
    compile_gbps: float | None = None
    compile_bw_pct: float | None = None
    compile_peak_bytes: int | None = None
    # fused (Triton)
    fused_backend: str = ""
    fused_kernels: str = ""
    fused_max_abs_error: float | None = None
    fused_within_tolerance: bool | None = None
    fused_median_ms: float | None = None
    speedup: float | None = None
    speedup_vs_compile: float | None = None
    fused_gbps: float | None = None
    fused_bw_pct: float | None = None
    fused_peak_bytes: int | None = None
    fused_note: str = ""
    note: str = ""


COLUMNS = [f.name for f in fields(Row)]
_INT_COLUMNS = {"calls", "parameters", "flops", "min_bytes", "eager_bytes", "reduction_length",
                "ref_peak_bytes", "compile_peak_bytes", "fused_peak_bytes"}
_FLOAT_COLUMNS = {"intensity", "ref_median_ms", "ref_min_ms", "ref_max_ms", "ref_gbps", "ref_bw_pct",
                  "compile_median_ms", "compile_seconds", "compile_speedup", "compile_gbps", "compile_bw_pct",
                  "fused_max_abs_error", "fused_median_ms", "speedup", "speedup_vs_compile", "fused_gbps",
                  "fused_bw_pct"}
_BOOL_COLUMNS = {"fused_within_tolerance"}


def _add_note(row: Row, text: str) -> None:
    row.note = "; ".join(filter(None, [row.note, text]))


@dataclass
class Profile:
    """The rows, the settings they were measured with, the machine, its ceilings and notes."""

    rows: list[Row]
    settings: dict = field(default_factory=dict)
    environment: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    fuse_report: str = ""
    ceilings: dict = field(default_factory=dict)

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

    def has_compile_times(self) -> bool:
        return any(r.compile_median_ms is not None for r in self.rows)

    def machine_ceilings(self) -> "_ceilings.Ceilings | None":
        """The measured ceilings the percentages and the roofline use (None when not measured)."""
        return _ceilings.Ceilings.from_dict(self.ceilings) if self.ceilings else None

    def slowest(self, n: int = 5, path: str = "ref") -> list[Row]:
        """The ``n`` blocks that take longest on ``path`` (``"ref"``, ``"compile"`` or ``"fused"``):
        where a speedup of the whole model has to come from."""
        column = f"{path}_median_ms"
        timed = [r for r in self.blocks() if getattr(r, column) is not None]
        return sorted(timed, key=lambda r: getattr(r, column), reverse=True)[:n]

    # -- output ---------------------------------------------------------------------------
    def _columns(self):
        """(header, cell function, numeric) for every column the table shows."""
        has = {p: any(getattr(r, f"{p}_median_ms") is not None for r in self.rows) for p, _ in PATHS}
        bw = any(r.ref_bw_pct is not None for r in self.rows)
        peak = any(getattr(r, f"{p}_peak_bytes") is not None for r in self.rows for p, _ in PATHS)
        cols = [
            ("path", lambda r: r.path, False),
            ("type", lambda r: r.block_type, False),
            ("input", lambda r: _short(r.input_shapes, 30), False),
            ("output", lambda r: _short(r.output_shapes, 24), False),
            ("params", lambda r: _fmt_int(r.parameters), True),
            ("MFLOP", lambda r: _fmt(r.flops, 1e-6, 3), True),
            ("min MB", lambda r: _fmt(r.min_bytes, 1e-6, 3), True),
            ("eager MB", lambda r: _fmt(r.eager_bytes, 1e-6, 3), True),
            ("FLOP/B", lambda r: _fmt(r.intensity, 1, 3), True),
        ]
        if any(r.bound for r in self.rows):
            cols.append(("bound", lambda r: r.bound, False))
        cols += [("ref ms", lambda r: _fmt(r.ref_median_ms, 1, 4), True),
                 ("ref GB/s", lambda r: _fmt(r.ref_gbps, 1, 3), True)]
        if bw:
            cols.append(("ref %BW", lambda r: _fmt_pct(r.ref_bw_pct), True))
        if has["compile"]:
            cols += [("compile ms", lambda r: _fmt(r.compile_median_ms, 1, 4), True),
                     ("compile x", lambda r: _fmt_x(r.compile_speedup), True)]
            if bw:
                cols.append(("compile %BW", lambda r: _fmt_pct(r.compile_bw_pct), True))
        if has["fused"]:
            cols += [("fused ms", lambda r: _fmt(r.fused_median_ms, 1, 4), True),
                     ("speedup", lambda r: _fmt_x(r.speedup), True)]
            if has["compile"]:
                cols.append(("vs compile", lambda r: _fmt_x(r.speedup_vs_compile), True))
            if bw:
                cols.append(("fused %BW", lambda r: _fmt_pct(r.fused_bw_pct), True))
        if peak:
            for p, _ in PATHS:
                if any(getattr(r, f"{p}_peak_bytes") is not None for r in self.rows):
                    cols.append((f"{p} peak MB", lambda r, p=p: _fmt(getattr(r, f"{p}_peak_bytes"), 1e-6, 3), True))
        if any(r.fused_backend for r in self.rows):
            cols += [
                ("fused backend", lambda r: _short(r.fused_backend, 36), False),
                ("max |err|", lambda r: _fmt(r.fused_max_abs_error, 1, 2), True),
                ("ok", lambda r: "" if r.fused_within_tolerance is None else ("yes" if r.fused_within_tolerance else "NO"), False),
            ]
        return cols

    def table(self) -> str:
        """The profile as aligned text, with the settings above and the notes below."""
        cols = self._columns()
        header = [h for h, _, _ in cols]
        lines = [[fn(r) for _, fn, _ in cols] for r in self.rows]
        widths = [max(len(h), *(len(c[i]) for c in lines)) for i, h in enumerate(header)]
        numeric = {i for i, (_, _, num) in enumerate(cols) if num}

        def render(cells):
            return "  ".join(c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

        s = self.settings
        extras = [f"batch {s['batch']}" if "batch" in s else "", s.get("memory_format", ""),
                  "CUDA graphs" if s.get("cuda_graphs") else ""]
        title = (f"facefuse profile: {s.get('model', '?')}, input {s.get('input_shape', '?')} {s.get('dtype', '')} "
                 f"on {s.get('device', '?')} ({', '.join(e for e in extras if e)}), median of {s.get('repeats', '?')} "
                 f"runs after {s.get('warmup', '?')} warm-up ({self.rows[0].timing_method if self.rows else ''})")
        out = [title]
        ceil = self.machine_ceilings()
        if ceil is not None:
            out.append(f"measured ceilings: {ceil}")
        out += [render(header), render(["-" * w for w in widths])]
        for r, cells in zip(self.rows, lines):
            if r.kind == "sum":
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
            "kind": "facefuse-profile",
            "settings": self.settings,
            "environment": self.environment,
            "ceilings": self.ceilings,
            "notes": self.notes,
            "fuse_report": self.fuse_report,
            "columns": COLUMNS,
            "rows": rows,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "Profile":
        rows = [Row(**{k: v for k, v in r.items() if k in COLUMNS}) for r in data["rows"]]
        return cls(rows, data.get("settings", {}), data.get("environment", {}), data.get("notes", []),
                   data.get("fuse_report", ""), data.get("ceilings") or {})

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
        """One line per row; the ``kind`` column marks the summary lines (``sum``, ``outside``, ``total``)."""
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            for r in self.rows:
                writer.writerow({k: _csv_value(v) for k, v in asdict(r).items()})
        return os.fspath(path)

    def _title(self) -> str:
        s = self.settings
        where = s.get("device", "")
        if where == "cpu":
            where = "CPU"
        elif self.environment.get("gpu"):
            where = self.environment["gpu"]
        return (f"{s.get('model', '')} {s.get('input_shape', '')} {s.get('dtype', '')} "
                f"{s.get('memory_format', '')} on {where}").replace("  ", " ")

    def chart(self):
        """The per-block time chart (a matplotlib ``Figure``): reference vs torch.compile vs fused."""
        from matplotlib.figure import Figure  # no pyplot: the caller's backend (e.g. a notebook's) is left alone

        rows = [r for r in self.rows if r.kind in ("block", "module") or (r.kind == "outside" and (r.ref_median_ms or 0) > 0)]
        labels = [f"{r.path} [{r.block_type}]" if r.kind != "outside" else r.path for r in rows]
        series = [(label, [getattr(r, f"{p}_median_ms") for r in rows]) for p, label in PATHS]
        series = [(label, times) for label, times in series if any(t is not None for t in times)]
        colors = {"reference (eager PyTorch)": "#4c72b0", "torch.compile": "#55a868", "fused (Triton)": "#dd8452"}
        fig = Figure(figsize=(10, max(3.0, 0.28 * len(rows) * max(1, len(series)) ** 0.5 + 1.5)))
        ax = fig.subplots()
        ys = list(range(len(rows)))
        h = 0.8 / max(len(series), 1)
        for j, (label, times) in enumerate(series):
            offset = (j - (len(series) - 1) / 2) * h
            ax.barh([y + offset for y in ys], [t or 0.0 for t in times], height=h, label=label, color=colors[label])
        if len(series) > 1:
            ax.legend(loc="lower right", fontsize=8)
        ax.set_yticks(ys)
        ax.set_yticklabels(labels, fontsize=7)
        ax.invert_yaxis()
        method = rows[0].timing_method if rows else ""
        ax.set_xlabel(f"median time per block (ms, {method})")
        title = self._title()
        if self.settings.get("device") == "cpu" and any(r.fused_backend for r in self.rows):
            title += "\nfused kernels not timed: on a CPU they run in Triton's interpreter (correctness only)"
        ax.set_title(title, fontsize=9)
        ax.grid(axis="x", alpha=0.3)
        fig.tight_layout()
        return fig

    def write_chart(self, path) -> str:
        """Save :meth:`chart` as a PNG."""
        self.chart().savefig(path, dpi=110)
        return os.fspath(path)

    def roofline(self, label_top: int = 6):
        """The roofline chart (a matplotlib ``Figure``), or None without measured ceilings.

        Log-log: achieved FLOP/s of every block against its arithmetic intensity (FLOP/byte of its
        minimal traffic), one marker per timed path, under the roof drawn from the measured copy
        bandwidth and matmul throughput. Rows without FLOPs (pooling, BatchNorm alone) have no
        place on a log scale and are left out.
        """
        from matplotlib.figure import Figure

        ceil = self.machine_ceilings()
        if ceil is None:
            return None
        rows = [r for r in self.blocks() + [r for r in self.rows if r.kind == "total"] if r.flops and r.min_bytes]
        intensity = {id(r): r.flops / r.min_bytes for r in rows}
        fig = Figure(figsize=(8.5, 6))
        ax = fig.subplots()
        ax.set_xscale("log")
        ax.set_yscale("log")
        intensities = list(intensity.values()) or [1.0]
        lo = min(min(intensities), ceil.ridge) / 4
        hi = max(max(intensities), ceil.ridge) * 4
        xs = [lo * (hi / lo) ** (i / 200) for i in range(201)]
        ax.plot(xs, [ceil.attainable(x) for x in xs], color="black", lw=2, label="measured roof")
        ax.axvline(ceil.ridge, color="gray", ls=":", lw=1)
        ax.annotate(f"copy bandwidth {ceil.copy_gbps:.3g} GB/s", xy=(ceil.ridge / 8, ceil.attainable(ceil.ridge / 8)),
                    fontsize=8, va="bottom", ha="right")
        ax.annotate(f"matmul {ceil.matmul_flops / 1e9:.4g} GFLOP/s ({ceil.matmul_dtype})",
                    xy=(ceil.ridge * 1.1, ceil.matmul_flops * 1.08), fontsize=8, va="bottom")
        ax.annotate(f"ridge {ceil.ridge:.3g} FLOP/B", xy=(ceil.ridge, ceil.attainable(lo)), fontsize=7, color="gray",
                    rotation=90, va="bottom", ha="right")
        markers = {"ref": ("o", "#4c72b0"), "compile": ("s", "#55a868"), "fused": ("^", "#dd8452")}
        ys_all = [ceil.matmul_flops]
        for p, label in PATHS:
            points = [(intensity[id(r)], r.flops / (getattr(r, f"{p}_median_ms") * 1e-3), r) for r in rows
                      if getattr(r, f"{p}_median_ms")]
            if not points:
                continue
            marker, color = markers[p]
            blocks = [(x, y) for x, y, r in points if r.kind != "total"]
            totals = [(x, y) for x, y, r in points if r.kind == "total"]
            if blocks:
                ax.scatter([x for x, _ in blocks], [y for _, y in blocks], marker=marker, color=color, s=28,
                           alpha=0.8, label=f"{label}, per block")
            if totals:
                ax.scatter([x for x, _ in totals], [y for _, y in totals], marker="*", color=color, s=160,
                           edgecolor="black", label=f"{label}, whole model")
            ys_all += [y for _, y, _ in points]
        for r in self.slowest(label_top):  # name the blocks that take the most time
            if id(r) in intensity and r.ref_median_ms:
                ax.annotate(r.path, xy=(intensity[id(r)], r.flops / (r.ref_median_ms * 1e-3)), fontsize=7,
                            xytext=(4, -8), textcoords="offset points", color="#4c72b0")
        ax.set_ylim(min(min(ys_all), ceil.attainable(ceil.ridge / 8)) / 4, max(ys_all) * 3)
        ax.set_xlim(lo, hi)
        ax.set_xlabel("arithmetic intensity (FLOP per byte of minimal traffic)")
        ax.set_ylabel("achieved FLOP/s")
        title = f"roofline: {self._title()}"
        if ceil.device == "cpu":
            title += "\nCPU roof and CPU timings; fused kernels are not timed on a CPU (interpreter)"
        ax.set_title(title, fontsize=9)
        ax.grid(which="both", alpha=0.2)
        ax.legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        return fig

    def write_roofline(self, path) -> str | None:
        """Save :meth:`roofline` as a PNG; None (nothing written) without measured ceilings."""
        fig = self.roofline()
        if fig is None:
            return None
        fig.savefig(path, dpi=110)
        return os.fspath(path)

    def save(self, out_dir) -> dict[str, str]:
        """Write ``profile.txt``, ``profile.csv``, ``profile.json``, ``profile.png`` and (with
        measured ceilings) ``roofline.png`` into ``out_dir``."""
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
        roof = self.write_roofline(os.path.join(out_dir, "roofline.png"))
        if roof is not None:
            paths["roofline"] = roof
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


def _fmt_x(v) -> str:
    return "" if v is None else f"{v:.2f}x"


def _fmt_pct(v) -> str:
    return "" if v is None else (f"{v:.2g}%" if v < 10 else f"{v:.0f}%")


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


def moves_no_data(module: nn.Module) -> bool:
    """True for modules that return their input or a view of it (no kernel runs): identities,
    flattening, and dropout in eval mode."""
    if isinstance(module, nn.modules.dropout._DropoutNd):
        return not module.training
    return isinstance(module, (nn.Identity, nn.Flatten, nn.Unflatten))


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
            if not moves_no_data(module):
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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


def _time(fn, device, warmup: int, repeats: int, graph: bool, row: Row, what: str):
    """Time ``fn`` (a CUDA graph replay with ``graph``); a failed capture retries without the graph
    and says so in the row's note; any other failure goes to the note and returns None."""
    try:
        return timing.time_callable(fn, device, warmup=warmup, repeats=repeats, cuda_graph=graph)
    except Exception as exc:
        if not graph:
            _add_note(row, f"{what} not timed: {_first_line(exc)}")
            return None
        _add_note(row, f"{what} timed without a CUDA graph (capture failed: {_first_line(exc)})")
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    try:
        return timing.time_callable(fn, device, warmup=warmup, repeats=repeats)
    except Exception as exc:
        _add_note(row, f"{what} not timed: {_first_line(exc)}")
        return None


def _peak(fn, device, row: Row, what: str) -> int | None:
    try:
        return timing.peak_memory_bytes(fn, device)
    except Exception as exc:
        _add_note(row, f"{what} peak memory not measured: {_first_line(exc)}")
        return None


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
) -> Profile:
    """Profile ``model`` on ``example_input`` block by block (see the module docstring).

    ``model`` and ``example_input`` are moved to ``device`` when it is given (default: the input's
    device). ``check_input`` (default ``example_input``) is the input of the fused correctness
    pass; on a CPU, where the kernels run in Triton's interpreter, a smaller one keeps that pass
    short. ``progress`` is called with one line of text per step (``print`` to stderr, say).

    ``compile``: ``True`` adds the torch.compile columns for every row and the whole model, or an
    iterable of row paths (``TOTAL`` for the whole model) to compile only those. ``cuda_graphs``
    (CUDA only) times every path as CUDA graph replays. ``ceilings``: a
    :class:`fused.ceilings.Ceilings`, ``None`` to measure them now (without the cache file), or
    ``False`` for no roofline columns. ``trace``: a file name for a torch.profiler Chrome trace of
    ``trace_steps`` forward passes of each timed model.
    """
    say = progress or (lambda line: None)
    device = torch.device(device) if device is not None else example_input.device
    if cuda_graphs and device.type != "cuda":
        raise ValueError("cuda_graphs=True needs a CUDA device")
    model = model.to(device).eval()
    example_input = example_input.to(device)
    dtype = example_input.dtype
    notes: list[str] = []
    graph = bool(cuda_graphs)

    if ceilings is None:
        say("measuring the machine's ceilings (copy bandwidth, matmul throughput)")
        ceilings = _ceilings.measure(device, dtype, cache=False)
    ceil = ceilings or None

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
        total = Row(kind="total", path=TOTAL, block_type=type(model).__name__, calls=1)
        whole = _time(lambda: model(example_input), device, max(warmup, 1), repeats, graph, total, "reference")
        if whole is None:
            raise RuntimeError(f"the reference model could not be timed: {total.note}")
        total.ref_peak_bytes = _peak(lambda: model(example_input), device, total, "reference")
        say(f"whole model: {whole.median_ms:.4g} ms")
        for i, u in enumerate(units, 1):
            min_bytes = _nbytes(u.calls) + u.out_bytes + state_bytes(u.module)
            row = Row(
                kind=u.kind, path=u.path, block_type=u.type, calls=len(u.calls),
                input_shapes=_shapes(u.calls[0]), output_shapes=u.outputs[0] if u.outputs else "",
                parameters=sum(p.numel() for p in u.module.parameters()),
                flops=u.flops, min_bytes=min_bytes, eager_bytes=u.eager_bytes,
                intensity=u.flops / min_bytes if min_bytes else None,
                reduction_length=reduction_length(u.module),
            )
            run = (lambda u=u: _run_calls(u.module, u.calls))
            t = _time(run, device, warmup, repeats, graph, row, "reference")
            if t is not None:
                row.ref_median_ms, row.ref_min_ms, row.ref_max_ms, row.timing_method = t.median_ms, t.min_ms, t.max_ms, t.method
            row.ref_peak_bytes = _peak(run, device, row, "reference")
            out_rows.append(row)
            say(f"[{i}/{len(units)}] {u.path} ({u.type}): " + (f"{t.median_ms:.4g} ms" if t else "not timed"))

        model_output = model(example_input)
    total_min = _nbytes(example_input) + _nbytes(model_output) + state_bytes(model)
    total_flops = sum(u.flops for u in units)
    total.input_shapes, total.output_shapes = _shapes(example_input), _shapes(model_output)
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
        compiled_model = _compile_columns(model, example_input, units, out_rows, total, device, warmup, repeats,
                                          compile_mode, graph, wanted, notes, say)

    # -- fused columns ----------------------------------------------------------------------
    fuse_report, fmodel = "", None
    fuse = fuse_function() if fused else None
    if fused and fuse is None:
        notes.append("fused columns are empty: fused.fuse is not available in this checkout yet")
    elif fuse is not None:
        fuse_report, fmodel = _fused_columns(
            fuse, model, example_input, check_input, rows, units, out_rows, total, device, dtype,
            warmup, repeats, graph, notes, say,
        )

    # -- totals, bandwidth, roofline, speedups ----------------------------------------------
    summed, outside = _summary_rows(out_rows, total, notes)
    all_rows = out_rows + [summed, outside, total]
    for r in all_rows:
        _derive(r, ceil)

    notes.append(
        f"'{SUM}' adds the rows up; '{OUTSIDE}' is the whole-model time minus that sum: work between modules "
        "(concatenations, reshapes, softmax) and Python overhead; timing noise can make it negative."
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
    if ceil is not None:
        above = [r.path for r in out_rows + [total] for p, _ in PATHS
                 if (getattr(r, f"{p}_bw_pct") or 0) > 110
                 or (r.flops and getattr(r, f"{p}_median_ms") and r.flops / (getattr(r, f"{p}_median_ms") * 1e-3) > 1.1 * ceil.matmul_flops)]
        if above:
            notes.append(
                f"{len(set(above))} row(s) ran above a measured ceiling ({', '.join(sorted(set(above))[:4])}"
                f"{', ...' if len(set(above)) > 4 else ''}): a block whose data fits in the caches can beat the copy "
                "bandwidth of a large buffer, and ceilings measured while the machine was busy are too low; "
                "--remeasure on an idle machine measures them again"
            )
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
        if fmodel is not None and times_fused(device):
            def fused_run():
                with _fused_flag(True):
                    return fmodel(example_input)
            runs["fused"] = fused_run
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
        "repeats": repeats,
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


def _summary_rows(out_rows: list[Row], total: Row, notes: list[str]) -> tuple[Row, Row]:
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


def _derive(row: Row, ceil) -> None:
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


def _compile_columns(model, example_input, units, out_rows, total, device, warmup, repeats, mode, graph,
                     wanted, notes, say):
    """``torch.compile`` each wanted row's module (and the whole model), time it into the
    ``compile_*`` columns; return the compiled whole model (None if not compiled)."""
    rows_by_path = {r.path: r for r in out_rows}
    targets = [(u.path, u.type, u.module, (lambda cm, u=u: _run_calls(cm, u.calls)), rows_by_path[u.path])
               for u in units if wanted is None or u.path in wanted]
    if wanted is None or TOTAL in wanted:
        targets.append((TOTAL, "whole model", model, (lambda cm: cm(example_input)), total))
    # max-autotune and reduce-overhead capture CUDA graphs of their own: do not nest ours
    use_graph = graph and mode == "default"
    compiled_model, streak, stop, seconds = None, 0, None, 0.0
    say(f"torch.compile (mode {mode}) of {len(targets)} row(s); the first calls compile, which takes a while")
    for i, (path, kind, module, call, row) in enumerate(targets, 1):
        if stop:
            _add_note(row, f"not compiled: {stop}")
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
            _add_note(row, f"torch.compile failed: {_first_line(exc)}")
            say(f"[compile {i}/{len(targets)}] {path}: torch.compile FAILED ({_first_line(exc)})")
            streak += 1
            if streak >= 3:
                stop = "torch.compile failed on three rows in a row (see their notes)"
            continue
        streak = 0
        row.compile_seconds = time.perf_counter() - start
        seconds += row.compile_seconds
        with torch.no_grad():
            t = _time(lambda: call(compiled), device, warmup, repeats, use_graph, row, "torch.compile")
            row.compile_peak_bytes = _peak(lambda: call(compiled), device, row, "torch.compile")
        if t is not None:
            row.compile_median_ms = t.median_ms
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


def times_fused(device) -> bool:
    """True where fused timings mean something: a CUDA device with compiled (not interpreted) kernels."""
    return torch.device(device).type == "cuda" and not runtime.INTERPRETED


def _time_fused(fn, device, warmup: int, repeats: int, graph: bool, row: Row) -> float | None:
    """Time the fused path into ``row`` (median ms and peak memory); a failure goes to its note."""
    with torch.no_grad(), _fused_flag(True):
        t = _time(fn, device, warmup, repeats, graph, row, "fused")
        if t is None:
            row.fused_note = "; ".join(filter(None, [row.fused_note, "not timed (see note)"]))
            return None
        row.fused_median_ms = t.median_ms
        row.fused_peak_bytes = _peak(fn, device, row, "fused")
    return t.median_ms


def _fused_columns(fuse, model, example_input, check_input, rows, units, out_rows, total, device, dtype,
                   warmup, repeats, graph, notes, say):
    """Fill the fused columns of ``out_rows`` and ``total``; return (the fuse report as text, the fused model)."""
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
            t = _time_fused(lambda fmod=fmod, u=u: _run_calls(fmod, u.calls), device, warmup, repeats, graph, row)
            if t is not None:
                line += f", {t:.4g} ms ({row.ref_median_ms / t:.2f}x)" if row.ref_median_ms else f", {t:.4g} ms"
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
MEMORY_FORMATS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}


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
            raise ValueError(f"{name} takes {ARCFACE_SIZE}x{ARCFACE_SIZE} inputs only (fc5 needs the 8x8 map that a "
                             f"{ARCFACE_SIZE}x{ARCFACE_SIZE} face gives), got {h}x{w}")
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
    compile=False,
    compile_mode: str = "default",
    memory_format: str = "nchw",
    cuda_graphs: bool = False,
    ceilings=None,
    trace=None,
) -> Profile:
    """Build ``model`` (a name in :data:`MODELS`) and profile it; what ``facefuse profile`` runs.

    ``size`` is ``(H, W)`` or one int (default: 320 on a CPU, 640 on a GPU; ArcFace 128).
    ``check_size`` is the input side of the fused correctness pass; on a CPU it defaults to
    :data:`CPU_CHECK_SIZE` (the interpreter is slow), on a GPU to ``size``. ``memory_format`` is
    ``"nchw"`` or ``"channels_last"`` (model and input). ``compile``, ``compile_mode``,
    ``cuda_graphs``, ``ceilings`` and ``trace`` are passed to :func:`profile_model` (``compile``
    is off by default here: compiling every block takes a minute or two on a small CPU).
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
    if memory_format not in MEMORY_FORMATS:
        raise ValueError(f"unknown memory format {memory_format!r}; choose {' or '.join(MEMORY_FORMATS)}")
    if cuda_graphs and dev.type != "cuda":
        raise ValueError("CUDA graphs need a CUDA device (--device cuda)")
    layout = MEMORY_FORMATS[memory_format]
    x = example_input(model, size, batch, dtype=torch_dtype, device=dev, seed=seed).contiguous(memory_format=layout)
    check = None
    if fused and not model.startswith("arcface"):
        if check_size is not None:
            check = _pair(check_size)
        elif dev.type != "cuda" or runtime.INTERPRETED:
            check = (min(size[0], CPU_CHECK_SIZE), min(size[1], CPU_CHECK_SIZE))
        if check is not None and check != tuple(size):
            check_input = example_input(model, check, batch, dtype=torch_dtype, device=dev, seed=seed)
            check_input = check_input.contiguous(memory_format=layout)
        else:
            check_input = None
    else:
        check_input = None
    net = build_model(model, seed=seed, weights=weights).to(device=dev, dtype=torch_dtype, memory_format=layout)
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
    prof = profile_model(net, x, warmup=warmup, repeats=repeats, fused=fused, device=dev,
                         check_input=check_input, settings=settings, progress=progress, compile=compile,
                         compile_mode=compile_mode, cuda_graphs=cuda_graphs, ceilings=ceilings, trace=trace)
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
