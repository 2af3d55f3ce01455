"""The cooperation table's logic with scripted models: its rows, resumption and arithmetic."""

from __future__ import annotations

import pytest
from fakes import EchoTask, ScriptedModel

from mafl_graph.experts.cooperate import (
    CooperateSettings,
    measure,
    render,
    strategies,
    summarize,
)


def boxed(value: str):
    return lambda messages: f"\\boxed{{{value}}}"


def test_the_rows_are_the_issues_strategies_at_equal_answer_budgets():
    experts = {"expert0": ScriptedModel(label="e0"), "expert1": ScriptedModel(label="e1")}
    rows = strategies(
        experts,
        lambda i: ScriptedModel(label=f"base{i}"),
        CooperateSettings(rounds=3),
        roles=["adds", "solves"],
        instruction="Work together.",
        mixer=lambda i: ScriptedModel(label=f"mix{i}"),
    )
    by_name = {r.name: r for r in rows}
    assert list(by_name) == [
        "base",
        "expert0",
        "expert1",
        "experts debate",
        "experts debate, evolved prompts",
        "mixer",
        "mixer debate",
        "base majority vote",
    ]
    evolved = by_name["experts debate, evolved prompts"]
    assert [a.role for a in evolved.society.agents] == ["adds", "solves"]
    assert evolved.prompts is not None and evolved.prompts.instruction == "Work together."
    # The vote gets as many answers as the debate gives: agents x rounds.
    assert len(by_name["base majority vote"].society) == 2 * 3
    assert by_name["base majority vote"].rounds == 1
    assert {r.name for r in rows if r.single_expert} == {"expert0", "expert1"}
    with pytest.raises(ValueError, match="no experts"):
        strategies({}, lambda i: ScriptedModel(), CooperateSettings())


def test_a_measured_strategy_is_read_back_and_never_asked_again(tmp_path):
    task = EchoTask(["1", "2", "3"])
    problems = task.load("test")
    model = ScriptedModel(reply=boxed("1"))
    rows = strategies({"expert0": model}, lambda i: ScriptedModel(), CooperateSettings())
    single = next(r for r in rows if r.name == "expert0")
    first = measure(single, task, problems, tmp_path, CooperateSettings())
    assert first["correct"] == {"echo-0": True, "echo-1": False, "echo-2": False}
    assert first["calls"] == 3 and len(model.calls) == 3
    again = measure(single, task, problems, tmp_path, CooperateSettings())
    assert again["correct"] == first["correct"] and len(model.calls) == 3
    # Other problems are another measure, whose debates come from the same checkpoints.
    fewer = measure(single, task, problems[:2], tmp_path, CooperateSettings())
    assert list(fewer["correct"]) == ["echo-0", "echo-1"] and len(model.calls) == 3


def test_the_summary_pairs_each_row_with_the_base_and_the_best_single_expert():
    task = EchoTask(["1", "2", "3", "4"])
    problems = task.load("test")
    ids = [p.id for p in problems]

    def record(flags, single=False):
        return {
            "correct": dict(zip(ids, flags, strict=True)),
            "note": "",
            "single_expert": single,
            "calls": 4,
            "tokens": 40,
            "seconds": 1.0,
            "failed": 0,
        }

    records = {
        "base": record([True, False, False, False]),
        "expert0": record([True, True, False, False], single=True),
        "expert1": record([True, True, True, False], single=True),
        "experts debate": record([True, True, True, True]),
    }
    table = summarize(records, problems, task)
    assert table["best_single"] == "expert1"
    rows = {r["strategy"]: r for r in table["rows"]}
    assert rows["experts debate"]["accuracy"]["mean"] == 1.0
    assert rows["experts debate"]["vs_base"]["mean"] == pytest.approx(0.75)
    assert rows["experts debate"]["vs_best_single"]["mean"] == pytest.approx(0.25)
    assert "vs_best_single" not in rows["expert1"]
    assert "vs_base" not in rows["base"]
    text = render({"settings": {**CooperateSettings().__dict__}, "splits": {"test": table}})
    assert "| experts debate | 100.0 ± 0.0 |" in text
    assert "Best single expert (chosen on these problems): `expert1`." in text


@pytest.mark.parametrize(
    "args, expected",
    [
        ([], "is not an experts run"),
        (["--splits", "test,dev"], "unknown split(s) ['dev']"),
        (["--n", "0"], "n must be at least 1; got 0"),
        (["--rounds", "0"], "rounds must be at least 1; got 0"),
    ],
)
def test_bad_input_exits_2_naming_the_value_and_writes_nothing(args, expected, tmp_path):
    from typer.testing import CliRunner

    from mafl_graph.cli import app

    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["experts", "cooperate", "--run-dir", str(run), *args])
    assert result.exit_code == 2, result.output
    assert expected in " ".join(result.output.split())
    assert not run.exists()
