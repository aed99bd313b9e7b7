"""The rows of a block-level profile, the :class:`Profile` that holds them, and its files.

:func:`fused.measure.profiler.profile` fills a :class:`Profile`; this module gives it its table,
CSV, JSON and (through :mod:`fused.measure.charts`) its charts, and reads the files back.

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
  point of the machine's *measured* ceilings (:mod:`fused.measure.ceilings`: copy bandwidth and matmul
  throughput): below the ridge a block is memory-bound, and fusion is what helps.
* ``ref_median_ms``: the block alone on its recorded input, median after warm-up
  (:func:`fused.measure.timing.time_callable`: CUDA events on a GPU, optionally CUDA graph replays; wall
  clock on a CPU).
* ``compile_*`` (``compile=True``): ``torch.compile`` of the reference block (Inductor: Triton on a
  GPU, C++ on a CPU), timed the same way; ``compile_seconds`` is how long the first call took
  (compiling). A compile failure goes to the row's ``note``, never raised.
* ``*_gbps``: effective bandwidth, ``min_bytes`` over the path's time; ``*_bw_pct``: that as a
  percentage of the measured copy bandwidth (the memory roofline). ``*_peak_bytes``: extra
  device memory at the peak of one call (CUDA only: :func:`fused.measure.timing.peak_memory_bytes`; the
  CPU allocator keeps no peak statistic, so these stay empty there).
* fused columns (``fused=True``): the profiler fuses a deep copy of the model with
  :func:`fused.fuse` and runs each fused block once on the same recorded input, under
  :func:`fused.recording`: which backend ran (``triton``, ``triton-interpreter``, or
  ``reference`` with the reason), the largest absolute error against a float64 run of the
  reference block, and whether it is within :func:`fused.tolerance.tolerance`. On a GPU the fused
  block is timed too, with speedups against the reference (``speedup``) and against
  torch.compile (``speedup_vs_compile``). On a CPU the kernels run in Triton's interpreter, whose
  timings say nothing about a GPU: fused times and speedups stay empty, and a note says why.
* ``fused_compile_*`` (``compile=True`` and ``fused=True``, whole model only): ``torch.compile``
  of the fused model, whose kernels are ``torch.ops.facefuse`` operators (Inductor schedules them
  with the rest of the graph on a GPU): its error against float64 on the check input, its
  compile time, and on a GPU its time, speedup against the reference (``fused_compile_speedup``)
  and against torch.compile of the reference (``fused_compile_vs_compile``). On a CPU it is
  checked, not timed, like the fused path.
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from typing import ClassVar

from .ceilings import Ceilings

# --------------------------------------------------------------------------------------------
# Rows and the profile
# --------------------------------------------------------------------------------------------

SUM = "(sum of blocks)"
OUTSIDE = "(outside blocks)"
TOTAL = "(model)"

#: The timed paths: (column prefix, label in tables and charts).
PATHS = (("ref", "reference (eager PyTorch)"), ("compile", "torch.compile"), ("fused", "fused (Triton)"),
         ("fused_compile", "fused + torch.compile"))


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
    compile_min_ms: float | None = None
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
    # torch.compile of the fused model (its kernels as torch.ops.facefuse ops): the whole model only
    fused_compile_median_ms: float | None = None
    fused_compile_seconds: float | None = None
    fused_compile_speedup: float | None = None
    fused_compile_vs_compile: float | None = None
    fused_compile_gbps: float | None = None
    fused_compile_bw_pct: float | None = None
    fused_compile_peak_bytes: int | None = None
    fused_compile_max_abs_error: float | None = None
    fused_compile_within_tolerance: bool | None = None
    note: str = ""
    flags: str = ""  # numbers in this row that cannot be right (FLAGS), "; "-separated


COLUMNS = [f.name for f in fields(Row)]
_INT_COLUMNS = {"calls", "parameters", "flops", "min_bytes", "eager_bytes", "reduction_length",
                "ref_peak_bytes", "compile_peak_bytes", "fused_peak_bytes", "fused_compile_peak_bytes"}
_FLOAT_COLUMNS = {"intensity", "ref_median_ms", "ref_min_ms", "ref_max_ms", "ref_gbps", "ref_bw_pct",
                  "compile_median_ms", "compile_min_ms", "compile_seconds", "compile_speedup", "compile_gbps", "compile_bw_pct",
                  "fused_max_abs_error", "fused_median_ms", "speedup", "speedup_vs_compile", "fused_gbps",
                  "fused_bw_pct", "fused_compile_median_ms", "fused_compile_seconds", "fused_compile_speedup",
                  "fused_compile_vs_compile", "fused_compile_gbps", "fused_compile_bw_pct", "fused_compile_max_abs_error"}
_BOOL_COLUMNS = {"fused_within_tolerance", "fused_compile_within_tolerance"}


def add_note(row: Row, text: str) -> None:
    """Append ``text`` to the row's note."""
    row.note = "; ".join(filter(None, [row.note, text]))


# --------------------------------------------------------------------------------------------
# Numbers that cannot be right
# --------------------------------------------------------------------------------------------

#: What each flag of :func:`flag_rows` means. A flagged number stays in the row (it was measured)
#: but the table shows the flag beside it, and the notes say why it cannot be right.
FLAGS = {
    "outside>sum": f"'{OUTSIDE}' is larger than '{SUM}': the model cannot spend more time between its blocks than "
                   "in them; the whole model and the blocks were timed under different load (a busy machine)",
    "outside<0": f"'{OUTSIDE}' is negative by more than a fifth of '{SUM}': the whole model ran faster than its "
                 "blocks one by one; the blocks were timed under heavier load than the model",
    "above-roof": "above 100% of a measured ceiling (copy bandwidth or matmul throughput): the ceilings were measured "
                  "while the machine was busy (facefuse profile --remeasure on an idle machine), or the block's data "
                  "fits in the caches, which beat the copy bandwidth of a large buffer",
    "compile-ratio": "torch.compile under 0.01x of eager: not a real compiled speed (it recompiled on every call, or "
                     "the machine was busy while it ran); rerun before reading anything into it",
}

#: Below this, a torch.compile ratio is flagged (it prints as "0.00x").
MIN_COMPILE_RATIO = 0.01
#: ``(outside blocks)`` may be negative by timing noise, down to this fraction of the sum of blocks.
OUTSIDE_NOISE = 0.2


def flag_rows(rows: list[Row], ceil: Ceilings | None = None) -> list[str]:
    """Set each row's ``flags`` to the numbers that cannot be right (see :data:`FLAGS`); return one
    note per flag that occurred, naming the rows. Run after the percentages and speedups are derived."""
    summed = next((r for r in rows if r.kind == "sum"), None)
    found: dict[str, list[str]] = {}

    def flag(row: Row, code: str, detail: str = "") -> None:
        label = f"{code}({detail})" if detail else code
        if label not in row.flags.split("; "):
            row.flags = "; ".join(filter(None, [row.flags, label]))
        found.setdefault(code, []).append(row.path + (f" ({detail})" if detail else ""))

    for r in rows:
        for p, _ in PATHS:
            ms = getattr(r, f"{p}_median_ms")
            if r.kind in ("sum", "outside") or not ms or ms <= 0:
                continue
            above_bw = (getattr(r, f"{p}_bw_pct") or 0) > 100
            above_flops = ceil is not None and bool(r.flops) and r.flops / (ms * 1e-3) > ceil.matmul_flops
            if above_bw or above_flops:
                flag(r, "above-roof", p)
        if r.compile_speedup is not None and r.compile_speedup < MIN_COMPILE_RATIO:
            flag(r, "compile-ratio")
        if r.kind == "outside" and summed is not None:
            for p, _ in PATHS:
                out, total = getattr(r, f"{p}_median_ms"), getattr(summed, f"{p}_median_ms")
                if out is None or not total:
                    continue
                if out > total:
                    flag(r, "outside>sum", p)
                elif out < -OUTSIDE_NOISE * total:
                    flag(r, "outside<0", p)
    notes = []
    for code, where in found.items():
        shown = ", ".join(where[:4]) + (", ..." if len(where) > 4 else "")
        notes.append(f"FLAGGED {code}, {len(where)} row(s) ({shown}): {FLAGS[code]}")
    return notes


def percent(part: float | None, whole: float | None, what: str = "share") -> str:
    """``part / whole`` as a percentage for a share that must lie in [0, 100]; outside that range
    (timing noise on a busy machine) the text says the number cannot be right instead of printing it bare."""
    if part is None or not whole:
        return "n/a"
    value = 100.0 * part / whole
    if 0.0 <= value <= 100.0:
        return f"{value:.0f}%"
    return f"{value:.0f}% (FLAGGED: a {what} must lie in [0, 100]%; timing noise, rerun on an idle machine)"


@dataclass
class Profile:
    """The rows, the settings they were measured with, the machine, its ceilings and notes."""

    rows: list[Row]
    settings: dict = field(default_factory=dict)
    environment: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    fuse_report: str = ""
    ceilings: dict = field(default_factory=dict)
    #: ``(column prefix, label)`` of every timed path (:data:`PATHS`), for the charts.
    PATHS: ClassVar[tuple] = PATHS

    # -- access ---------------------------------------------------------------------------
    def blocks(self) -> list[Row]:
        """Rows of kind ``"block"`` and ``"module"``: one per part of the model, in run order."""
        return [r for r in self.rows if r.kind in ("block", "module")]

    def row(self, path: str) -> Row:
        for r in self.rows:
            if r.path == path:
                return r
        raise KeyError(f"no row {path!r} in the profile")

    def flagged(self) -> list[Row]:
        """Rows with a number that cannot be right (:data:`FLAGS`)."""
        return [r for r in self.rows if r.flags]

    def has_fused_times(self) -> bool:
        return any(r.fused_median_ms is not None for r in self.rows)

    def has_compile_times(self) -> bool:
        return any(r.compile_median_ms is not None for r in self.rows)

    def machine_ceilings(self) -> Ceilings | None:
        """The measured ceilings the percentages and the roofline use (None when not measured)."""
        return Ceilings.from_dict(self.ceilings) if self.ceilings else None

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
                 ("ref min", lambda r: _fmt(r.ref_min_ms, 1, 4), True),
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
        if has["fused_compile"]:
            cols += [("fused+compile ms", lambda r: _fmt(r.fused_compile_median_ms, 1, 4), True),
                     ("f+c speedup", lambda r: _fmt_x(r.fused_compile_speedup), True)]
            if has["compile"]:
                cols.append(("f+c vs compile", lambda r: _fmt_x(r.fused_compile_vs_compile), True))
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
        if any(r.flags for r in self.rows):
            cols.append(("FLAGS", lambda r: r.flags, False))
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
                  "CUDA graphs" if s.get("cuda_graphs") else "",
                  f"{s['torch_threads']} torch threads" if s.get("device") == "cpu" and s.get("torch_threads") else ""]
        title = (f"facefuse profile: {s.get('model', '?')}, input {s.get('input_shape', '?')} {s.get('dtype', '')} "
                 f"on {s.get('device', '?')} ({', '.join(e for e in extras if e)}), median of {s.get('repeats', '?')} "
                 f"runs (and their min) after {s.get('warmup', '?')} warm-up ({self.rows[0].timing_method if self.rows else ''})")
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

    def short_title(self) -> str:
        """Model, input, dtype, layout and device in one line: the charts' title."""
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
        from . import charts  # matplotlib loads when a chart is drawn, not when a profile is read

        return charts.profile_chart(self)

    def write_chart(self, path) -> str:
        """Save :meth:`chart` as a PNG."""
        self.chart().savefig(path, dpi=110)
        return os.fspath(path)

    def roofline(self, label_top: int = 6):
        """The roofline chart (a matplotlib ``Figure``), or None without measured ceilings
        (:func:`fused.measure.charts.roofline_chart`)."""
        from . import charts

        return charts.roofline_chart(self, label_top)

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
    if v is None:
        return ""
    return f"{v:.2f}x" if v >= 0.1 else f"{v:.2g}x"  # never "0.00x"


def _fmt_pct(v) -> str:
    return "" if v is None else (f"{v:.2g}%" if v < 10 else f"{v:.0f}%")


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."

