"""How long reading a run's traces back from SQLite takes, from 1,000 to 10,000 threads.

    python benchmarks/traces_scaling.py [--sizes 1000,2000,5000,10000] [--compare]

How the threads are made: the real debate graph (3 agents, 2 rounds, summarizer on) runs a few
arithmetic problems with a zero-latency scripted model into an in-memory saver; every thread
of the benchmark is then a replay of one of those real histories through ``SqliteSaver.put`` and
``put_writes`` (the same 8 checkpoints and pending writes per debate, with fresh checkpoint ids
and its own thread id, run id and problem id in state and metadata). Replaying costs a fraction
of running the graph 10,000 times and gives the reader the same rows. Writing uses
``PRAGMA synchronous=OFF`` to go fast; that changes nothing in the file's contents.

``--compare`` also times the obvious reader that lists every checkpoint of the run (not only
each thread's input checkpoint) and keeps each thread's newest: the reason for the choice made
in ``mafl_graph.traces``.
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langgraph.checkpoint.base import CheckpointTuple
from langgraph.checkpoint.base.id import uuid6
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.sqlite import SqliteSaver

from mafl_graph import Arithmetic, Society, create_debate_graph, run_debates
from mafl_graph.traces import read_traces_sqlite

RUN_ID = "bench"
REPLIES = [
    "Multiplication first, then left to right: the result is \\boxed{241}.",
    "Step by step I get \\boxed{239}.",
    "The answer is \\boxed{241}.",
    "After checking the other agents' work the answer is \\boxed{241}.",
]


def template_histories(n_problems: int = 4) -> list[list[CheckpointTuple]]:
    """Real debate histories (oldest checkpoint first), one per problem."""
    task = Arithmetic()
    saver = InMemorySaver()
    model = FakeListChatModel(responses=REPLIES)
    graph = create_debate_graph(Society.from_model(model, 3), task, rounds=2, summarize=True)
    problems = task.load("train", n_problems)
    run_debates(graph, problems, run_id="template", checkpointer=saver, progress=False)
    histories = []
    for p in problems:
        config: Any = {"configurable": {"thread_id": f"template/{p.id}", "checkpoint_ns": ""}}
        histories.append(list(reversed(list(saver.list(config)))))
    return histories


def write_threads(path: Path, n: int, histories: list[list[CheckpointTuple]]) -> None:
    """``n`` finished threads of run ``RUN_ID``, each a replay of a real history."""
    conn = sqlite3.connect(str(path), check_same_thread=False)
    conn.execute("PRAGMA synchronous=OFF")
    saver = SqliteSaver(conn)
    for i in range(n):
        problem_id = f"arithmetic-train-{i:05d}"
        thread = f"{RUN_ID}/{problem_id}"
        parent: Any = {"configurable": {"thread_id": thread, "checkpoint_ns": ""}}
        for saved in histories[i % len(histories)]:
            checkpoint = {**saved.checkpoint, "id": str(uuid6(clock_seq=i))}
            values = dict(checkpoint["channel_values"])
            if "problem_id" in values:
                values["problem_id"] = problem_id
            checkpoint["channel_values"] = values
            metadata = {**saved.metadata, "mafl_run_id": RUN_ID, "problem_id": problem_id}
            config = saver.put(parent, checkpoint, metadata, {})  # type: ignore[arg-type]
            by_task: dict[str, list[tuple[str, Any]]] = defaultdict(list)
            for task_id, channel, value in saved.pending_writes or []:
                by_task[task_id].append((channel, value))
            for task_id, writes in by_task.items():
                saver.put_writes(config, writes, task_id)
            parent = config
    conn.close()


def read_all_checkpoints(path: Path) -> int:
    """The obvious generic reader: every checkpoint of the run, newest per thread kept."""
    conn = sqlite3.connect(str(path), check_same_thread=False)
    newest: dict[str, CheckpointTuple] = {}
    for t in SqliteSaver(conn).list(None, filter={"mafl_run_id": RUN_ID}):
        thread = t.config["configurable"]["thread_id"]
        best = newest.get(thread)
        if best is None or t.checkpoint["id"] > best.checkpoint["id"]:
            newest[thread] = t
    conn.close()
    return sum("consensus" in t.checkpoint["channel_values"] for t in newest.values())


def timed(fn: Any, *args: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - started, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,2000,5000,10000")
    parser.add_argument("--compare", action="store_true", help="also time the naive reader")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    histories = template_histories()
    print(f"checkpoints per debate: {len(histories[0])}")
    seconds: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        warm = Path(tmp) / "warm.sqlite"  # the first read pays for imports and caches
        write_threads(warm, 10, histories)
        read_traces_sqlite(warm, RUN_ID)
        for n in sizes:
            path = Path(tmp) / f"{n}.sqlite"
            made, _ = timed(write_threads, path, n, histories)
            took, traces = timed(read_traces_sqlite, path, RUN_ID)
            if len(traces) != n or traces.unfinished:
                raise SystemExit(f"read {len(traces)} traces of {n}, {traces.unfinished[:3]}")
            seconds[n] = took
            size_mb = path.stat().st_size / 1e6
            line = (
                f"N={n:>6}  read {took:6.2f} s  ({1e3 * took / n:.2f} ms/thread)  "
                f"[file {size_mb:.0f} MB, written in {made:.1f} s]"
            )
            if args.compare:
                naive, finished = timed(read_all_checkpoints, path)
                assert finished == n
                line += f"  all-checkpoints reader {naive:6.2f} s ({naive / took:.1f}x)"
            print(line, flush=True)
    small, large = min(sizes), max(sizes)
    if small != large:
        ratio = (seconds[large] / large) / (seconds[small] / small)
        print(
            f"per-thread time at N={large} / at N={small}: {ratio:.2f} "
            f"(1.00 = linear); {large} threads in {seconds[large]:.1f} s"
        )


if __name__ == "__main__":
    main()
