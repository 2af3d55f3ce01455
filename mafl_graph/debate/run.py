"""Run many debates durably: one checkpointed thread per problem.

Thread ids are stable per (run_id, problem id), so calling again with the same ``run_id``
skips finished debates and resumes interrupted ones from their last saved model call.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

from langchain_core.callbacks import Callbacks
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import StateGraph
from langgraph.graph.state import CompiledStateGraph

from mafl_graph.debate.journal import JOURNAL_KEY, ReplyJournal
from mafl_graph.debate.journal import TABLE as JOURNAL_TABLE
from mafl_graph.debate.saver import InlineSqliteSaver
from mafl_graph.debate.size import DebateShape, check_size
from mafl_graph.debate.state import DebateInput, Response
from mafl_graph.progress import CallProgress, calls_per_debate, phase_name
from mafl_graph.redact import check_no_secrets, redact
from mafl_graph.rundir import RunLayout
from mafl_graph.tasks.base import Problem

if TYPE_CHECKING:
    from collections.abc import Coroutine

    from mafl_graph.debate.server import DebateServer

_T = TypeVar("_T")


@dataclass(frozen=True)
class DebateResult:
    """The outcome of one problem's debate (``error`` is set when it failed)."""

    problem_id: str
    question: str
    reference: str | None
    consensus: str | None = None
    consensus_fraction: float = 0.0
    correct: bool | None = None
    """None without a reference, or when grading the consensus ran out of time."""
    undecided: int = 0
    """The vote's grades (clustering and correctness) that ran out of time."""
    responses: list[Response] = field(default_factory=list)
    summaries: list[Response] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @classmethod
    def from_state(cls, problem: Problem, saved: Mapping[str, Any]) -> DebateResult:
        """The result of ``problem``'s finished debate, from its graph's final state."""
        return cls(
            problem_id=problem.id,
            question=problem.question,
            reference=problem.answer,
            consensus=saved.get("consensus"),
            consensus_fraction=saved.get("consensus_fraction", 0.0),
            correct=saved.get("correct"),
            undecided=saved.get("undecided", 0),
            responses=saved.get("responses", []),
            summaries=saved.get("summaries", []),
        )


# The metadata key that names a run in checkpoints and traces. Not "run_id": LangGraph reads
# that key to decide whether new input re-enters an ongoing run and would ignore the input.
RUN_KEY = "mafl_run_id"

# The debate graph's nodes that make one model call each (see debate/graph.py): the progress
# bar counts their finished tasks.
MODEL_NODES = frozenset({"generate", "summarize", "critique"})


def thread_id(run_id: str, problem_id: str) -> str:
    return f"{run_id}/{problem_id}"


def run_debates(
    graph: StateGraph | CompiledStateGraph,
    problems: Sequence[Problem],
    *,
    run_id: str = "default",
    checkpointer: BaseCheckpointSaver | None = None,
    db_path: str | Path | None = None,
    max_concurrency: int = 4,
    metadata: Mapping[str, Any] | None = None,
    callbacks: Callbacks = None,
    progress: bool = True,
    server: str | DebateServer | None = None,
) -> list[DebateResult]:
    """Debate every problem and return the results in the order of ``problems``.

    Works from plain scripts and from notebooks (where an event loop is already running):
    every call runs on one long-lived event loop of its own (see :func:`_runner_loop`).
    See :func:`arun_debates` for the arguments.
    """
    coro = arun_debates(
        graph,
        problems,
        run_id=run_id,
        checkpointer=checkpointer,
        db_path=db_path,
        max_concurrency=max_concurrency,
        metadata=metadata,
        callbacks=callbacks,
        progress=progress,
        server=server,
    )
    return run_on_runner_loop(coro)


def run_on_runner_loop(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run ``coro`` to the end on the runner's event loop (see :func:`_runner_loop`)."""
    loop = _runner_loop()
    if threading.current_thread() is _loop_thread:  # called from a debate: waiting would deadlock
        with ThreadPoolExecutor(max_workers=1) as pool:
            return pool.submit(asyncio.run, coro).result()
    future = asyncio.run_coroutine_threadsafe(coro, loop)
    try:
        return future.result()
    except BaseException:  # Ctrl-C included: stop the debates; what is saved stays saved
        future.cancel()
        raise


_loop: asyncio.AbstractEventLoop | None = None
_loop_thread: threading.Thread | None = None
_loop_lock = threading.Lock()


def _runner_loop() -> asyncio.AbstractEventLoop:
    """The one event loop, in a daemon thread, that every :func:`run_debates` call runs on.

    Not ``asyncio.run`` per call: langchain-openai caches its async HTTP client per base URL
    for the whole process, not per event loop (langchain-ai/langchain#35783), so a second
    ``asyncio.run`` (the next iteration of a loop, an evaluation after a debate) reuses
    keep-alive connections bound to the first, closed loop and its calls fail with "Event loop
    is closed". One long-lived loop keeps every cached client valid; it also serves callers
    that already run a loop (notebooks), as the thread it runs in is its own.
    """
    global _loop, _loop_thread
    with _loop_lock:
        if _loop is None or _loop.is_closed():
            _loop = asyncio.new_event_loop()
            _loop_thread = threading.Thread(
                target=_loop.run_forever, name="mafl-debates", daemon=True
            )
            _loop_thread.start()
        return _loop


async def arun_debates(
    graph: StateGraph | CompiledStateGraph,
    problems: Sequence[Problem],
    *,
    run_id: str = "default",
    checkpointer: BaseCheckpointSaver | None = None,
    db_path: str | Path | None = None,
    max_concurrency: int = 4,
    metadata: Mapping[str, Any] | None = None,
    callbacks: Callbacks = None,
    progress: bool = True,
    server: str | DebateServer | None = None,
) -> list[DebateResult]:
    """Debate every problem, ``max_concurrency`` problems at a time, started one by one.

    ``graph``: from :func:`create_debate_graph`, uncompiled, or compiled with a checkpointer.
    ``checkpointer``: any saver with async methods (in-memory, AsyncSqliteSaver, Postgres);
    by default a SQLite file at ``db_path`` (default ``runs/<run_id>/debates.sqlite``).
    ``metadata``: copied into every checkpoint and every model call's trace (e.g. iteration).
    ``callbacks``: LangChain callback handlers (a LangSmith tracer, a cost counter, …).
    ``progress``: a bar (on stderr) over the run's model calls, with rate and ETA, named after
    the run (``metadata``'s split and iteration); a resumed run starts it at the calls saved.
    A debate that raises is reported with ``error`` set, never as correct; the others finish.
    A damaged SQLite file raises :class:`CheckpointError` before anything is written to it.
    A debate estimated to store more than ``$MAFL_CHECKPOINT_WARN_MB`` (default 100) MB of
    checkpoints gives a :class:`~mafl_graph.debate.size.CheckpointSizeWarning` first.
    ``server``: run the debates on a LangGraph Server instead, a URL or a
    :class:`~mafl_graph.debate.server.DebateServer` (see
    :func:`~mafl_graph.debate.server.arun_debates_on_server`); the server keeps the
    checkpoints (so no ``checkpointer`` or ``db_path``) and makes the model calls (so
    ``callbacks`` see none of them).
    """
    if server is not None:
        from mafl_graph.debate.server import arun_debates_on_server

        if checkpointer is not None or db_path is not None:
            raise ValueError(
                "checkpointer and db_path do not apply to debates run on a server (the server "
                "keeps their checkpoints); pass one or the other."
            )
        return await arun_debates_on_server(
            problems,
            server,
            graph=graph,
            run_id=run_id,
            max_concurrency=max_concurrency,
            metadata=metadata,
            progress=progress,
        )
    if max_concurrency < 1:
        raise ValueError(f"max_concurrency must be at least 1; got {max_concurrency}.")
    ids = [p.id for p in problems]
    if len(set(ids)) != len(ids):
        raise ValueError("Problem ids must be unique within a run; got duplicates.")
    # Metadata is copied into every checkpoint and every traced call: a key must not ride along.
    check_no_secrets(dict(metadata or {}), "metadata")
    builder = graph.builder if isinstance(graph, CompiledStateGraph) else graph
    shape: DebateShape | None = getattr(builder, "debate_shape", None)
    if shape is not None:
        check_size(shape, problems)
    async with _saver(graph, checkpointer, db_path, run_id) as (compiled, journal):
        limit = asyncio.Semaphore(max_concurrency)
        # Debates start one at a time: each waits until the one before it has started its first
        # model calls. Started all at once, the first max_concurrency debates set up in lockstep
        # on the one event loop, no call goes out until all of them have, and they stay in
        # phase, each step's work arriving in bursts that make every call wait
        # (benchmarks/orchestration_overhead.py compares the two schedules).
        starting = asyncio.Lock()
        per_debate = (
            calls_per_debate(shape.agents, shape.rounds, shape.summarize) if shape else None
        )
        threads = [thread_id(run_id, p.id) for p in problems]
        bar = CallProgress(
            threads,
            per_debate=per_debate,
            saved=await _saved_calls(compiled, threads, per_debate) if progress else None,
            desc=phase_name(run_id, metadata),
            disable=not progress,
        )

        async def one(problem: Problem) -> DebateResult:
            thread = thread_id(run_id, problem.id)
            async with limit:
                started = asyncio.Event()
                async with starting:
                    debate = asyncio.ensure_future(
                        _debate(
                            compiled,
                            problem,
                            run_id,
                            dict(metadata or {}),
                            callbacks,
                            started,
                            journal,
                            functools.partial(bar.call_done, thread),
                        )
                    )
                    try:
                        await _until_set(started, debate)
                    except BaseException:  # cancelled: the debate stops too
                        debate.cancel()
                        raise
                result = await debate  # a cancellation here reaches the debate itself
            bar.debate_done(thread, failed=not result.ok)
            return result

        with _gc_spares_what_is_loaded():
            tasks = [asyncio.ensure_future(one(p)) for p in problems]
            fresh = asyncio.ensure_future(bar.keep_fresh())
            try:
                return list(await asyncio.gather(*tasks))
            finally:  # on an error (or cancellation) stop the other debates before the saver closes
                for task in [*tasks, fresh]:
                    task.cancel()
                await asyncio.gather(*tasks, fresh, return_exceptions=True)
                bar.close()


_gc_lock = threading.Lock()
_gc_runs = 0  # runs in progress that froze the collector's view (see below)


@contextlib.contextmanager
def _gc_spares_what_is_loaded() -> Iterator[None]:
    """Keep the garbage collector's full passes off the objects alive when a run starts.

    With langchain, sympy and datasets imported (more with a local model), a full pass walks
    about 250,000 objects and stops every thread for 110-150 ms, stalling every call in flight;
    a 100-problem run triggers two. ``gc.freeze`` moves those objects out of the collector's
    view (benchmarks/orchestration_overhead.py at 32 concurrent calls: 1.42-1.49x the ideal
    wall time without it, 1.18-1.19x with it); ``gc.unfreeze`` at the end hands them back, so
    garbage among them is still collected afterwards. An application that froze objects itself
    (before forking workers, say) is left as it is.
    """
    global _gc_runs
    with _gc_lock:
        mine = _gc_runs > 0 or gc.get_freeze_count() == 0
        if mine:
            _gc_runs += 1
            if _gc_runs == 1:
                gc.freeze()
    try:
        yield
    finally:
        if mine:
            with _gc_lock:
                _gc_runs -= 1
                if _gc_runs == 0:
                    gc.unfreeze()


async def _saved_calls(
    graph: CompiledStateGraph, threads: Sequence[str], per_debate: int | None
) -> dict[str, int]:
    """The model calls each thread already holds (0 for a new one), where a resumed bar starts:
    its saved replies and summaries, those of a step cut short included (the state read back
    holds the writes its finished tasks saved)."""
    saved = {}
    for thread in threads:
        values = (await graph.aget_state({"configurable": {"thread_id": thread}})).values
        if per_debate is not None and "consensus_fraction" in values:
            saved[thread] = per_debate
        else:
            saved[thread] = len(values.get("responses", [])) + len(values.get("summaries", []))
    return saved


async def _until_set(event: asyncio.Event, task: asyncio.Future[Any]) -> None:
    """Wait until ``event`` is set or ``task`` is done, whichever comes first."""
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait([waiter, task], return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()


async def _debate(
    graph: CompiledStateGraph,
    problem: Problem,
    run_id: str,
    metadata: dict[str, Any],
    callbacks: Callbacks,
    started: asyncio.Event,
    journal: ReplyJournal | None = None,
    call_done: Callable[[], None] | None = None,
) -> DebateResult:
    """Debate ``problem`` to the end, or resume it; ``started`` is set when its first model
    calls start (or, for a finished debate, never). ``journal``: where the model nodes write
    each reply as it arrives (see :mod:`mafl_graph.debate.journal`). ``call_done``: called as
    each model call finishes (after its retries, failed or not)."""
    thread = thread_id(run_id, problem.id)
    config: Any = {
        "configurable": {"thread_id": thread, **({JOURNAL_KEY: journal} if journal else {})},
        "metadata": {**metadata, RUN_KEY: run_id, "problem_id": problem.id},
        "callbacks": callbacks,
    }
    snapshot = await graph.aget_state(config)
    saved = snapshot.values
    # A process killed right after saving the input leaves a state without the question (only
    # the delta channels' empty values): that debate has not started, and resumes below.
    if saved.get("question") and saved["question"] != problem.question:
        raise ValueError(
            f"Run {run_id!r} already holds a different question under problem id "
            f"{problem.id!r}; use a new run_id (or run directory) for a different problem set."
        )
    try:
        if not saved:
            start = DebateInput(
                problem_id=problem.id, question=problem.question, reference=problem.answer
            )
            saved = await _run_graph(graph, start, config, started, call_done)
        elif snapshot.next or "consensus_fraction" not in saved:
            # Interrupted: finish from the last saved step. Only the vote's keys say a debate
            # is done: a thread killed mid-step can come back with an empty ``next``
            # (tests/test_kill_resume.py).
            saved = await _run_graph(graph, None, config, started, call_done)
        if "consensus_fraction" not in saved:  # a graph with output_key streams its record only
            saved = (await graph.aget_state(config)).values
    except Exception as exc:  # one bad problem must not sink the run
        return DebateResult(problem.id, problem.question, problem.answer, error=_describe(exc))
    if journal is not None:
        journal.forget(thread)
    return DebateResult.from_state(problem, saved)


async def _run_graph(
    graph: CompiledStateGraph,
    start: Any,
    config: Any,
    started: asyncio.Event,
    call_done: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """``graph.ainvoke``, setting ``started`` as soon as the graph starts a node's task and
    calling ``call_done`` as each model node's task finishes.

    A task's result event comes once, after the node's retries, as soon as that task is done,
    not at the end of its step: the bar moves with each answer of a batch.
    """
    saved: dict[str, Any] = {}
    async for mode, chunk in graph.astream(
        start, config, durability="sync", stream_mode=["tasks", "values"]
    ):
        if mode == "values":
            saved = cast(dict[str, Any], chunk)
            continue
        started.set()
        task = cast(dict[str, Any], chunk)  # a task's start, or its result (or error)
        if call_done is not None and "result" in task and task["name"] in MODEL_NODES:
            call_done()
    return saved


@contextlib.asynccontextmanager
async def _saver(
    graph: StateGraph | CompiledStateGraph,
    checkpointer: BaseCheckpointSaver | None,
    db_path: str | Path | None,
    run_id: str,
) -> AsyncIterator[tuple[CompiledStateGraph, ReplyJournal | None]]:
    """The graph compiled with its checkpointer, and the reply journal where it is ours."""
    if isinstance(graph, CompiledStateGraph):
        if graph.checkpointer not in (None, False, True) and checkpointer is None:
            yield graph, None
            return
        graph = graph.builder
    if checkpointer is not None:
        yield graph.compile(checkpointer=checkpointer), None
        return
    path = Path(db_path) if db_path is not None else RunLayout(Path("runs") / run_id).debates
    check_checkpoint_file(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path)
    try:
        # WAL (set by the saver) with synchronous=NORMAL survives a killed process, which is
        # what resuming needs; FULL would also fsync on every saved answer, and that fsync was
        # most of the runner's overhead (benchmarks/orchestration_overhead.py).
        conn.execute("PRAGMA synchronous=NORMAL")
        saver = InlineSqliteSaver(conn)
        yield graph.compile(checkpointer=saver), ReplyJournal(conn, saver.lock)
    finally:
        conn.close()


class CheckpointError(ValueError):
    """The checkpoint database cannot be read; it is left exactly as it was found."""


# The columns langgraph's SqliteSaver reads from each of its tables.
_SAVER_TABLES = {
    "checkpoints": {"thread_id", "checkpoint_ns", "checkpoint_id", "checkpoint", "metadata"},
    "writes": {"thread_id", "checkpoint_ns", "checkpoint_id", "task_id", "idx", "channel"},
    JOURNAL_TABLE: {"thread_id", "call", "type", "reply"},
}


def check_checkpoint_file(path: str | Path) -> None:
    """Refuse a file that is not a sound checkpoint database, before anything writes to it.

    A missing file is fine (it becomes a new database). Everything else is read through a
    read-only, ``immutable`` connection, which neither locks the file nor creates WAL files, so
    a refused file is left byte for byte as it was: a corrupt or truncated file (which would
    otherwise fail deep inside the saver, halfway through a run), a directory, and a sound
    SQLite database of another application (which the saver would switch to WAL and add its
    tables to). ``quick_check`` reads every page once: about 0.1 s for a 100 MB file.
    """
    path = Path(path)
    if not path.exists():
        return
    if not path.is_file():
        raise CheckpointError(
            f"The checkpoint database {path} is not a file. It was left untouched: move it "
            "aside or use another run directory."
        )
    uri = f"{path.resolve().as_uri()}?mode=ro&immutable=1"
    try:
        conn = sqlite3.connect(uri, uri=True)
    except sqlite3.Error as exc:
        raise damaged_database(path, str(exc)) from exc
    try:
        found = [str(row[0]) for row in conn.execute("PRAGMA quick_check")]
        tables = {
            name: {
                str(c) for (c,) in conn.execute("SELECT name FROM pragma_table_info(?)", (name,))
            }
            for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
    except sqlite3.DatabaseError as exc:
        found = [str(exc)]
    finally:
        conn.close()
    if found != ["ok"]:
        raise damaged_database(path, "; ".join(found[:3]))
    foreign = sorted(
        name
        for name, columns in tables.items()
        if not _SAVER_TABLES.get(name, set()) <= columns or name not in _SAVER_TABLES
    )
    if foreign:
        raise CheckpointError(
            f"{path} is a SQLite database of something else (tables {', '.join(foreign)} are "
            "not a LangGraph checkpointer's). It was left untouched: use another run directory "
            "or move the file aside."
        )


def damaged_database(path: str | Path, problem: str) -> CheckpointError:
    """The error for a checkpoint file that SQLite cannot read, with what to do about it."""
    return CheckpointError(
        f"The checkpoint database {path} is damaged ({problem}). It was left untouched: "
        "restore it from a backup, or move it aside to start the run over, or use another "
        "run directory."
    )


def _describe(exc: BaseException) -> str:
    """The error recorded for a failed debate (results, logs): type and message, keys redacted."""
    return redact(f"{type(exc).__name__}: {exc}")
