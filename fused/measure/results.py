"""Recorded GPU results: the data behind every speed figure the lessons and README show.

``facefuse bench --record`` and ``facefuse profile --record`` (GPU runs only) copy their JSON,
with its plots, into ``results/``; the JSON carries the GPU name, driver, torch and Triton
versions and the date. Nothing else in the project states a speed:

* the lessons call :func:`show_recorded` (benchmarks of one kernel family) and
  :func:`show_recorded_profiles` (block-by-block profiles);
* the README's results table is :func:`results_table`, written between the markers
  ``<!-- results-table:start -->`` and ``<!-- results-table:end -->`` by
  ``python -m fused.measure.results --update-readme`` (or ``facefuse results --update-readme``),
  run in the project's root folder; ``--check`` exits with status 1 when the README is out of
  date, and a test asserts it is not.

Where the files are: the README is ``README.md`` in the current directory (or ``--readme FILE``);
the results folder is ``results/`` in the project folder, the current directory or the nearest
parent that holds a ``README.md`` beside a ``results/`` folder (so a lesson running in
``lessons/`` finds it), or ``--results-dir DIR``. Nothing is found relative to the installed
package. When nothing has been recorded, each function says so.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

RESULTS = "results"
README = "README.md"
START = "<!-- results-table:start -->"
END = "<!-- results-table:end -->"
PROFILE_KIND = "facefuse-profile"

NONE_RECORDED = (
    "**No GPU results are recorded yet.** So far the kernels have been verified on CPU, through "
    "Triton's interpreter, only; interpreter timings are not speedups, so no speed figure appears "
    "here until `facefuse bench --record` or `facefuse profile --record` runs on a CUDA GPU and adds "
    "its data and plots to `results/`."
)


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def project_folder(start: Path | str | None = None) -> Path | None:
    """The current directory (or ``start``), or its nearest parent, that holds a ``README.md``
    beside a ``results/`` folder; None when there is none."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / README).is_file() and (folder / RESULTS).is_dir():
            return folder
    return None


def find_results_dir(results_dir: Path | str | None = None) -> Path:
    """``results_dir`` when given, else the project folder's ``results/`` (see
    :func:`project_folder`), else ``results/`` in the current directory (which may not exist yet)."""
    if results_dir:
        return Path(results_dir)
    project = project_folder()
    return (project or Path.cwd()) / RESULTS


def find_readme(readme: Path | str | None = None) -> Path:
    """``readme`` when given, else ``README.md`` in the current directory; a ValueError says how to
    fix it when the file is not there."""
    path = Path(readme) if readme else Path.cwd() / README
    if not path.is_file():
        where = f"{path}" if readme else f"no {README} in the current directory ({Path.cwd()})"
        raise ValueError(f"{where}: not a file. Run this in the project's root folder, or pass --readme FILE")
    return path



def is_result(data) -> bool:
    """Whether ``data`` (a parsed JSON file) is a recorded profile or benchmark."""
    if not isinstance(data, dict):
        return False
    return data.get("kind") == PROFILE_KIND or (isinstance(data.get("rows"), list)
                                                and isinstance(data.get("environment"), dict))


def _runs(results_dir=None) -> list[dict]:
    """Every JSON file of the results folder, newest first, each with ``_file`` (its name)."""
    folder = find_results_dir(results_dir)
    found = []
    for path in sorted(folder.glob("*.json")) if folder.exists() else []:
        try:
            data = json.loads(path.read_text())
        except ValueError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from None
        if is_result(data):
            data["_file"] = path.name
            found.append(data)
        else:
            print(f"skipped {path}: not a facefuse benchmark or profile result", file=sys.stderr)
    return sorted(found, key=lambda d: (d.get("environment", {}).get("date") or "", d["_file"]), reverse=True)


def recorded(family: str, results_dir: Path | str | None = None) -> list[dict]:
    """Every recorded benchmark file whose ``family`` matches, newest first."""
    return [d for d in _runs(results_dir) if d.get("kind") != PROFILE_KIND
            and (d.get("family") in (family, "all") or family in d.get("families", []))]


def recorded_profiles(model: str | None = None, results_dir: Path | str | None = None) -> list[dict]:
    """Every recorded ``facefuse profile`` file (of ``model``, a name of ``facefuse profile --model``), newest first."""
    return [d for d in _runs(results_dir) if d.get("kind") == PROFILE_KIND
            and (model is None or d.get("settings", {}).get("model") == model)]


def _where(run: dict) -> str:
    env = run.get("environment", {})
    return (f"{env.get('gpu') or env.get('device') or '?'} (driver {env.get('driver') or '?'}), "
            f"torch {env.get('torch') or '?'}, Triton {env.get('triton') or '?'}, measured {env.get('date') or '?'}")


def show_recorded(family: str, results_dir: Path | str | None = None) -> list[dict]:
    """Print the recorded GPU results for ``family`` with where and when they were measured."""
    runs = recorded(family, results_dir)
    if not runs:
        print(
            f"No GPU results are recorded for '{family}' yet: the kernels have been checked for "
            "correctness on CPU (Triton's interpreter) only. Run `facefuse bench --record` on a CUDA GPU to "
            "record them; they will appear here."
        )
        return []
    for run in runs:
        print(f"{run['_file']}: {_where(run)}")
        for row in run.get("rows", []):
            if row.get("family") not in (None, family):
                continue
            print("  " + ", ".join(f"{k}={_num(v)}" for k, v in row.items()
                                   if k in ("case", "status", "eager_ms", "compile_ms", "fused_ms", "speedup_eager",
                                            "speedup_compile", "roofline_pct")))
    return runs


def show_recorded_profiles(model: str | None = None, results_dir: Path | str | None = None) -> list[dict]:
    """Print the recorded GPU profiles (of ``model``): the summary rows and the slowest blocks."""
    runs = recorded_profiles(model, results_dir)
    if not runs:
        print(
            f"No GPU profile is recorded{f' for {model!r}' if model else ''} yet: run `facefuse profile --record` "
            "on a CUDA GPU (with and without --cuda-graphs) to record one; it will appear here."
        )
        return []
    for run in runs:
        print(f"{run['_file']}: {_profile_title(run)}; {_where(run)}")
        print(_markdown(*_profile_table(run)))
        print()
    return runs


# --------------------------------------------------------------------------------------------
# The results table (README)
# --------------------------------------------------------------------------------------------


def _num(v, spec: str = ".4g") -> str:
    if v is None or v == "":
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (int, float)):
        return format(v, spec)
    return str(v)


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


BENCH_HEADER = ["family", "case", "status", "eager ms", "eager CL ms", "torch.compile ms", "fused ms",
                "x eager", "x eager CL", "x compile", "fused GB/s", "% copy BW"]


def _bench_table(run: dict) -> tuple[list[str], list[list[str]]]:
    rows = []
    for r in run.get("rows", []):
        rows.append([
            r.get("family", ""), r.get("case", ""), r.get("status") or "",
            _num(r.get("eager_ms")), _num(r.get("eager_cl_ms")), _num(r.get("compile_ms")),
            _num(r.get("fused_ms") if r.get("fused_best_layout") != "channels_last" else r.get("fused_cl_ms")),
            _num(r.get("speedup_eager"), ".2f"), _num(r.get("speedup_eager_cl"), ".2f"),
            _num(r.get("speedup_compile"), ".2f"), _num(r.get("fused_gbps"), ".0f"), _num(r.get("roofline_pct"), ".0f"),
        ])
    return BENCH_HEADER, rows


PROFILE_HEADER = ["row", "type", "ref ms", "torch.compile ms", "fused ms", "speedup", "vs compile",
                  "fused GB/s", "fused % copy BW", "fused peak MB"]


def _profile_table(run: dict, slowest: int = 5) -> tuple[list[str], list[list[str]]]:
    rows = run.get("rows", [])
    blocks = [r for r in rows if r.get("kind") in ("block", "module") and r.get("ref_median_ms") is not None]
    top = sorted(blocks, key=lambda r: r["ref_median_ms"], reverse=True)[:slowest]
    shown = top + [r for r in rows if r.get("kind") in ("sum", "total")]
    out = []
    for r in shown:
        peak = r.get("fused_peak_bytes")
        out.append([
            r.get("path", ""), r.get("block_type", ""), _num(r.get("ref_median_ms")), _num(r.get("compile_median_ms")),
            _num(r.get("fused_median_ms")), _num(r.get("speedup"), ".2f"), _num(r.get("speedup_vs_compile"), ".2f"),
            _num(r.get("fused_gbps"), ".0f"), _num(r.get("fused_bw_pct"), ".0f"),
            _num(peak / 1e6 if peak is not None else None, ".3g"),
        ])
    return PROFILE_HEADER, out


def _profile_title(run: dict) -> str:
    s = run.get("settings", {})
    return (f"`facefuse profile --model {s.get('model', '?')}`, input {s.get('input_shape', '?')} {s.get('dtype', '')} "
            f"{s.get('memory_format', 'nchw')}, CUDA graphs {'on' if s.get('cuda_graphs') else 'off'}")


def _plots(folder: Path, stem: str, suffixes) -> str:
    found = [f"[`{folder.name}/{stem}{sfx}`]({folder.name}/{stem}{sfx})" for sfx in suffixes
             if (folder / f"{stem}{sfx}").exists()]
    return f"Plots: {', '.join(found)}." if found else ""


def results_table(results_dir: Path | str | None = None) -> str:
    """The README's results section, as markdown, generated from the JSON files in ``results/``.

    One table per recorded file, newest first: benchmark runs (every case) and profiles (the
    slowest blocks and the totals), each headed by the GPU, driver, torch and Triton versions
    and the date, with links to the plots recorded beside it. With no file, the honest empty state.
    """
    folder = find_results_dir(results_dir)
    runs = _runs(folder)
    lines = [f"_Generated by `python -m fused.measure.results --update-readme` from `{folder.name}/*.json`; "
             "do not edit by hand._", ""]
    if not runs:
        return "\n".join(lines + [NONE_RECORDED])
    for run in runs:
        stem = run["_file"][: -len(".json")]
        settings = run.get("settings", {})
        if run.get("kind") == PROFILE_KIND:
            lines.append(f"**Profile [`{folder.name}/{run['_file']}`]({folder.name}/{run['_file']})**: "
                         f"{_profile_title(run)}; {_where(run)}.")
            table = _profile_table(run)
            plots = _plots(folder, stem, (".png", "-roofline.png"))
        else:
            families = ", ".join(run.get("families", [])) or run.get("family", "?")
            extras = [settings.get("dtype"), "CUDA graphs" if settings.get("cuda_graphs") else None,
                      f"torch.compile {settings['compile_mode']}" if settings.get("compile_mode") else None]
            lines.append(f"**Benchmark [`{folder.name}/{run['_file']}`]({folder.name}/{run['_file']})** "
                         f"({families}; {', '.join(e for e in extras if e)}): {_where(run)}; copy bandwidth "
                         f"{_num(run.get('bandwidth_gbps'), '.0f')} GB/s.")
            table = _bench_table(run)
            plots = _plots(folder, stem, (".png",))
        lines += ["", _markdown(*table), ""]
        if plots:
            lines += [plots, ""]
    return "\n".join(lines).rstrip()


def readme_block(readme: Path | str | None = None) -> str:
    """The text between the results markers of the README (default: ``./README.md``), without the markers."""
    path = find_readme(readme)
    text = path.read_text()
    if START not in text or END not in text:
        raise ValueError(f"{path}: the markers {START} and {END} are missing")
    return text.split(START, 1)[1].split(END, 1)[0].strip("\n")


def update_readme(readme: Path | str | None = None, results_dir: Path | str | None = None) -> bool:
    """Rewrite the README's results block (default: ``./README.md``) from :func:`results_table`;
    True if it changed."""
    path = find_readme(readme)
    text = path.read_text()
    if START not in text or END not in text:
        raise ValueError(f"{path}: the markers {START} and {END} are missing")
    before, rest = text.split(START, 1)
    after = rest.split(END, 1)[1]
    new = f"{before}{START}\n{results_table(results_dir)}\n{END}{after}"
    if new != text:
        path.write_text(new)
        return True
    return False


# --------------------------------------------------------------------------------------------
# Recording
# --------------------------------------------------------------------------------------------


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()


def record(json_path, plots: dict[str, str] | None = None, *, results_dir=None) -> list[str]:
    """Copy a benchmark or profile JSON into ``results/`` as ``<what>-<gpu>-<date>.json``, and each
    plot of ``plots`` (suffix → path, e.g. ``{".png": "bench.png"}``) beside it under the same
    stem. Returns the new paths, the JSON first."""
    with open(json_path) as f:
        data = json.load(f)
    env = data.get("environment", {})
    if data.get("kind") == PROFILE_KIND:
        what = f"profile-{data.get('settings', {}).get('model', 'model')}"
    else:
        what = "-".join(data.get("families", [])) or "bench"
    stem = _slug(f"{what}-{env.get('gpu') or env.get('device')}-{env.get('date', '')}")
    folder = find_results_dir(results_dir)
    folder.mkdir(parents=True, exist_ok=True)
    written = [folder / f"{stem}.json"]
    shutil.copyfile(json_path, written[0])
    for suffix, path in (plots or {}).items():
        if path and Path(path).exists():
            written.append(folder / f"{stem}{suffix}")
            shutil.copyfile(path, written[-1])
    return [str(p) for p in written]


# --------------------------------------------------------------------------------------------
# python -m fused.measure.results
# --------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--update-readme", action="store_true",
                        help="rewrite the README's results block (between the results-table markers)")
    parser.add_argument("--check", action="store_true",
                        help="exit with status 1 if the README's results block is not what results/ generates")
    parser.add_argument("--results-dir", default=None, metavar="DIR", help="default: results/ of the project folder (the current directory or a parent)")
    parser.add_argument("--readme", default=None, metavar="FILE", help="default: README.md in the current directory")


def run(args) -> int:
    if args.results_dir is not None and not Path(args.results_dir).is_dir():
        raise ValueError(f"--results-dir {args.results_dir}: no such folder")  # before the README is touched
    table = results_table(args.results_dir)
    if args.check:
        current = readme_block(args.readme)
        if current != table:
            print(f"{find_readme(args.readme)}: the results block is out of date; run "
                  "`python -m fused.measure.results --update-readme`", file=sys.stderr)
            return 1
        print("README results block is up to date")
        return 0
    if args.update_readme:
        changed = update_readme(args.readme, args.results_dir)
        print(f"{find_readme(args.readme)}: results block {'updated' if changed else 'already up to date'}")
        return 0
    print(table)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fused.measure.results",
                                     description="Print the recorded GPU results as markdown, or update the README's table.")
    add_arguments(parser)
    try:
        return run(parser.parse_args(argv))
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    except (OSError, ValueError) as exc:
        print(f"python -m fused.measure.results: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
