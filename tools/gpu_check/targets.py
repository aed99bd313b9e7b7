"""The performance targets of ``facefuse gpu-check``, and how benchmark rows meet them."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Target:
    """A performance target: the fused path at least ``ratio`` x ``baseline`` on the rows of
    ``family`` (optionally only ``models``, ``batches`` and memory-bound rows)."""

    key: str
    text: str
    family: str | None
    baseline: str  # "eager" (the faster of eager NCHW and eager channels_last) or "compile"
    ratio: float
    models: tuple[str, ...] | None = None
    batches: tuple[int, ...] | None = None
    memory_bound: bool = False
    unmeasured: str = ""


RETINAFACES = ("retinaface", "retinaface-resnet50")

#: The issue's targets (H100/H200, float16, CUDA graphs on both sides), mapped to benchmark rows.
TARGETS = [
    Target("conv_bn-eager", "conv+BN+act >= 1.8x eager on memory-bound RetinaFace layers", "conv_bn", "eager", 1.8,
           models=RETINAFACES, memory_bound=True),
    Target("conv_bn-compile", "conv+BN+act >= parity with torch.compile on memory-bound RetinaFace layers", "conv_bn",
           "compile", 1.0, models=RETINAFACES, memory_bound=True),
    Target("depthwise-eager", "depthwise >= 2x eager", "depthwise", "eager", 2.0),
    Target("conv_dw-eager", "fused conv_dw >= 3x eager", "conv_dw", "eager", 3.0),
    Target("conv_dw-compile", "fused conv_dw >= 1.5x torch.compile", "conv_dw", "compile", 1.5),
    Target("squeeze_excite-eager", "squeeze-excite >= 3x eager", "squeeze_excite", "eager", 3.0),
    Target("squeeze_excite-compile", "squeeze-excite >= 1.5x torch.compile", "squeeze_excite", "compile", 1.5),
    Target("retinaface-eager", "RetinaFace mobile0.25 whole model >= 2x eager at batch 1", "retinaface_model", "eager",
           2.0, models=("retinaface",), batches=(1,)),
    Target("retinaface-compile", "RetinaFace mobile0.25 whole model >= 1.3x torch.compile at batch 1",
           "retinaface_model", "compile", 1.3, models=("retinaface",), batches=(1,)),
    Target("arcface-compile", "ResNetArcFace IR-18 >= parity with torch.compile at batch 64", "arcface_model",
           "compile", 1.0, models=("arcface",), batches=(64,)),
]

#: The models each family's rows come from when a case name carries no ``[model]`` tag.
_FAMILY_MODELS = {"squeeze_excite": "arcface-se", "bottleneck": "retinaface-resnet50"}


def row_model(row: dict, settings: dict) -> str | None:
    """The model a benchmark row comes from: its case name's ``[model]`` tag, else the family's
    one model, else the RetinaFace variant of ``--model``."""
    m = re.search(r"\[([\w.-]+)\]\s*$", row.get("case") or "")
    if m:
        return m.group(1)
    family = row.get("family")
    if family in _FAMILY_MODELS:
        return _FAMILY_MODELS[family]
    if family in ("irblock", "arcface_model"):
        return None  # both ArcFace models ran; without a tag the row cannot be told apart
    model = settings.get("model") or "retinaface"
    return model if model != "all" else None


def row_batch(row: dict) -> int | None:
    shape = (row.get("shape") or "").split(";")[0]
    try:
        return int(shape.split("x")[0])
    except ValueError:
        return None


def _eager_ratio(row: dict) -> float | None:
    """Speedup over the faster eager layout (the smaller of the two speedups)."""
    found = [row.get(k) for k in ("speedup_eager", "speedup_eager_cl") if row.get(k) is not None]
    return min(found) if found else None


def variant(source: str, settings: dict) -> str:
    """How a row was measured: torch.compile's mode, and the fused configs (a quick plan's
    ``-plan`` step runs the plan configs, ``FACEFUSE_AUTOTUNE=0``; every other step autotunes)."""
    configs = "plan configs" if "-plan" in Path(source).parent.name else "autotuned"
    return f"compile {settings.get('compile_mode') or '?'}, fused {configs}"


def bench_rows(payloads: list[tuple[str, dict]]) -> list[dict]:
    """Every row of the given bench JSON payloads, with its model, batch, source and conditions."""
    rows = []
    for source, data in payloads:
        settings = data.get("settings", {})
        ceil = data.get("ceilings") or {}
        bandwidth = (ceil.get("copy_gbps") or data.get("bandwidth_gbps") or 0) * 1e9
        ridge = ceil.get("matmul_flops") / bandwidth if ceil.get("matmul_flops") and bandwidth else None
        for r in data.get("rows", []):
            intensity = r["flops"] / r["bytes_moved"] if r.get("flops") and r.get("bytes_moved") else None
            rows.append({**r, "_source": source, "_model": row_model(r, settings), "_batch": row_batch(r),
                         "_memory_bound": None if ridge is None or intensity is None else intensity < ridge,
                         "_gpu": (data.get("environment") or {}).get("gpu"), "_dtype": settings.get("dtype") or r.get("dtype"),
                         "_cuda_graphs": settings.get("cuda_graphs"), "_compile_mode": settings.get("compile_mode"),
                         "_variant": variant(source, settings)})
    return rows


def evaluate_targets(rows: list[dict], targets=TARGETS) -> list[dict]:
    """For each target: ``met``, ``missed``, or ``not run``, with the worst ratio over its rows
    (every row must reach the target), their geometric mean and how many rows met it; one entry
    per way the rows were measured (:func:`variant`), labelled ``variant``."""
    results = []
    for t in targets:
        mine = [r for r in rows if r.get("family") == t.family]
        variants = list(dict.fromkeys(r.get("_variant") for r in mine)) or [None]
        for v in variants:
            results.append(_evaluate(t, [r for r in mine if r.get("_variant") == v], v))
    return results


def _evaluate(t: Target, rows: list[dict], variant_label: str | None) -> dict:
    res = {"key": t.key, "target": t.text, "threshold": t.ratio, "baseline": t.baseline, "status": "not run",
           "worst": None, "geomean": None, "rows": 0, "rows_met": 0, "worst_case": None, "notes": [],
           "variant": variant_label}
    if t.family is None:
        res["notes"].append(t.unmeasured)
        return res
    chosen = [r for r in rows if r.get("family") == t.family
              and (t.models is None or r["_model"] in t.models)
              and (t.batches is None or r["_batch"] in t.batches)]
    if t.memory_bound:
        unknown = [r for r in chosen if r["_memory_bound"] is None]
        if unknown:
            res["notes"].append(f"{len(unknown)} rows without measured ceilings: bound unknown, counted as memory-bound")
        chosen = [r for r in chosen if r["_memory_bound"] is not False]
    if not chosen:
        res["notes"].append("no benchmark rows for it yet")
        return res
    bad = [r for r in chosen if r.get("status") != "ok"]
    ratios = []
    for r in chosen:
        if r.get("status") != "ok":
            continue
        ratio = _eager_ratio(r) if t.baseline == "eager" else r.get("speedup_compile")
        if ratio is None:
            res["notes"].append(f"{r.get('case')}: no {t.baseline} ratio ({r.get('note') or r.get('compile_error') or 'not timed'})")
            continue
        ratios.append((ratio, r))
    conditions = sorted({f"{r['_dtype']}, CUDA graphs {'on' if r['_cuda_graphs'] else 'off'}, {r['_gpu']}" for r in chosen})
    res["conditions"] = conditions
    off = [c for c in conditions if not c.startswith("float16, CUDA graphs on")]
    if off:
        res["notes"].append("measured outside the target's conditions (float16, CUDA graphs): " + "; ".join(off))
    gpus = {r["_gpu"] for r in chosen if r["_gpu"]}
    if gpus and not any(("H100" in g or "H200" in g) for g in gpus):
        res["notes"].append(f"the targets are for an H100 or H200; measured on {', '.join(sorted(gpus))}")
    res["rows"] = len(chosen)
    if ratios:
        worst, worst_row = min(ratios, key=lambda p: p[0])
        res.update(worst=worst, worst_case=worst_row.get("case"),
                   geomean=math.exp(sum(math.log(max(v, 1e-12)) for v, _ in ratios) / len(ratios)),
                   rows_met=sum(v >= t.ratio for v, _ in ratios))
        if t.baseline == "eager":
            nchw = [r.get("speedup_eager") for _, r in ratios if r.get("speedup_eager") is not None]
            if nchw:
                res["worst_vs_eager_nchw"] = min(nchw)
    if bad:
        res["status"] = "missed"
        res["notes"].insert(0, f"correctness first: {len(bad)} rows failed or fell back ("
                            + "; ".join(f"{r.get('case')}: {r.get('status')}" for r in bad[:5]) + ")")
    elif not ratios:
        res["notes"].append("no timed rows")
    elif off:
        res["status"] = "not comparable"
    else:
        res["status"] = "met" if res["rows_met"] == len(ratios) == len(chosen) else "missed"
    costs = [r["compile_s"] for r in chosen if r.get("compile_s") is not None]
    if t.baseline == "compile" and costs:
        res["compile_s_max"] = max(costs)
        res["notes"].append(f"torch.compile took up to {max(costs):.0f} s per case")
    return res
