"""The report of ``facefuse inspect``: one row per (model configuration, variant), model summaries,
the terminal table, CSV, JSON and the baseline the CI checks compare against."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
from collections import defaultdict
from dataclasses import asdict, dataclass

from . import analyse
from .arch import ARCHS, occupancy
from .specialize import short_specialisation

#: Element bits of the pointer types, to tell a scalar load from a vector one.
_ELEMENT_BITS = {"fp16": 16, "bf16": 16, "fp32": 32}
#: Lowerings that use tensor cores.
TENSOR_CORE = ("wgmma", "mma.sync", "tcgen05")


def short_kernel(path: str) -> str:
    return path.split(":")[-1].removesuffix("_kernel")


def variant_label(variant: dict) -> str:
    """A readable, stable name of a variant: kernel, its constexprs, specialisation and options."""
    spec = variant["spec"]
    consts = ",".join(f"{k}={v}" for k, v in spec["constexprs"].items() if k not in spec["ones"])
    opts = ",".join(f"{k}={v}" for k, v in sorted(variant["options"].items()))
    unaligned = ",".join(n for n, t in spec["signature"].items() if t.startswith("*") and n not in spec["divisible"])
    return (f"{short_kernel(variant['kernel'])} {_dtype(variant)} [{consts}; {short_specialisation(spec)}; "
            f"unaligned: {unaligned or '-'}; {opts}] #{variant_hash(variant)[:8]}")


def variant_hash(variant: dict) -> str:
    """A short stable id of a variant (the baseline's key)."""
    text = json.dumps(variant, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _dtype(variant: dict) -> str:
    sig = variant["spec"]["signature"]
    first = next((t for n, t in sig.items() if t.startswith("*")), "*?")
    return first[1:]


def _tiles(variant: dict) -> str:
    consts = variant["spec"]["constexprs"]
    return "/".join(str(consts[k]) for k in ("BLOCK_M", "BLOCK_N", "BLOCK_C", "BLOCK_HW", "BLOCK", "BLOCK_HIDDEN")
                    if k in consts)


@dataclass
class Row:
    """One variant as launched by one model configuration (see docs/inspect.md for every column)."""

    config: str
    id: str  # v01, v02, ... in the order the inspection first met the variant
    kernel: str
    blocks: str
    dtype: str
    tiles: str
    constexprs: str
    specialisation: str
    num_warps: int
    num_stages: int
    registers: int | None = None
    spill_bytes: int | None = None  # ptxas: bytes of spill stores
    stack: int | None = None
    shared: int | None = None  # bytes of shared memory per program (Triton's dynamic + static)
    occupancy: int | None = None  # resident programs per SM
    limiter: str | None = None
    lowering: str = "-"
    operands: str = "-"
    precision: str = "-"  # the dot's INPUT_PRECISION (float32: "tf32" or "ieee"; halves: "ieee")
    mma_wait: str = "-"  # "waits": the main loop waits for each wgmma to finish; "overlapped"; "-"
    autotune_configs: int = 1  # configurations a GPU launch times (the plan, recorded here, is the first)
    loads: str = "-"
    loop_loads: str = "-"
    opcode_mix: str = ""
    launches: int = 0
    programs: int = 0  # summed over launches
    min_programs: int = 0  # the smallest launch's programs
    launches_below_sms: int = 0
    dot_flops: int = 0
    other_flops: int = 0
    flops_below_sms: int = 0
    flop_share: float = 0.0
    error: str | None = None
    key: str = ""
    hash: str = ""
    label: str = ""

    @property
    def flops(self) -> int:
        return self.dot_flops + self.other_flops

    @property
    def spills(self) -> bool:
        return bool(self.spill_bytes)

    @property
    def tensor_cores(self) -> bool:
        return self.lowering in TENSOR_CORE


def _loads_text(loads: dict | None) -> str:
    if not loads:
        return "-"
    parts = [f"LDG.{bits}x{n}" for bits, n in loads["ldg_bits"].items()]
    if loads["ldgsts"]:
        parts.append(f"LDGSTS x{loads['ldgsts']}")
    if loads["tma"]:
        parts.append(f"TMA x{loads['tma']}")
    return " ".join(parts) or "-"


def build_rows(result: dict) -> list[Row]:
    """The rows of a worker result (:func:`fused.measure.inspect.run_worker`)."""
    arch = ARCHS[result["target"]]
    order = {vid: f"v{i:02d}" for i, vid in enumerate(result["variants"], 1)}
    rows = []
    for entry in result["configs"]:
        launches = entry["launches"]
        total = sum(sum(launch["flops"]) for launch in launches) or 1
        by_variant = defaultdict(list)
        for launch in launches:
            by_variant[launch["variant_id"]].append(launch)
        for vid, group in by_variant.items():
            variant = result["variants"][vid]["variant"]
            a = result["variants"][vid]["analysis"]
            spec = variant["spec"]
            blocks = sorted({launch["block"] or "-" for launch in group})
            programs = [int(math.prod(launch["grid"])) for launch in group]
            dtype = _dtype(variant)
            row = Row(
                config=entry["name"], id=order[vid], kernel=short_kernel(variant["kernel"]),
                blocks=blocks[0] + (f" +{len(blocks) - 1}" if len(blocks) > 1 else ""), dtype=dtype,
                tiles=_tiles(variant),
                constexprs=",".join(f"{k}={v}" for k, v in spec["constexprs"].items()
                                    if k not in spec["ones"] and not k.startswith("BLOCK")),
                specialisation=short_specialisation(spec), num_warps=variant["options"]["num_warps"],
                num_stages=variant["options"]["num_stages"], launches=len(group), programs=sum(programs),
                min_programs=min(programs), launches_below_sms=sum(p < arch.sms for p in programs),
                dot_flops=sum(launch["flops"][0] for launch in group),
                other_flops=sum(launch["flops"][1] for launch in group),
                flops_below_sms=sum(sum(launch["flops"]) for launch, p in zip(group, programs) if p < arch.sms),
                key=a.get("key", ""), hash=a.get("hash") or "", label=variant_label(variant), error=a.get("error"),
            )
            row.flop_share = row.flops / total
            row.precision = str(spec["constexprs"].get("INPUT_PRECISION", "-"))
            row.autotune_configs = max(len(launch.get("candidates") or [None]) for launch in group)
            if not row.error:
                row.registers = a.get("ptxas_registers") or a.get("registers")
                row.spill_bytes = a.get("spill_stores")
                if row.spill_bytes is None:  # no ptxas log: the cubin's local stores and stack tell
                    row.spill_bytes = (a.get("stack") or 0) if (a.get("local_memory_ops") or {}).get("STL") else 0
                row.stack = a.get("stack") or a.get("stack_frame") or 0
                row.shared = (a.get("shared_triton") or 0) + (a.get("shared") or 0)
                row.occupancy, row.limiter, _ = occupancy(arch, num_warps=row.num_warps, registers=row.registers or 1,
                                                           shared=row.shared)
                row.lowering, row.operands = a["lowering"], a["operands"]
                row.mma_wait = a.get("mma_wait") or "-"
                loop = a.get("main_loop_loads") or a.get("loads")
                row.loads = analyse.classify_loads(loop, _ELEMENT_BITS.get(dtype, 32))
                row.loop_loads = _loads_text(loop)
                row.opcode_mix = " ".join(f"{op}:{n}" for op, n in list(a["opcode_mix"].items())[:8])
            rows.append(row)
    return rows


def summarise(rows: list[Row]) -> dict[str, dict]:
    """Per configuration: variants, launches, FLOPs, and FLOP shares by lowering, in spilling
    variants and in launches with fewer programs than SMs."""
    out: dict[str, dict] = {}
    for row in rows:
        s = out.setdefault(row.config, {"variants": 0, "spilling_variants": 0, "failed_variants": 0,
                                        "launches": 0, "gflops": 0.0, "share_by_lowering": defaultdict(float),
                                        "share_spilling": 0.0, "share_below_sms": 0.0,
                                        "share_scalar_loads": 0.0, "share_mma_waits": 0.0,
                                        "autotuned_launches": 0})
        s["variants"] += 1
        s["spilling_variants"] += row.spills
        s["failed_variants"] += row.error is not None
        s["launches"] += row.launches
        s["gflops"] += row.flops / 1e9
        lowering = row.lowering if row.lowering != "-" else "no dot"
        if lowering == "FMA" or (row.lowering in TENSOR_CORE and row.operands == "tf32"):
            lowering = f"{lowering} ({row.operands})"
        s["share_by_lowering"][lowering] += row.flop_share
        s["share_spilling"] += row.flop_share if row.spills else 0.0
        if row.flops:
            s["share_below_sms"] += row.flop_share * row.flops_below_sms / row.flops
        if "scalar" in row.loads:
            s["share_scalar_loads"] += row.flop_share
        if row.mma_wait == "waits":
            s["share_mma_waits"] += row.flop_share
        s["autotuned_launches"] += row.launches if row.autotune_configs > 1 else 0
    for s in out.values():
        s["share_by_lowering"] = {k: round(v, 4) for k, v in sorted(s["share_by_lowering"].items())}
        for k in ("share_spilling", "share_below_sms", "share_scalar_loads", "share_mma_waits", "gflops"):
            s[k] = round(s[k], 4 if k.startswith("share") else 2)
    return out


# -- output ---------------------------------------------------------------------------------------

_COLUMNS = [  # (header, width, row -> text)
    ("id", 4, lambda r: r.id),
    ("kernel", 22, lambda r: r.kernel[:22]),
    ("tiles", 11, lambda r: r.tiles),
    ("w/s", 3, lambda r: f"{r.num_warps}/{r.num_stages}"),
    ("regs", 4, lambda r: _num(r.registers)),
    ("spill", 5, lambda r: _num(r.spill_bytes)),
    ("smemK", 5, lambda r: "-" if r.shared is None else f"{r.shared / 1024:.0f}"),
    ("occ", 3, lambda r: _num(r.occupancy)),
    ("limit", 5, lambda r: _LIMITER.get(r.limiter, "-")),
    ("dot", 10, lambda r: "-" if r.lowering == "-" else "FMA exact" if r.lowering == "FMA"
     else f"{r.lowering} {r.operands}"[:10]),
    ("loop loads", 15, lambda r: r.loads[:15]),
    ("mma", 4, lambda r: {"waits": "wait", "overlapped": "ovlp"}.get(r.mma_wait, "-")),
    ("n", 2, lambda r: str(r.launches)),
    ("programs", 7, lambda r: str(r.min_programs) if r.launches == 1 else f">={r.min_programs}"),
    ("FLOP%", 5, lambda r: f"{100 * r.flop_share:.1f}"),
]


_LIMITER = {"threads": "thrds", "registers": "regs", "shared": "smem", "blocks": "blks"}


def _num(v) -> str:
    return "-" if v is None else str(v)


def table(rows: list[Row], summary: dict, target: str, versions: dict) -> str:
    """The terminal table (under 120 columns): one block per configuration, then its summary."""
    arch = ARCHS[target]
    header = " ".join(h.ljust(w) if i < 3 else h.rjust(w) for i, (h, w, _) in enumerate(_COLUMNS))
    lines = [f"target {target} ({arch.gpu}: {arch.sms} SMs); Triton {versions.get('triton')}, "
             f"ptxas {versions.get('ptxas')}"]
    for config in dict.fromkeys(r.config for r in rows):
        lines += ["", config, header]
        for r in (r for r in rows if r.config == config):
            if r.error:
                lines.append(f"{r.id:4} {r.kernel[:22]:22} FAILED TO COMPILE: {r.error.splitlines()[0][:70]}")
                continue
            lines.append(" ".join(fn(r).ljust(w) if i < 3 else fn(r).rjust(w)
                                  for i, (_, w, fn) in enumerate(_COLUMNS)))
        lines += summary_lines(config, summary[config], arch.sms)
    return "\n".join(lines)


def summary_lines(config: str, s: dict, sms: int) -> list[str]:
    lowering = ", ".join(f"{k} {100 * v:.1f}%" for k, v in s["share_by_lowering"].items())
    return [f"  {s['variants']} variants ({s['spilling_variants']} spill"
            + (f", {s['failed_variants']} failed" if s["failed_variants"] else "") + f"), {s['launches']} launches, "
            f"{s['gflops']:.1f} GFLOP",
            f"  FLOPs by lowering: {lowering}",
            f"  FLOPs in spilling variants {100 * s['share_spilling']:.1f}%, in launches below {sms} programs "
            f"{100 * s['share_below_sms']:.1f}%, with scalar main-loop loads {100 * s['share_scalar_loads']:.1f}%",
            f"  FLOPs in main loops that wait after each MMA {100 * s['share_mma_waits']:.1f}%; "
            f"{s['autotuned_launches']} launches autotune on a GPU (rows show the plan they start from)"]


def to_csv(rows: list[Row]) -> str:
    buffer = io.StringIO()
    names = [f for f in asdict(rows[0])] if rows else []
    writer = csv.DictWriter(buffer, fieldnames=names)
    writer.writeheader()
    for r in rows:
        writer.writerow(asdict(r))
    return buffer.getvalue()


def baseline(rows: list[Row], summary: dict, target: str, versions: dict) -> dict:
    """What the CI check compares against: per variant its spills and lowering, per configuration
    its summary."""
    variants = {}
    for r in rows:
        entry = variants.setdefault(r.label, {"kernel": r.kernel, "spill_bytes": r.spill_bytes, "stack": r.stack,
                                              "registers": r.registers, "lowering": r.lowering,
                                              "operands": r.operands, "loads": r.loads, "mma_wait": r.mma_wait,
                                              "error": r.error, "configs": []})
        entry["configs"].append(r.config)
    versions = {k: v for k, v in versions.items() if k in ("triton", "ptxas")}
    return {"target": target, "versions": versions, "variants": dict(sorted(variants.items())),
            "summary": summary}


def compare_with_baseline(rows: list[Row], recorded: dict, versions: dict | None = None,
                          notes: list | None = None) -> list[str]:
    """The regressions against a recorded :func:`baseline`: a variant that fails to compile, spills
    more than recorded (or spills and is new), lost its tensor cores, or whose main loop now waits
    after each MMA where it overlapped them. Empty when none.

    Whether an MMA waits is ptxas's scheduling, which differs between releases (ptxas 12.8 of
    Triton 3.6 and 13.4 of 3.9 do not agree on every tile). When ``versions`` (this run's Triton
    and ptxas) differ from the baseline's, a changed wait is appended to ``notes``, naming both
    compilers, instead of counting as a regression; spills, lowering and compile errors count on
    every compiler."""
    problems = []
    known = recorded.get("variants", {})
    made_with = {k: v for k, v in (recorded.get("versions") or {}).items() if k in ("triton", "ptxas")}
    here = {k: v for k, v in (versions or {}).items() if k in ("triton", "ptxas")}
    other_compiler = bool(versions) and here != made_with
    compilers = (f"Triton {here.get('triton')} / ptxas {here.get('ptxas')} here, the baseline's Triton "
                 f"{made_with.get('triton')} / ptxas {made_with.get('ptxas')}")
    for r in {r.label: r for r in rows}.values():
        old = known.get(r.label)
        if r.error:
            problems.append(f"{r.label}: does not compile: {r.error.splitlines()[0][:200]}")
            continue
        if old is None:
            if r.spills:
                problems.append(f"{r.label}: new variant spills {r.spill_bytes} bytes")
            if r.dtype in ("fp16", "bf16") and r.lowering == "FMA":
                problems.append(f"{r.label}: new variant's tl.dot does not use tensor cores ({r.lowering})")
            continue
        if (r.spill_bytes or 0) > (old.get("spill_bytes") or 0):
            problems.append(f"{r.label}: spills {r.spill_bytes} bytes, baseline {old.get('spill_bytes') or 0}")
        if old.get("lowering") in TENSOR_CORE and r.lowering not in TENSOR_CORE:
            problems.append(f"{r.label}: tl.dot lowered to {r.lowering}, baseline {old['lowering']}")
        if old.get("mma_wait") == "overlapped" and r.mma_wait == "waits":
            if other_compiler:
                if notes is not None:
                    notes.append(f"{r.label}: the main loop waits after each MMA, the baseline overlapped ({compilers})")
            else:
                problems.append(f"{r.label}: the main loop now waits after each MMA, baseline overlapped")
    return problems


def write(out_dir: str, rows: list[Row], summary: dict, target: str, versions: dict, chart: bool = True) -> dict:
    """Write ``inspect.csv``, ``inspect.json`` and (with matplotlib) ``inspect.png`` into ``out_dir``."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {"csv": os.path.join(out_dir, "inspect.csv"), "json": os.path.join(out_dir, "inspect.json")}
    with open(paths["csv"], "w", newline="") as f:
        f.write(to_csv(rows))
    with open(paths["json"], "w") as f:
        json.dump({"target": target, "arch": asdict(ARCHS[target]), "versions": versions, "summary": summary,
                   "rows": [asdict(r) for r in rows]}, f, indent=1)
    if chart:
        from ..charts import inspect_chart

        fig = inspect_chart(summary, target)
        paths["chart"] = os.path.join(out_dir, "inspect.png")
        fig.savefig(paths["chart"], dpi=120)
    return paths

