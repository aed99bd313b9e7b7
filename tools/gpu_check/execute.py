"""Running the steps of ``facefuse gpu-check``: timeouts, the call's budget, resuming, bundles."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from .steps import DEFAULT_BUDGET, FINISHED, ROOT, Machine, Step, load_state, now, state_path, write_json
from .summary import read_step_output, write_summary


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
    started, t0 = now(), time.monotonic()
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
        write_json(state_path(out, step.name), state)
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
