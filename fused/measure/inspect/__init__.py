"""``facefuse inspect``: the code a GPU would run for our kernels, compiled on a machine without one.

    from fused.measure.inspect import Config, inspect_models
    found = inspect_models([Config("retinaface", (640, 640), batch=1, dtype="float16")])
    print(found.table())                      # one row per variant: registers, spills, wgmma, loads...
    row = found.find("conv2d_bias_act")[0]    # or found.row("v03")
    print(found.artifact(row, "sass"))        # also "ttir", "ttgir", "ptx", "ptxas_log"

How it works, in three steps (one module each):

1. :mod:`.dryrun` runs the fused model's forward on the ``meta`` device at the real shapes, with
   :func:`fused.runtime.recording_launches` recording every kernel launch instead of running it;
   the launchers take their GPU decisions (tiles, grids, warps).
2. :mod:`.specialize` derives from each launch's arguments the specialisation ``JITFunction.run``
   would compile (constexprs, integers equal to 1, 16-divisible integers and aligned pointers);
   identical variants are merged.
3. :mod:`.compile` compiles each variant with ``triton.compile`` for the target (``sm_90a`` by
   default, also ``sm_80`` and ``sm_100a``), caches the products on disk and :mod:`.analyse` reads
   them: registers and spills (``ptxas -v``), shared memory, how each ``tl.dot`` lowered, how the
   main loop loads, the SASS opcode mix. :mod:`.report` adds occupancy (:mod:`.arch`), launches,
   programs against SMs and FLOP shares.

Steps 1-3 run in a worker process (:mod:`.worker`) with ``TRITON_INTERPRET=0``: a process that
imported ``fused`` on a CPU holds interpreted kernels, which cannot be compiled. So
:func:`inspect_models` works from any process, a notebook included.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from . import report
from .arch import ARCHS, Arch, occupancy
from .compile import DEFAULT_TARGET, TARGETS, artifact, cache_dir
from .dryrun import DEFAULT_CONFIGS, Config
from .report import Row, compare_with_baseline

__all__ = ["ARCHS", "Arch", "Config", "DEFAULT_CONFIGS", "DEFAULT_TARGET", "Inspection", "Row", "TARGETS",
           "BASELINE_PATH", "cache_dir", "compare_with_baseline", "default_configs", "inspect_models", "occupancy",
           "record_launches", "run_worker", "compile_variants", "changed", "artifact"]

#: The recorded baseline the CI check compares against (``facefuse inspect --write-baseline``).
BASELINE_PATH = Path(__file__).resolve().parents[3] / "tests" / "data" / "inspect_baseline.json"
#: The dtypes of the default inspection and of the baseline.
DTYPES = ("float16", "bfloat16", "float32")


#: The float32 precisions of the default inspection and the baseline: TF32, what ``fuse()`` does
#: on an H100 with PyTorch's defaults (``precision="auto"``), and exact products (``"ieee"``).
PRECISIONS = ("tf32", "ieee")


def default_configs(dtypes=DTYPES, *, memory_format: str = "nchw", precisions=PRECISIONS) -> list[Config]:
    """The real shapes of both models (:data:`DEFAULT_CONFIGS`) in each of ``dtypes``, float32 in
    each of ``precisions`` (:data:`PRECISIONS`)."""
    return [Config(c["model"], tuple(c["size"]), c["batch"], dtype, memory_format, precision)
            for dtype in dtypes for precision in (precisions if dtype == "float32" else ("ieee",))
            for c in DEFAULT_CONFIGS]


def run_worker(request: dict, *, progress: bool = True, timeout: float | None = None) -> dict:
    """Run :mod:`.worker` on ``request`` in a fresh process with ``TRITON_INTERPRET=0``; its result.

    Progress lines go to this process's stderr unless ``progress`` is False.
    """
    root = Path(__file__).resolve().parents[3]
    env = dict(os.environ)
    env["TRITON_INTERPRET"] = "0"
    env["PYTHONPATH"] = os.pathsep.join([str(root)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.setdefault("PYTHONWARNINGS", "ignore::UserWarning")
    with tempfile.TemporaryDirectory(prefix="facefuse-inspect-") as tmp:
        req, res = os.path.join(tmp, "request.json"), os.path.join(tmp, "result.json")
        with open(req, "w") as f:
            json.dump({**request, "quiet": not progress}, f)
        done = subprocess.run([sys.executable, "-m", "fused.measure.inspect.worker", req, res], cwd=root, env=env,
                              stdout=subprocess.PIPE, stderr=None if progress else subprocess.PIPE, text=True,
                              timeout=timeout)
        if done.returncode != 0 or not os.path.exists(res):
            detail = (done.stderr or "")[-3000:] if not progress else "(see the messages above)"
            raise RuntimeError(f"the facefuse inspect worker failed (exit {done.returncode}): {detail}")
        with open(res) as f:
            return json.load(f)


@dataclass
class Inspection:
    """What :func:`inspect_models` found: the worker's result, one :class:`Row` per (configuration,
    variant), and per configuration its summary (:func:`.report.summarise`)."""

    result: dict
    rows: list[Row] = field(default_factory=list)
    summary: dict = field(default_factory=dict)

    @classmethod
    def from_result(cls, result: dict) -> "Inspection":
        rows = report.build_rows(result)
        return cls(result, rows, report.summarise(rows))

    @property
    def target(self) -> str:
        return self.result["target"]

    @property
    def arch(self) -> Arch:
        return ARCHS[self.target]

    @property
    def versions(self) -> dict:
        return self.result["versions"]

    def table(self) -> str:
        """The terminal table (fits 120 columns)."""
        return report.table(self.rows, self.summary, self.target, self.versions)

    def row(self, row_id: str, config: str | None = None) -> Row:
        """The row of variant ``row_id`` (``"v03"``), in ``config`` when given (else its first)."""
        for r in self.rows:
            if r.id == row_id and (config is None or r.config == config):
                return r
        raise KeyError(f"no variant {row_id!r}" + (f" in {config!r}" if config else ""))

    def find(self, kernel: str) -> list[Row]:
        """Rows whose kernel name contains ``kernel`` (one per configuration and variant)."""
        return [r for r in self.rows if kernel in r.kernel]

    def variant(self, row: Row) -> dict:
        """The variant (kernel, specialisation, options) a row compiled, as JSON."""
        return next(v["variant"] for v in self.result["variants"].values() if v["analysis"].get("key") == row.key)

    def artifact(self, row: Row, name: str) -> str:
        """One compiler product of a row's variant from the cache: ``ttir``, ``ttgir``, ``ptx``,
        ``sass`` or ``ptxas_log``."""
        from .compile import artifact

        return artifact(row.key, name, cache=self.result.get("cache"))

    def baseline(self) -> dict:
        return report.baseline(self.rows, self.summary, self.target, self.versions)

    def save(self, out_dir: str, *, chart: bool = True) -> dict:
        """Write ``inspect.csv``, ``inspect.json`` and ``inspect.png`` into ``out_dir``; their paths."""
        return report.write(out_dir, self.rows, self.summary, self.target, self.versions, chart=chart)


def inspect_models(configs=None, *, target: str = DEFAULT_TARGET, jobs: int | None = None, cache=None,
                   progress: bool = True, timeout: float | None = None) -> Inspection:
    """Dry-run each :class:`Config` (default: :func:`default_configs`), compile every distinct
    variant for ``target`` with ``jobs`` processes (default: one per CPU), reading and filling the
    disk cache (``cache``, default :func:`cache_dir`); the :class:`Inspection`."""
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; choose from {', '.join(TARGETS)}")
    configs = default_configs() if configs is None else list(configs)
    request = {"configs": [c.to_json() for c in configs], "target": target, "jobs": jobs,
               "cache": None if cache is None else str(cache)}
    result = run_worker(request, progress=progress, timeout=timeout)
    result["cache"] = None if cache is None else str(cache)
    return Inspection.from_result(result)


def record_launches(configs, *, progress: bool = False, timeout: float | None = None) -> dict[str, list[dict]]:
    """The dry runs only (nothing compiled): per configuration name, its launches in order, each
    with ``kernel``, ``block``, ``grid``, ``args`` (described), ``variant``, ``flops`` and
    ``candidates`` (the configurations an autotuned launch times on a GPU, the recorded plan
    first; None for a launch that does not autotune)."""
    result = run_worker({"configs": [c.to_json() for c in configs], "compile": False}, progress=progress,
                        timeout=timeout)
    return {entry["name"]: entry["launches"] for entry in result["configs"]}


def compile_variants(variants, *, target: str = DEFAULT_TARGET, jobs: int | None = None, cache=None,
                     progress: bool = False, timeout: float | None = None) -> list[dict]:
    """Compile variants given as such (``Inspection.variant(row)``, possibly :func:`changed`) for
    ``target``; one analysis per variant (the fields of :func:`.analyse.analyse`, ``key`` for
    :func:`artifact`, ``hash``, or ``error``). For experiments: what do more warps, another tile, a
    width divisible by 16 do to this kernel?"""
    variants = list(variants)
    result = run_worker({"variants": variants, "target": target, "jobs": jobs,
                         "cache": None if cache is None else str(cache)}, progress=progress, timeout=timeout)
    return [result["variants"][f"given{i}"]["analysis"] for i in range(len(variants))]


def changed(variant: dict, *, constexprs: dict | None = None, options: dict | None = None,
            divisible: dict | None = None) -> dict:
    """A copy of ``variant`` with some constexprs (``{"BLOCK_M": 64}``), launch options
    (``{"num_warps": 8}``) or divisibility marks (``{"W": True}``: as if W were a multiple of 16)
    changed."""
    spec = variant["spec"]
    new_divisible = [n for n in spec["divisible"] if (divisible or {}).get(n, True)]
    new_divisible += [n for n, on in (divisible or {}).items() if on and n not in new_divisible]
    for name in [*(constexprs or {}), *(divisible or {})]:
        if name not in spec["signature"]:
            raise KeyError(f"{variant['kernel']} has no parameter {name!r}")
    return {"kernel": variant["kernel"],
            "spec": {**spec, "constexprs": {**spec["constexprs"], **(constexprs or {})}, "divisible": new_divisible},
            "options": {**variant["options"], **(options or {})}}
