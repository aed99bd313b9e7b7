"""MkDocs hooks of the documentation site (mkdocs.yml: ``hooks``).

* **The lessons, executed.** The site shows every ``lessons/*.ipynb`` with its outputs, though the
  stored notebooks have none. An executed copy lives in ``build/lessons/``, stamped with
  :func:`lesson_key` (the notebook's cells and the source of ``reference/`` and ``fused/``). The
  lesson tests (``tests/lessons/test_lessons.py``) save the copy they executed, so CI runs each
  lesson once; a build that finds no current copy executes the lesson itself, on the CPU, and a
  lesson that raises fails the build. ``FACEFUSE_DOCS_UNEXECUTED=1`` shows the stored notebooks
  instead, without outputs. The nav's "Lessons" section lists every lesson found.
* **Pages other helpers own** (:data:`OWNED_PAGES`) are in the nav; until one is written the
  build shows a short placeholder in memory (nothing is written to ``docs/``), and
  ``tests/lessons/test_site.py`` says which are missing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LESSONS = ROOT / "lessons"
EXECUTED = ROOT / "build" / "lessons"
#: Pages of the nav that another part of the project writes; the placeholder says whose.
OWNED_PAGES = {
    "cli.md": "facefuse detect and embed",
    "weights.md": "Weights",
    "gpu.md": "Running on a GPU",
    "ray.md": "Ray Data pipeline",
    "adding-a-block.md": "Adding a block",
}
STAMP = "facefuse_docs_key"
log = logging.getLogger("mkdocs.hooks.facefuse")


def lessons() -> list[Path]:
    """The lesson notebooks, in learning order (their file names)."""
    return sorted(LESSONS.glob("*.ipynb"))


def lesson_key(path: Path) -> str:
    """What an executed copy of ``path`` must have been made from: its cells' sources and the
    packages' source files. Outputs and execution counts do not count."""
    digest = hashlib.sha256()
    notebook = json.loads(Path(path).read_text(encoding="utf-8"))
    for cell in notebook.get("cells", []):
        source = cell.get("source", "")
        digest.update(cell.get("cell_type", "").encode() + b"\0" + "".join(source).encode() + b"\0")
    for folder in ("reference", "fused"):
        for source in sorted((ROOT / folder).rglob("*.py")):
            digest.update(str(source.relative_to(ROOT)).encode() + b"\0" + source.read_bytes())
    return digest.hexdigest()


def executed_path(path: Path) -> Path:
    return EXECUTED / Path(path).name


def current_copy(path: Path, key: str | None = None) -> Path | None:
    """The executed copy of lesson ``path`` if it is current, else None."""
    copy = executed_path(path)
    if not copy.is_file():
        return None
    try:
        stamp = json.loads(copy.read_text(encoding="utf-8")).get("metadata", {}).get(STAMP)
    except ValueError:
        return None
    return copy if stamp == (key or lesson_key(path)) else None


def save_executed(notebook, path: Path, key: str) -> Path:
    """Write an executed notebook (an ``nbformat`` node) as the copy of lesson ``path``."""
    import nbformat

    notebook.metadata[STAMP] = key
    EXECUTED.mkdir(parents=True, exist_ok=True)
    copy = executed_path(path)
    partial = copy.with_suffix(".partial")
    nbformat.write(notebook, str(partial))
    os.replace(partial, copy)  # never a half-written copy
    return copy


def execute(path: Path, cwd: str | os.PathLike):
    """Run lesson ``path`` top to bottom in a fresh kernel, in ``cwd``; raises on the first error.
    The lesson tests and the site build both run lessons through this."""
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(str(path), as_version=4)
    # Per cell: lesson 07's first cell compiles its variants cold in 5 to 10 minutes on a busy 2-core machine.
    client = NotebookClient(notebook, timeout=1200, kernel_name="python3", resources={"metadata": {"path": str(cwd)}})
    client.execute(cwd=str(cwd))
    return notebook


def executed_lesson(path: Path) -> Path:
    """A current executed copy of lesson ``path``, executing it (minutes) when there is none.
    With ``FACEFUSE_DOCS_UNEXECUTED=1``, the stored notebook itself (no outputs: a quick look at
    the pages while writing them)."""
    if os.environ.get("FACEFUSE_DOCS_UNEXECUTED") == "1":
        return Path(path)
    key = lesson_key(path)
    copy = current_copy(path, key)
    if copy is None:
        log.info("executing %s (no current copy in %s)", path.name, EXECUTED)
        env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               "MPLBACKEND": "Agg"}
        saved = {name: os.environ.get(name) for name in env}
        os.environ.update(env)  # the kernel inherits the build's environment
        try:
            with tempfile.TemporaryDirectory() as work:
                copy = save_executed(execute(path, work), path, key)
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
    return copy


# -- MkDocs events ------------------------------------------------------------------------------

def on_config(config, **kwargs):
    for item in config["nav"] or []:
        if isinstance(item, dict) and "Lessons" in item:
            pages = [p for p in item["Lessons"] if not str(p).startswith("lessons/")]
            item["Lessons"] = pages + [f"lessons/{p.name}" for p in lessons()]
    return config


def _on_files(files, config, **kwargs):
    from mkdocs.structure.files import File

    for path in lessons():
        uri = f"lessons/{path.name}"
        if files.get_file_from_path(uri) is None:  # a real file (mkdocs-jupyter reads it by path)
            copy = executed_lesson(path)              # <folder>/lessons/<name>.ipynb
            files.append(File(uri, src_dir=str(copy.parent.parent), dest_dir=config["site_dir"],
                              use_directory_urls=config["use_directory_urls"]))
    for page, title in OWNED_PAGES.items():
        if files.get_file_from_path(page) is None:
            log.info("%s is not written yet: a placeholder stands in", page)
            files.append(File.generated(config, page, content=f"# {title}\n\nThis page is not written yet.\n"))
    return files


try:  # run before mkdocs-jupyter's on_files, which takes the notebooks it finds there
    from mkdocs.plugins import event_priority

    on_files = event_priority(50)(_on_files)
except ImportError:  # not under MkDocs (the lesson tests import this file)
    on_files = _on_files
