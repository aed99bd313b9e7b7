"""Charts of profiles and benchmarks. With :mod:`fused.teaching_plots` (the lessons' pictures),
the only modules of facefuse that import matplotlib.

Figures are built with ``matplotlib.figure.Figure``, never ``pyplot``, so the caller's backend
(a notebook's, say) is left alone. :class:`fused.measure.rows.Profile` and
:func:`fused.measure.benchmark.write_results` import this module only when they draw, so reading
or writing a profile's table, CSV or JSON does not load matplotlib.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from matplotlib.figure import Figure

if TYPE_CHECKING:  # rows imports this module when it draws: no import back at run time
    from .rows import Profile


#: A time axis is logarithmic when its largest positive value is at least this many times its smallest.
LOG_SPAN = 100.0

COLORS = {"reference (eager PyTorch)": "#4c72b0", "torch.compile": "#55a868", "fused (Triton)": "#dd8452",
          "fused + torch.compile": "#8172b3"}


def spans_decades(values) -> bool:
    """True when the positive ``values`` span at least :data:`LOG_SPAN` (a linear axis would hide the small ones)."""
    positive = [v for v in values if v is not None and v > 0]
    return bool(positive) and max(positive) >= LOG_SPAN * min(positive)


def _summary_line(prof: Profile) -> str:
    """The synthetic rows (whole model, sum of blocks, outside blocks) as text, with their flags:
    they are not blocks, so they are said in the title rather than drawn among the blocks' bars."""
    parts = []
    for kind, name in (("total", "whole model"), ("sum", "sum of blocks"), ("outside", "outside blocks")):
        row = next((r for r in prof.rows if r.kind == kind), None)
        if row is None:
            continue
        times = [f"{label.split(' ')[0]} {getattr(row, f'{p}_median_ms'):.3g} ms" for p, label in prof.PATHS
                 if getattr(row, f"{p}_median_ms") is not None]
        if times:
            parts.append(f"{name}: {', '.join(times)}" + (f" [FLAGGED {row.flags}]" if row.flags else ""))
    return "; ".join(parts)


def profile_chart(prof: Profile) -> Figure:
    """The per-block time chart of a profile: reference vs torch.compile vs fused, one bar each.

    Only blocks are bars; the whole model, the sum of blocks and the time outside them are in the
    title (with their flags). The time axis is logarithmic where the times span decades
    (:func:`spans_decades`); a block whose numbers are flagged has its label marked ``[!]``."""
    rows = prof.blocks()
    labels = [f"{r.path} [{r.block_type}]" + (" [!]" if r.flags else "") for r in rows]
    series = [(label, [getattr(r, f"{p}_median_ms") for r in rows]) for p, label in prof.PATHS]
    series = [(label, times) for label, times in series if any(t is not None and t > 0 for t in times)]
    fig = Figure(figsize=(10, max(3.5, 0.28 * len(rows) * max(1, len(series)) ** 0.5 + 2.0)))
    ax = fig.subplots()
    ys = list(range(len(rows)))
    h = 0.8 / max(len(series), 1)
    every = [t for _, times in series for t in times]
    log = spans_decades(every)
    for j, (label, times) in enumerate(series):
        offset = (j - (len(series) - 1) / 2) * h
        kept = [(y + offset, t) for y, t in zip(ys, times) if t is not None and t > 0]
        ax.barh([y for y, _ in kept], [t for _, t in kept], height=h, label=label, color=COLORS[label])
    if not series:
        ax.plot([], [], label="no timed path")
    method = rows[0].timing_method if rows else ""
    if log:
        positive = [t for t in every if t is not None and t > 0]
        ax.set_xscale("log")
        ax.set_xlim(min(positive) / 2, max(positive) * 2)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_yticks(ys)
    ax.set_yticklabels(labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(f"median time per block (ms, {method}{', log scale' if log else ''})")
    title = prof.short_title()
    summary = _summary_line(prof)
    if summary:
        title += "\n" + summary
    if prof.settings.get("device") == "cpu" and any(r.fused_backend for r in prof.rows):
        title += "\nfused kernels not timed: on a CPU they run in Triton's interpreter (correctness only)"
    ax.set_title(title, fontsize=8)
    ax.grid(axis="x", which="both" if log else "major", alpha=0.3)
    fig.tight_layout()
    return fig


def roofline_chart(prof: Profile, label_top: int = 6) -> Figure | None:
    """The roofline chart (a matplotlib ``Figure``), or None without measured ceilings.

    Log-log: achieved FLOP/s of every block against its arithmetic intensity (FLOP/byte of its
    minimal traffic), one marker per timed path, under the roof drawn from the measured copy
    bandwidth and matmul throughput. Rows without FLOPs (pooling, BatchNorm alone) have no
    place on a log scale and are left out.
    """
    ceil = prof.machine_ceilings()
    if ceil is None:
        return None
    rows = [r for r in prof.blocks() + [r for r in prof.rows if r.kind == "total"] if r.flops and r.min_bytes]
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
    markers = {"ref": ("o", "#4c72b0"), "compile": ("s", "#55a868"), "fused": ("^", "#dd8452"),
               "fused_compile": ("D", "#8172b3")}
    ys_all = [ceil.matmul_flops]
    for p, label in prof.PATHS:
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
    for r in prof.slowest(label_top):  # name the blocks that take the most time
        if id(r) in intensity and r.ref_median_ms:
            ax.annotate(r.path, xy=(intensity[id(r)], r.flops / (r.ref_median_ms * 1e-3)), fontsize=7,
                        xytext=(4, -8), textcoords="offset points", color="#4c72b0")
    ax.set_ylim(min(min(ys_all), ceil.attainable(ceil.ridge / 8)) / 4, max(ys_all) * 3)
    ax.set_xlim(lo, hi)
    ax.set_xlabel("arithmetic intensity (FLOP per byte of minimal traffic)")
    ax.set_ylabel("achieved FLOP/s")
    title = f"roofline: {prof.short_title()}"
    if ceil.device == "cpu":
        title += "\nCPU roof and CPU timings; fused kernels are not timed on a CPU (interpreter)"
    ax.set_title(title, fontsize=9)
    ax.grid(which="both", alpha=0.2)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def bench_figure(results: list[dict], env: dict) -> Figure:
    """The benchmark's chart: one panel per kernel family, the fused speedups per case, or the
    baseline times when nothing fused was timed (on a CPU); a log axis where the values span decades."""
    timed = [r for r in results if r.get("status") == "ok"]
    has_speedups = any(r.get("speedup_eager") is not None for r in timed)
    if has_speedups:
        keys = [("speedup_eager", "vs eager NCHW"), ("speedup_eager_cl", "vs eager channels_last"),
                ("speedup_compile", "vs torch.compile")]
        ylabel = "fused speedup (x)"
    else:
        keys = [("eager_ms", "eager NCHW"), ("eager_cl_ms", "eager channels_last"), ("compile_ms", "torch.compile")]
        ylabel = "median time (ms)"
    families = list(dict.fromkeys(r["family"] for r in timed)) or ["(nothing timed)"]
    widest = max([sum(r["family"] == f for r in timed) for f in families] + [1])
    fig = Figure(figsize=(max(8.0, 0.45 * widest + 3), 3.4 * len(families)))
    axes = fig.subplots(len(families), 1, squeeze=False)[:, 0]
    colors = ["#4c72b0", "#dd8452", "#55a868"]
    for ax, family in zip(axes, families):
        rows = [r for r in timed if r["family"] == family]
        xs = list(range(len(rows)))
        values = [r.get(k) for r in rows for k, _ in keys]
        log = spans_decades(values)
        w = 0.8 / len(keys)
        for j, (key, label) in enumerate(keys):
            kept = [(x + (j - (len(keys) - 1) / 2) * w, r.get(key)) for x, r in zip(xs, rows)
                    if r.get(key) is not None and r.get(key) > 0]
            ax.bar([x for x, _ in kept], [v for _, v in kept], width=w, label=label, color=colors[j])
        if has_speedups:
            ax.axhline(1.0, color="gray", lw=0.8)
        if log:
            ax.set_yscale("log")
        ax.set_xticks(xs)
        ax.set_xticklabels([r["case"] for r in rows], rotation=30, ha="right", fontsize=7)
        ax.set_ylabel(ylabel + (", log" if log else ""), fontsize=8)
        ax.set_title(family, fontsize=9, loc="left")
        ax.grid(axis="y", which="both" if log else "major", alpha=0.3)
        ax.legend(fontsize=7, loc="upper right")
    where = env.get("gpu") or env.get("cpu") or env.get("device")
    title = f"facefuse bench on {where}"
    if not has_speedups:
        title += " (no fused timings: interpreter timings are not speedups)"
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def bench_chart(results: list[dict], path, env: dict) -> None:
    """Save :func:`bench_figure` to ``path`` (PNG)."""
    bench_figure(results, env).savefig(path, dpi=110)


def inspect_chart(summary: dict, target: str) -> Figure:
    """``facefuse inspect``'s chart: per model configuration, where its FLOPs go: by how their
    ``tl.dot`` lowered, and the shares in spilling variants, in launches with fewer programs than
    SMs, and in variants whose main loop loads one element per instruction."""
    configs = list(summary)
    lowerings = sorted({k for s in summary.values() for k in s["share_by_lowering"]})
    palette = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c"]
    fig = Figure(figsize=(11, max(3.0, 0.42 * len(configs) + 1.6)))
    left, right = fig.subplots(1, 2, sharey=True)
    ys = list(range(len(configs)))
    start = [0.0] * len(configs)
    for i, lowering in enumerate(lowerings):
        shares = [100 * summary[c]["share_by_lowering"].get(lowering, 0.0) for c in configs]
        left.barh(ys, shares, left=start, label=lowering, color=palette[i % len(palette)])
        start = [a + b for a, b in zip(start, shares)]
    left.set_xlabel("% of the model's FLOPs, by tl.dot lowering")
    left.set_xlim(0, 100)
    left.legend(loc="lower right", fontsize=7)
    left.set_yticks(ys)
    left.set_yticklabels(configs, fontsize=7)
    left.invert_yaxis()
    h = 0.27
    for j, (key, label) in enumerate((("share_spilling", "in spilling variants"),
                                      ("share_below_sms", "in launches with fewer programs than SMs"),
                                      ("share_scalar_loads", "with scalar main-loop loads"))):
        right.barh([y + (j - 1) * h for y in ys], [100 * summary[c][key] for c in configs], height=h, label=label,
                   color=palette[(j + 3) % len(palette)])
    right.set_xlabel("% of the model's FLOPs")
    right.set_xlim(0, 100)
    right.legend(loc="lower right", fontsize=7)
    for ax in (left, right):
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(f"facefuse inspect: where the FLOPs go when compiled for {target}", fontsize=9)
    fig.tight_layout()
    return fig
