"""A real debate: the embedded SmolLM2-135M, the real graph and a SQLite checkpoint file."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from fakes import CallRecorder

from mafl_graph import Arithmetic, Society, create_debate_graph, run_debates


@pytest.mark.integration
def test_embedded_model_debates_and_resumes_from_sqlite(engine, tmp_path: Path) -> None:
    task = Arithmetic(terms=2, low=0, high=9, operators="+")
    society = Society.from_model("local:smollm2", n_agents=2, max_tokens=24)
    assert society.agents[0].generator.seed != society.agents[1].generator.seed
    graph = create_debate_graph(society, task, rounds=2, summarize=True)
    problems = task.load("test", 1)
    db = tmp_path / "debates.sqlite"

    recorder = CallRecorder()
    [result] = run_debates(
        graph, problems, run_id="it", db_path=db, progress=False, callbacks=[recorder]
    )
    assert result.ok, result.error
    assert len(recorder.runs) == 2 + 2 + 2  # generators, summaries, critics
    assert [(r["round"], r["role"]) for r in result.responses].count((2, "critic")) == 2
    for response in result.responses:
        assert response["text"].strip()
        assert response["model"] == "smollm2"
        assert response["messages"][0]["content"] == task.question_prompt(problems[0])
    if result.consensus is None:
        assert result.correct is False
    else:
        assert result.correct == task.is_equivalent(result.consensus, problems[0].answer)

    with sqlite3.connect(db) as conn:
        threads = {row[0] for row in conn.execute("select thread_id from checkpoints")}
    assert threads == {f"it/{problems[0].id}"}

    again = run_debates(
        graph, problems, run_id="it", db_path=db, progress=False, callbacks=[recorder]
    )
    assert len(recorder.runs) == 6  # read back, not asked again
    assert again == [result]
