"""Every worked answer in lessons/solutions passes the check its lesson's last cell calls
(fused.exercises.check), every check can fail, and every lesson calls the checks it has."""

import importlib.util
import re
from pathlib import Path

import nbformat
import pytest

from fused import exercises

ROOT = Path(__file__).resolve().parents[2]
SOLUTIONS = ROOT / "lessons" / "solutions"
LESSONS = {p.stem[:2]: p for p in (ROOT / "lessons").glob("*.ipynb")}


def solutions(lesson: str):
    spec = importlib.util.spec_from_file_location(f"lesson_{lesson}_solutions", SOLUTIONS / f"lesson_{lesson}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


#: A plausible wrong answer to every exercise: each check must reject it.
WRONG = {
    ("00", 1): 0.5, ("00", 2): 16800, ("00", 3): 0.49,
    ("01", 2): (4, 4), ("01", 6): lambda weight, bn: (weight, bn.bias.detach()),
    ("02", 2): (25, 14), ("02", 5): 0.25, ("02", 6): 9.0,
    ("03", 2): (4, 132), ("03", 5): (8, 32), ("03", 6): (8, 1, 1),
    ("04", 5): ((135, 67, 34), 91800), ("04", 7): lambda d, rows_in, rows_out: d * rows_in // rows_out,
    ("05", 1): (0.0625, 0.4375), ("05", 2): 1, ("05", 3): lambda slope: slope > 0,
    ("06", 7): lambda intensity, peak, bandwidth: intensity * bandwidth, ("06", 8): 0.0034,
    ("07", 1): (2, "registers"), ("07", 2): 6, ("07", 3): 34,
}


@pytest.mark.parametrize("key", sorted(exercises.EXERCISES), ids=lambda k: f"{k[0]}-{k[1]}")
def test_solution_passes_its_check(key, capsys):
    lesson, number = key
    answer = getattr(solutions(lesson), f"exercise_{number}")()
    assert exercises.check(lesson, number, answer) is True
    assert "correct" in capsys.readouterr().out


@pytest.mark.parametrize("key", sorted(exercises.EXERCISES), ids=lambda k: f"{k[0]}-{k[1]}")
def test_check_rejects_a_wrong_answer(key):
    with pytest.raises(AssertionError):
        exercises.check(*key, WRONG[key])


def test_solutions_and_checks_match():
    found = {(p.stem[-2:], int(name.split("_")[1])) for p in SOLUTIONS.glob("lesson_*.py")
             for name in vars(solutions(p.stem[-2:])) if re.fullmatch(r"exercise_\d+", name)}
    assert found == set(exercises.EXERCISES) == set(WRONG)


def test_unanswered_prints_the_question(capsys):
    assert exercises.check("00", 2, None) is False
    assert "not answered yet" in capsys.readouterr().out
    with pytest.raises(KeyError, match="checked ones: 1, 2, 3"):
        exercises.check("00", 9, 1)


@pytest.mark.parametrize("lesson", sorted(LESSONS))
def test_lesson_checks_every_exercise(lesson):
    """The lesson's answer cell calls the check of every checked exercise of that lesson, and the
    exercise list says which ones are checked."""
    notebook = nbformat.read(LESSONS[lesson], as_version=4)
    code = "\n".join(c.source for c in notebook.cells if c.cell_type == "code")
    expected = {n for (les, n) in exercises.EXERCISES if les == lesson}
    assert expected, f"lesson {lesson} has no checked exercise"
    answers = re.search(r"answers = \{(.*?)\n\}", code, re.S)
    assert answers and f'exercises.check("{lesson}", number, answer)' in code
    assert {int(n) for n in re.findall(r"^\s+(\d+): None", answers.group(1), re.M)} == expected
