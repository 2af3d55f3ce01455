"""HumanEval: the split, the prompt, reading code out of replies, and grading by the tests."""

from __future__ import annotations

import ast
from concurrent.futures import ThreadPoolExecutor

import pytest

from mafl_graph.grading import Verdict, majority_vote
from mafl_graph.sandbox import run_python
from mafl_graph.tasks import HumanEval, Problem, get_task, task_for
from mafl_graph.tasks import humaneval as module
from mafl_graph.tasks.base import grade_answer
from mafl_graph.tasks.humaneval import BoundHumanEval, check_outcomes

TASK = HumanEval()
# Problems where a function that returns None passes every test: none in HumanEval.
NONE_IS_RIGHT: set[str] = set()


def problem(number: int) -> Problem:
    """The problem as the debate rebuilds it: id, question and reference, no metadata."""
    full = next(
        p for p in TASK.load("train") + TASK.load("test") if p.id == f"humaneval-{number:03d}"
    )
    return Problem(full.id, full.question, full.answer)


def stub(prompt: str) -> str:
    """The prompt's function with its body replaced by ``return None``."""
    return prompt + "    return None\n"


def test_the_split_is_fixed_disjoint_and_complete() -> None:
    train, test = TASK.load("train"), TASK.load("test")
    assert (len(train), len(test)) == (100, 64)
    ids = [p.id for p in train + test]
    assert len(set(ids)) == 164
    assert {int(i.removeprefix("humaneval-")) for i in ids} == set(range(164))
    assert train == HumanEval().load("train") and test == HumanEval().load("test")
    assert [p.id for p in train] == sorted(p.id for p in train)
    assert TASK.load("test", 5) == test[:5]
    assert get_task("humaneval").load("test", 3) == test[:3]
    with pytest.raises(ValueError, match="unknown split"):
        TASK.load("validation")


def test_problems_carry_the_prompt_and_the_canonical_function() -> None:
    zero = problem(0)
    assert zero.id == "humaneval-000"
    assert "def has_close_elements(" in zero.question and zero.question in zero.answer
    assert zero.answer is not None and "return False" in zero.answer
    prompt = TASK.question_prompt(zero)
    assert "```python" in prompt and zero.question.rstrip() in prompt
    assert "complete function" in prompt


def test_the_debate_prompts_ask_for_code_not_a_box() -> None:
    prompts = task_for(TASK, problem(0)).prompts  # type: ignore[attr-defined]
    debate = prompts.debate.format_messages(answers="A")[0].content
    summary = prompts.debate_with_summary.format_messages(summary="S")[0].content
    for text in (debate, summary):
        assert "```python" in text and "boxed" not in text
    assert "other agents:A" in debate and "S" in summary


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("Here:\n```python\ndef f():\n    return 1\n```\n", "def f():\n    return 1\n"),
        (
            "First try\n```python\ndef f():\n    return 0\n```\nBetter:\n```py\ndef f():\n"
            "    return 1\n```\nUsage:\n```\nf()\n```",
            "def f():\n    return 1\n",
        ),
        ("def f():\n    return 2", "def f():\n    return 2\n"),
        ("Cut off:\n```python\ndef f():\n    return 3", "def f():\n    return 3\n"),
        (
            "```python\ndef f():\n    return 1\n```\nAgain:\n```python\ndef f():\n    ret",
            "def f():\n    return 1\n",
        ),
        ("   \n", None),
        ("", None),
    ],
)
def test_code_is_read_from_the_last_fenced_function(reply: str, expected: str | None) -> None:
    assert TASK.extract_answer(reply) == expected


def test_a_body_only_answer_is_completed_with_the_prompt() -> None:
    bound = task_for(TASK, problem(2))
    prompt = problem(2).question
    indented = bound.extract_answer("```python\n    return number % 1.0\n```")
    assert indented == prompt + "    return number % 1.0\n"
    flat = bound.extract_answer("return number % 1.0")
    assert flat == prompt + "    return number % 1.0\n"
    full = "```python\ndef truncate_number(number: float) -> float:\n    return number % 1.0\n```"
    assert (
        bound.extract_answer(full) == "def truncate_number(number: float) -> float:\n"
        "    return number % 1.0\n"
    )
    assert bound.extract_answer("") is None


def test_every_canonical_solution_passes_and_every_stub_fails() -> None:
    problems = TASK.load("train") + TASK.load("test")

    def outcomes(p: Problem) -> tuple[str, str, str]:
        number = int(p.id.removeprefix("humaneval-"))
        assert p.answer is not None
        return p.id, check_outcomes(number, p.answer), check_outcomes(number, stub(p.question))

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(outcomes, problems))
    failing = [pid for pid, canonical, _ in results if not canonical or set(canonical) != {"P"}]
    assert failing == []
    passing_stubs = {pid for pid, _, none in results if none and set(none) == {"P"}}
    assert passing_stubs == NONE_IS_RIGHT


def test_correct_answers_are_graded_by_their_tests() -> None:
    p = problem(0)
    bound = task_for(TASK, p)
    assert isinstance(bound, BoundHumanEval)
    other_correct = (
        "def has_close_elements(numbers, threshold):\n"
        "    ordered = sorted(numbers)\n"
        "    return any(b - a < threshold for a, b in zip(ordered, ordered[1:]))\n"
    )
    wrong = "def has_close_elements(numbers, threshold):\n    return len(numbers) > 3\n"
    assert p.answer is not None
    assert grade_answer(bound, other_correct, p.answer) is Verdict.EQUIVALENT
    assert grade_answer(bound, wrong, p.answer) is Verdict.DIFFERENT
    assert grade_answer(bound, None, p.answer) is Verdict.DIFFERENT
    assert bound.is_equivalent(other_correct, p.answer)


def test_two_correct_implementations_are_one_answer_in_the_vote() -> None:
    p = problem(0)
    bound = task_for(TASK, p)
    canonical = p.answer
    assert canonical is not None
    brute = (
        "def has_close_elements(numbers, threshold):\n"
        "    return any(abs(a - b) < threshold for i, a in enumerate(numbers)\n"
        "               for b in numbers[i + 1:])\n"
    )
    wrong = "def has_close_elements(numbers, threshold):\n    return True\n"
    wrong_too = "def has_close_elements(numbers, threshold):\n    return not False\n"
    broken = "def has_close_elements(numbers, threshold):\n    return numbers[99]\n"
    assert bound.grade(brute, canonical) is Verdict.EQUIVALENT
    assert bound.grade(wrong, wrong_too) is Verdict.EQUIVALENT  # the same tests pass
    assert bound.grade(wrong, canonical) is Verdict.DIFFERENT
    syntax_error = "def has_close_elements(numbers, threshold)\n    return True\n"
    assert bound.grade(broken, syntax_error) is Verdict.EQUIVALENT  # both pass no test
    vote = majority_vote(
        [wrong, brute, broken, canonical, None],
        equivalent=lambda a, b: grade_answer(bound, a, b),
    )
    assert vote.answer == brute and vote.fraction == pytest.approx(2 / 5)
    assert vote.clusters == [[0], [1, 3], [2]]
    assert grade_answer(bound, vote.answer, canonical) is Verdict.EQUIVALENT


def test_asserts_are_recorded_one_by_one() -> None:
    p = problem(0)
    half = (
        "def has_close_elements(numbers, threshold):\n"
        "    if threshold > 0.5:\n        raise ValueError('no')\n"
        "    return True\n"
    )
    outcomes = check_outcomes(0, half)
    assert len(outcomes) == len(check_outcomes(0, p.answer or ""))
    assert "P" in outcomes and "F" in outcomes and "X" not in outcomes


def test_broken_code_passes_nothing() -> None:
    p = problem(0)
    quick = HumanEval(cpu_seconds=1)
    for code in (
        "def has_close_elements(:\n",
        "def has_close_elements(numbers, threshold):\n    while True:\n        pass\n",
        "import os\nos._exit(0)\n",
        "def has_close_elements(numbers, threshold):\n    import os\n    os.system('ls')\n",
        "x" * (module.MAX_CODE_CHARS + 1),
    ):
        assert "P" not in check_outcomes(0, code, cpu_seconds=1)
        assert quick.for_problem(p).grade(code, p.answer or "") is Verdict.DIFFERENT


def test_outcomes_are_cached_and_run_once(monkeypatch: pytest.MonkeyPatch) -> None:
    runs = []

    def counting(*args: object, **kwargs: object) -> object:
        runs.append(args)
        return run_python(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(module, "run_python", counting)
    code = "def has_close_elements(numbers, threshold):\n    return False  # cached\n"
    with ThreadPoolExecutor(4) as pool:
        outcomes = set(pool.map(lambda _: check_outcomes(0, code), range(8)))
    assert len(outcomes) == 1 and len(runs) == 1
    bound = task_for(TASK, problem(0))
    canonical = problem(0).answer or ""
    first = bound.grade(code, canonical)
    again = bound.grade(code, canonical)
    assert first is again is Verdict.DIFFERENT
    assert len(runs) <= 2  # the canonical solution at most once more


def test_unbound_grading_finds_the_problem_by_its_canonical_solution() -> None:
    p = problem(12)
    assert p.answer is not None
    assert TASK.grade(p.answer, p.answer) is Verdict.EQUIVALENT
    assert grade_answer(TASK, stub(p.question), p.answer) is Verdict.DIFFERENT
    with pytest.raises(ValueError, match="task_for"):
        TASK.grade("def f(): pass", "def g(): pass")


def test_bad_limits_say_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="cpu_seconds=0"):
        HumanEval(cpu_seconds=0)


def test_binding_needs_a_humaneval_problem() -> None:
    assert task_for(TASK, Problem("humaneval-163", "?")).number == 163  # type: ignore[attr-defined]
    by_question = TASK.for_problem(Problem("other-id", problem(7).question))
    assert by_question.number == 7
    with pytest.raises(ValueError, match="humaneval-000"):
        TASK.for_problem(Problem("humaneval-999", "?"))
    bound = TASK.for_problem(problem(3))
    assert bound.for_problem(problem(4)).number == 4
    assert bound.load("test", 2) == TASK.load("test", 2)
    assert bound.question_prompt(problem(3)) == TASK.question_prompt(problem(3))


def test_the_tests_are_rewritten_not_weakened() -> None:
    source = module._recording_test(32)
    tree = ast.parse(source)
    assert not any(isinstance(node, ast.Assert) for node in ast.walk(tree))
    assert source.count("_mafl_record(") == module._records()[32]["test"].count("assert ")
