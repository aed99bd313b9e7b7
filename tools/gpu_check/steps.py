"""The plan of ``facefuse gpu-check``: its steps, what this machine has, and the output folder's files.

A :class:`Step` is one command with its timeout, its estimate and what it needs; :func:`plan`
lists every step of the chosen stages in the order they run. Each step's state lives in
``steps/<step>.json`` of the output folder (:func:`load_state`).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shlex
import shutil
import sys
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
#: ``--model`` or None where the family's models are fixed, batches, estimated seconds). Only
#: families that need their steps split or ordered are listed: :func:`bench_plan` adds a default
#: step for every other family of the benchmark, so a new family needs no line here.
BENCH_PLAN = [
    ("conv_bn", "retinaface", (1,), 300),
    ("conv_dw", "retinaface", (1,), 180),
    ("depthwise", "retinaface", (1, 16), 180),
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

#: The estimated seconds of a family's default bench step (:func:`bench_plan`).
DEFAULT_BENCH_ESTIMATE = 300


def bench_plan() -> list[tuple[str, str | None, tuple[int, ...], int]]:
    """:data:`BENCH_PLAN`, then one default step for each benchmark family it does not list, in
    the benchmark's order: both RetinaFace variants (``--model all``) where the family takes
    its shapes from ``"retinaface"``, batches 1 and 16 as ``facefuse bench`` on a GPU (1 and 64
    for an ArcFace-only family, as the ArcFace steps above)."""
    from fused.measure import benchmark

    planned = {family for family, *_ in BENCH_PLAN}
    defaults = []
    for name, family in benchmark.FAMILIES.items():
        if name in planned:
            continue
        arcface_only = all(m.startswith("arcface") for m in family.models)
        defaults.append((name, "all" if "retinaface" in family.models else None, (1, 64) if arcface_only else (1, 16),
                         DEFAULT_BENCH_ESTIMATE))
    return [*BENCH_PLAN, *defaults]


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
        # -o addopts=: not pyproject's "-n auto", which needs pytest-xdist (the GPU machine lacks it)
        common = ["-o", "addopts=", "-v", "-rfEs", "-p", "no:cacheprovider"]
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
            [py, "-m", "pytest", "-p", "tools.pytest_cuda", "tests", "-m", "not lesson",
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
                 py, "-m", "tools.sanitize_run", "--out", str(out / "sanitizer" / f"{name}.json")],
                timeout=MAX_STEP_SECONDS, estimate=180,
                env={"PYTORCH_NO_CUDA_MEMORY_CACHING": "1", "TRITON_INTERPRET": None},
                tools=("compute-sanitizer",), out=f"sanitizer/{name}.json", notes=[why]))

    if interpreter is not None:
        steps.append(interpreter)

    if "bench" in stages:
        for family, model, batches, estimate in bench_plan():
            name = "-".join(filter(None, ["bench", family, _SHORT.get(model) if model else None,
                                          "b" + "-".join(map(str, batches))]))
            argv = [py, "-m", "fused", "bench", "--family", family, *(["--model", model] if model else []),
                    "--batch", *map(str, batches), "--device", "cuda", "--dtype", o.dtype, "--cuda-graphs",
                    "--compile-mode", o.compile_mode, "--record", "--out", str(out / "bench" / name)]
            argv += ["--fused-compile"] if family.endswith("_model") else []  # whole models: fused + compile too
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
# The output folder's files
# --------------------------------------------------------------------------------------------


def now() -> str:
    """The time in UTC, as the state files and the summary write it."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def state_path(out: Path, name: str) -> Path:
    """Where the state of step ``name`` lives in the output folder."""
    return Path(out) / "steps" / f"{name}.json"


def load_state(out: Path, name: str) -> dict | None:
    """The state an earlier run wrote for step ``name``, or None (none, or unreadable)."""
    path = state_path(out, name)
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        return None


def write_json(path: Path, data) -> None:
    """Write ``data`` as JSON atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str, allow_nan=False) + "\n")
    tmp.replace(path)
