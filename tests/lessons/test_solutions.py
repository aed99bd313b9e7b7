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
    ("05", 1): (0.0625, 0.4375), ("05", 2): (16, 9), ("05", 3): lambda slope: slope > 0,
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
    assert answers and f'exercises.check_all("{lesson}", answers)' in code
    assert {int(n) for n in re.findall(r"^\s+(\d+): None", answers.group(1), re.M)} == expected


def test_check_all_reports_every_answer_then_fails_once(capsys):
    """An answer cell reports each answer (right, wrong, unanswered) before it fails, and the one
    error names every wrong exercise."""
    answers = {1: WRONG[("00", 1)], 2: getattr(solutions("00"), "exercise_2")(), 3: None}
    with pytest.raises(AssertionError, match=r"1 of 3 answers wrong \(exercise 1\)"):
        exercises.check_all("00", answers)
    out = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in out] == [f"lesson 00, exercise {n}" for n in (1, 2, 3)]
    assert "WRONG" in out[0] and "correct" in out[1] and "not answered yet" in out[2]
    assert exercises.check_all("00", {1: None, 2: None, 3: None}) == {1: False, 2: False, 3: False}
    with pytest.raises(KeyError, match="checked ones: 1, 2, 3"):
        exercises.check_all("00", {9: 1})


def test_check_all_reports_a_function_that_raises(capsys):
    with pytest.raises(AssertionError, match="exercise 7"):
        exercises.check_all("06", {7: lambda intensity, peak, bandwidth: 1 / 0, 8: None})
    assert "raised ZeroDivisionError" in capsys.readouterr().out


def test_a_wrong_tuple_names_the_element_and_the_direction():
    right = solutions("04").exercise_5()
    (rows8, rows16, rows32), priors = right
    with pytest.raises(AssertionError) as error:
        exercises.check("04", 5, ((rows8, rows16 - 1, rows32), priors + 10))
    message = str(error.value)
    assert "rows[1] = " in message and "is too low" in message and "P = " in message and "is too high" in message
    assert "rows[0]" not in message
    with pytest.raises(AssertionError, match=r"limiter = 'shared' is not right \(the other one is right\)"):
        exercises.check("07", 1, (solutions("07").exercise_1()[0], "shared"))
    with pytest.raises(AssertionError, match=r"expected a tuple \(programs, splits\)"):
        exercises.check("03", 2, 4)


def test_a_number_states_its_tolerance():
    ridge = solutions("06").exercise_8()
    with pytest.raises(AssertionError, match=r"is too high \(accepted: within 2% of the answer\)"):
        exercises.check("06", 8, ridge * 1.03)
    with pytest.raises(AssertionError, match=r"within 0.10% of the answer"):
        exercises.check("05", 1, (solutions("05").exercise_1()[0] * 1.01, solutions("05").exercise_1()[1]))


def test_ridge_agrees_with_lesson_00():
    """Lesson 00 calls the H100's ridge 'about 300': that answer passes 06/8, a distant one does not."""
    notebook = nbformat.read(LESSONS["00"], as_version=4)
    assert "so about 300)" in "\n".join(c.source for c in notebook.cells)
    assert exercises.check("06", 8, 300) is True
    with pytest.raises(AssertionError):
        exercises.check("06", 8, 310)


def test_no_two_exercises_ask_the_same_question():
    questions = [ex.question for ex in exercises.EXERCISES.values()]
    assert len(set(questions)) == len(questions)
    same_plan = {key for key, ex in exercises.EXERCISES.items() if "1 x 512 x 8 x 8 -> 512" in ex.question}
    assert len(same_plan) <= 1, same_plan
