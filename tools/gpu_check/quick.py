"""``python -m tools.gpu_check --quick``: the headline answer in one call (at most 8 minutes).

The plan (:func:`quick_plan`), in priority order, every step with its own time limit inside
``--budget`` (default :data:`QUICK_BUDGET` seconds); what does not fit is marked "not run":

1. ``quick-environment``: GPU, driver, clocks, versions, the compiler (``environment.json``).
2. ``quick-correctness``: every kernel family (two shapes each) and every whole model (RetinaFace
   mobile0.25 and ResNet-50, ArcFace IR-18 with and without SE) on CUDA in float16, bfloat16,
   float32 TF32 and float32 ieee, NCHW and channels_last, against float64 with the one tolerance
   policy. Before every run the caching allocator's free memory is filled with 0xFF bytes (NaN in
   every float dtype), so an output element no kernel writes fails. It stops starting cases at its
   own budget and lists the rest as "not run" (``correctness.json``, written after every group).
3. ``quick-model-*``: whole-model timings with CUDA graphs on both sides (``facefuse bench`` of
   the model families): mobile0.25 640x640 at batch 1 and 16, ResNet-50 640x640 at batch 1,
   ArcFace IR-18 at batch 64 with and without SE. Fused with the plan configs
   (``FACEFUSE_AUTOTUNE=0``: no autotuner timing) against eager NCHW, eager channels_last and
   ``torch.compile`` in its default mode; each row records the compile's cost (``compile_s``).
4. ``quick-family-*``: the per-family rows behind the targets (conv_dw, depthwise,
   squeeze-excite, conv+BN+act) at batch 1 and 16, the same way.
5. ``quick-memcheck``: ``compute-sanitizer --tool memcheck`` of a tiny run of every family.
6. ``quick-tuned-mobile0.25-b1``: mobile0.25 at batch 1 again with ``torch.compile(mode="max-autotune")``
   and the fused autotuner on, where the budget still allows (max-autotune's compile alone takes minutes).

Nothing that needs no GPU runs here: the interpreter tests belong to CI. Run the two commands of
this module directly only to debug a step::

    python -m tools.gpu_check.quick environment --out env.json
    python -m tools.gpu_check.quick correctness --out correctness.json --budget 100
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

from .steps import PLOT_MODULES, SANITIZER_EXIT, Machine, Options, Step, write_json

#: The whole call's default budget: 8 minutes of the 10 a device call allows, leaving the rest
#: for the machine's start, ``pip install -e .`` and the transfer of the bundle.
QUICK_BUDGET = 480

#: Whole-model timing steps: (name, family, RetinaFace variant or None, batches, estimate s).
QUICK_MODELS = [
    ("mobile0.25-b1-16", "retinaface_model", "retinaface", (1, 16), 75),
    ("arcface-b64", "arcface_model", None, (64,), 60),
    ("resnet50-b1", "retinaface_model", "retinaface-resnet50", (1,), 50),
]
#: The families behind the targets, in the order their steps run (fewest cases first).
QUICK_FAMILIES = [
    ("conv_dw", 35),
    ("depthwise", 25),
    ("squeeze_excite", 30),
    ("conv_bn", 60),
]
#: Seconds of the correctness step's own budget, and of its time limit.
CORRECTNESS_BUDGET = 100
#: Cases per kernel family in the correctness step (the first and the last distinct shape).
SHAPES_PER_FAMILY = 2


def quick_plan(out: Path, machine: Machine, options: Options | None = None) -> list[Step]:
    """The steps of ``--quick``, in the order they run."""
    o = options or Options()
    py = sys.executable
    out = Path(out).resolve()
    me = "tools.gpu_check.quick"
    cuda_env = {"TRITON_INTERPRET": None}
    steps = [
        Step("quick-environment", "environment", "environment", [py, "-m", me, "environment", "--out",
                                                                   str(out / "environment.json")],
             timeout=60, estimate=10, env=cuda_env, cuda=False, out="environment.json",
             notes=["GPU, driver, clocks, CUDA, torch, Triton, numpy and ptxas versions"]),
        Step("quick-correctness", "correctness", "correctness",
             [py, "-m", me, "correctness", "--out", str(out / "correctness.json"), "--budget", str(CORRECTNESS_BUDGET)],
             timeout=CORRECTNESS_BUDGET + 60, estimate=CORRECTNESS_BUDGET + 20, env=cuda_env, out="correctness.json",
             notes=["every family (two shapes) and every whole model, fp16/bf16/fp32 TF32/fp32 ieee, NCHW and "
                    "channels_last, poisoned outputs, against float64"]),
    ]

    def bench(name, family, model, batches, estimate, *, mode, tuned):
        argv = [py, "-m", "fused", "bench", "--family", family, *(["--model", model] if model else []),
                "--batch", *map(str, batches), "--device", "cuda", "--dtype", o.dtype, "--cuda-graphs",
                "--compile-mode", mode, "--out", str(out / "bench" / name)]
        argv += ["--repeats", str(o.repeats)] if o.repeats else []
        argv += ["--warmup", str(o.warmup)] if o.warmup is not None else []
        env = dict(cuda_env) if tuned else {**cuda_env, "FACEFUSE_AUTOTUNE": "0"}
        configs = "the fused autotuner on" if tuned else "the plan configs (FACEFUSE_AUTOTUNE=0)"
        return Step(name, "bench", "bench", argv, timeout=min(max(2 * estimate, 120), 300), estimate=estimate, env=env,
                    modules=PLOT_MODULES, out=f"bench/{name}",
                    notes=[f"fused with {configs} against eager NCHW, eager channels_last and torch.compile "
                           f"(mode {mode}); CUDA graphs on both sides"])

    for name, family, model, batches, estimate in QUICK_MODELS:
        steps.append(bench(f"quick-model-{name}-plan", family, model, batches, estimate, mode="default", tuned=False))
    for family, estimate in QUICK_FAMILIES:
        batches = (1, 16)
        steps.append(bench(f"quick-family-{family}-b1-16-plan", family, "retinaface" if family != "squeeze_excite" else None,
                           batches, estimate, mode="default", tuned=False))
    tool = machine.tools.get("compute-sanitizer") or "compute-sanitizer"
    steps.append(Step(
        "quick-memcheck", "sanitizer", "sanitizer",
        [tool, "--tool", "memcheck", "--error-exitcode", str(SANITIZER_EXIT), "--print-limit", "100",
         py, "-m", "tools.sanitize_run", "--out", str(out / "sanitizer" / "memcheck.json")],
        timeout=240, estimate=150, env={"PYTORCH_NO_CUDA_MEMORY_CACHING": "1", **cuda_env},
        tools=("compute-sanitizer",), out="sanitizer/memcheck.json",
        notes=["out-of-bounds and misaligned accesses of every kernel family, tiny inputs"]))
    family, model = QUICK_MODELS[0][1:3]
    steps.append(bench("quick-tuned-mobile0.25-b1", family, model, (1,), 240, mode="max-autotune", tuned=True))
    return steps


def check_quick_plan(steps: list[Step], budget: float) -> list[str]:
    """Problems of a quick plan against ``budget``: a step whose time limit is longer than the
    budget, or steps that must run (environment and correctness) not fitting it."""
    problems = [f"{s.name}: its time limit ({s.timeout} s) is longer than --budget ({budget:g} s)"
                for s in steps if s.timeout > budget and s.kind in ("environment", "correctness")]
    first = sum(s.estimate for s in steps if s.kind in ("environment", "correctness"))
    if first > budget:
        problems.append(f"the environment and correctness steps need about {first} s, more than --budget ({budget:g} s)")
    return problems


def fits(steps: list[Step], budget: float) -> dict[str, str]:
    """step → "fits" or "not run" by the estimates, in order (what a run would reach)."""
    left, found = budget, {}
    for s in steps:
        if s.estimate <= left:
            found[s.name] = "fits"
            left -= s.estimate
        else:
            found[s.name] = "not run"
    return found


# --------------------------------------------------------------------------------------------
# Step 1: the environment
# --------------------------------------------------------------------------------------------


def _run(argv: list[str]) -> str | None:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=20, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def ptxas_version() -> dict:
    """The ptxas Triton compiles with (its bundled one, or ``TRITON_PTXAS_PATH``), and its version."""
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        ptxas = get_ptxas()
        path = ptxas.path if hasattr(ptxas, "path") else ptxas[0]
        version = ptxas.version if hasattr(ptxas, "version") else ptxas[1]
        return {"ptxas": str(path), "ptxas_version": str(version)}
    except Exception as exc:  # the layout of Triton's backend moves between releases
        return {"ptxas": None, "ptxas_version": None, "ptxas_error": f"{type(exc).__name__}: {exc}"}


def environment() -> dict:
    import numpy
    import torch
    import triton

    from fused.measure.environment import describe

    info = describe("cuda" if torch.cuda.is_available() else "cpu")
    info.update(numpy=numpy.__version__, cudnn=torch.backends.cudnn.version(), platform=platform.platform(),
                **ptxas_version())
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(capability=f"{props.major}.{props.minor}", sms=props.multi_processor_count,
                    memory_gib=round(props.total_memory / 2**30, 1))
    smi = shutil.which("nvidia-smi")
    if smi:
        fields = "name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,clocks.max.mem,power.limit,temperature.gpu,persistence_mode"
        text = _run([smi, f"--query-gpu={fields}", "--format=csv,noheader"])
        info["nvidia_smi"] = dict(zip(fields.split(","), [v.strip() for v in text.splitlines()[0].split(",")])) if text else None
    info["triton_version"] = triton.__version__
    return info


# --------------------------------------------------------------------------------------------
# Step 2: correctness on CUDA
# --------------------------------------------------------------------------------------------

#: name → (dtype name, torch.backends.cudnn.allow_tf32, tolerance dtype name), in the order they run.
MODES = {
    "fp16": ("float16", True, "float16"),
    "bf16": ("bfloat16", True, "bfloat16"),
    "tf32": ("float32", True, "tf32"),
    "fp32": ("float32", False, "float32"),
}


def poison(device) -> None:
    """Fill the caching allocator's free memory with 0xFF bytes: NaN in float16, bfloat16 and
    float32, so an output element that no kernel writes is NaN, never a stale right value."""
    import torch

    if torch.device(device).type != "cuda":
        return  # CPU tensors (a test in the interpreter): nothing cached to poison
    torch.cuda.synchronize(device)
    blocks = [torch.empty(256 * 2**20, dtype=torch.uint8, device=device)]
    blocks += [torch.empty(n, dtype=torch.uint8, device=device) for n in [2**20 - 512] * 8 + [2**17] * 64 + [4096] * 64]
    for b in blocks:
        b.fill_(255)
    torch.cuda.synchronize(device)
    del blocks


def _pick(cases: list, n: int) -> list:
    if len(cases) <= n:
        return list(cases)
    return [cases[round(i * (len(cases) - 1) / (n - 1))] for i in range(n)] if n > 1 else cases[:1]


def family_case_runs(device, deadline: float, say, record) -> None:
    """Every kernel family's cases (two shapes each) in every mode and layout; ``record`` each."""
    import torch

    from fused import recording
    from fused.measure import benchmark
    from fused.measure.tensors import compare, map_tensors

    for mode, (dtype_name, tf32, tol) in MODES.items():
        dtype = getattr(torch, dtype_name)
        torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32
        for family in benchmark.families():
            if family.endswith("_model"):
                continue  # the whole models run below, with their own checks
            what = f"{family} {mode}"
            if time.monotonic() > deadline:
                record({"what": what, "status": "not run", "reason": "the step's budget ran out"})
                continue
            try:
                cases = _pick(benchmark.family_cases(family, retinaface=("retinaface", "retinaface-resnet50"), size=64,
                                                     batches=(2,), dtype=dtype, device=device), SHAPES_PER_FAMILY)
            except Exception as exc:
                record({"what": what, "status": "failed", "error": f"building the cases: {type(exc).__name__}: {exc}"})
                continue
            for case in cases:
                for layout in ("nchw", "channels_last"):
                    name = f"{case.name} {mode} {layout}"
                    if time.monotonic() > deadline:
                        record({"what": name, "status": "not run", "reason": "the step's budget ran out"})
                        continue
                    x = map_tensors(case.x, lambda t: t.to(device))
                    if layout == "channels_last":
                        x = map_tensors(x, lambda t: t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t)
                    try:
                        with torch.no_grad():
                            expected = benchmark.float64_reference(case)
                        poison(device)
                        with torch.inference_mode(), recording() as rec:
                            actual = case.fused_fn(x)
                        if torch.device(device).type == "cuda":
                            torch.cuda.synchronize(device)
                        actual = map_tensors(actual, lambda t: t.cpu())
                        err, message = compare(actual, expected, reduction_length=case.reduction_length, what=name,
                                               dtype=tol if tol == "tf32" else getattr(torch, tol))
                        problem = message or (f"fell back: {rec.fallbacks()}" if rec.fallbacks() else None) or (
                            None if rec.kernels() else "no Triton kernel ran")
                        record({"what": name, "status": "failed" if problem else "passed", "max_abs_error": err,
                                "kernels": sorted(rec.kernels()), **({"error": problem} if problem else {})})
                    except Exception as exc:
                        record({"what": name, "status": "failed", "error": f"{type(exc).__name__}: {str(exc)[:300]}"})
            say(f"[correctness] {what} done")


def model_runs(device, deadline: float, say, record) -> None:
    """Every whole model (tests/fused/test_gpu_matrix.py's check) in every mode and layout."""
    from tests.fused.test_gpu_matrix import LAYOUTS, MODELS, check_fused_model

    for mode in ("fp16", "bf16", "tf32", "fp32"):
        for name in MODELS:
            for layout in LAYOUTS:
                what = f"model {name} {mode} {layout}"
                if time.monotonic() > deadline:
                    record({"what": what, "status": "not run", "reason": "the step's budget ran out"})
                    continue
                try:
                    poison(device)
                    check_fused_model(name, mode, layout, device)
                    record({"what": what, "status": "passed"})
                except Exception as exc:  # AssertionError included: the message says what differed
                    record({"what": what, "status": "failed", "error": f"{type(exc).__name__}: {str(exc)[:300]}"})
            say(f"[correctness] models {mode} done")


def correctness(out: Path, budget: float, say=print) -> int:
    """Run the correctness step within ``budget`` seconds; write ``out`` after every group.
    Exit status 0 when every case that ran passed (cases not run are listed, not failures)."""
    import torch

    from fused import runtime

    if not torch.cuda.is_available() or runtime.INTERPRETED:
        say("correctness: needs a CUDA device with compiled Triton kernels (TRITON_INTERPRET unset)")
        return 2
    device = torch.device("cuda")
    started = time.monotonic()
    # the whole models first, within half the budget; then the families (they share compiled kernels)
    results: list[dict] = []

    def record(entry: dict) -> None:
        results.append(entry)
        counts = {}
        for r in results:
            counts[r["status"]] = counts.get(r["status"], 0) + 1
        write_json(out, {"kind": "facefuse-gpu-check-correctness", "budget_s": budget,
                         "elapsed_s": round(time.monotonic() - started, 1), "counts": counts, "cases": results})

    model_runs(device, started + budget / 2, say, record)
    family_case_runs(device, started + budget, say, record)
    counts = {}
    for r in results:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    write_json(out, {"kind": "facefuse-gpu-check-correctness", "budget_s": budget, "finished": True,
                     "elapsed_s": round(time.monotonic() - started, 1), "counts": counts, "cases": results})
    say(f"[correctness] {counts}")
    return 1 if counts.get("failed") else 0


def read_correctness(path: Path) -> dict:
    """Counts and failing cases of a ``correctness.json``, and a ``problem`` when any case failed."""
    data = json.loads(Path(path).read_text())
    counts = data.get("counts", {})
    failing = [f"{c['what']}: {c.get('error', '')}"[:200] for c in data.get("cases", []) if c["status"] == "failed"]
    found = {"correctness": counts, "finished": bool(data.get("finished")), "failing": failing[:20]}
    if failing:
        found["problem"] = f"{len(failing)} cases failed correctness"
    return found


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.gpu_check.quick", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    e = sub.add_parser("environment", help="write GPU, driver, clocks and versions as JSON")
    e.add_argument("--out", required=True, metavar="FILE")
    c = sub.add_parser("correctness", help="every family and whole model on CUDA against float64")
    c.add_argument("--out", required=True, metavar="FILE")
    c.add_argument("--budget", type=float, default=CORRECTNESS_BUDGET, metavar="SECONDS")
    args = parser.parse_args(argv)
    if args.what == "environment":
        info = environment()
        write_json(Path(args.out), info)
        print(json.dumps(info, indent=2, default=str))
        return 0
    if not math.isfinite(args.budget) or args.budget <= 0:
        parser.error("--budget: give a positive number of seconds")
    return correctness(Path(args.out), args.budget, say=lambda line: print(line, flush=True))


if __name__ == "__main__":
    sys.exit(main())
