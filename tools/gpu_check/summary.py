"""What the steps of ``facefuse gpu-check`` wrote, read back, and ``summary.json`` / ``summary.md``."""

from __future__ import annotations

import dataclasses
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

from .steps import STAGES, Machine, Step, load_state, now, write_json
from .targets import TARGETS, bench_rows, evaluate_targets


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
        if step.kind == "environment":
            path = out / step.out
            if not path.exists():
                return {"problem": "no environment.json was written"}
            return {"environment": json.loads(path.read_text())}
        if step.kind == "correctness":
            path = out / step.out
            if not path.exists():
                return {"problem": "no correctness.json was written"}
            from .quick import read_correctness

            return read_correctness(path)
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
    """(path relative to ``out``, payload) of every bench step's JSON."""
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
    order = [*STAGES, *dict.fromkeys(x["stage"] for x in states if x["stage"] not in STAGES)]
    stages = {s: stage_status([x for x in states if x["stage"] == s]) for s in order if any(x["stage"] == s for x in states)}
    if dry_run:
        stages = {s: ("plan problems" if any((x.get("check") or {}).get("problems") for x in states if x["stage"] == s)
                      else "planned") for s in stages}
    rows = bench_rows(bench_payloads(out))
    return {
        "kind": "facefuse-gpu-check",
        "written": now(),
        "dry_run": dry_run,
        "machine": dataclasses.asdict(machine),
        "stages": stages,
        "steps": states,
        "targets": evaluate_targets(rows),
        "profiles": profile_models(out),
        "environment": _read_json(out / "environment.json"),
        "correctness": _read_json(out / "correctness.json"),
        "target_mapping": {t.key: ({"family": t.family, "baseline": t.baseline, "models": t.models, "batches": t.batches,
                                    "memory_bound_only": t.memory_bound} if t.family else {"unmeasured": t.unmeasured})
                           for t in TARGETS},
    }


def _read_json(path: Path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def _fmt(v, spec=".2f") -> str:
    return "" if v is None else format(v, spec)


def summary_markdown(summary: dict) -> str:
    m = summary["machine"]
    lines = [f"# facefuse gpu-check{' (dry run: planned and checked, nothing timed)' if summary['dry_run'] else ''}", "",
             f"Written {summary['written']} on {m.get('gpu') or 'no CUDA GPU'}: Python {m['python']}, torch {m['torch']}, "
             f"Triton {m['triton']}; compute-sanitizer: {m['tools'].get('compute-sanitizer') or 'not found'}.", ""]
    env = summary.get("environment")
    if env:
        smi = env.get("nvidia_smi") or {}
        lines += [f"GPU {env.get('gpu')} (capability {env.get('capability')}), driver {env.get('driver')}, CUDA "
                  f"{env.get('cuda')}, ptxas {env.get('ptxas_version')}, numpy {env.get('numpy')}; clocks SM "
                  f"{smi.get('clocks.sm')} of {smi.get('clocks.max.sm')}, memory {smi.get('clocks.mem')}.", ""]
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
    corr = summary.get("correctness")
    if corr:
        failing = [f"{c['what']}: {c.get('error', '')}" for c in corr.get("cases", []) if c.get("status") == "failed"]
        lines += ["", "## Correctness on CUDA (poisoned outputs, against float64)", "",
                  f"{corr.get('counts')} in {corr.get('elapsed_s')} s"
                  + ("" if corr.get("finished") else " (the step did not finish: these are the cases before the cut)") + "."]
        lines += [f"- FAILED {f[:240]}" for f in failing[:20]]
    lines += ["", "## Targets", "",
              "Ratios are fused time against the baseline (higher is better); \"eager\" is the faster of eager NCHW and "
              "eager channels_last; every row must reach the target (worst), and a row that failed correctness "
              "misses it.", "",
              "| target | status | worst | geomean | rows met | worst case | measured with | notes |",
              "|---|---|---|---|---|---|---|---|"]
    for t in summary["targets"]:
        lines.append(f"| {t['target']} | {t['status']} | {_fmt(t['worst'])} | {_fmt(t['geomean'])} | "
                     f"{t['rows_met']}/{t['rows']} | {(t['worst_case'] or '').replace('|', '/')} | "
                     f"{t.get('variant') or ''} | {'; '.join(t['notes']).replace('|', '/')} |")
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
    write_json(Path(out) / "summary.json", summary)
    (Path(out) / "summary.md").write_text(summary_markdown(summary))
    return summary
