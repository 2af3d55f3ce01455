"""Reading a run's debates back from real checkpoints (SQLite and in-memory savers)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from fakes import EchoTask, ScriptedModel
from langchain_core.messages import BaseMessage
from langgraph.checkpoint.base.id import uuid6
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

from mafl_graph import Society, arun_debates, create_debate_graph, run_debates
from mafl_graph.society import Agent
from mafl_graph.traces import aread_traces, read_traces, read_traces_sqlite

Script = Callable[[int, str, int], str]
"""(agent, round-1 question message, round) -> the agent's reply."""


def scripted_society(script: Script, n_agents: int = 3) -> Society:
    """Agents whose replies depend on who they are, the question and the round."""

    def model(agent: int) -> ScriptedModel:
        def reply(messages: list[BaseMessage]) -> str:
            round_ = 1 + sum(m.type == "ai" for m in messages)
            return script(agent, messages[0].text, round_)

        return ScriptedModel(label=f"agent{agent}", reply=reply)

    agents = tuple(Agent(f"agent{i}", model(i), model(i)) for i in range(n_agents))
    summarizer = ScriptedModel(label="summarizer", reply=lambda m: "The agents disagree.")
    return Society(agents=agents, summarizer=summarizer)


def always(value: str) -> Script:
    return lambda agent, question, round_: f"So the answer is \\boxed{{{value}}}."


def test_two_runs_in_one_sqlite_file_are_told_apart(tmp_path: Path) -> None:
    db = tmp_path / "debates.sqlite"
    task = EchoTask(["1", "2", "1"])
    graph = create_debate_graph(scripted_society(always("1")), task)
    run_debates(graph, task.load("test"), run_id="a", db_path=db, progress=False)
    run_debates(graph, task.load("test", 2), run_id="b", db_path=db, progress=False)

    a = read_traces_sqlite(db, "a")
    assert [t.thread_id for t in a] == ["a/echo-0", "a/echo-1", "a/echo-2"]
    assert a.unfinished == []
    first = a.traces[0]
    assert (first.run_id, first.problem_id, first.question, first.reference) == (
        "a",
        "echo-0",
        "q0",
        "1",
    )
    assert (first.consensus, first.consensus_fraction, first.correct) == ("1", 1.0, True)
    assert a.traces[1].correct is False
    assert len(first.responses) == 6 and len(first.summaries) == 3
    critic = next(r for r in first.responses if r["role"] == "critic" and r["agent"] == 1)
    assert [m["role"] for m in critic["messages"]] == ["user", "assistant", "user"]
    assert critic["answer"] == "1" and critic["model"] == "agent1"
    assert first.metadata["mafl_run_id"] == "a" and first.metadata["problem_id"] == "echo-0"
    assert [t.thread_id for t in read_traces_sqlite(db, "b")] == ["b/echo-0", "b/echo-1"]
    assert len(read_traces_sqlite(db, "nope")) == 0


def test_in_memory_saver_and_extra_metadata_filter() -> None:
    saver = InMemorySaver()
    task = EchoTask(["1", "2"])
    graph = create_debate_graph(scripted_society(always("2")), task)
    run_debates(graph, task.load("test"), run_id="r", checkpointer=saver, metadata={"iteration": 3})
    traces = read_traces(saver, "r")
    assert [t.problem_id for t in traces] == ["echo-0", "echo-1"]
    assert [t.correct for t in traces] == [False, True]
    assert traces.traces[0].metadata["iteration"] == 3
    assert len(read_traces(saver, "r", filter={"iteration": 3})) == 2
    assert len(read_traces(saver, "r", filter={"iteration": 4})) == 0


def test_a_thread_listed_twice_is_read_once_with_its_latest_state() -> None:
    saver = InMemorySaver()
    task = EchoTask(["1"])
    graph = create_debate_graph(scripted_society(always("1")), task)
    run_debates(graph, task.load("test"), run_id="r", checkpointer=saver, progress=False)
    assert read_traces(saver, "r").traces[0].consensus == "1"
    # A second submission of the same thread (LangGraph itself ignores new input while the
    # config metadata carries the thread's own run_id, so write it as the saver would).
    [submitted] = saver.list(None, filter={"mafl_run_id": "r", "source": "input"})
    again = {**submitted.checkpoint, "id": str(uuid6())}
    saver.put(submitted.config, again, submitted.metadata, {})  # type: ignore[arg-type]
    assert len(list(saver.list(None, filter={"mafl_run_id": "r", "source": "input"}))) == 2
    traces = read_traces(saver, "r")
    assert len(traces) == 0  # its latest state is the fresh submission: not finished
    assert [u.thread_id for u in traces.unfinished] == ["r/echo-0"]


def test_unfinished_threads_are_reported_not_read_as_done(tmp_path: Path) -> None:
    db = tmp_path / "d.sqlite"
    task = EchoTask(["1", "1", "1"])

    def script(agent: int, question: str, round_: int) -> str:
        if "q1" in question and round_ == 2:
            raise RuntimeError("the model broke in round 2")
        return "\\boxed{1}"

    graph = create_debate_graph(scripted_society(script), task, retry_policy=None)
    results = run_debates(graph, task.load("test"), run_id="r", db_path=db, progress=False)
    assert [r.ok for r in results] == [True, False, True]
    traces = read_traces_sqlite(db, "r")
    assert [t.problem_id for t in traces] == ["echo-0", "echo-2"]
    [broken] = traces.unfinished
    assert (broken.thread_id, broken.problem_id) == ("r/echo-1", "echo-1")
    assert broken.error is not None and "the model broke in round 2" in broken.error


def test_a_debate_stopped_before_the_vote_is_unfinished_until_resumed() -> None:
    saver = InMemorySaver()
    task = EchoTask(["1"])
    graph = create_debate_graph(scripted_society(always("1")), task)
    stopped = graph.compile(checkpointer=saver, interrupt_before=["vote"])
    run_debates(stopped, task.load("test"), run_id="r", progress=False)
    traces = read_traces(saver, "r")
    assert len(traces) == 0
    [waiting] = traces.unfinished
    assert waiting.problem_id == "echo-0" and waiting.error is None
    assert waiting.step is not None and waiting.step > 0
    run_debates(graph, task.load("test"), run_id="r", checkpointer=saver, progress=False)
    resumed = read_traces(saver, "r")
    assert [t.problem_id for t in resumed] == ["echo-0"] and resumed.unfinished == []
    assert len(resumed.traces[0].responses) == 6


def test_no_stated_answer_is_a_finished_debate_without_consensus() -> None:
    saver = InMemorySaver()
    task = EchoTask(["1"])
    graph = create_debate_graph(scripted_society(lambda a, q, r: "no idea"), task)
    run_debates(graph, task.load("test"), run_id="r", checkpointer=saver, progress=False)
    traces = read_traces(saver, "r")
    assert traces.unfinished == []
    [trace] = traces.traces
    assert trace.consensus is None and trace.correct is False
    assert all(r["answer"] is None for r in trace.responses)


def test_async_savers_are_read_with_aread_traces(tmp_path: Path) -> None:
    db = tmp_path / "d.sqlite"
    task = EchoTask(["1", "2"])
    graph = create_debate_graph(scripted_society(always("1")), task)
    run_debates(graph, task.load("test"), run_id="r", db_path=db, progress=False)

    async def main() -> None:
        async with AsyncSqliteSaver.from_conn_string(str(db)) as saver:
            traces = await aread_traces(saver, "r")
            assert [t.problem_id for t in traces] == ["echo-0", "echo-1"]
            with pytest.raises(TypeError, match="await aread_traces"):
                read_traces(saver, "r")

    asyncio.run(main())


def test_bad_arguments_are_refused_clearly(tmp_path: Path) -> None:
    missing = tmp_path / "missing.sqlite"
    with pytest.raises(FileNotFoundError, match="no checkpoint database"):
        read_traces_sqlite(missing, "r")
    assert not missing.exists()  # not created as an empty database by the attempt
    with pytest.raises(ValueError, match="run_id"):
        read_traces(InMemorySaver(), "")


def test_postgres_savers_sync_and_async(tmp_path: Path) -> None:
    """A real Postgres (pgserver ships the binaries; it listens on a Unix socket only)."""
    pgserver = pytest.importorskip("pgserver")
    postgres = pytest.importorskip("langgraph.checkpoint.postgres")
    from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

    server = pgserver.get_server(str(tmp_path / "pg"), cleanup_mode="stop")
    try:
        uri = server.get_uri()
        task = EchoTask(["1", "2", "1"])
        graph = create_debate_graph(scripted_society(always("1")), task)

        async def write_and_read() -> list[str]:
            async with AsyncPostgresSaver.from_conn_string(uri) as saver:
                await saver.setup()
                for run_id, n in (("a", 3), ("b", 1)):
                    await arun_debates(
                        graph, task.load("test", n), run_id=run_id, checkpointer=saver,
                        progress=False,
                    )  # fmt: skip
                return [t.problem_id for t in await aread_traces(saver, "a")]

        assert asyncio.run(write_and_read()) == ["echo-0", "echo-1", "echo-2"]
        with postgres.PostgresSaver.from_conn_string(uri) as saver:
            a = read_traces(saver, "a")
            assert [t.correct for t in a] == [True, False, True] and a.unfinished == []
            assert len(a.traces[0].responses) == 6
            assert [t.thread_id for t in read_traces(saver, "b")] == ["b/echo-0"]
    finally:
        server.cleanup()
