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
Each debate's final state is then its latest checkpoint (``get_tuple`` without an id). A
debate whose latest state has no ``consensus`` (``vote`` never ran: still running, killed or
failed) is reported in :attr:`RunTraces.unfinished`, never treated as done.

A debate is one checkpoint namespace of one thread: the root namespace of a ``run_debates``
thread, or the subgraph namespace (``"debate:<task id>"``) of a debate that an app embeds, which
runs in the app's thread, possibly several times (one namespace each). An app tags its debates
by invoking itself with ``config={"metadata": {"mafl_run_id": run_id}}``; its own checkpoints
then carry the tag too, and a namespace that holds another tagged namespace of its thread
is the app around the debates, not a debate, and is left out.

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

import ast
import asyncio
import re
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
    """The thread it ran in: ``<run_id>/<problem id>`` under ``run_debates``, else the app's."""
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
    checkpoint_ns: str = ""
    """Its checkpoint namespace in the thread: "" for a ``run_debates`` debate, the subgraph's
    (e.g. ``"debate:<task id>"``) for one embedded in an app; with ``thread_id``, its identity."""


@dataclass(frozen=True)
class UnfinishedThread:
    """A thread of the run whose debate never reached the vote."""

    thread_id: str
    problem_id: str
    step: int | None
    """The LangGraph step of its latest checkpoint."""
    error: str | None = None
    """The error a task of that step raised, where one did: ``Type: message``, keys redacted."""
    checkpoint_ns: str = ""
    """As in :class:`DebateTrace`."""


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
        threads = _debates(t for t in checkpointer.list(None, filter=query))
        latest = [checkpointer.get_tuple(_config(*t)) for t in threads]
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
    threads = _debates([t async for t in checkpointer.alist(None, filter=query)])
    latest = [await checkpointer.aget_tuple(_config(*t)) for t in threads]
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


def _debates(tuples: Any) -> list[tuple[str, str]]:
    """The distinct (thread id, checkpoint namespace) pairs that are debates, sorted so that
    every reader sees one order (see the module docstring for what is left out)."""
    spaces: dict[str, set[str]] = {}
    for t in tuples:
        configurable = t.config["configurable"]
        spaces.setdefault(configurable["thread_id"], set()).add(
            configurable.get("checkpoint_ns") or ""
        )
    return sorted(
        (thread, ns)
        for thread, found in spaces.items()
        for ns in found
        if not any(other != ns and within_namespace(other, ns) for other in found)
    )


def within_namespace(ns: str, outer: str) -> bool:
    """Whether namespace ``ns`` lies within ``outer`` (LangGraph joins levels with "|")."""
    return outer == "" or ns.startswith(outer + "|")


def _config(thread_id: str, checkpoint_ns: str = "") -> Any:
    return {"configurable": {"thread_id": thread_id, "checkpoint_ns": checkpoint_ns}}


def _finished(saved: CheckpointTuple) -> bool:
    return "consensus" in saved.checkpoint["channel_values"]


def _collect(
    run_id: str,
    threads: list[tuple[str, str]],
    latest: list[CheckpointTuple | None],
    histories: list[Mapping[str, Any]],
) -> RunTraces:
    traces: list[DebateTrace] = []
    unfinished: list[UnfinishedThread] = []
    for (thread, ns), saved, history in zip(threads, latest, histories, strict=True):
        if saved is None:  # deleted between list and get
            continue
        values = saved.checkpoint["channel_values"]
        metadata: dict[str, Any] = {
            k: v for k, v in saved.metadata.items() if k not in _STORAGE_METADATA
        }
        problem_id = str(values.get("problem_id", metadata.get("problem_id", thread)))
        if not _finished(saved):
            unfinished.append(
                UnfinishedThread(thread, problem_id, metadata.get("step"), _error(saved), ns)
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
                checkpoint_ns=ns,
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
    """The error that stopped the thread's last step; of several, the first in sort order.

    Savers keep an exception as its ``repr`` (a str). When one task fails, LangGraph cancels
    its siblings and records a CancelledError for each: the cause is the other one.
    """
    errors = sorted(  # in sort order, so that every reader picks the same one
        error_message(value)
        for _task, channel, value in saved.pending_writes or []
        if channel == _ERROR_CHANNEL
    )
    causes = [e for e in errors if not e.startswith("CancelledError")]
    found = causes or errors
    return found[0] if found else None


_REPR = re.compile(r"^(?P<type>[A-Za-z_][\w.]*)\((?P<args>.*)\)$", re.S)
_FRAME = re.compile(r"^(\s|Traceback \(most recent call last\):|During handling|The above)")


def error_message(error: Any) -> str:
    """An error as ``Type: message``, keys redacted, however it was kept.

    The form every reader reports: from an exception, its ``repr`` (how savers store it), or a
    traced run's error (the ``repr`` followed by the formatted traceback, whose last exception
    line is taken, without file paths).
    """
    if isinstance(error, BaseException):
        text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        return redact(text)
    text = str(error).strip()
    if "Traceback (most recent call last):" in text:
        lines = text.splitlines()
        last = max(i for i, line in enumerate(lines) if _FRAME.match(line))
        text = "\n".join(lines[last + 1 :]).strip() or text
        name, sep, message = text.partition(": ")
        if "." in name and " " not in name:  # a module-qualified type, as tracebacks print it
            text = name.rsplit(".", 1)[1] + sep + message
    elif (found := _REPR.match(text)) is not None:
        try:
            args = ast.literal_eval(f"({found['args']},)")
        except (ValueError, SyntaxError):
            args = None
        if isinstance(args, tuple):
            name = found["type"].rsplit(".", 1)[-1]
            message = str(args[0]) if len(args) == 1 else (str(args) if args else "")
            text = f"{name}: {message}" if message else name
    return redact(text)
