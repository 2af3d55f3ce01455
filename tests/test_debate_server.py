"""Debates sent to a real `langgraph dev` server on loopback through langgraph-sdk.

One server per module (its start is the cost), in a temporary directory: the in-memory
runtime keeps its threads, runs and checkpoints in ``.langgraph_api/`` there, so a server
stopped and started again in it is the same server, restarted. The debates are tiny (2 agents,
1 round, a few tokens on the embedded model, which the server process loads itself).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

pytest.importorskip("langgraph_api")

from langgraph.checkpoint.memory import InMemorySaver, PersistentDict  # noqa: E402
from langgraph_dev import LangGraphDev, free_port, skip_without_embedded_model  # noqa: E402
from langgraph_sdk import get_sync_client  # noqa: E402

from mafl_graph import (  # noqa: E402
    Society,
    create_debate_graph,
    get_task,
    read_traces,  # noqa: E402
    run_debates,
)
from mafl_graph.debate.server import (  # noqa: E402
    NAMESPACE_KEY,
    DebateServer,
    DebateServerError,
    read_server_traces,
    run_debates_on_server,
    server_thread_id,
)

pytestmark = [pytest.mark.allow_hosts(["127.0.0.1"]), pytest.mark.integration]

SETTINGS = {"model": "local:smollm2", "max_tokens": 6, "seed": 0}
TASK = get_task("arithmetic", terms=2, high=20, operators="+", seed=0)
PROBLEMS = TASK.load("test", 8)


@pytest.fixture(scope="module")
def dev(tmp_path_factory) -> Iterator[LangGraphDev]:
    skip_without_embedded_model()
    server = LangGraphDev(tmp_path_factory.mktemp("debate-server"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _graph(agents: int = 2):
    # The local graph only gives the debate's shape: its models never run here.
    society = Society.from_model("local:smollm2", agents, max_tokens=6, seed=0)
    return create_debate_graph(society, TASK, rounds=1, summarize=False, seed=0)


def _runs(client, run_id: str, problems, namespace: str = "") -> dict[str, list[dict]]:
    return {p.id: client.runs.list(server_thread_id(run_id, p.id, namespace)) for p in problems}


def _at(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


def test_debates_run_on_the_server_one_thread_each_bounded_and_read_back(dev):
    problems = PROBLEMS[:3]
    results = run_debates(
        _graph(),
        problems,
        run_id="shape",
        server=DebateServer(dev.url, SETTINGS),
        max_concurrency=2,
        metadata={"iteration": 1},
        progress=False,
    )
    assert [r.problem_id for r in results] == [p.id for p in problems]
    assert all(r.ok for r in results), [r.error for r in results]
    for result, problem in zip(results, problems, strict=True):
        # The in-process shape: 2 agents × 1 round, each with the exact prompt it was sent.
        assert sorted((r["round"], r["agent"], r["role"]) for r in result.responses) == [
            (1, 0, "generator"),
            (1, 1, "generator"),
        ]
        assert result.summaries == []
        assert all(r["model"] == "smollm2" and r["messages"] for r in result.responses)
        assert problem.question in result.responses[0]["messages"][-1]["content"]
        assert result.reference == problem.answer and isinstance(result.correct, bool)
    client = get_sync_client(url=dev.url)
    runs = _runs(client, "shape", problems)
    assert {pid: len(r) for pid, r in runs.items()} == {p.id: 1 for p in problems}
    for problem in problems:
        thread = client.threads.get(server_thread_id("shape", problem.id))
        assert thread["metadata"]["problem_id"] == problem.id
        assert thread["metadata"]["iteration"] == 1
    # At most 2 runs were in flight at once (created before another one's end).
    spans = [(_at(r[0]["created_at"]), _at(r[0]["updated_at"])) for r in runs.values()]
    overlap = max(sum(start <= t < end for start, end in spans) for t, _ in spans)
    assert overlap <= 2
    # The traces read back from the thread states are the results'.
    traces = read_server_traces(dev.url, "shape")
    assert not traces.unfinished
    by_problem = {t.problem_id: t for t in traces}
    for result in results:
        trace = by_problem[result.problem_id]
        assert trace.responses == result.responses
        assert trace.consensus == result.consensus and trace.metadata["iteration"] == 1
    # Calling again reads the finished debates back: no new run.
    again = run_debates_on_server(
        problems, DebateServer(dev.url, SETTINGS), graph=_graph(), run_id="shape", progress=False
    )
    assert [r.responses for r in again] == [r.responses for r in results]
    assert {pid: len(r) for pid, r in _runs(client, "shape", problems).items()} == {
        p.id: 1 for p in problems
    }


@pytest.mark.parametrize("stop", ["terminate", "kill"])
def test_a_server_restart_mid_run_reruns_no_finished_debate_and_the_rest_complete(dev, stop):
    # "terminate": a clean stop (Ctrl-C, a redeploy): the dev server saves its state and hands
    # the runs in flight back to its queue. "kill": a crash, right after one of the dev
    # server's periodic saves (every 10 s); its checkpoints are not always in them, so a debate
    # it finished may come back unfinished: that one is run again, no other.
    problems = PROBLEMS[3:6]
    server = DebateServer(dev.url, SETTINGS, namespace=stop)
    client = get_sync_client(url=dev.url)
    outcome: list[object] = []

    def first_call() -> None:
        try:
            outcome.append(
                run_debates(_graph(), problems, run_id="r", server=server, max_concurrency=2)
            )
        except Exception as exc:  # the restart may cut the call short: that is allowed
            outcome.append(exc)

    worker = threading.Thread(target=first_call)
    worker.start()

    def finished() -> dict[str, list]:
        done = {}
        for p in problems:
            try:
                values = client.threads.get_state(server_thread_id("r", p.id, stop))["values"]
            except Exception:  # not created yet
                continue
            if values and "consensus_fraction" in values:
                done[p.id] = values["responses"]
        return done

    deadline = time.monotonic() + 60
    while len(before := finished()) < (2 if stop == "terminate" else 1):
        assert time.monotonic() < deadline, "the first debates did not finish"
        time.sleep(0.2)
    runs_before = _runs(client, "r", [p for p in problems if p.id in before], stop)
    if stop == "terminate":
        assert len(before) < len(problems), "every debate finished before the restart"
        dev.stop()
        _check_the_saved_checkpoints(dev, stop, before)
    else:
        saved_at = time.time()
        ops = dev.workdir / ".langgraph_api" / ".langgraph_ops.pckl"
        while not (ops.is_file() and ops.stat().st_mtime > saved_at):
            assert time.monotonic() < deadline, "the dev server did not save its state"
            time.sleep(0.1)
        dev.stop(kill=True)
    dev.start()
    client = get_sync_client(url=dev.url)
    # The debates the server still holds as finished after the restart.
    kept = {pid for pid in before if pid in finished()}
    worker.join(timeout=90)
    assert not worker.is_alive()
    if isinstance(outcome[0], Exception):  # cut short: one clear error naming the server
        assert isinstance(outcome[0], DebateServerError) and dev.url in str(outcome[0])
    results = run_debates(_graph(), problems, run_id="r", server=server, progress=False)
    assert all(r.ok for r in results), [r.error for r in results]
    runs = _runs(client, "r", problems, stop)
    # No debate was run twice: one run per thread (a run the server ran again resumed from its
    # checkpoint), each reply in the state once, and the finished debates untouched. After a
    # crash, a debate whose finished state the server lost is run once more.
    assert [len(r.responses) for r in results] == [2] * len(problems)
    if stop == "terminate":
        assert kept == set(before)
        assert {pid: len(r) for pid, r in runs.items()} == {p.id: 1 for p in problems}
    else:
        assert all(1 <= len(r) <= (1 if pid in kept else 2) for pid, r in runs.items())
    for pid in kept:
        assert runs[pid] == runs_before[pid]
        assert next(r for r in results if r.problem_id == pid).responses == before[pid]
    thread = client.threads.get(server_thread_id("r", problems[0].id, stop))
    assert thread["metadata"][NAMESPACE_KEY] == stop
    # A namespace keeps runs of one run_id apart.
    assert len(read_server_traces(server, "r")) == len(problems)
    assert not read_server_traces(dev.url, "r").traces


def _check_the_saved_checkpoints(dev: LangGraphDev, namespace: str, finished: dict) -> None:
    """What `read_traces` on a PostgresSaver does against `langgraph up`: the dev server's own
    checkpointer, saved to .langgraph_api/ as it stopped, read back as a saver."""
    files = iter(sorted((dev.workdir / ".langgraph_api").glob(".langgraph_checkpoint.*.pckl")))

    def saved(*args) -> PersistentDict:
        stored = PersistentDict(*args, filename=str(next(files)))
        stored.flag = "r"  # read only: never written back
        stored.load()
        return stored

    traces = read_traces(InMemorySaver(factory=saved), "r", filter={NAMESPACE_KEY: namespace})
    read = {t.problem_id: t.responses for t in traces}
    assert {pid: read.get(pid) for pid in finished} == finished
    assert len(traces) + len(traces.unfinished) <= 3


def test_a_server_that_is_down_is_one_clear_error(dev, tmp_path: Path):
    down = f"http://127.0.0.1:{free_port()}"
    started = time.perf_counter()
    with pytest.raises(DebateServerError, match=f"LangGraph Server at {down} cannot be reached"):
        run_debates(_graph(), PROBLEMS[:2], run_id="down", server=down, progress=False)
    assert time.perf_counter() - started < 2  # said at once, not after the SDK's retries
    with pytest.raises(ValueError, match="serves no graph or assistant 'nope'.*debate"):
        run_debates(
            _graph(), PROBLEMS[:1], server=DebateServer(dev.url, graph="nope"), progress=False
        )
    with pytest.raises(ValueError, match=r"agents=3 \(the graph's: 2\)"):
        run_debates(
            _graph(), PROBLEMS[:1], server=DebateServer(dev.url, {"agents": 3}), progress=False
        )
    with pytest.raises(ValueError, match="checkpointer and db_path do not apply"):
        run_debates(_graph(), PROBLEMS[:1], server=dev.url, db_path=tmp_path / "d.sqlite")


def test_a_debate_that_fails_on_the_server_is_that_problem_s_error(dev):
    results = run_debates(
        _graph(),
        PROBLEMS[:2],
        run_id="bad",
        server=DebateServer(dev.url, {**SETTINGS, "max_tokens": 0}),
        progress=False,
    )
    assert len(results) == 2
    assert all(not r.ok and "max_tokens must be at least 1" in (r.error or "") for r in results)
