"""Every lesson runs top to bottom (in Triton's interpreter on CPU, small shapes)."""

import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

LESSONS = sorted((Path(__file__).resolve().parents[2] / "lessons").glob("*.ipynb"))

#: What a lesson's printed output must show, whatever machine runs it: lesson 03's launch-plan
#: table claims the GPU's plan, so one face at the first stage shows 64 splits and 128 programs
#: (the interpreter would use 8 and 16).
EXPECTED_OUTPUT = {
    "03_squeeze_excite": [r"\(1, 64, 64, 64\) \|\s+2 \|\s+64 \|\s+128\n"],
}


def test_there_are_lessons():
    assert LESSONS, "no lessons found"


@pytest.mark.lesson
@pytest.mark.parametrize("path", LESSONS, ids=[p.stem for p in LESSONS])
def test_lesson_runs_top_to_bottom(path, tmp_path):
    notebook = nbformat.read(path, as_version=4)
    # Per cell: lesson 07's first cell compiles its variants cold in about 5 to 10 minutes on a busy 2-core machine.
    client = NotebookClient(notebook, timeout=1200, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute(cwd=str(tmp_path))
    errors = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    printed = "".join(o.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                      for o in cell.get("outputs", []) if o.get("output_type") == "stream")
    assert "not answered yet" in printed, f"{path.name}: the exercises' answer cell (fused.exercises.check) did not run"
    for pattern in EXPECTED_OUTPUT.get(path.stem, []):
        assert re.search(pattern, printed), f"{path.name} does not print {pattern!r}"
