"""Recorded GPU results: the data behind every speed figure the lessons and README show.

Benchmarks write JSON files into ``results/`` (with GPU name, driver, torch and Triton versions
and date). Lessons call :func:`show_recorded` instead of typing numbers, so a figure can only
appear if it was measured; when nothing has been recorded for a family, they say so.
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent.parent / "results"


def recorded(family: str, results_dir: Path | str | None = None) -> list[dict]:
    """Every recorded benchmark file whose ``family`` matches, newest first."""
    folder = Path(results_dir) if results_dir else RESULTS_DIR
    found = []
    for path in sorted(folder.glob("*.json")) if folder.exists() else []:
        data = json.loads(path.read_text())
        if data.get("family") in (family, "all") or family in data.get("families", []):
            data["_file"] = path.name
            found.append(data)
    return sorted(found, key=lambda d: d.get("environment", {}).get("date", ""), reverse=True)


def show_recorded(family: str, results_dir: Path | str | None = None) -> list[dict]:
    """Print the recorded GPU results for ``family`` with where and when they were measured."""
    runs = recorded(family, results_dir)
    if not runs:
        print(
            f"No GPU results are recorded for '{family}' yet: the kernels have been checked for "
            "correctness on CPU (Triton's interpreter) only. Run `facefuse bench` on a CUDA GPU to "
            "record them; they will appear here."
        )
        return []
    for run in runs:
        env = run.get("environment", {})
        print(f"{run['_file']}: {env.get('gpu')} (driver {env.get('driver')}), torch {env.get('torch')}, "
              f"triton {env.get('triton')}, measured {env.get('date')}")
        for row in run.get("rows", []):
            print("  " + ", ".join(f"{k}={v}" for k, v in row.items() if k in ("case", "fused_ms", "speedup_eager", "speedup_compile")))
    return runs
