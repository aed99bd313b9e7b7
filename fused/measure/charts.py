"""Charts of profiles and benchmarks: the only module of facefuse that imports matplotlib.

Figures are built with ``matplotlib.figure.Figure``, never ``pyplot``, so the caller's backend
(a notebook's, say) is left alone. :class:`fused.measure.rows.Profile` and
:func:`fused.measure.benchmark.write_results` import this module only when they draw, so reading
or writing a profile's table, CSV or JSON does not load matplotlib.
"""

from __future__ import annotations

from matplotlib.figure import Figure

from .rows import PATHS, Profile


def profile_chart(prof: Profile) -> Figure:
    """The per-block time chart of a profile: reference vs torch.compile vs fused, one bar each."""
    rows = [r for r in prof.rows if r.kind in ("block", "module") or (r.kind == "outside" and (r.ref_median_ms or 0) > 0)]
    labels = [f"{r.path} [{r.block_type}]" if r.kind != "outside" else r.path for r in rows]
    series = [(label, [getattr(r, f"{p}_median_ms") for r in rows]) for p, label in PATHS]
    series = [(label, times) for label, times in series if any(t is not None for t in times)]
    colors = {"reference (eager PyTorch)": "#4c72b0", "torch.compile": "#55a868", "fused (Triton)": "#dd8452",
              "fused + torch.compile": "#8172b3"}
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
    title = prof.short_title()
    if prof.settings.get("device") == "cpu" and any(r.fused_backend for r in prof.rows):
        title += "\nfused kernels not timed: on a CPU they run in Triton's interpreter (correctness only)"
    ax.set_title(title, fontsize=9)
    ax.grid(axis="x", alpha=0.3)
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


def bench_chart(results: list[dict], path, env: dict) -> None:
    """Save the benchmark's chart to ``path`` (PNG): the fused speedups per case, or the baseline
    times when nothing fused was timed (on a CPU)."""
    timed = [r for r in results if r.get("status") == "ok"]
    has_speedups = any(r.get("speedup_eager") is not None for r in timed)
    fig = Figure(figsize=(max(6.0, 0.6 * len(timed) + 2), 4.5))
    ax = fig.subplots()
    xs = list(range(len(timed)))
    if has_speedups:
        keys = [("speedup_eager", "vs eager NCHW"), ("speedup_eager_cl", "vs eager channels_last"),
                ("speedup_compile", "vs torch.compile")]
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.set_ylabel("speedup of the fused kernel (x)")
    else:
        keys = [("eager_ms", "eager NCHW"), ("eager_cl_ms", "eager channels_last"), ("compile_ms", "torch.compile")]
        ax.set_ylabel("median time (ms)")
    w = 0.8 / len(keys)
    for j, (key, label) in enumerate(keys):
        ax.bar([x + (j - (len(keys) - 1) / 2) * w for x in xs], [r.get(key) or 0.0 for r in timed], width=w, label=label)
    ax.set_xticks(xs)
    ax.set_xticklabels([r["case"] for r in timed], rotation=60, ha="right", fontsize=6)
    where = env.get("gpu") or env.get("cpu") or env.get("device")
    title = f"facefuse bench on {where}"
    if not has_speedups:
        title += " (no fused timings: interpreter timings are not speedups)"
    ax.set_title(title, fontsize=9)
    if timed:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
