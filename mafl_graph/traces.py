"""Read a run's debates back from any LangGraph checkpointer as plain records.

This is the only module that reads checkpoints: the fine-tuning code downstream sees
:class:`DebateTrace` values and never a checkpointer, so the graph's storage can change
without touching the datasets or the tuners.

How a run is found. ``run_debates`` puts ``run_id`` (and ``problem_id``, plus any extra
metadata such as ``iteration``) into the config metadata, and LangGraph copies primitive
config-metadata values into every checkpoint's metadata. There is no list-threads API, so the
threads of a run are found through ``checkpointer.list(None, filter=...)`` and de-duplicated.
A thread normally has one checkpoint with ``source == "input"`` (written when its problem is
submitted; resuming passes no input and writes none), so filtering on it as well lists one
checkpoint per thread instead of every step's (8 per two-round debate). Reading is linear in
the threads (``benchmarks/traces_scaling.py``: 10,000 threads in 6.8 s on a 2-core machine,
most of it rebuilding the lists below), so no saver-specific SQL is needed.
Each thread's final state is then its latest checkpoint (``get_tuple`` without an id). A
thread whose latest state has no ``consensus`` (``vote`` never ran: still running, killed or
failed) is reported in :attr:`RunTraces.unfinished`, never treated as done.

The ``responses`` and ``summaries`` lists and the question are not in that checkpoint: they are
delta channels (see :mod:`mafl_graph.debate.state`), rebuilt from the thread's stored writes, which
``get_delta_channel_history`` returns, through the same reducer that rebuilds them while the
debate runs, so every response comes back with the exact messages its model was sent.
Checkpoints of the earlier format, which hold the whole lists, are read as they are.

Only public ``BaseCheckpointSaver`` methods are used, so in-memory, SQLite and Postgres savers
all work. Async-only savers (``AsyncSqliteSaver``, ``AsyncPostgresSaver``) need
:func:`aread_traces` from inside their event loop.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from langgraph.channels.delta import DeltaChannel
from langgraph.checkpoint.base import BaseCheckpointSaver, CheckpointTuple
from langgraph.checkpoint.sqlite import SqliteSaver

from mafl_graph.debate.run import RUN_KEY, check_checkpoint_file
from mafl_graph.debate.state import Response, question_channel, responses_channel
from mafl_graph.redact import redact

_ERROR_CHANNEL = "__error__"  # where LangGraph keeps a failed task's exception
_DELTAS: dict[str, Callable[[], DeltaChannel[Any]]] = {
    "responses": responses_channel,
    "summaries": responses_channel,
    "question": question_channel,
}
# Checkpoint metadata that says how LangGraph stores the lists, not what the run was.
_STORAGE_METADATA = ("counters_since_delta_snapshot",)


@dataclass(frozen=True)
class DebateTrace:
    """One finished debate, as its thread's final state recorded it."""

    run_id: str
    thread_id: str
    problem_id: str
    question: str
    reference: str | None
    consensus: str | None
    """The final-round majority answer; None when no agent stated an answer."""
    consensus_fraction: float
    correct: bool | None
    responses: list[Response]
    """Every agent's answer of every round, each with the exact messages it was sent."""
    summaries: list[Response] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    """The checkpoint metadata of the final state (run_id, problem_id, iteration, step…)."""


@dataclass(frozen=True)
class UnfinishedThread:
    """A thread of the run whose debate never reached the vote."""

    thread_id: str
    problem_id: str
    step: int | None
    """The LangGraph step of its latest checkpoint."""
    error: str | None = None
    """The error a task of that step raised, where one did."""


@dataclass(frozen=True)
class RunTraces:
    """A run's finished debates (sorted by thread id) and the threads that did not finish.

    Iterating yields the finished traces only; look at ``unfinished`` before trusting a count.
    """

    run_id: str
    traces: list[DebateTrace]
    unfinished: list[UnfinishedThread] = field(default_factory=list)

    def __iter__(self) -> Iterator[DebateTrace]:
        return iter(self.traces)

    def __len__(self) -> int:
        return len(self.traces)


def read_traces(
    checkpointer: BaseCheckpointSaver,
    run_id: str,
    *,
    filter: Mapping[str, Any] | None = None,
) -> RunTraces:
    """Every debate thread of ``run_id`` in ``checkpointer``, through its sync methods.

    ``filter``: more checkpoint-metadata conditions, e.g. ``{"iteration": 2}``.
    """
    query = _query(run_id, filter)
    try:
        threads = _thread_ids(t for t in checkpointer.list(None, filter=query))
        latest = [checkpointer.get_tuple(_config(t)) for t in threads]
        histories = [
            checkpointer.get_delta_channel_history(config=saved.config, channels=list(_DELTAS))
            if saved is not None and _finished(saved)
            else {}
            for saved in latest
        ]
    except (asyncio.InvalidStateError, NotImplementedError) as exc:
        raise TypeError(
            f"{type(checkpointer).__name__} cannot be read synchronously here ({exc}); "
            "use `await aread_traces(checkpointer, run_id)` from its event loop."
        ) from exc
    return _collect(run_id, threads, latest, histories)


async def aread_traces(
    checkpointer: BaseCheckpointSaver,
    run_id: str,
    *,
    filter: Mapping[str, Any] | None = None,
) -> RunTraces:
    """:func:`read_traces` through the saver's async methods (for async-only savers)."""
    query = _query(run_id, filter)
    threads = _thread_ids([t async for t in checkpointer.alist(None, filter=query)])
    latest = [await checkpointer.aget_tuple(_config(t)) for t in threads]
    histories = [
        await checkpointer.aget_delta_channel_history(config=saved.config, channels=list(_DELTAS))
        if saved is not None and _finished(saved)
        else {}
        for saved in latest
    ]
    return _collect(run_id, threads, latest, histories)


def read_traces_sqlite(
    path: str | Path, run_id: str, *, filter: Mapping[str, Any] | None = None
) -> RunTraces:
    """:func:`read_traces` from a SQLite checkpoint file (e.g. ``<run_dir>/debates.sqlite``)."""
    path = Path(path)
    if not path.is_file():  # sqlite3 would silently create an empty database
        raise FileNotFoundError(f"no checkpoint database at {path}; run the debates first.")
    check_checkpoint_file(path)
    conn = sqlite3.connect(str(path), check_same_thread=False)
    try:
        return read_traces(SqliteSaver(conn), run_id, filter=filter)
    finally:
        conn.close()


def _query(run_id: str, extra: Mapping[str, Any] | None) -> dict[str, Any]:
    if not run_id:
        raise ValueError("run_id must be a non-empty string (the run_id given to run_debates).")
    return {**(extra or {}), RUN_KEY: run_id, "source": "input"}


def _thread_ids(tuples: Any) -> list[str]:
    """Distinct root-namespace thread ids, sorted so that every reader sees one order."""
    found = {
        t.config["configurable"]["thread_id"]
        for t in tuples
        if not t.config["configurable"].get("checkpoint_ns")
    }
    return sorted(found)


def _config(thread_id: str) -> Any:
    return {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}


def _finished(saved: CheckpointTuple) -> bool:
    return "consensus" in saved.checkpoint["channel_values"]


def _collect(
    run_id: str,
    threads: list[str],
    latest: list[CheckpointTuple | None],
    histories: list[Mapping[str, Any]],
) -> RunTraces:
    traces: list[DebateTrace] = []
    unfinished: list[UnfinishedThread] = []
    for thread, saved, history in zip(threads, latest, histories, strict=True):
        if saved is None:  # deleted between list and get
            continue
        values = saved.checkpoint["channel_values"]
        metadata: dict[str, Any] = {
            k: v for k, v in saved.metadata.items() if k not in _STORAGE_METADATA
        }
        problem_id = str(values.get("problem_id", metadata.get("problem_id", thread)))
        if not _finished(saved):
            unfinished.append(
                UnfinishedThread(thread, problem_id, metadata.get("step"), _error(saved))
            )
            continue
        traces.append(
            DebateTrace(
                run_id=run_id,
                thread_id=thread,
                problem_id=problem_id,
                question=_rebuilt(values, history, "question"),
                reference=values.get("reference"),
                consensus=values["consensus"],
                consensus_fraction=float(values.get("consensus_fraction", 0.0)),
                correct=values.get("correct"),
                responses=_responses(values, history, "responses", thread),
                summaries=_responses(values, history, "summaries", thread),
                metadata=metadata,
            )
        )
    return RunTraces(run_id, traces, unfinished)


def _responses(
    values: Mapping[str, Any], history: Mapping[str, Any], key: str, thread: str
) -> list[Response]:
    """The whole list of ``key``."""
    rebuilt = _rebuilt(values, history, key)
    if not isinstance(rebuilt, list):
        raise TypeError(
            f"thread {thread!r}: channel {key!r} rebuilds to {type(rebuilt).__name__}, not the "
            "list of responses this reader expects; was the debate state changed?"
        )
    return [Response(**r) for r in rebuilt]  # type: ignore[typeddict-item]


def _rebuilt(values: Mapping[str, Any], history: Mapping[str, Any], key: str) -> Any:
    """A delta channel's value: stored in the checkpoint itself (the earlier format, or a
    snapshot), or rebuilt from the history of its writes."""
    if key in values:
        seed, writes = values[key], []
    else:
        found = history.get(key, {})
        seed, writes = found.get("seed"), found.get("writes", [])
    channel = _DELTAS[key]().from_checkpoint(seed)
    channel.replay_writes(writes)
    return channel.get()


def _error(saved: CheckpointTuple) -> str | None:
    """The error that stopped the thread's last step.

    Savers keep an exception as its ``repr`` (a str). When one task fails, LangGraph cancels
    its siblings and records a CancelledError for each: the cause is the other one.
    """
    errors = [
        value if isinstance(value, str) else f"{type(value).__name__}: {value}"
        for _task, channel, value in saved.pending_writes or []
        if channel == _ERROR_CHANNEL
    ]
    causes = [e for e in errors if not e.startswith("CancelledError")]
    return redact((causes or errors or [""])[0]) or None
