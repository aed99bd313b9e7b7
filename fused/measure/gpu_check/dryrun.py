"""The dry run of ``facefuse gpu-check``: check every step's command without running it."""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
from pathlib import Path

from .execute import step_env
from .steps import ROOT, Machine, Step


#: ``() -> argparse.ArgumentParser``: the parser of ``python -m fused``. The command line sets it
#: when it runs gpu-check (this package does not import the command line); when unset, each
#: command is parsed in a fresh ``python`` process instead.
CLI_PARSER = None

_PARSE_ONLY = ("import sys\nargv, sys.argv = sys.argv[1:], ['facefuse']  # parse as the facefuse script does: no torch\n"
               "from fused.cli import build_parser\nbuild_parser(argv).parse_args(argv)\n")


def parse_cli(argv: list[str]) -> str | None:
    """Parse ``argv`` (after ``python -m fused``) with the real parser; the usage error, or None."""
    if CLI_PARSER is None:
        proc = subprocess.run([sys.executable, "-c", _PARSE_ONLY, *argv], cwd=ROOT, capture_output=True, text=True,
                              timeout=120)
        code, text = proc.returncode, proc.stderr
    else:
        err = io.StringIO()
        code = 0
        try:
            with contextlib.redirect_stderr(err):
                CLI_PARSER().parse_args(argv)
        except SystemExit as exc:
            code = exc.code
        text = err.getvalue()
    if code not in (0, None):
        return text.strip().splitlines()[-1] if text.strip() else f"exit {code}"
    return None


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


def check_plan(steps: list[Step], out: Path, machine: Machine, *, collect: bool = True) -> dict[str, dict]:
    """Check every step's command without running it: CLI commands parse with the real parser,
    pytest selections collect, every benchmark family can run under the sanitizer
    (``sanitize_run --check``), the bench steps cover exactly the benchmark's families; and say
    what this machine lacks. Returns step → check."""
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
                info.append("sanitize_run --check: every benchmark family can run here")
        checks[step.name] = {"problems": problems, "info": info}
    bench_steps = [s for s in steps if s.kind == "bench"]
    if bench_steps:
        families = set(bench_families())
        planned = {s.argv[s.argv.index("--family") + 1] for s in bench_steps}
        if planned != families:
            problem = (f"the bench steps cover {sorted(planned)}, the benchmark has {sorted(families)} "
                       "(a plan from gpu_check.plan covers every family: see bench_plan in fused/measure/gpu_check/steps.py)")
            checks[bench_steps[0].name]["problems"].append(problem)
    return checks
