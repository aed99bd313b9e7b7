"""``facefuse gpu-check``: every GPU measurement of the project as one prepared, resumable command.

    python -m fused gpu-check --dry-run --out /tmp/gpu-check          # any machine: plan and check, time nothing
    python -m fused gpu-check --out /tmp/gpu-check --stages tests,sanitizer --bundle $OUT/gpu-check.tar.gz
    python -m fused gpu-check --out /tmp/gpu-check --from gpu-check.tar.gz --stages bench --bundle ...

Five stages, each a list of steps; a step is one command with its own timeout (at most
:data:`MAX_STEP_SECONDS`), its log, and a result file ``steps/<step>.json`` in the output folder:

1. ``tests``: the test suite on CUDA tensors (the tests that take the ``device`` fixture or carry
   the ``gpu`` marker, :mod:`fused.measure.pytest_cuda`: float32 exact and TF32, float16,
   bfloat16, NCHW and channels_last), then the rest of the suite under ``TRITON_INTERPRET=1``
   (those tests build CPU tensors), each with a JUnit XML file;
2. ``sanitizer``: ``compute-sanitizer`` memcheck and racecheck around
   :mod:`fused.measure.sanitize_run` (every kernel family once, small inputs);
3. ``bench``: ``facefuse bench --cuda-graphs --record`` of every family, split by family, model
   and batch so each step fits its timeout, against eager NCHW, eager channels_last and
   ``torch.compile(mode="max-autotune")``;
4. ``profile``: ``facefuse profile --device cuda --record`` of each model, with and without CUDA
   graphs, one of them with ``--trace``;
5. ``readme``: the README's results table regenerated from ``results/``.

``summary.json`` and ``summary.md`` say what passed and failed and, for every performance target
(:data:`TARGETS`), the measured ratio and whether it is met. Steps run in priority order (the
targets' measurements first); ``--budget`` is the wall-clock time of the whole call: a step whose
estimate does not fit in what is left is not started, and a step cut short by the budget is
marked ``interrupted`` and runs again on ``--resume``. ``--resume`` keeps every step whose
result file says it finished (passed, failed or timed out; ``--retry`` runs failed and timed-out
steps again), except the ``readme`` step, which is cheap and always runs. ``--from`` seeds the output folder from an earlier run's folder or bundle, so a
fresh machine picks up where the last call stopped. ``--bundle FILE.tar.gz`` packs the output
folder into one file after every step.

Nothing is installed: commands run as ``python -m ...`` from the project folder with it on
``PYTHONPATH``. A step that needs a missing package or tool is skipped, saying which.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import datetime as _dt
import io
import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STAGES = ("tests", "sanitizer", "bench", "profile", "readme")
#: The longest any step may run (the GPU machine allows 10-minute calls).
MAX_STEP_SECONDS = 470
DEFAULT_BUDGET = 540
#: A finished step; ``--resume`` keeps it (``--retry`` reruns the failed and timed-out ones).
FINISHED = ("passed", "failed", "timeout")
SANITIZER_EXIT = 86

#: Python modules each kind of step needs (checked before it starts), and the optional ones.
TEST_MODULES = ("pytest", "hypothesis")
PLOT_MODULES = ("matplotlib", "numpy")
LESSON_MODULES = ("nbclient", "nbformat", "ipykernel")
OPTIONAL_MODULES = ("xdist", "pytest_timeout")


# --------------------------------------------------------------------------------------------
# Steps and the plan
# --------------------------------------------------------------------------------------------


@dataclass
class Step:
    """One command of the plan. ``kind`` says how it is checked and how its output is read."""

    name: str
    stage: str
    kind: str  # "pytest", "sanitizer", "bench", "profile", "readme"
    argv: list[str]
    timeout: int
    estimate: int
    env: dict = field(default_factory=dict)
    modules: tuple[str, ...] = ()
    tools: tuple[str, ...] = ()
    cuda: bool = True
    out: str = ""  # the step's output folder or file, relative to the output folder
    notes: list[str] = field(default_factory=list)

    def command(self) -> str:
        """The command as a shell line (``env -u NAME`` for a variable the step removes)."""
        unset = [f"-u {k}" for k, v in self.env.items() if v is None]
        env = [f"{k}={shlex.quote(v)}" for k, v in self.env.items() if v is not None]
        prefix = " ".join((["env", *unset] if unset else []) + env)
        return (prefix + " " if prefix else "") + shlex.join(self.argv)


@dataclass
class Machine:
    """What this machine has: CUDA, the GPU, packages and tools."""

    cuda: bool
    gpu: str | None
    python: str
    torch: str
    triton: str | None
    modules: dict[str, bool]
    tools: dict[str, str | None]

    def missing_modules(self, names) -> list[str]:
        return [n for n in names if not self.modules.get(n, False)]


def _has_module(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def find_sanitizer() -> str | None:
    """``compute-sanitizer`` on PATH, else under ``$CUDA_HOME/bin`` or ``/usr/local/cuda*/bin``."""
    found = shutil.which("compute-sanitizer")
    if found:
        return found
    homes = [os.environ.get("CUDA_HOME"), "/usr/local/cuda", *sorted(map(str, Path("/usr/local").glob("cuda-*")), reverse=True)]
    for home in filter(None, homes):
        path = Path(home) / "bin" / "compute-sanitizer"
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    return None


def probe() -> Machine:
    import platform

    import torch

    from fused import runtime

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    cuda = torch.cuda.is_available() and not runtime.INTERPRETED
    modules = {m: _has_module(m) for m in (*TEST_MODULES, *PLOT_MODULES, *LESSON_MODULES, *OPTIONAL_MODULES)}
    tools = {"compute-sanitizer": find_sanitizer(), "nvidia-smi": shutil.which("nvidia-smi")}
    return Machine(cuda=cuda, gpu=torch.cuda.get_device_name() if cuda else None, python=platform.python_version(),
                   torch=torch.__version__, triton=triton_version, modules=modules, tools=tools)


#: Bench steps in priority order (the targets' rows first): (family, RetinaFace variant for
#: ``--model`` or None where the family's models are fixed, batches, estimated seconds).
BENCH_PLAN = [
    ("conv_bn", "retinaface", (1,), 300),
    ("conv_dw", "retinaface", (1,), 180),
    ("squeeze_excite", None, (1, 64), 180),
    ("retinaface_model", "retinaface", (1,), 300),
    ("arcface_model", None, (1, 64), 300),
    ("conv_bn", "retinaface", (16,), 300),
    ("conv_dw", "retinaface", (16,), 180),
    ("retinaface_model", "retinaface", (16,), 240),
    ("conv_bn", "retinaface-resnet50", (1,), 300),
    ("conv_bn", "retinaface-resnet50", (16,), 300),
    ("ssh", "all", (1, 16), 240),
    ("fpn", "all", (1, 16), 150),
    ("heads", "retinaface", (1, 16), 300),
    ("heads", "retinaface-resnet50", (1, 16), 300),
    ("irblock", None, (1,), 300),
    ("irblock", None, (64,), 300),
    ("bottleneck", None, (1,), 240),
    ("bottleneck", None, (16,), 240),
    ("retinaface_model", "retinaface-resnet50", (1,), 400),
    ("retinaface_model", "retinaface-resnet50", (16,), 400),
]

#: Profile steps in priority order: (model, batch, CUDA graphs, write a trace, estimated seconds).
PROFILE_PLAN = [
    ("retinaface", 1, True, False, 240),
    ("retinaface", 1, False, True, 240),
    ("arcface", 64, True, False, 180),
    ("arcface", 1, True, False, 180),
    ("arcface", 1, False, False, 180),
    ("arcface-se", 1, True, False, 180),
    ("arcface-se", 1, False, False, 180),
    ("arcface-se", 64, True, False, 180),
    ("retinaface", 16, True, False, 240),
    ("retinaface-resnet50", 1, True, False, 300),
    ("retinaface-resnet50", 1, False, False, 300),
    ("retinaface-resnet50", 16, True, False, 300),
]

_SHORT = {"retinaface": "mobile0.25", "retinaface-resnet50": "resnet50", "all": "both"}


@dataclass
class Options:
    """What the plan depends on besides the machine."""

    hypothesis: str = "ci"
    compile_mode: str = "max-autotune"
    repeats: int | None = None
    warmup: int | None = None
    dtype: str = "float16"
    workers: int = 4


def plan(out: Path, machine: Machine, stages=STAGES, options: Options | None = None) -> list[Step]:
    """Every step of ``stages``, in the order they run, for this machine."""
    o = options or Options()
    py = sys.executable
    out = Path(out).resolve()
    steps: list[Step] = []

    if "tests" in stages:
        common = ["-v", "-rfEs", "-p", "no:cacheprovider"]
        notes = []
        if machine.modules.get("pytest_timeout"):
            common += ["--timeout", "300"]
        else:
            notes.append("pytest-timeout is missing: no per-test timeout (the step's timeout still holds)")
        xdist = machine.modules.get("xdist")
        if not xdist:
            notes.append("pytest-xdist is missing: tests run in one process")
        workers = ["-n", str(o.workers)] if xdist else []
        cuda_env = {"FACEFUSE_HYPOTHESIS": o.hypothesis, "TRITON_INTERPRET": None}
        steps.append(Step(
            "tests-cuda", "tests", "pytest",
            [py, "-m", "pytest", "-p", "fused.measure.pytest_cuda", "tests", "-m", "not lesson",
             "--ignore", "tests/fused/test_gpu_matrix.py", *common, *workers, "--junitxml", str(out / "tests" / "cuda.xml")],
            timeout=MAX_STEP_SECONDS, estimate=240, env=cuda_env, modules=TEST_MODULES, out="tests/cuda.xml",
            notes=notes + ["the tests that take the `device` fixture or carry the `gpu` marker, on CUDA tensors: "
                           "kernel properties in float32 (exact and TF32), float16 and bfloat16, NCHW and channels_last"]))
        steps.append(Step(
            "tests-cuda-models", "tests", "pytest",
            [py, "-m", "pytest", "tests/fused/test_gpu_matrix.py", *common, *workers,
             "--junitxml", str(out / "tests" / "cuda-models.xml")],
            timeout=MAX_STEP_SECONDS, estimate=180, env=cuda_env, modules=TEST_MODULES, out="tests/cuda-models.xml",
            notes=notes + ["every fused model (RetinaFace both backbones, ArcFace IR-18 with and without SE) on CUDA "
                           "in float32 exact and TF32, float16, bfloat16, NCHW and channels_last"]))
        interp_notes = notes + ["the rest of the suite (CPU tensors) in Triton's interpreter, as CI runs it, on this "
                                "machine's Python, torch and Triton; runs after the sanitizer stage (less urgent)"]
        ignore = []
        missing_lessons = machine.missing_modules(LESSON_MODULES)
        if missing_lessons:
            ignore = ["--ignore", "tests/lessons/test_lessons.py"]
            interp_notes.append(f"lesson tests skipped: {', '.join(missing_lessons)} missing")
        interpreter = Step(
            "tests-interpreter", "tests", "pytest",
            [py, "-m", "pytest", "tests", "-m", "not gpu", *ignore, *common, *(["-n", str(2 * o.workers)] if xdist else []),
             "--junitxml", str(out / "tests" / "interpreter.xml")],
            timeout=MAX_STEP_SECONDS, estimate=240, env={"FACEFUSE_HYPOTHESIS": o.hypothesis, "TRITON_INTERPRET": "1"},
            modules=TEST_MODULES, cuda=False, out="tests/interpreter.xml", notes=interp_notes)
    else:
        interpreter = None

    if "sanitizer" in stages:
        tool = machine.tools.get("compute-sanitizer") or "compute-sanitizer"
        for name, why in (
            ("memcheck", "out-of-bounds and misaligned accesses of every kernel family; "
                             "PYTORCH_NO_CUDA_MEMORY_CACHING=1 gives every tensor its own allocation, so an "
                             "overrun is not hidden inside a cached block"),
            ("racecheck", "shared-memory hazards: every family stages tl.dot tiles (and reductions) through shared "
                              "memory; no kernel uses atomics (see fused/measure/sanitize_run.py). racecheck may not "
                              "model Hopper's asynchronous (wgmma, TMA) shared-memory accesses: read a reported hazard "
                              "in the log before calling it a bug"),
        ):
            steps.append(Step(
                f"sanitizer-{name}", "sanitizer", "sanitizer",
                [tool, "--tool", name, "--error-exitcode", str(SANITIZER_EXIT), "--print-limit", "100",
                 py, "-m", "fused.measure.sanitize_run", "--out", str(out / "sanitizer" / f"{name}.json")],
                timeout=MAX_STEP_SECONDS, estimate=180,
                env={"PYTORCH_NO_CUDA_MEMORY_CACHING": "1", "TRITON_INTERPRET": None},
                tools=("compute-sanitizer",), out=f"sanitizer/{name}.json", notes=[why]))

    if interpreter is not None:
        steps.append(interpreter)

    if "bench" in stages:
        for family, model, batches, estimate in BENCH_PLAN:
            name = "-".join(filter(None, ["bench", family, _SHORT.get(model) if model else None,
                                          "b" + "-".join(map(str, batches))]))
            argv = [py, "-m", "fused", "bench", "--family", family, *(["--model", model] if model else []),
                    "--batch", *map(str, batches), "--device", "cuda", "--dtype", o.dtype, "--cuda-graphs",
                    "--compile-mode", o.compile_mode, "--record", "--out", str(out / "bench" / name)]
            argv += ["--repeats", str(o.repeats)] if o.repeats else []
            argv += ["--warmup", str(o.warmup)] if o.warmup is not None else []
            steps.append(Step(name, "bench", "bench", argv, timeout=MAX_STEP_SECONDS, estimate=estimate,
                              env={"TRITON_INTERPRET": None}, modules=PLOT_MODULES, out=f"bench/{name}"))

    if "profile" in stages:
        for model, batch, graphs, trace, estimate in PROFILE_PLAN:
            name = f"profile-{model}-b{batch}-{'graphs' if graphs else 'eager'}"
            argv = [py, "-m", "fused", "profile", "--model", model, "--device", "cuda", "--dtype", o.dtype,
                    "--batch", str(batch), *(["--cuda-graphs"] if graphs else []), "--record",
                    "--out", str(out / "profile" / name)]
            argv += ["--trace", str(out / "profile" / name / "trace.json")] if trace else []
            argv += ["--repeats", str(o.repeats)] if o.repeats else []
            argv += ["--warmup", str(o.warmup)] if o.warmup is not None else []
            steps.append(Step(name, "profile", "profile", argv, timeout=MAX_STEP_SECONDS, estimate=estimate,
                              env={"TRITON_INTERPRET": None}, modules=PLOT_MODULES, out=f"profile/{name}"))

    if "readme" in stages:
        steps.append(Step("readme", "readme", "readme", [py, "-m", "fused", "results", "--update-readme"],
                          timeout=120, estimate=20, cuda=False, out="readme/README.md", notes=[
                              "copies the results recorded by earlier runs (results/ in the output folder) "
                              "into the project's results/ first, then regenerates the table"]))
    return steps


# --------------------------------------------------------------------------------------------
# Checking a plan (the dry run)
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _cli_parser():
    from . import cli

    return cli.build_parser()


def parse_cli(argv: list[str]) -> str | None:
    """Parse ``argv`` (after ``python -m fused``) with the real parser; the usage error, or None."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            _cli_parser().parse_args(argv)
    except SystemExit as exc:
        if exc.code not in (0, None):
            return err.getvalue().strip().splitlines()[-1] if err.getvalue().strip() else f"exit {exc.code}"
    return None


def bench_families() -> list[str]:
    """Every family the benchmark registers (``FAMILIES`` of the benchmark module)."""
    from .sanitize_run import benchmark_module

    return list(benchmark_module().FAMILIES)


def step_env(step: Step, out: Path) -> dict[str, str]:
    """The environment a step runs in: the project on PYTHONPATH, the ceilings cache in the output folder."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env["MPLBACKEND"] = "Agg"
    env.setdefault("FACEFUSE_CACHE", str(Path(out).resolve() / "cache"))
    for key, value in step.env.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def collect_tests(step: Step, out: Path) -> tuple[str | None, str]:
    """``pytest --collect-only`` of a pytest step: (problem or None, what was collected)."""
    argv, skip = [], 0
    for i, a in enumerate(step.argv):
        if skip:
            skip -= 1
            continue
        if a in ("--junitxml", "--timeout", "-n"):
            skip = 1
            continue
        argv.append(a)
    env = step_env(step, out)
    proc = subprocess.run([*argv, "--collect-only"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    text = proc.stdout.strip().splitlines()
    last = next((line for line in reversed(text) if "collected" in line or "selected" in line or "error" in line.lower()), "")
    last = last.strip("= ")
    if proc.returncode != 0:
        return f"pytest --collect-only exited {proc.returncode}: {last or proc.stderr.strip()[-300:]}", last
    return None, last


def check_plan(steps: list[Step], out: Path, machine: Machine, *, collect: bool = True) -> dict[str, dict]:
    """Check every step's command without running it: CLI commands parse with the real parser,
    pytest selections collect, the sanitizer's family table matches the benchmark's families, the
    bench plan covers every family; and say what this machine lacks. Returns step → check."""
    checks: dict[str, dict] = {}
    sanitizer_check = None
    families = None
    for step in steps:
        problems, info = [], []
        missing = machine.missing_modules(step.modules)
        lacking = [t for t in step.tools if not machine.tools.get(t)]
        if missing:
            info.append(f"would be skipped here: missing {', '.join(missing)}")
        if lacking:
            info.append(f"not on this machine: {', '.join(lacking)} (the step is skipped where it is missing)")
        if step.cuda and not machine.cuda:
            info.append("needs CUDA (none here)")
        if step.kind in ("bench", "profile", "readme"):
            problem = parse_cli(step.argv[3:])
            if problem:
                problems.append(f"the CLI rejects the command: {problem}")
        elif step.kind == "pytest" and collect:
            problem, collected = collect_tests(step, out)
            if problem:
                problems.append(problem)
            else:
                info.append(f"collects: {collected}")
        elif step.kind == "sanitizer":
            if sanitizer_check is None:
                proc = subprocess.run([sys.executable, "-m", "fused.measure.sanitize_run", "--check"], cwd=ROOT,
                                      env=step_env(step, out), capture_output=True, text=True, timeout=300)
                sanitizer_check = (proc.returncode, (proc.stdout + proc.stderr).strip())
            if sanitizer_check[0] != 0:
                problems.append(f"sanitize_run --check failed: {sanitizer_check[1][-400:]}")
            else:
                info.append("sanitize_run's family table matches the benchmark's families")
        checks[step.name] = {"problems": problems, "info": info}
    bench_steps = [s for s in steps if s.kind == "bench"]
    if bench_steps:
        families = set(bench_families())
        planned = {s.argv[s.argv.index("--family") + 1] for s in bench_steps}
        if planned != families:
            problem = (f"the bench plan covers {sorted(planned)}, the benchmark has {sorted(families)}: "
                       "update BENCH_PLAN in fused/measure/gpu_check.py")
            checks[bench_steps[0].name]["problems"].append(problem)
    return checks


# --------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _state_path(out: Path, name: str) -> Path:
    return Path(out) / "steps" / f"{name}.json"


def load_state(out: Path, name: str) -> dict | None:
    path = _state_path(out, name)
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        return None


def _write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str, allow_nan=False) + "\n")
    tmp.replace(path)


def _results_snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    if not folder.exists():
        return {}
    return {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in folder.iterdir() if p.is_file()}


def _kill(proc: subprocess.Popen) -> None:
    """End the step's process group (the step and what it started), politely first."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run_step(step: Step, out: Path, *, timeout: int, budget_limited: bool) -> dict:
    """Run one step with its log in ``logs/<step>.log``; its state (not yet written)."""
    out = Path(out)
    log = out / "logs" / f"{step.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    (out / step.out).parent.mkdir(parents=True, exist_ok=True)
    if step.kind in ("bench", "profile"):  # their --out (and --trace) folder
        (out / step.out).mkdir(parents=True, exist_ok=True)
    results_dir = ROOT / "results"
    before = _results_snapshot(results_dir)
    if step.kind == "readme":
        _restore_results(out)
    started, t0 = _now(), time.monotonic()
    state = {"name": step.name, "stage": step.stage, "command": step.command(), "started": started,
             "log": str(log.relative_to(out)), "timeout_s": timeout, "notes": step.notes}
    with open(log, "w") as f:
        f.write(f"$ {step.command()}\n")
        f.flush()
        proc = subprocess.Popen(step.argv, cwd=ROOT, env=step_env(step, out), stdout=f, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
            status = "passed" if rc == 0 else "failed"
        except subprocess.TimeoutExpired:
            _kill(proc)
            rc = proc.returncode
            status = "interrupted" if budget_limited else "timeout"
        except KeyboardInterrupt:
            _kill(proc)
            raise
    state.update(rc=rc, status=status, duration_s=round(time.monotonic() - t0, 1))
    if status == "timeout":
        state["reason"] = f"ran past its {timeout} s timeout and was stopped"
    elif status == "interrupted":
        state["reason"] = f"stopped after {timeout} s: the call's --budget ran out; it runs again with --resume"
    new = [n for n, sig in _results_snapshot(results_dir).items() if before.get(n) != sig]
    if new and step.kind != "readme":
        (out / "results").mkdir(parents=True, exist_ok=True)
        for name in sorted(new):
            shutil.copy2(results_dir / name, out / "results" / name)
        state["recorded"] = sorted(new)
    if step.kind == "readme" and (ROOT / "README.md").exists():
        shutil.copy2(ROOT / "README.md", out / step.out)
    state["details"] = read_step_output(step, out, state)
    if status == "passed" and state["details"].get("problem"):
        state["status"] = "failed"
        state["reason"] = state["details"]["problem"]
    return state


def _restore_results(out: Path) -> None:
    """Copy results recorded by earlier runs (``<out>/results``) into the project's ``results/``."""
    source = Path(out) / "results"
    if source.is_dir():
        (ROOT / "results").mkdir(exist_ok=True)
        for path in source.iterdir():
            if path.is_file() and not (ROOT / "results" / path.name).exists():
                shutil.copy2(path, ROOT / "results" / path.name)


def run_plan(steps: list[Step], out: Path, machine: Machine, *, resume: bool = False, retry: bool = False,
             budget: float = DEFAULT_BUDGET, bundle: str | None = None, say=None, summary_steps=None) -> list[dict]:
    """Run ``steps`` in order within ``budget`` seconds; after each, write its state, the summary
    (of ``summary_steps``, by default ``steps``: pass the whole plan so that steps of other
    stages, run by earlier calls, stay in it) and the bundle."""
    say = say or (lambda line: None)
    summary_steps = steps if summary_steps is None else summary_steps
    out = Path(out)
    t0 = time.monotonic()
    states = []
    for step in steps:
        previous = load_state(out, step.name)
        if resume and step.kind != "readme" and previous and previous.get("status") in FINISHED and not (
                retry and previous["status"] in ("failed", "timeout")):
            say(f"{step.name}: kept from an earlier run ({previous['status']})")
            states.append(previous)
            continue
        state = {"name": step.name, "stage": step.stage, "command": step.command(), "notes": step.notes}
        missing = machine.missing_modules(step.modules)
        lacking = [t for t in step.tools if not machine.tools.get(t)]
        left = budget - (time.monotonic() - t0)
        if missing or lacking or (step.cuda and not machine.cuda):
            why = (f"missing Python packages: {', '.join(missing)}" if missing else
                   f"missing tools: {', '.join(lacking)} (not on PATH, $CUDA_HOME/bin or /usr/local/cuda*/bin)" if lacking
                   else "no CUDA device here")
            state.update(status="skipped", reason=why)
        elif left < step.estimate:
            state.update(status="not run", reason=f"not started: {left:.0f} s of the call's --budget left, "
                                                  f"the step needs about {step.estimate} s; it runs with --resume")
        else:
            timeout = int(min(step.timeout, left))
            say(f"{step.name}: running (timeout {timeout} s): {step.command()}")
            state = run_step(step, out, timeout=timeout, budget_limited=timeout < step.timeout)
            say(f"{step.name}: {state['status']} in {state['duration_s']} s" + (f" ({state['reason']})" if state.get("reason") else ""))
        _write_json(_state_path(out, step.name), state)
        states.append(state)
        write_summary(out, summary_steps, machine)
        if bundle:
            make_bundle(out, bundle)
    write_summary(out, summary_steps, machine)
    if bundle:
        make_bundle(out, bundle)
    return states


#: The largest bundle the GPU machine hands back (16 MiB), with a margin.
BUNDLE_LIMIT = 15 * 2**20


def make_bundle(out: Path, bundle: str, limit: int = BUNDLE_LIMIT) -> list[str]:
    """Pack the output folder into ``bundle`` (a .tar.gz), atomically. Past ``limit`` bytes it
    packs again without the traces and files over 2 MiB, and returns what it left out."""
    bundle_path = Path(bundle)
    bundle_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = bundle_path.with_name(bundle_path.name + ".tmp")
    left_out: list[str] = []

    def pack(keep) -> None:
        def only(info):
            if info.isfile() and not keep(info):
                left_out.append(info.name)
                return None
            return info

        with tarfile.open(tmp, "w:gz") as tar:
            tar.add(out, arcname=Path(out).resolve().name, filter=only)

    pack(lambda info: True)
    if tmp.stat().st_size > limit:
        pack(lambda info: not info.name.endswith("trace.json") and info.size <= 2 * 2**20)
        print(f"gpu-check: the bundle would pass {limit // 2**20} MiB; left out: {', '.join(left_out)}", file=sys.stderr)
    tmp.replace(bundle_path)
    summary = Path(out) / "summary.md"
    if summary.exists():  # readable without unpacking
        shutil.copyfile(summary, bundle_path.with_name(bundle_path.name.split(".")[0] + "-summary.md"))
    return left_out


def seed_from(source: str, out: Path) -> None:
    """Copy an earlier run (its output folder, or a bundle of it) into ``out``."""
    src = Path(source)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if src.is_dir() and src.resolve() == out.resolve():
        return
    if src.is_dir():
        shutil.copytree(src, out, dirs_exist_ok=True)
        return
    if not src.is_file():
        raise FileNotFoundError(f"--from {source}: no such folder or bundle")
    with tempfile.TemporaryDirectory() as tmp, tarfile.open(src) as tar:
        kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(tmp, **kwargs)
        roots = [p.parent for p in Path(tmp).rglob("steps") if p.is_dir()]
        if not roots:
            raise ValueError(f"--from {source}: not a gpu-check bundle (no steps/ folder inside)")
        shutil.copytree(min(roots, key=lambda p: len(p.parts)), out, dirs_exist_ok=True)


# --------------------------------------------------------------------------------------------
# Reading what a step wrote
# --------------------------------------------------------------------------------------------


def read_junit(path: Path) -> dict:
    """Counts and failing test ids of a JUnit XML file."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    counts = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    failing = []
    for case in root.iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            failing.append(f"{case.get('classname', '')}::{case.get('name', '')}")
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    counts["failing"] = failing[:30]
    return counts


_VERBOSE = re.compile(r"\b(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b")


def count_pytest_log(text: str) -> dict:
    """Outcomes counted from a ``pytest -v`` log (for a run that ended before writing its XML)."""
    counts = {"PASSED": 0, "FAILED": 0, "ERROR": 0, "SKIPPED": 0}
    failing = []
    for line in text.splitlines():
        if line.startswith(("FAILED ", "ERROR ", "SKIPPED ")) or "::" not in line:
            continue  # the short summary at the end repeats outcomes
        m = _VERBOSE.search(line)
        if m and m.group(1) in counts:
            counts[m.group(1)] += 1
            if m.group(1) in ("FAILED", "ERROR"):
                failing.append(next((w for w in line.split() if "::" in w), line.strip()))
    return {"tests": sum(counts.values()), "passed": counts["PASSED"], "failures": counts["FAILED"],
            "errors": counts["ERROR"], "skipped": counts["SKIPPED"], "failing": failing[:30]}


_ERROR_SUMMARY = re.compile(r"ERROR SUMMARY:\s*(\d+)\s+error")
_RACE_SUMMARY = re.compile(r"RACECHECK SUMMARY:\s*(\d+)\s+hazard")
_REPORT = re.compile(r"^=+ (Invalid|Error|Warning|Race|Out-of-range|Misaligned|Program hit|Uninitialized|Malloc|Leaked)")
_KERNEL = re.compile(r"^=+\s+(?:in|at)\s+(?:0x[0-9a-f]+\s+in\s+)?([A-Za-z_][\w]*)")


def parse_sanitizer_log(text: str) -> dict:
    """ERROR SUMMARY (and RACECHECK SUMMARY) of a compute-sanitizer log, with reports per family
    (after the driver's ``[sanitize] begin FAMILY`` markers) and the kernels they name."""
    errors = [int(m) for m in _ERROR_SUMMARY.findall(text)]
    hazards = [int(m) for m in _RACE_SUMMARY.findall(text)]
    family, per_family, kernels, ended = None, {}, set(), []
    for line in text.splitlines():
        if line.startswith("[sanitize] begin "):
            family = line.split()[-1]
        elif line.startswith("[sanitize] end "):
            ended.append(line[len("[sanitize] end "):])
        elif _REPORT.match(line):
            per_family[family or "(before any family)"] = per_family.get(family or "(before any family)", 0) + 1
        else:
            m = _KERNEL.match(line)
            if m and ("kernel" in m.group(1) or m.group(1).startswith("_")):
                kernels.add(m.group(1))
    return {"error_summary": errors[-1] if errors else None, "racecheck_hazards": hazards[-1] if hazards else None,
            "reports_per_family": per_family, "kernels_reported": sorted(kernels), "families_ended": ended}


def read_step_output(step: Step, out: Path, state: dict) -> dict:
    """What the step's files say (test counts, sanitizer errors, benchmark rows, ...), and a
    ``problem`` when a step that exited 0 still did not do its job."""
    out = Path(out)
    try:
        if step.kind == "pytest":
            path = out / step.out
            if path.exists():
                return read_junit(path)
            return {**count_pytest_log((out / state["log"]).read_text(errors="replace")),
                    "problem": "no JUnit XML was written (pytest did not finish); counts from the log"}
        if step.kind == "sanitizer":
            text = (out / state["log"]).read_text(errors="replace")
            found = parse_sanitizer_log(text)
            if found["error_summary"] is None:
                found["problem"] = "no ERROR SUMMARY in the log: compute-sanitizer did not finish"
            elif found["error_summary"] or found["racecheck_hazards"]:
                found["problem"] = f"{found['error_summary']} errors reported"
            return found
        if step.kind == "bench":
            path = out / step.out / "bench.json"
            if not path.exists():
                return {"problem": "no bench.json was written"}
            rows = json.loads(path.read_text()).get("rows", [])
            statuses = {}
            for r in rows:
                statuses[r.get("status") or "?"] = statuses.get(r.get("status") or "?", 0) + 1
            return {"cases": len(rows), "status_counts": statuses,
                    "not_ok": [f"{r.get('case')}: {r.get('status')}: {r.get('error')}" for r in rows if r.get("status") != "ok"][:20]}
        if step.kind == "profile":
            path = out / step.out / "profile.json"
            if not path.exists():
                return {"problem": "no profile.json was written"}
            data = json.loads(path.read_text())
            total = next((r for r in data.get("rows", []) if r.get("kind") == "total"), {})
            wrong = [r.get("path") for r in data.get("rows", []) if r.get("fused_within_tolerance") is False]
            found = {key: total.get(key) for key in ("ref_median_ms", "compile_median_ms", "fused_median_ms",
                                                     "speedup", "speedup_vs_compile")}
            if wrong:
                found.update(outside_tolerance=wrong, problem=f"fused output outside the tolerance in {len(wrong)} rows")
            return found
    except (OSError, ValueError, ET.ParseError) as exc:
        return {"problem": f"could not read the step's output: {type(exc).__name__}: {exc}"}
    return {}


# --------------------------------------------------------------------------------------------
# Targets
# --------------------------------------------------------------------------------------------


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
    Target("depthwise-eager", "depthwise >= 2x eager", None, "eager", 2.0,
           unmeasured="no benchmark family times the depthwise kernel alone (depthwise_conv_bias_act); "
                      "conv_dw times the fused depthwise-separable block"),
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
                         "_cuda_graphs": settings.get("cuda_graphs"), "_compile_mode": settings.get("compile_mode")})
    return rows


def evaluate_targets(rows: list[dict], targets=TARGETS) -> list[dict]:
    """For each target: ``met``, ``missed``, or ``not measured``, with the worst ratio over its
    rows (every row must reach the target), their geometric mean and how many rows met it."""
    results = []
    for t in targets:
        res = {"key": t.key, "target": t.text, "threshold": t.ratio, "baseline": t.baseline, "status": "not measured",
               "worst": None, "geomean": None, "rows": 0, "rows_met": 0, "worst_case": None, "notes": []}
        results.append(res)
        if t.family is None:
            res["notes"].append(t.unmeasured)
            continue
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
            continue
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
    return results


def profile_models(out: Path) -> list[dict]:
    """The whole-model row of every profile step's JSON: times and speedups, with its settings."""
    found = []
    for path in sorted((Path(out) / "profile").glob("*/profile.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        settings = data.get("settings", {})
        total = next((r for r in data.get("rows", []) if r.get("kind") == "total"), {})
        found.append({"step": path.parent.name, "model": settings.get("model"), "batch": settings.get("batch"),
                      "cuda_graphs": settings.get("cuda_graphs"), "compile_mode": settings.get("compile_mode"),
                      **{k: total.get(k) for k in ("ref_median_ms", "compile_median_ms", "fused_median_ms",
                                                   "speedup", "speedup_vs_compile", "fused_within_tolerance")}})
    return found


def bench_payloads(out: Path) -> list[tuple[str, dict]]:
    found = []
    for path in sorted((Path(out) / "bench").glob("*/bench.json")):
        try:
            found.append((str(path.relative_to(out)), json.loads(path.read_text())))
        except (OSError, ValueError):
            continue
    return found


# --------------------------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------------------------


def stage_status(states: list[dict]) -> str:
    statuses = {s.get("status") for s in states}
    if not states:
        return "not planned"
    if statuses & {"failed", "timeout"}:
        return "failed"
    if statuses & {"not run", "interrupted", "planned", None}:
        return "incomplete"
    if statuses == {"skipped"}:
        return "skipped"
    if "skipped" in statuses:
        return "passed (some steps skipped)"
    return "passed"


def summarize(out: Path, steps: list[Step], machine: Machine, *, dry_run: bool = False, checks=None) -> dict:
    out = Path(out)
    states = []
    for step in steps:
        state = load_state(out, step.name) if not dry_run else None
        if state is None:
            state = {"name": step.name, "stage": step.stage, "status": "planned" if dry_run else "not run",
                     "command": step.command(), "notes": step.notes}
        if checks is not None:
            state["check"] = checks.get(step.name)
        states.append(state)
    stages = {s: stage_status([x for x in states if x["stage"] == s]) for s in STAGES if any(x["stage"] == s for x in states)}
    if dry_run:
        stages = {s: ("plan problems" if any((x.get("check") or {}).get("problems") for x in states if x["stage"] == s)
                      else "planned") for s in stages}
    rows = bench_rows(bench_payloads(out))
    return {
        "kind": "facefuse-gpu-check",
        "written": _now(),
        "dry_run": dry_run,
        "machine": dataclasses.asdict(machine),
        "stages": stages,
        "steps": states,
        "targets": evaluate_targets(rows),
        "profiles": profile_models(out),
        "target_mapping": {t.key: ({"family": t.family, "baseline": t.baseline, "models": t.models, "batches": t.batches,
                                    "memory_bound_only": t.memory_bound} if t.family else {"unmeasured": t.unmeasured})
                           for t in TARGETS},
    }


def _fmt(v, spec=".2f") -> str:
    return "" if v is None else format(v, spec)


def summary_markdown(summary: dict) -> str:
    m = summary["machine"]
    lines = [f"# facefuse gpu-check{' (dry run: planned and checked, nothing timed)' if summary['dry_run'] else ''}", "",
             f"Written {summary['written']} on {m.get('gpu') or 'no CUDA GPU'}: Python {m['python']}, torch {m['torch']}, "
             f"Triton {m['triton']}; compute-sanitizer: {m['tools'].get('compute-sanitizer') or 'not found'}.", ""]
    missing = [k for k, v in m["modules"].items() if not v]
    if missing:
        lines += [f"Missing Python packages here: {', '.join(missing)}.", ""]
    lines += ["## Stages", "", "| stage | status |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in summary["stages"].items()]
    lines += ["", "## Steps", "", "| step | status | seconds | detail |", "|---|---|---|---|"]
    for s in summary["steps"]:
        detail = s.get("reason") or ""
        d = s.get("details") or {}
        if "tests" in d:
            detail = (f"{d['passed']} passed, {d['failures']} failed, {d['errors']} errors, {d['skipped']} skipped"
                      + (f"; failing: {', '.join(d['failing'][:5])}" if d.get("failing") else "") + (f"; {detail}" if detail else ""))
        elif "error_summary" in d:
            detail = (f"ERROR SUMMARY {d['error_summary']}" + (f", racecheck hazards {d['racecheck_hazards']}"
                                                                 if d.get("racecheck_hazards") is not None else "")
                      + (f"; reports per family {d['reports_per_family']}" if d.get("reports_per_family") else ""))
        elif "cases" in d:
            detail = f"{d['cases']} cases {d['status_counts']}" + (f"; {detail}" if detail else "")
        elif "speedup" in d:
            detail = f"model x eager {_fmt(d.get('speedup'))}, x compile {_fmt(d.get('speedup_vs_compile'))}" + (f"; {detail}" if detail else "")
        check = s.get("check")
        if check:
            detail = "; ".join(["PROBLEM: " + p for p in check["problems"]] + check["info"])
        lines.append(f"| {s['name']} | {s.get('status')} | {_fmt(s.get('duration_s'), '.0f')} | {detail.replace('|', '/')} |")
    lines += ["", "## Targets", "",
              "Ratios are fused time against the baseline (higher is better); \"eager\" is the faster of eager NCHW and "
              "eager channels_last; every row must reach the target (worst), and a row that failed correctness "
              "misses it.", "",
              "| target | status | worst | geomean | rows met | worst case | notes |", "|---|---|---|---|---|---|---|"]
    for t in summary["targets"]:
        lines.append(f"| {t['target']} | {t['status']} | {_fmt(t['worst'])} | {_fmt(t['geomean'])} | "
                     f"{t['rows_met']}/{t['rows']} | {(t['worst_case'] or '').replace('|', '/')} | "
                     f"{'; '.join(t['notes']).replace('|', '/')} |")
    if summary.get("profiles"):
        lines += ["", "## Whole models (facefuse profile, the `(model)` row)", "",
                  "| step | eager ms | torch.compile ms | fused ms | x eager | x compile | within tolerance |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {p['step']} | {_fmt(p['ref_median_ms'], '.4g')} | {_fmt(p['compile_median_ms'], '.4g')} | "
                  f"{_fmt(p['fused_median_ms'], '.4g')} | {_fmt(p['speedup'])} | {_fmt(p['speedup_vs_compile'])} | "
                  f"{'' if p['fused_within_tolerance'] is None else ('yes' if p['fused_within_tolerance'] else 'NO')} |"
                  for p in summary["profiles"]]
    left = [s for s in summary["steps"] if s.get("status") in ("not run", "interrupted")]
    if left and not summary["dry_run"]:
        stages = {}
        for s in left:
            stages.setdefault(s["stage"], []).append(s["name"])
        lines += ["", "Not run yet: " + "; ".join(f"{len(names)} {stage} step{'s' if len(names) > 1 else ''} "
                                                   f"({', '.join(names) if len(names) <= 3 else names[0] + ', ...'})"
                                                   for stage, names in stages.items())
                  + ". Run again with `--resume` (or `--from` this folder or its bundle) and "
                  + f"`--stages {','.join(stages)}`."]
    return "\n".join(lines) + "\n"


def write_summary(out: Path, steps: list[Step], machine: Machine, *, dry_run: bool = False, checks=None) -> dict:
    summary = summarize(out, steps, machine, dry_run=dry_run, checks=checks)
    _write_json(Path(out) / "summary.json", summary)
    (Path(out) / "summary.md").write_text(summary_markdown(summary))
    return summary


# --------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder: steps/, logs/, tests/, sanitizer/, "
                        "bench/, profile/, results/ (what --record added to results/), summary.json, summary.md")
    parser.add_argument("--stages", default=",".join(STAGES), metavar="LIST",
                        help=f"comma-separated stages to run, in this order: {','.join(STAGES)} (default: all)")
    parser.add_argument("--only", default=None, metavar="PREFIX[,PREFIX]",
                        help="only the steps whose names start with one of these prefixes (e.g. bench-conv_bn)")
    parser.add_argument("--dry-run", action="store_true",
                        help="plan every stage and check every command (CLI options parse, pytest selections collect, "
                             "the sanitizer's families match the benchmark's, tools present); run and time nothing")
    parser.add_argument("--resume", action="store_true", help="keep the steps an earlier run in --out finished")
    parser.add_argument("--retry", action="store_true", help="with --resume: run failed and timed-out steps again")
    parser.add_argument("--from", dest="seed", default=None, metavar="DIR|BUNDLE",
                        help="copy an earlier run (its output folder or --bundle file) into --out first; implies --resume")
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET, metavar="SECONDS",
                        help=f"wall-clock seconds for this whole call (default {DEFAULT_BUDGET}, for 10-minute calls); "
                             "steps that do not fit are left for --resume")
    parser.add_argument("--bundle", default=None, metavar="FILE.tar.gz", help="pack --out into one file after every step")
    parser.add_argument("--hypothesis", choices=["ci", "thorough"], default="ci",
                        help="FACEFUSE_HYPOTHESIS profile of the tests (default: ci)")
    parser.add_argument("--compile-mode", choices=["max-autotune", "default", "reduce-overhead", "none"],
                        default="max-autotune", help="torch.compile mode of the bench baseline (default: max-autotune)")
    parser.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], default="float16",
                        help="bench and profile dtype (default: float16, the targets' dtype)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per measurement (default: the commands' own, 100)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up runs (default: the commands' own, 10)")
    parser.add_argument("--workers", type=int, default=4, help="pytest-xdist workers of the CUDA tests (default 4; "
                        "twice that for the interpreter run)")
    parser.add_argument("--no-collect", action="store_true", help="dry run: do not run pytest --collect-only")


def run(args, parser=None) -> int:
    """``facefuse gpu-check``; exit status 0 when every step run or checked passed."""

    def fail(message: str) -> int:
        if parser is not None:
            parser.error(message)
        print(f"gpu-check: {message}", file=sys.stderr)
        return 2

    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in stages if s not in STAGES]
    if unknown or not stages:
        return fail(f"--stages: unknown stage(s) {', '.join(unknown) or '(none)'}; choose from {','.join(STAGES)}")
    if args.budget <= 0:
        return fail("--budget must be positive")
    if args.bundle and not args.bundle.endswith((".tar.gz", ".tgz")):
        return fail("--bundle: give a file name ending in .tar.gz")
    out = Path(args.out).resolve()
    if args.bundle and out in Path(args.bundle).resolve().parents:
        return fail("--bundle: put the bundle outside --out (it packs --out)")
    say = lambda line: print(f"gpu-check: {line}", file=sys.stderr, flush=True)  # noqa: E731
    if args.seed:
        try:
            seed_from(args.seed, out)
        except (OSError, ValueError, tarfile.TarError) as exc:
            return fail(str(exc))
        args.resume = True
    out.mkdir(parents=True, exist_ok=True)
    machine = probe()
    options = Options(hypothesis=args.hypothesis, compile_mode=args.compile_mode, repeats=args.repeats,
                      warmup=args.warmup, dtype=args.dtype, workers=args.workers)
    full = plan(out, machine, STAGES, options)
    steps = [s for s in full if s.stage in stages]
    if args.only:
        prefixes = tuple(p.strip() for p in args.only.split(",") if p.strip())
        steps = [s for s in steps if s.name.startswith(prefixes)]
        if not steps:
            return fail(f"--only {args.only}: no step of the chosen stages starts with that")
    if args.dry_run:
        checks = check_plan(steps, out, machine, collect=not args.no_collect)
        _write_json(out / "plan.json", {"machine": dataclasses.asdict(machine), "steps": [
            {**dataclasses.asdict(s), "command": s.command(), "check": checks[s.name]} for s in steps]})
        summary = write_summary(out, steps, machine, dry_run=True, checks=checks)
        text = summary_markdown(summary) + "\n## Commands\n\n" + "\n".join(
            f"- `{s.name}` (timeout {s.timeout} s, about {s.estimate} s): `{s.command()}`" for s in steps) + "\n"
        (out / "plan.md").write_text(text)
        print(text)
        problems = sum(len(c["problems"]) for c in checks.values())
        print(f"gpu-check dry run: {len(steps)} steps planned, {problems} problems; wrote {out / 'plan.json'}, "
              f"{out / 'summary.md'}")
        if args.bundle:
            make_bundle(out, args.bundle)
        return 1 if problems else 0
    if not machine.cuda:
        say("no CUDA device here: every CUDA step will be skipped (use --dry-run to check the plan on a CPU)")
    run_plan(steps, out, machine, resume=args.resume, retry=args.retry, budget=args.budget, bundle=args.bundle, say=say,
             summary_steps=full)
    summary = json.loads((out / "summary.json").read_text())
    print((out / "summary.md").read_text())
    ran = [s for s in summary["steps"] if s["name"] in {x.name for x in steps}]
    return 1 if any(s.get("status") in ("failed", "timeout") for s in ran) else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fused.measure.gpu_check", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    try:
        return run(parser.parse_args(argv), parser)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2


if __name__ == "__main__":
    sys.exit(main())
