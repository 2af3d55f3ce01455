"""Tasks: generated arithmetic, GSM8K and MATH from the shared data, and the registry."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from mafl_graph.tasks import GSM8K, MATH, Arithmetic, Problem, Task, get_task

DATA = Path(os.environ.get("MAFL_DATA_DIR", Path(__file__).parents[2] / "shared" / "data"))
needs_data = pytest.mark.skipif(
    not (DATA / "gsm8k" / "test.jsonl").is_file()
    or not (DATA / "math500" / "test.jsonl").is_file(),
    reason=f"shared data not found under {DATA} (set MAFL_DATA_DIR)",
)


def python_value(expression: str) -> int:
    """Python's own reading of an expression of integers, + - * and parentheses."""
    return int(eval(expression, {"__builtins__": {}}))  # noqa: S307 - test oracle on our own text


# --- arithmetic -------------------------------------------------------------------------------


def test_arithmetic_defaults_follow_the_paper() -> None:
    task = Arithmetic()
    problems = task.load("test", 200)
    assert len(problems) == 200
    assert problems[17].id == "arithmetic-test-00017"
    for p in problems:
        numbers = [int(v) for v in p.question.replace("*", "+").replace("-", "+").split("+")]
        assert len(numbers) == 6 and all(0 <= v <= 29 for v in numbers)
        assert [c for c in p.question if c in "+-*"] == list("+*+-*")
        assert p.answer == str(python_value(p.question))
    assert {p.question for p in problems} != {problems[0].question}


def test_arithmetic_knobs() -> None:
    task = Arithmetic(terms=4, low=-5, high=5, operators="-*", random_operators=True, seed=3)
    problems = task.load("train", 100)
    assert all(p.answer == str(python_value(p.question)) for p in problems)
    assert any("(-" in p.question for p in problems)
    patterns = {"".join(c for c in p.question if c in "+*" or c == "-") for p in problems}
    assert len(patterns) > 1  # random operators vary per problem
    cycled = Arithmetic(terms=5, operators="*-").load("test", 5)
    assert all(p.question.count("*") == 2 and p.question.count("-") == 2 for p in cycled)


def test_arithmetic_splits_are_disjoint_and_deterministic() -> None:
    task = Arithmetic()
    train = task.load("train", 1000)
    test = task.load("test", 1000)
    assert len({p.question for p in train}) == 1000 == len({p.question for p in test})
    assert not {p.question for p in train} & {p.question for p in test}
    other_seed = Arithmetic(seed=1).load("test", 1000)
    assert not {p.question for p in train} & {p.question for p in other_seed}
    assert task.load("test", 1000) == test
    assert task.load("test", 10) == test[:10]
    assert len(task.load("test")) == 1000


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"terms": 1}, "terms"),
        ({"low": 5, "high": 2}, "low"),
        ({"operators": "+/"}, r"'\+/'"),
        ({"operators": ""}, "operators"),
    ],
)
def test_arithmetic_validates_knobs(kwargs: dict, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        Arithmetic(**kwargs)


def test_arithmetic_small_space_raises_instead_of_looping() -> None:
    with pytest.raises(ValueError, match="distinct"):
        Arithmetic(terms=2, low=0, high=2, operators="+").load("test", 50)
    with pytest.raises(ValueError, match="split"):
        Arithmetic().load("validation", 5)


def test_arithmetic_prompt_extraction_and_grading() -> None:
    task = Arithmetic()
    problem = task.load("test", 1)[0]
    prompt = task.question_prompt(problem)
    assert f"What is the result of {problem.question}?" in prompt
    assert "\\boxed{answer}" in prompt
    assert task.extract_answer(r"so 3 + 4 = \boxed{7}, not 8") == "7"
    assert task.extract_answer("it is 1,234.") == "1234"
    assert task.extract_answer("no idea") is None
    assert task.is_equivalent("7.0", "7") and task.is_equivalent("14/2", "7")
    assert not task.is_equivalent("8", "7") and not task.is_equivalent("seven", "7")


# --- GSM8K and MATH ---------------------------------------------------------------------------


@needs_data
def test_gsm8k_loads_local_data_with_references() -> None:
    task = GSM8K(data_dir=str(DATA))
    test = task.load("test", 3)
    assert [p.answer for p in test] == ["18", "3", "70000"]
    assert test[0].id == "gsm8k-test-00000"
    assert test[0].question.startswith("Janet")
    assert task.load("train", 1)[0].answer == "72"
    assert len(task.load("test")) == 1000
    prompt = task.question_prompt(test[0])
    assert prompt.startswith("Can you solve the following math problem? Janet")
    assert "\\boxed{answer}" in prompt
    assert task.extract_answer("so $70,000 profit") == "70000"
    assert task.is_equivalent("70,000", test[2].answer or "")


@needs_data
def test_gsm8k_finds_data_through_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAFL_DATA_DIR", str(DATA))
    assert GSM8K().load("test", 1)[0].answer == "18"
    path = str(DATA / "gsm8k" / "train.jsonl")
    assert GSM8K(data_files={"test": path}).load("test", 1)[0].answer == "72"


@needs_data
def test_math_loads_local_data_with_references() -> None:
    task = MATH(data_dir=str(DATA))
    problems = task.load("test", 4)
    assert [p.answer for p in problems] == [
        r"\left( 3, \frac{\pi}{2} \right)",
        "p - q",
        r"\frac{14}{3}",
        "9",
    ]
    assert problems[0].id == "math-test-00000"
    assert len(task.load("test")) == 400
    assert "\\boxed{answer}" in task.question_prompt(problems[0])
    assert task.extract_answer(r"so $\boxed{\dfrac{14}{3}}$") == r"\dfrac{14}{3}"
    assert task.extract_answer("the answer is 14/3") is None  # no last-number guessing
    assert task.is_equivalent(r"\dfrac{14}{3}", problems[2].answer or "")
    assert task.is_equivalent(r"(3, \pi/2)", problems[0].answer or "")
    assert not task.is_equivalent("p + q", problems[1].answer or "")


def test_math_other_splits_need_data_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="data_files"):
        MATH(data_dir=str(tmp_path)).load("train", 1)
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"question": "1+1?", "answer": "It is 2.The answer is: 2"}) + "\n")
    assert MATH(data_files={"train": str(path)}).load("train") == [
        Problem("math-train-00000", "1+1?", "2")
    ]


@pytest.mark.parametrize(
    ("lines", "needle"),
    [
        (
            ['{"question": "q", "answer": "#### 1"}', '{"question": "q2"'],
            "line 2 is not valid JSON",
        ),
        (['{"question": "q", "answer": "#### 1"}', '{"question": "q2"}'], "row 1: field 'answer'"),
        (['{"question": "q", "answer": "no marker"}'], "row 0: the answer has no '####"),
    ],
)
def test_malformed_gsm8k_file_gives_a_clear_error(
    tmp_path: Path, lines: list[str], needle: str
) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=needle) as caught:
        GSM8K(data_files={"test": str(path)}).load("test")
    assert str(path) in str(caught.value)


def test_malformed_math_row_and_missing_files(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"question": "q", "answer": "no final answer"}) + "\n")
    with pytest.raises(ValueError, match=r"row 0: .*boxed"):
        MATH(data_files={"test": str(path)}).load("test")
    with pytest.raises(FileNotFoundError, match="gsm8k/test.jsonl"):
        GSM8K(data_dir=str(tmp_path)).load("test")
    with pytest.raises(ValueError, match="'train'"):
        GSM8K(data_files={"test": str(path)}).load("train")


# --- registry ---------------------------------------------------------------------------------


def test_get_task() -> None:
    task = get_task("Arithmetic", terms=3)
    assert isinstance(task, Arithmetic) and task.terms == 3
    assert isinstance(task, Task)
    assert isinstance(get_task("GSM8K"), GSM8K) and isinstance(get_task("math"), MATH)
    with pytest.raises(ValueError, match="arithmetic, dm-math, gsm8k, humaneval, math, mixed"):
        get_task("mmlu")


@pytest.mark.parametrize("variable", ["HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"])
@pytest.mark.parametrize("task", ["gsm8k", "math"])
def test_an_offline_hub_is_one_line_naming_what_to_pass_at_once(
    monkeypatch: pytest.MonkeyPatch, variable: str, task: str
) -> None:
    from typer.testing import CliRunner

    from mafl_graph.cli import app

    monkeypatch.delenv("MAFL_DATA_DIR", raising=False)
    monkeypatch.setenv(variable, "1")
    started = time.perf_counter()
    result = CliRunner().invoke(app, ["debate", "--task", task, "--n", "2", "--run-dir", "unused"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert variable in lines[0] and "--data-dir" in lines[0]
    assert time.perf_counter() - started < 10  # no retries against an unreachable hub
    assert not Path("unused").exists()
