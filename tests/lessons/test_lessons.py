"""Every lesson runs top to bottom (in Triton's interpreter on CPU, small shapes).

A lesson that passes leaves its executed copy in ``build/lessons/`` (``docs/hooks.py``), where the
documentation build (``test_site.py``) finds it instead of executing the lesson again.
"""

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LESSONS = sorted((ROOT / "lessons").glob("*.ipynb"))


def site_hooks():
    """``docs/hooks.py``, the site's MkDocs hooks: how lessons are executed and where copies go."""
    spec = importlib.util.spec_from_file_location("facefuse_site_hooks", ROOT / "docs" / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
    hooks = site_hooks()
    key = hooks.lesson_key(path)
    notebook = hooks.execute(path, tmp_path)
    errors = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    printed = "".join(o.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                      for o in cell.get("outputs", []) if o.get("output_type") == "stream")
    assert "not answered yet" in printed, f"{path.name}: the exercises' answer cell (fused.exercises.check) did not run"
    for pattern in EXPECTED_OUTPUT.get(path.stem, []):
        assert re.search(pattern, printed), f"{path.name} does not print {pattern!r}"
    hooks.save_executed(notebook, path, key)  # for the site: it shows this run's outputs
