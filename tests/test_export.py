"""Exports (OpenAI, Vertex AI, Hugging Face), their validators, and `mafl datasets` end to end."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from fakes import EchoTask
from test_finetune_datasets import run
from test_traces import scripted_society
from typer.testing import CliRunner

from mafl_graph import Arithmetic, create_debate_graph, run_debates
from mafl_graph.cli import app
from mafl_graph.finetune import (
    Example,
    InvalidDatasetError,
    build_datasets,
    to_hf_dataset,
    to_openai_jsonl,
    to_vertex_jsonl,
    validate_openai,
    validate_vertex,
)
from mafl_graph.rundir import prepare_run_dir


def example(*turns: tuple[str, str, int | None], problem_id: str = "p") -> Example:
    messages: list[Any] = []
    for role, content, weight in turns:
        message: dict[str, Any] = {"role": role, "content": content}
        if weight is not None:
            message["weight"] = weight
        messages.append(message)
    return Example(messages=messages, problem_id=problem_id, agent=0, role="critic", subset="D_C-")


CRITIC = example(
    ("user", "What is 2+2?", None),
    ("assistant", "5", 0),
    ("user", "Others say 4. Update?", None),
    ("assistant", "\\boxed{4}", 1),
)
GENERATOR = example(("user", "What is 2+2?", None), ("assistant", "\\boxed{4}", 1))


def write_lines(path: Path, lines: list[Any]) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def found(issues) -> set[tuple[int | None, str]]:
    return {(i.line, i.reason) for i in issues}


def assert_reported(issues, line: int | None, pattern: str) -> None:
    hits = [i for i in issues if i.line == line and re.search(pattern, i.reason)]
    assert hits, f"no issue on line {line} matching {pattern!r} in {[str(i) for i in issues]}"


# OpenAI ------------------------------------------------------------------------------------

OPENAI_OK = {
    "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
}
OPENAI_BAD = [
    ("not json {", r"not valid JSON"),
    ("", r"empty line"),
    ([1, 2], r"must be a JSON object"),
    ({"prompt": "x"}, r"'messages' must be a non-empty list"),
    ({"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]},
     r"role 'robot'"),
    ({"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "y"}]},
     r"message 1 \(user\) has empty or missing content"),
    ({"messages": [{"role": "user"}, {"role": "assistant", "content": "y"}]},
     r"empty or missing content"),
    ({"messages": [{"role": "user", "content": "x", "weight": 1},
                   {"role": "assistant", "content": "y"}]},
     r"only assistant turns may"),
    ({"messages": [{"role": "user", "content": "x"},
                   {"role": "assistant", "content": "y", "weight": 2}]},
     r"weight 2; it must be 0 or 1"),
    ({"messages": [{"role": "user", "content": "x"},
                   {"role": "assistant", "content": "y", "weight": True}]},
     r"weight True; it must be 0 or 1"),
    ({"messages": [{"role": "user", "content": "x"}]}, r"no assistant message"),
    ({"messages": [{"role": "user", "content": "x"},
                   {"role": "assistant", "content": "y", "weight": 0}]},
     r"every assistant message has weight 0"),
    ({"messages": [{"role": "user", "content": "x", "text": "x"},
                   {"role": "assistant", "content": "y"}]},
     r"unrecognised keys \['text'\]"),
    ({"messages": [{"role": "user", "content": "x" * 400},
                   {"role": "assistant", "content": "y"}]},
     r"about \d+ tokens, over the limit of 50"),
]  # fmt: skip


def test_openai_validator_reports_every_bad_line_with_its_number(tmp_path: Path) -> None:
    lines: list[Any] = []
    expected = []
    for bad, pattern in OPENAI_BAD:
        lines += [OPENAI_OK, bad]
        expected.append((len(lines), pattern))
    path = write_lines(tmp_path / "data.jsonl", lines)
    issues = validate_openai(path, max_tokens=50, min_examples=1)
    for line, pattern in expected:
        assert_reported(issues, line, pattern)
    assert all(i.line in {line for line, _ in expected} for i in issues)  # valid lines pass
    assert validate_openai(write_lines(tmp_path / "ok.jsonl", [OPENAI_OK] * 10)) == []


def test_openai_minimum_example_count(tmp_path: Path) -> None:
    issues = validate_openai(write_lines(tmp_path / "few.jsonl", [OPENAI_OK] * 9))
    assert found(issues) == {(None, "9 example(s); OpenAI needs at least 10 to start a job")}
    assert "file: 9 example(s)" in str(issues[0])
    assert validate_openai([OPENAI_OK] * 2, min_examples=2) == []  # records work as well


def test_openai_export_writes_weights_and_round_trips(tmp_path: Path) -> None:
    path = to_openai_jsonl([CRITIC, GENERATOR] * 5, tmp_path / "out" / "a.openai.jsonl")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) == 10 and set(lines[0]) == {"messages"}
    assert lines[0]["messages"][1] == {"role": "assistant", "content": "5", "weight": 0}
    assert lines[0]["messages"][3]["weight"] == 1
    assert validate_openai(path) == []


def test_openai_export_refuses_invalid_data_and_writes_nothing(tmp_path: Path) -> None:
    empty_reply = example(("user", "q", None), ("assistant", " ", 1))
    path = tmp_path / "a.openai.jsonl"
    with pytest.raises(InvalidDatasetError) as error:
        to_openai_jsonl([GENERATOR, empty_reply, GENERATOR, empty_reply], path)
    assert not path.exists()
    message = str(error.value)
    assert "line 2: message 2 (assistant) has empty or missing content" in message
    assert "line 4: message 2 (assistant) has empty or missing content" in message
    assert "file: 4 example(s); OpenAI needs at least 10" in message
    assert len(error.value.issues) == 3


# Vertex AI -------------------------------------------------------------------------------------


def turn(role: str, text: str) -> dict[str, Any]:
    return {"role": role, "parts": [{"text": text}]}


VERTEX_OK = {"contents": [turn("user", "hi"), turn("model", "yo")]}
VERTEX_BAD = [
    ("{oops", r"not valid JSON"),
    ("3", r"must be a JSON object"),
    ({"messages": []}, r"unrecognised keys \['messages'\]"),
    ({"contents": []}, r"'contents' must be a non-empty list"),
    ({"contents": [turn("user", "x"), turn("assistant", "y")]}, r"Gemini takes 'user' or 'model'"),
    ({"contents": [turn("user", "x"), turn("model", "  ")]}, r"part 1 has empty text"),
    ({"contents": [{"role": "user"}, turn("model", "y")]}, r"needs a non-empty 'parts' list"),
    ({"contents": [{"role": "user", "parts": [{"text": "x", "fileData": {}}]}, turn("model", "y")]},
     r"exactly one of"),
    ({"contents": [turn("model", "x"), turn("user", "y"), turn("model", "z")]},
     r"must start with a 'user' turn"),
    ({"contents": [turn("user", "x"), turn("model", "y"), turn("user", "z")]},
     r"must end with a 'model' turn"),
    ({"contents": [turn("user", "x"), turn("user", "y"), turn("model", "z")]},
     r"contents\[1\] and \[2\] are both 'user'; turns must alternate"),
    ({"systemInstruction": {"parts": [{"text": ""}]}, **VERTEX_OK},
     r"systemInstruction part 1 has empty text"),
    ({"contents": [turn("user", "x" * 400), turn("model", "y")]},
     r"over the limit of 50"),
]  # fmt: skip


def test_vertex_validator_reports_every_bad_line_with_its_number(tmp_path: Path) -> None:
    lines: list[Any] = []
    expected = []
    for bad, pattern in VERTEX_BAD:
        lines += [VERTEX_OK, bad]
        expected.append((len(lines), pattern))
    path = write_lines(tmp_path / "v.jsonl", lines)
    issues = validate_vertex(path, max_tokens=50, min_examples=30)
    for line, pattern in expected:
        assert_reported(issues, line, pattern)
    assert all(i.line in {line for line, _ in expected} for i in issues if i.line)
    assert_reported(issues, None, r"26 example\(s\); Vertex AI needs at least 30")
    assert validate_vertex([VERTEX_OK] * 16) == []


def test_vertex_export_maps_roles_and_system_messages(tmp_path: Path) -> None:
    with_system = example(("system", "Be brief.", None), *[
        (m["role"], m["content"], m.get("weight")) for m in CRITIC["messages"]
    ])  # fmt: skip
    path = to_vertex_jsonl(
        [with_system] * 16, tmp_path / "v.jsonl", system_instruction="You are agent 0."
    )
    record = json.loads(path.read_text().splitlines()[0])
    assert record["systemInstruction"] == {
        "parts": [{"text": "You are agent 0."}, {"text": "Be brief."}]
    }
    assert [c["role"] for c in record["contents"]] == ["user", "model", "user", "model"]
    assert record["contents"][3] == turn("model", "\\boxed{4}")
    assert validate_vertex(path) == []
    late_system = example(("user", "q", None), ("system", "s", None), ("assistant", "a", 1))
    with pytest.raises(ValueError, match="system message after the conversation started"):
        to_vertex_jsonl([late_system], tmp_path / "late.jsonl")
    with pytest.raises(InvalidDatasetError, match="Vertex AI needs at least 16"):
        to_vertex_jsonl([GENERATOR], tmp_path / "few.jsonl")
    assert not (tmp_path / "few.jsonl").exists()


# Hugging Face ---------------------------------------------------------------------------------


def test_hf_conversational_form_keeps_weights() -> None:
    data = to_hf_dataset([CRITIC, GENERATOR], "messages")
    assert set(data.column_names) == {"messages", "problem_id", "agent", "role", "subset"}
    assert [m["weight"] for m in data[0]["messages"]] == [None, 0, None, 1]
    assert data[1]["messages"][0] == {"role": "user", "content": "What is 2+2?", "weight": None}


def test_hf_prompt_completion_form_learns_only_the_final_reply() -> None:
    data = to_hf_dataset([CRITIC, GENERATOR], "prompt_completion")
    assert set(data.column_names) >= {"prompt", "completion"}
    assert [m["role"] for m in data[0]["prompt"]] == ["user", "assistant", "user"]
    assert data[0]["prompt"][1]["content"] == "5"  # the first answer is context only
    assert data[0]["completion"] == [{"role": "assistant", "content": "\\boxed{4}"}]
    assert data[1]["prompt"] == [{"role": "user", "content": "What is 2+2?"}]
    trained_twice = example(("user", "q", None), ("assistant", "a", 1), ("user", "r", None),
                            ("assistant", "b", 1))  # fmt: skip
    with pytest.raises(InvalidDatasetError, match="line 2: the final turn must be the only"):
        to_hf_dataset([CRITIC, trained_twice], "prompt_completion")
    assert len(to_hf_dataset([], "prompt_completion")) == 0
    with pytest.raises(ValueError, match="form must be"):
        to_hf_dataset([CRITIC], "chatml")  # type: ignore[arg-type]


def test_real_debate_datasets_export_and_validate(tmp_path: Path) -> None:
    sets = build_datasets(run(tmp_path), EchoTask(), w=0.5)
    for dataset in sets.values():
        if not dataset.examples:
            continue
        openai = to_openai_jsonl(dataset.examples, tmp_path / f"{dataset.name}.o", min_examples=1)
        vertex = to_vertex_jsonl(dataset.examples, tmp_path / f"{dataset.name}.v", min_examples=1)
        assert validate_openai(openai, min_examples=1) == []
        assert validate_vertex(vertex, min_examples=1) == []
        assert len(to_hf_dataset(dataset.examples, "prompt_completion")) == len(dataset.examples)


# `mafl datasets` ------------------------------------------------------------------------------

SETTINGS = {
    "task": "arithmetic",
    "task_options": {"terms": 2, "low": 0, "high": 20, "operators": "+", "seed": 0},
    "model": "scripted",
    "agents": 3,
    "rounds": 2,
    "n": 6,
    "split": "test",
    "summarize": True,
    "seed": 0,
    "temperature": None,
    "max_tokens": None,
}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A `mafl debate`-shaped run: arithmetic sums, scripted agents, SQLite checkpoints.

    Agent a answers problem i wrong in round 1 when (i + a) % 3 == 0 and right otherwise;
    everyone is right in round 2. Per agent: D_G = 4, D_C- = 2, D_C+ = 4.
    """
    directory = tmp_path_factory.mktemp("run")
    task = Arithmetic(**SETTINGS["task_options"])
    problems = task.load("test", SETTINGS["n"])
    index = {p.question: i for i, p in enumerate(problems)}

    def script(agent: int, question: str, round_: int) -> str:
        match = re.search(r"result of (.+?)\?", question)
        assert match, question
        expression = match.group(1)
        value = sum(int(x) for x in expression.split("+"))
        if round_ == 1 and (index[expression] + agent) % 3 == 0:
            value += 1
        return f"Adding up: \\boxed{{{value}}}"

    prepare_run_dir(directory, SETTINGS)
    graph = create_debate_graph(scripted_society(script), task, rounds=2)
    results = run_debates(
        graph, problems, run_id="debate", db_path=directory / "debates.sqlite", progress=False
    )
    assert all(r.correct for r in results)
    return directory


def invoke(*args: str):
    return CliRunner().invoke(app, ["datasets", *args], env={"COLUMNS": "200"})


def test_cli_builds_validates_and_exports_every_format(run_dir: Path) -> None:
    result = invoke("--run-dir", str(run_dir), "--min-examples", "1")
    assert result.exit_code == 0, result.output
    out = run_dir / "datasets"
    for agent in range(3):
        for role in ("generator", "critic"):
            stem = f"agent{agent}-{role}"
            assert stem in result.output
            assert validate_openai(out / f"{stem}.openai.jsonl", min_examples=1) == []
            assert validate_vertex(out / f"{stem}.vertex.jsonl", min_examples=1) == []
            assert (out / f"{stem}.hf-messages" / "dataset_info.json").exists()
            assert (out / f"{stem}.hf-prompt-completion" / "dataset_info.json").exists()
    stats = json.loads((out / "stats.json").read_text())
    assert stats["valid"] is True and stats["debates"] == 6 and stats["unfinished"] == []
    sizes = {name: s["examples"] for name, s in stats["datasets"].items()}
    assert sizes == {f"agent{a}-{r}": 4 if r == "generator" else 3 for a in range(3)
                     for r in ("generator", "critic")}  # fmt: skip
    critic = stats["datasets"]["agent1-critic"]
    assert (critic["wrong_first"], critic["right_first"]) == (2, 4)
    assert (critic["used_wrong_first"], critic["used_right_first"]) == (2, 1)
    assert stats["examples_with_target_reference"] == sizes  # the consensus was always right
    lines = (out / "agent0-critic.openai.jsonl").read_text().splitlines()
    weights = [m.get("weight") for m in json.loads(lines[0])["messages"]]
    assert weights == [None, 0, None, 1]


def test_cli_fails_listing_every_bad_file_and_line(run_dir: Path) -> None:
    result = invoke("--run-dir", str(run_dir), "--format", "openai")
    assert result.exit_code == 1, result.output
    for agent in range(3):
        assert f"agent{agent}-critic.openai.jsonl" in result.output
        assert not (run_dir / "datasets" / f"agent{agent}-critic.openai.jsonl").exists()
    assert result.output.count("OpenAI needs at least 10") == 6
    assert "Validation failed" in result.output
    stats = json.loads((run_dir / "datasets" / "stats.json").read_text())
    assert stats["valid"] is False and len(stats["issues"]) == 6


def test_cli_reference_target_and_one_format(run_dir: Path) -> None:
    result = invoke(
        "--run-dir", str(run_dir), "--target", "reference", "--format", "vertex",
        "--w", "1", "--min-examples", "1", "--seed", "3",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    stats = json.loads((run_dir / "datasets" / "stats.json").read_text())
    assert stats["target"] == "reference" and stats["formats"] == ["vertex"]
    assert stats["datasets"]["agent0-critic"]["examples"] == 2  # w=1: D_C- only


@pytest.mark.parametrize(
    "args, message",
    [
        (["--w", "1.5"], "w=1.5"),
        (["--w", "-0.2"], "w=-0.2"),
        (["--target", "majority"], "--target must be one of"),
        (["--format", "csv"], "--format must be one of"),
    ],
)
def test_cli_refuses_bad_options(run_dir: Path, args: list[str], message: str) -> None:
    result = invoke("--run-dir", str(run_dir), *args)
    assert result.exit_code == 2
    assert message in result.output


def test_cli_needs_a_run_directory(tmp_path: Path) -> None:
    result = invoke("--run-dir", str(tmp_path))
    assert result.exit_code == 2
    assert "manifest.json not found" in result.output


def test_cli_skips_an_empty_set_with_its_reason_and_writes_the_others(tmp_path: Path) -> None:
    task = Arithmetic(**SETTINGS["task_options"])
    problems = task.load("test", SETTINGS["n"])

    def script(agent: int, question: str, round_: int) -> str:
        match = re.search(r"result of (.+?)\?", question)
        assert match, question
        value = sum(int(x) for x in match.group(1).split("+"))
        wrong_first = agent > 0 and round_ == 1  # agent 0 is never wrong: it has no D_C-
        return f"Adding up: \\boxed{{{value + wrong_first}}}"

    prepare_run_dir(tmp_path, SETTINGS)
    graph = create_debate_graph(scripted_society(script), task, rounds=2)
    run_debates(
        graph, problems, run_id="debate", db_path=tmp_path / "debates.sqlite", progress=False
    )
    result = invoke("--run-dir", str(tmp_path), "--w", "1", "--min-examples", "1")
    assert result.exit_code == 0, result.output
    assert "skipped agent0-critic" in " ".join(result.output.split())
    out = tmp_path / "datasets"
    assert not list(out.glob("agent0-critic.*"))
    assert validate_openai(out / "agent1-critic.openai.jsonl", min_examples=1) == []
    stats = json.loads((out / "stats.json").read_text())
    # Agents 1 and 2 are always wrong first, so their generators have nothing to learn either.
    skipped = {"agent0-critic", "agent1-generator", "agent2-generator"}
    assert set(stats["skipped"]) == skipped and stats["valid"] is True
    assert "D_C- (first answers wrong" in stats["skipped"]["agent0-critic"]
