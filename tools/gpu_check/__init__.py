"""``python -m tools.gpu_check``: every GPU measurement of the project as one prepared, resumable command.

    python -m tools.gpu_check --quick --dry-run --out /tmp/gpu-check  # any machine: plan the one-call check
    python -m tools.gpu_check --quick --out /tmp/gpu-check --bundle $OUT/gpu-check.tar.gz   # on the GPU: 8 minutes
    python -m tools.gpu_check --out /tmp/gpu-check --stages tests,sanitizer --bundle $OUT/gpu-check.tar.gz
    python -m tools.gpu_check --out /tmp/gpu-check --from gpu-check.tar.gz --stages bench --bundle ...

``--quick`` runs the plan of :mod:`.quick` instead of the stages below: the environment,
correctness on CUDA, the whole-model and per-family timings behind the targets, and memcheck, in
one call of at most ``--budget`` seconds (default 480). ``facefuse gpu-check ARGS`` runs this
module from the checkout the package was imported from.

The full plan has five stages, each a list of steps; a step is one command with its own timeout (at most
:data:`MAX_STEP_SECONDS`), its log, and a result file ``steps/<step>.json`` in the output folder:

1. ``tests``: the test suite on CUDA tensors (the tests that take the ``device`` fixture or carry
   the ``gpu`` marker, :mod:`tools.pytest_cuda`: float32 exact and TF32, float16,
   bfloat16, NCHW and channels_last), then the rest of the suite under ``TRITON_INTERPRET=1``
   (those tests build CPU tensors), each with a JUnit XML file;
2. ``sanitizer``: ``compute-sanitizer`` memcheck and racecheck around
   :mod:`tools.sanitize_run` (every kernel family once, small inputs);
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

The code: :mod:`.steps` (the plan and the output folder's files), :mod:`.dryrun` (checking a
plan), :mod:`.execute` (running it), :mod:`.summary` (reading what the steps wrote, the summary)
and :mod:`.targets` (the performance targets); this module re-exports their public names and
holds the command.

Nothing is installed: commands run as ``python -m ...`` from the project folder with it on
``PYTHONPATH``. A step that needs a missing package or tool is skipped, saying which.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import tarfile
from pathlib import Path

from fused.apps.options import at_least

from .dryrun import bench_families, check_plan, collect_tests, parse_cli
from .execute import BUNDLE_LIMIT, make_bundle, run_plan, run_step, seed_from, step_env
from .steps import (BENCH_PLAN, DEFAULT_BUDGET, FINISHED, LESSON_MODULES, MAX_STEP_SECONDS, OPTIONAL_MODULES,
                    PLOT_MODULES, PROFILE_PLAN, ROOT, SANITIZER_EXIT, STAGES, TEST_MODULES, Machine, Options, Step,
                    bench_plan, find_sanitizer, load_state, plan, probe, write_json)
from .summary import (bench_payloads, count_pytest_log, parse_sanitizer_log, profile_models, read_junit,
                      read_step_output, stage_status, summarize, summary_markdown, write_summary)
from .quick import QUICK_BUDGET, check_quick_plan, fits, quick_plan
from .targets import RETINAFACES, TARGETS, Target, bench_rows, evaluate_targets, row_batch, row_model

__all__ = [
    "BENCH_PLAN", "BUNDLE_LIMIT", "DEFAULT_BUDGET", "FINISHED", "LESSON_MODULES", "MAX_STEP_SECONDS", "OPTIONAL_MODULES",
    "PLOT_MODULES", "PROFILE_PLAN", "QUICK_BUDGET", "RETINAFACES", "ROOT", "SANITIZER_EXIT", "STAGES", "TARGETS", "TEST_MODULES",
    "Machine", "Options", "Step", "Target", "add_arguments", "bench_families", "bench_payloads", "bench_plan", "bench_rows",
    "check_plan", "collect_tests", "count_pytest_log", "evaluate_targets", "find_sanitizer", "load_state", "main",
    "make_bundle", "parse_cli", "parse_sanitizer_log", "plan", "probe", "profile_models", "quick_plan", "read_junit",
    "read_step_output", "row_batch", "row_model", "run", "run_plan", "run_step", "seed_from", "stage_status",
    "step_env", "summarize", "summary_markdown", "write_json", "write_summary",
]


# --------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------


def _seconds(text: str) -> float:
    """A positive, finite number of seconds (``nan`` and ``inf`` would disable the budget)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive, finite number of seconds, got {text!r}")
    return value


def writable_problem(path: Path, what: str, *, folder: bool) -> str | None:
    """Why ``path`` (a folder to create or fill, or a file to write) cannot be written, or None.
    Checked before any work: the nearest existing ancestor must be a writable folder."""
    path = Path(path).absolute()
    if path.exists():
        if folder and not path.is_dir():
            return f"{what} {path} is a file, not a folder"
        if not folder and path.is_dir():
            return f"{what} {path} is a folder; give a file name"
        target = path if folder else path.parent
        if not os.access(target, os.W_OK | os.X_OK):
            return f"{what} {path}: {target} is not writable"
        return None
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        return f"{what} {path}: {parent} is a file, not a folder"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"{what} {path}: cannot create it, {parent} is not writable"
    return None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help="the one-call headline check (tools/gpu_check/quick.py): environment, correctness on CUDA, "
                             "whole-model and per-family timings, memcheck; within --budget (default "
                             f"{QUICK_BUDGET} s); --stages and --only do not apply")
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
    parser.add_argument("--budget", type=_seconds, default=None, metavar="SECONDS",
                        help=f"wall-clock seconds for this whole call (default {DEFAULT_BUDGET}, for 10-minute calls); "
                             "steps that do not fit are marked \"not run\" and left for --resume")
    parser.add_argument("--bundle", default=None, metavar="FILE.tar.gz", help="pack --out into one file after every step")
    parser.add_argument("--hypothesis", choices=["ci", "thorough"], default="ci",
                        help="FACEFUSE_HYPOTHESIS profile of the tests (default: ci)")
    parser.add_argument("--compile-mode", choices=["max-autotune", "default", "reduce-overhead", "none"],
                        default="max-autotune", help="torch.compile mode of the bench baseline (default: max-autotune)")
    parser.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], default="float16",
                        help="bench and profile dtype (default: float16, the targets' dtype)")
    parser.add_argument("--repeats", type=at_least(1), default=None,
                        help="timed runs per measurement (default: the commands' own, 100)")
    parser.add_argument("--warmup", type=at_least(0), default=None, help="warm-up runs (default: the commands' own, 10)")
    parser.add_argument("--workers", type=at_least(1), default=4, help="pytest-xdist workers of the CUDA tests (default 4; "
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
    budget = args.budget if args.budget is not None else (QUICK_BUDGET if args.quick else DEFAULT_BUDGET)
    if args.quick and args.only:
        return fail("--only does not apply to --quick (its plan is fixed; see tools/gpu_check/quick.py)")
    if args.bundle and not args.bundle.endswith((".tar.gz", ".tgz")):
        return fail("--bundle: give a file name ending in .tar.gz")
    out = Path(args.out).resolve()
    if args.bundle and out in Path(args.bundle).resolve().parents:
        return fail("--bundle: put the bundle outside --out (it packs --out)")
    problem = writable_problem(out, "--out", folder=True) or (
        args.bundle and writable_problem(Path(args.bundle), "--bundle", folder=False))
    if problem:
        return fail(problem)
    say = lambda line: print(f"gpu-check: {line}", file=sys.stderr, flush=True)  # noqa: E731
    if args.seed:
        try:
            seed_from(args.seed, out)
        except (OSError, ValueError, tarfile.TarError) as exc:
            return fail(str(exc))
        args.resume = True
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return fail(f"--out {out}: {exc.strerror or exc}")
    machine = probe()
    options = Options(hypothesis=args.hypothesis, compile_mode=args.compile_mode, repeats=args.repeats,
                      warmup=args.warmup, dtype=args.dtype, workers=args.workers)
    full = quick_plan(out, machine, options) if args.quick else plan(out, machine, STAGES, options)
    steps = full if args.quick else [s for s in full if s.stage in stages]
    if args.only:
        prefixes = tuple(p.strip() for p in args.only.split(",") if p.strip())
        steps = [s for s in steps if s.name.startswith(prefixes)]
        if not steps:
            return fail(f"--only {args.only}: no step of the chosen stages starts with that")
    if args.dry_run:
        checks = check_plan(steps, out, machine, collect=not args.no_collect, whole_benchmark=not args.quick)
        reach = fits(steps, budget)
        if args.quick:
            for problem in check_quick_plan(steps, budget):
                checks[steps[0].name]["problems"].append(problem)
        for s in steps:
            checks[s.name]["info"].append(f"within --budget {budget:g} s by the estimates: "
                                          + ("yes" if reach[s.name] == "fits" else "no, it would be marked \"not run\""))
        write_json(out / "plan.json", {"machine": dataclasses.asdict(machine), "budget_s": budget, "quick": args.quick,
                                       "steps": [{**dataclasses.asdict(s), "command": s.command(), "check": checks[s.name],
                                                  "within_budget": reach[s.name] == "fits"} for s in steps]})
        summary = write_summary(out, steps, machine, dry_run=True, checks=checks)
        text = summary_markdown(summary) + "\n## Commands\n\n" + "\n".join(
            f"- `{s.name}` (time limit {s.timeout} s, about {s.estimate} s, {reach[s.name]}): `{s.command()}`"
            for s in steps) + "\n"
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
    run_plan(steps, out, machine, resume=args.resume, retry=args.retry, budget=budget, bundle=args.bundle, say=say,
             summary_steps=full)
    summary = json.loads((out / "summary.json").read_text())
    sys.stderr.flush()
    print((out / "summary.md").read_text(), flush=True)  # last, so that a log's tail is the summary
    ran = [s for s in summary["steps"] if s["name"] in {x.name for x in steps}]
    return 1 if any(s.get("status") in ("failed", "timeout") for s in ran) else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.gpu_check", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    try:
        return run(parser.parse_args(argv), parser)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
