"""Every lesson opens with a contents list (its second cell) that lists its numbered sections,
exactly as their headings say, in order. After adding or renaming a section, regenerate the
lists with ``python tests/lessons/test_contents.py``."""

import re
from pathlib import Path

import nbformat
import pytest

LESSONS = sorted((Path(__file__).resolve().parents[2] / "lessons").glob("*.ipynb"))
TITLE = "**Contents**"


def sections(notebook) -> list[str]:
    """The lesson's numbered section headings (``## 3. ...``), without the ``## ``."""
    return [line[3:].strip() for cell in notebook.cells if cell.cell_type == "markdown"
            for line in cell.source.splitlines() if re.match(r"## \d+\. ", line)]


def contents(notebook) -> str:
    """The contents cell: one linked line per section (Jupyter's anchor: the heading's text, with
    markdown marks dropped and spaces as dashes)."""
    lines = [TITLE, ""]
    for heading in sections(notebook):
        number, title = heading.split(" ", 1)
        anchor = re.sub(r"[`*]", "", heading).replace(" ", "-")
        lines.append(f"{number} [{title}](#{anchor})")
    return "\n".join(lines)


@pytest.mark.parametrize("path", LESSONS, ids=[p.stem for p in LESSONS])
def test_contents_lists_the_sections(path):
    notebook = nbformat.read(path, as_version=4)
    found = sections(notebook)
    assert [int(h.split(".")[0]) for h in found] == list(range(1, len(found) + 1)), found
    cell = notebook.cells[1]
    assert cell.cell_type == "markdown" and cell.source == contents(notebook), (
        f"{path.name}: the contents cell is missing or stale; run python tests/lessons/test_contents.py")


def write_contents() -> None:
    """Insert or refresh the contents cell of every lesson."""
    for path in LESSONS:
        notebook = nbformat.read(path, as_version=4)
        if notebook.cells[1].cell_type == "markdown" and notebook.cells[1].source.startswith(TITLE):
            notebook.cells[1].source = contents(notebook)
        else:
            notebook.cells.insert(1, nbformat.v4.new_markdown_cell(contents(notebook)))
        nbformat.write(notebook, path)


if __name__ == "__main__":
    write_contents()
