"""What a debate's checkpoints hold: linear in what was said, and every conversation exact.

``data/full_form_checkpoints.sqlite`` holds a run in the earlier format, where every response
carried all its messages and every checkpoint the whole lists (and every ``Send`` the whole
state): problem echo-0 finished, echo-1 stopped by an error in round 2. ``data/
full_form_traces.json`` holds the traces that format gave for the same debates run to the end.
Both were written by the models of :func:`society` below, with ``rounds=3``.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
import warnings
from pathlib import Path
from typing import Any

import pytest
from fakes import EchoTask, ScriptedModel
from langchain_core.messages import BaseMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

from mafl_graph import Society, create_debate_graph, run_debates
from mafl_graph.debate.state import Response
from mafl_graph.society import Agent
from mafl_graph.traces import DebateTrace, aread_traces, read_traces, read_traces_sqlite

DATA = Path(__file__).parent / "data"
FILLER = [
    "so",
    "the",
    "sum",
    "of",
    "and",
    "then",
    "we",
    "carry",
    "multiply",
    "add",
    "check",
    "each",
    "step",
    "again",
    "result",
]


def society(n_agents: int = 3, *, fail_q1_round2: bool = False) -> Society:
    """Replies that depend on who answers and on the whole conversation they were sent."""

    def model(label: str) -> ScriptedModel:
        def reply(messages: list[BaseMessage]) -> str:
            round_ = 1 + sum(m.type == "ai" for m in messages)
            if fail_q1_round2 and label == "agent1" and round_ == 2 and "q1" in messages[0].text:
                raise RuntimeError("the model broke in round 2")
            tail = messages[-1].text[-24:].replace("\n", " ")
            return (
                f"{label} round {round_} read {len(messages)} turns ending {tail!r}: "
                f"\\boxed{{{round_ % 2 + 1}}}"
            )

        return ScriptedModel(label=label, reply=reply)

    agents = tuple(
        Agent(f"agent{i}", model(f"agent{i}"), model(f"agent{i}")) for i in range(n_agents)
    )
    return Society(agents=agents, summarizer=model("summarizer"))


def talkers(n_agents: int, length: int = 600) -> Society:
    """Replies of ``length`` characters, each different, as a model's would be."""
    count = [0]

    def reply(messages: list[BaseMessage]) -> str:
        count[0] += 1
        words = [FILLER[(count[0] * 7 + i * i) % len(FILLER)] for i in range(length // 5)]
        return f"{count[0]}: " + " ".join(words)[:length] + " \\boxed{1}"

    model = ScriptedModel(label="talker", reply=reply)
    agents = tuple(Agent(f"agent{i}", model, model) for i in range(n_agents))
    return Society(agents=agents, summarizer=model)


def said(trace: DebateTrace) -> int:
    """Characters of every call's new turns and reply (as benchmarks/checkpoint_size.py)."""
    total = 0
    own: dict[int, Response] = {}
    calls = [*trace.responses, *trace.summaries]
    for r in sorted(calls, key=lambda r: (r["round"], r["role"] == "critic")):
        before = own.get(r["agent"]) if r["role"] == "critic" else None
        skip = len(before["messages"]) + 1 if before else 0
        total += sum(len(m["content"]) for m in r["messages"][skip:]) + len(r["text"])
        if r["role"] != "summarizer":
            own[r["agent"]] = r
    return total


def stored_bytes(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        checkpoints = conn.execute(
            "SELECT sum(length(thread_id) + length(checkpoint_ns) + length(checkpoint_id)"
            " + ifnull(length(parent_checkpoint_id), 0) + length(type) + length(checkpoint)"
            " + length(metadata)) FROM checkpoints"
        ).fetchone()[0]
        writes = conn.execute(
            "SELECT sum(length(thread_id) + length(checkpoint_ns) + length(checkpoint_id)"
            " + length(task_id) + 8 + length(channel) + ifnull(length(type), 0)"
            " + ifnull(length(value), 0)) FROM writes"
        ).fetchone()[0]
    finally:
        conn.close()
    return int(checkpoints + writes)


def comparable(trace: DebateTrace) -> dict[str, Any]:
    """A trace without what names its run (run id, thread id, checkpoint metadata)."""
    keys = ("problem_id", "question", "reference", "consensus", "consensus_fraction", "correct")
    found = {k: getattr(trace, k) for k in keys}
    return {**found, "responses": trace.responses, "summaries": trace.summaries}


def full_form_traces() -> list[dict[str, Any]]:
    return list(json.loads((DATA / "full_form_traces.json").read_text()))


def test_the_bytes_stored_grow_linearly_with_what_was_said(tmp_path: Path) -> None:
    task = EchoTask(["1"])
    sizes = {}
    for rounds in (8, 16):
        db = tmp_path / f"r{rounds}.sqlite"
        graph = create_debate_graph(talkers(3), task, rounds=rounds)
        run_debates(graph, task.load("test"), run_id="r", db_path=db, progress=False)
        [trace] = read_traces_sqlite(db, "r")
        sizes[rounds] = (stored_bytes(db), said(trace))
        assert sizes[rounds][0] <= 3 * sizes[rounds][1], sizes
    # Twice the rounds, twice the bytes (the square would make it four times).
    assert sizes[16][0] / sizes[8][0] < 2.3, sizes


def test_a_long_question_is_stored_with_the_input_not_in_every_checkpoint(tmp_path: Path) -> None:
    db = tmp_path / "d.sqlite"
    question = "how many words are in this document? " * 5_000  # 185,000 characters
    task = EchoTask(["1"])
    graph = create_debate_graph(society(), task, rounds=4)
    problem = task.load("test")[0].__class__("doc", question, "1")
    run_debates(graph, [problem], run_id="r", db_path=db, progress=False)
    [trace] = read_traces_sqlite(db, "r")
    assert trace.question == question
    # The text holds it once per agent (each first prompt); the input and its write add two.
    assert stored_bytes(db) < (3 + 2 + 1) * len(question) < 3 * said(trace)


def test_a_stored_critique_holds_only_its_new_turns(tmp_path: Path) -> None:
    db = tmp_path / "d.sqlite"
    task = EchoTask(["1"])
    graph = create_debate_graph(society(), task, rounds=3)
    run_debates(graph, task.load("test"), run_id="r", db_path=db, progress=False)
    serde = JsonPlusSerializer()
    conn = sqlite3.connect(db)
    rows = conn.execute("SELECT channel, type, value FROM writes").fetchall()
    conn.close()
    stored = [
        write
        for channel, type_, value in rows
        if channel == "responses"
        for write in serde.loads_typed((type_, value))
    ]
    critiques = [w for w in stored if w["role"] == "critic"]
    assert len(critiques) == 6
    for w in critiques:
        assert "messages" not in w and w["follows"] == w["round"] - 1
        assert [t["role"] for t in w["prompt"]] == ["user"]
    # A fanned-out call is sent whose turn it is, not the state.
    sends = [serde.loads_typed((t, v)) for c, t, v in rows if c == "__pregel_tasks"]
    assert sends and all(set(s.arg) == {"agent", "round"} for s in sends)


def test_traces_rebuild_what_each_model_was_sent(tmp_path: Path) -> None:
    task = EchoTask(["1", "2"])
    debaters = society()
    graph = create_debate_graph(debaters, task, rounds=4)
    run_debates(graph, task.load("test"), run_id="r", db_path=tmp_path / "d.sqlite", progress=False)
    saver = InMemorySaver()
    run_debates(graph, task.load("test"), run_id="m", checkpointer=saver, progress=False)

    async def read_async() -> list[DebateTrace]:
        async with AsyncSqliteSaver.from_conn_string(str(tmp_path / "d.sqlite")) as reader:
            return (await aread_traces(reader, "r")).traces

    readers = {
        "sqlite": read_traces_sqlite(tmp_path / "d.sqlite", "r").traces,
        "async sqlite": asyncio.run(read_async()),
        "in-memory": read_traces(saver, "m").traces,
    }
    models: list[Any] = [m for a in debaters.agents for m in (a.generator, a.critic)]
    models.append(debaters.summarizer)
    for name, traces in readers.items():
        assert len(traces) == 2, name
        rebuilt = sorted(
            [(t["role"], t["content"]) for t in r["messages"]]
            for trace in traces
            for r in [*trace.responses, *trace.summaries]
        )
        sent = sorted(
            [({"human": "user", "ai": "assistant"}[m.type], m.text) for m in call]
            for model in models
            for call in model.calls
        )
        # Each model was called by both runs; every conversation appears once per run.
        assert sorted(rebuilt + rebuilt) == sent, name


def test_traces_equal_those_of_the_full_form(tmp_path: Path) -> None:
    task = EchoTask(["1", "2"])
    graph = create_debate_graph(society(), task, rounds=3, retry_policy=None)
    db = tmp_path / "d.sqlite"
    run_debates(graph, task.load("test"), run_id="r", db_path=db, progress=False)
    assert [comparable(t) for t in read_traces_sqlite(db, "r")] == full_form_traces()


def test_full_form_checkpoints_are_read_and_resumed(tmp_path: Path) -> None:
    db = tmp_path / "debates.sqlite"
    shutil.copy(DATA / "full_form_checkpoints.sqlite", db)
    expected = full_form_traces()
    before = read_traces_sqlite(db, "old")
    assert [comparable(t) for t in before] == expected[:1]
    assert [u.problem_id for u in before.unfinished] == ["echo-1"]

    # echo-1 resumes from its full-form checkpoints (pending turns that carry the state).
    task = EchoTask(["1", "2"])
    debaters = society()
    graph = create_debate_graph(debaters, task, rounds=3, retry_policy=None)
    results = run_debates(graph, task.load("test"), run_id="old", db_path=db, progress=False)
    assert all(r.ok for r in results)
    after = read_traces_sqlite(db, "old")
    assert [comparable(t) for t in after] == expected and after.unfinished == []
    # No answered call is asked again: no round-1 answer, no round-2 summary; the round-2
    # critiques that had not been saved, and round 3.
    assert all(not a.generator.calls for a in debaters.agents)  # type: ignore[attr-defined]
    assert len(debaters.summarizer.calls) == 3  # type: ignore[attr-defined]
    critiques = sum(len(a.critic.calls) for a in debaters.agents)  # type: ignore[attr-defined]
    assert 4 <= critiques <= 6


def test_a_response_that_continues_a_missing_one_is_a_clear_error() -> None:
    from mafl_graph.debate.state import add_responses

    orphan = {
        "agent": 0,
        "role": "critic",
        "round": 2,
        "prompt": [{"role": "user", "content": "again?"}],
        "follows": 1,
        "text": "\\boxed{1}",
        "answer": "1",
        "model": "m",
    }
    with pytest.raises(ValueError, match="round-1 response, which the checkpoint does not hold"):
        add_responses([], [[orphan]])  # type: ignore[list-item]


def test_a_run_estimated_above_the_limit_warns_naming_what_drives_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mafl_graph.debate.size import CheckpointSizeWarning, DebateShape, estimate_debate_bytes
    from mafl_graph.tasks.base import Problem

    task = EchoTask(["1"])
    # The estimate is of the order of what the benchmark measures (8.3 MB, 600-character replies).
    estimate = estimate_debate_bytes(DebateShape(27, 16, True, task), 250, reply_chars=600)
    assert 6e6 < estimate.total < 11e6 and estimate.driver == "agents"

    def run(rounds: int, agents: int, question: str) -> list[str]:
        graph = create_debate_graph(society(agents), task, rounds=rounds)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run_debates(
                graph,
                [Problem("p", question, "1")],
                run_id=f"{rounds}-{agents}-{len(question)}",
                db_path=tmp_path / "d.sqlite",
                progress=False,
            )
        return [str(w.message) for w in caught if w.category is CheckpointSizeWarning]

    monkeypatch.setenv("MAFL_CHECKPOINT_WARN_MB", "0.5")
    assert run(2, 3, "q") == []
    [agents] = run(2, 30, "q")
    assert "--agents" in agents and "0.5 MB limit set by $MAFL_CHECKPOINT_WARN_MB" in agents
    [rounds] = run(60, 2, "q")
    assert "each of the 60 rounds" in rounds and "--rounds" in rounds
    [question] = run(1, 2, "q" * 200_000)
    assert "question of problem 'p' (200,000 characters)" in question
    monkeypatch.setenv("MAFL_CHECKPOINT_WARN_MB", "0")  # off
    assert run(60, 2, "q") == []
    monkeypatch.setenv("MAFL_CHECKPOINT_WARN_MB", "lots")
    with pytest.raises(ValueError, match=r"\$MAFL_CHECKPOINT_WARN_MB must be a number"):
        run(2, 3, "q")
