"""The dry run of ``facefuse gpu-check``: check every step's command without running it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from .execute import step_env
from .steps import ROOT, Machine, Step


#: Run in a fresh interpreter: parse each argv (JSON lists on stdin) with the command line's real
#: parser, found through the ``facefuse`` entry point in pyproject.toml; print a JSON list of
#: usage errors (None where an argv parses).
_PARSE_PROGRAM = r"""
import contextlib, importlib, io, json, re, sys
text = open(sys.argv[1]).read()
module = re.search(r'^facefuse\s*=\s*"([\w.]+):\w+"', text, re.M).group(1)
parser = importlib.import_module(module).build_parser()
found = []
for argv in json.load(sys.stdin):
    err = io.StringIO()
    problem = None
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            parser.parse_args(argv)
    except SystemExit as exc:
        if exc.code not in (0, None):
            lines = err.getvalue().strip().splitlines()
            problem = lines[-1] if lines else f"exit {exc.code}"
    found.append(problem)
print(json.dumps(found))
"""


def parse_cli_many(argvs: list[list[str]]) -> list[str | None]:
    """Parse each argv (after ``python -m fused``) with the command line's real parser, in one
    subprocess (the harness never imports the command-line module, which delegates to it); the
    usage error of each, or None."""
    if not argvs:
        return []
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-c", _PARSE_PROGRAM, str(ROOT / "pyproject.toml")], input=json.dumps(argvs),
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return [f"the command line's parser could not be loaded: {tail}"] * len(argvs)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def parse_cli(argv: list[str]) -> str | None:
    """Parse ``argv`` (after ``python -m fused``) with the real parser; the usage error, or None."""
    return parse_cli_many([argv])[0]


def bench_families() -> list[str]:
    """Every family the benchmark registers (``FAMILIES`` of the benchmark module)."""
    from ..sanitize_run import benchmark_module

    return list(benchmark_module().FAMILIES)



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


def check_plan(steps: list[Step], out: Path, machine: Machine, *, collect: bool = True,
               whole_benchmark: bool = True) -> dict[str, dict]:
    """Check every step's command without running it: CLI commands parse with the real parser,
    pytest selections collect, every benchmark family can run under the sanitizer
    (``sanitize_run --check``), the bench steps cover exactly the benchmark's families (with
    ``whole_benchmark``; the quick plan times only the targets' families); and say what this
    machine lacks. Returns step → check."""
    checks: dict[str, dict] = {}
    cli_steps = [s for s in steps if s.kind in ("bench", "profile", "readme")]
    cli_problems = dict(zip([s.name for s in cli_steps], parse_cli_many([s.argv[3:] for s in cli_steps])))
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
            problem = cli_problems[step.name]
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
                proc = subprocess.run([sys.executable, "-m", "tools.sanitize_run", "--check"], cwd=ROOT,
                                      env=step_env(step, out), capture_output=True, text=True, timeout=300)
                sanitizer_check = (proc.returncode, (proc.stdout + proc.stderr).strip())
            if sanitizer_check[0] != 0:
                problems.append(f"sanitize_run --check failed: {sanitizer_check[1][-400:]}")
            else:
                info.append("sanitize_run --check: every benchmark family can run here")
        checks[step.name] = {"problems": problems, "info": info}
    bench_steps = [s for s in steps if s.kind == "bench"]
    if bench_steps and whole_benchmark:
        families = set(bench_families())
        planned = {s.argv[s.argv.index("--family") + 1] for s in bench_steps}
        if planned != families:
            problem = (f"the bench steps cover {sorted(planned)}, the benchmark has {sorted(families)} "
                       "(a plan from gpu_check.plan covers every family: see bench_plan in tools/gpu_check/steps.py)")
            checks[bench_steps[0].name]["problems"].append(problem)
    return checks
