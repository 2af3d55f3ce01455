"""Run many debates on a LangGraph Server (``langgraph dev``, ``langgraph up``, a deployment).

The same contract as :func:`~mafl_graph.debate.run.run_debates`, with the server doing the
work: one server thread per problem, its id stable per (namespace, run_id, problem id)
(:func:`server_thread_id`), so calling again with the same ``run_id`` reads finished debates
back and resumes the others from the checkpoints the server saved.

How a debate runs there. The server builds the debate graph itself (``graphs/debate.py``, the
graph Studio shows), from the settings each run sends in ``config["configurable"]``: the
shape the local graph was built with (agents, rounds, summarizer, task) and what only a
:class:`DebateServer` can say (the model string, sampling, seed). The server loads its models
itself: ``local:smollm2`` is loaded by the server process, hosted models read their keys from
the server's environment. A thread holds at most one run at a time (``multitask_strategy
"reject"``): a run already in flight on a thread, one that a restarted server picked up again
among them, is waited for rather than doubled. A debate whose run failed is run again from its
last checkpoint on the next call, as in-process debates are.

What comes back. Each :class:`~mafl_graph.debate.run.DebateResult` is built from its thread's
final state (the graph's output channels), so it has the in-process shape. The debates are
tagged like in-process ones (``mafl_run_id``, ``problem_id`` and the caller's metadata, plus
``mafl_namespace``) in every checkpoint the server saves, so the traces are read back either
from the thread states (:func:`read_server_traces`) or, on a server with a Postgres
checkpointer, with :func:`mafl_graph.traces.read_traces` on a ``PostgresSaver`` of that database
(``filter={NAMESPACE_KEY: namespace}`` where a namespace was used).

A server that cannot be reached is one :class:`DebateServerError` naming its URL, raised
before anything is sent when it is down from the start; debates the server finished stay on
it, and calling again once it is back resumes the rest.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import httpx
from langgraph_sdk import get_client
from langgraph_sdk.errors import ConflictError, NotFoundError

from mafl_graph.debate.run import (
    RUN_KEY,
    DebateResult,
    _describe,
    run_on_runner_loop,
    thread_id,
)
from mafl_graph.debate.size import DebateShape, check_size
from mafl_graph.progress import CallProgress, calls_per_debate, phase_name
from mafl_graph.redact import check_no_secrets, redact
from mafl_graph.tasks.base import Problem

if TYPE_CHECKING:
    from langgraph.graph import StateGraph
    from langgraph.graph.state import CompiledStateGraph
    from langgraph_sdk.client import LangGraphClient

    from mafl_graph.traces import RunTraces

NAMESPACE_KEY = "mafl_namespace"
"""The metadata key (threads, runs, checkpoints) that holds a :class:`DebateServer`'s
``namespace``."""

# uuid5 namespace of the server thread ids: the server takes only UUIDs as thread ids.
_THREAD_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/mafl-graph/threads")
# Settings the shape of the local graph gives; a DebateServer's settings must agree with them.
_SHAPE_KEYS = ("agents", "rounds", "summarize", "task")
_IN_FLIGHT = ("pending", "running")


@dataclass(frozen=True)
class DebateServer:
    """Where and how debates run on a LangGraph Server.

    ``url``: the server's API, e.g. ``http://127.0.0.1:2024`` (``langgraph dev``) or a
    deployment's URL (its key from ``LANGSMITH_API_KEY`` / ``LANGGRAPH_API_KEY``).
    ``settings``: the debate graph's configurable settings that the local graph cannot give
    (see ``graphs/debate.py``): ``model``, ``summarizer_model``, ``max_tokens``,
    ``temperature``, ``seed``, ``task_options``. ``agents``, ``rounds``, ``summarize`` and
    ``task`` come from the local graph where it has them, and must agree with it if given.
    ``graph``: the graph id (langgraph.json) or assistant id to run.
    ``namespace``: separates runs that share a ``run_id`` on one server (the loop's
    iterations, two run directories); part of every thread id.
    """

    url: str
    settings: Mapping[str, Any] = field(default_factory=dict)
    graph: str = "debate"
    namespace: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.url, str) or not self.url.startswith(("http://", "https://")):
            raise ValueError(
                f"DebateServer url must be an http(s) URL such as http://127.0.0.1:2024; "
                f"got {self.url!r}."
            )
        # The settings are stored with every thread and run on the server.
        check_no_secrets(dict(self.settings), "DebateServer settings")

    def within(self, namespace: str) -> DebateServer:
        """This server with another ``namespace``."""
        return replace(self, namespace=namespace)


class DebateServerError(ConnectionError):
    """The LangGraph Server cannot be reached; what it finished stays there, call again."""


def server_thread_id(run_id: str, problem_id: str, namespace: str = "") -> str:
    """The server thread (a UUID) of one problem of a run: the same on every call."""
    name = thread_id(run_id, problem_id)
    return str(uuid.uuid5(_THREAD_NAMESPACE, f"{namespace}\x00{name}" if namespace else name))


def as_server(server: str | DebateServer) -> DebateServer:
    """``server`` as a :class:`DebateServer` (a URL alone: the default settings)."""
    return server if isinstance(server, DebateServer) else DebateServer(server)


def run_debates_on_server(
    problems: Sequence[Problem],
    server: str | DebateServer,
    *,
    graph: StateGraph | CompiledStateGraph | None = None,
    run_id: str = "default",
    max_concurrency: int = 4,
    metadata: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> list[DebateResult]:
    """Debate every problem on ``server``; results in the order of ``problems``.

    Works from scripts and notebooks, as :func:`~mafl_graph.debate.run.run_debates` does
    (``run_debates(graph, problems, server=server, ...)`` is the same call). See
    :func:`arun_debates_on_server` for the arguments.
    """
    return run_on_runner_loop(
        arun_debates_on_server(
            problems,
            server,
            graph=graph,
            run_id=run_id,
            max_concurrency=max_concurrency,
            metadata=metadata,
            progress=progress,
        )
    )


async def arun_debates_on_server(
    problems: Sequence[Problem],
    server: str | DebateServer,
    *,
    graph: StateGraph | CompiledStateGraph | None = None,
    run_id: str = "default",
    max_concurrency: int = 4,
    metadata: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> list[DebateResult]:
    """Debate every problem on ``server``, at most ``max_concurrency`` runs in flight.

    ``graph``: the local debate graph (:func:`~mafl_graph.create_debate_graph`) whose shape
    (agents, rounds, summarizer, task) the server's graph is built with; None: the server's
    settings alone (:class:`DebateServer`). ``metadata``: copied into every thread, run and
    checkpoint on the server (e.g. iteration). ``progress``: a bar over the run's model calls,
    moved as each debate finishes (the calls are made on the server).

    A finished debate is read back, never run again; a debate whose run is still in flight is
    waited for; an interrupted or failed one is run again from its last checkpoint. A debate
    whose run fails is reported with ``error`` set; the others finish. A server that cannot be
    reached raises :class:`DebateServerError`.
    """
    server = as_server(server)
    if max_concurrency < 1:
        raise ValueError(f"max_concurrency must be at least 1; got {max_concurrency}.")
    ids = [p.id for p in problems]
    if len(set(ids)) != len(ids):
        raise ValueError("Problem ids must be unique within a run; got duplicates.")
    extra = dict(metadata or {})
    check_no_secrets(extra, "metadata")
    shape = _shape(graph)
    if shape is not None:
        check_size(shape, problems)
    configurable = _configurable(server, shape)
    await _probe(server)
    client = get_client(url=server.url)
    try:
        await _check_graph(client, server)
        limit = asyncio.Semaphore(max_concurrency)
        per_debate = (
            calls_per_debate(shape.agents, shape.rounds, shape.summarize) if shape else None
        )
        bar = CallProgress(
            ids, per_debate=per_debate, desc=phase_name(run_id, metadata), disable=not progress
        )

        async def one(problem: Problem) -> DebateResult:
            async with limit:
                result = await _debate(client, server, problem, run_id, extra, configurable)
            bar.debate_done(problem.id, failed=not result.ok)
            return result

        tasks = [asyncio.ensure_future(one(p)) for p in problems]
        try:
            return list(await asyncio.gather(*tasks))
        finally:  # on an error or Ctrl-C stop waiting; the runs sent go on on the server
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            bar.close()
    except httpx.TransportError as exc:
        raise _unreachable(server, exc) from exc
    finally:
        await client.aclose()


def read_server_traces(server: str | DebateServer, run_id: str) -> RunTraces:
    """The finished debates of ``run_id`` (in ``server``'s namespace), from the thread states;
    each trace's ``thread_id`` is its server thread (:func:`server_thread_id`).

    For a server with a Postgres checkpointer, :func:`mafl_graph.traces.read_traces` on a
    ``PostgresSaver`` of its database reads the same debates from the checkpoints.
    """
    return run_on_runner_loop(aread_server_traces(server, run_id))


async def aread_server_traces(server: str | DebateServer, run_id: str) -> RunTraces:
    """:func:`read_server_traces` from a running event loop."""
    from mafl_graph.traces import DebateTrace, RunTraces, UnfinishedThread

    server = as_server(server)
    if not run_id:
        raise ValueError("run_id must be a non-empty string (the run_id the debates ran with).")
    client = get_client(url=server.url)
    traces: list[DebateTrace] = []
    unfinished: list[UnfinishedThread] = []
    try:
        for thread in await _run_threads(client, server, run_id):
            tid = str(thread["thread_id"])
            state = await client.threads.get_state(tid)
            values = _values(state)
            saved = dict(state.get("metadata") or {})
            problem_id = str(thread["metadata"].get("problem_id", saved.get("problem_id", "")))
            if "consensus_fraction" not in values:
                step = saved.get("step")
                unfinished.append(UnfinishedThread(tid, problem_id, step=step))
                continue
            traces.append(
                DebateTrace(
                    run_id=run_id,
                    thread_id=tid,
                    problem_id=problem_id,
                    question=values.get("question", ""),
                    reference=values.get("reference"),
                    consensus=values.get("consensus"),
                    consensus_fraction=values.get("consensus_fraction", 0.0),
                    correct=values.get("correct"),
                    responses=values.get("responses", []),
                    summaries=values.get("summaries", []),
                    metadata=saved,
                )
            )
    except httpx.TransportError as exc:
        raise _unreachable(server, exc) from exc
    finally:
        await client.aclose()
    traces.sort(key=lambda t: t.thread_id)
    unfinished.sort(key=lambda t: t.thread_id)
    return RunTraces(run_id=run_id, traces=traces, unfinished=unfinished)


async def _run_threads(
    client: LangGraphClient, server: DebateServer, run_id: str
) -> list[dict[str, Any]]:
    """Every thread of ``run_id`` in the server's namespace, found by its metadata."""
    query = {RUN_KEY: run_id, **({NAMESPACE_KEY: server.namespace} if server.namespace else {})}
    found: list[dict[str, Any]] = []
    page, seen = 100, 0
    while True:
        batch = await client.threads.search(metadata=query, limit=page, offset=seen)
        seen += len(batch)
        # A search cannot ask for a key's absence: threads of other namespaces go here.
        found += [
            dict(t)
            for t in batch
            if (t["metadata"] or {}).get(NAMESPACE_KEY, "") == server.namespace
        ]
        if len(batch) < page:
            return found


async def _debate(
    client: LangGraphClient,
    server: DebateServer,
    problem: Problem,
    run_id: str,
    metadata: dict[str, Any],
    configurable: dict[str, Any],
) -> DebateResult:
    """Debate ``problem`` on the server to the end, or resume it, or read it back."""
    tid = server_thread_id(run_id, problem.id, server.namespace)
    tags = {
        **metadata,
        RUN_KEY: run_id,
        "problem_id": problem.id,
        **({NAMESPACE_KEY: server.namespace} if server.namespace else {}),
    }
    try:
        await client.threads.create(thread_id=tid, if_exists="do_nothing", metadata=tags)
        saved = _values(await client.threads.get_state(tid))
        if saved.get("question") and saved["question"] != problem.question:
            raise _OtherQuestion(
                f"Run {run_id!r} already holds a different question under problem id "
                f"{problem.id!r} on {server.url}; use a new run_id (or namespace) for a "
                "different problem set."
            )
        if "consensus_fraction" not in saved:
            run: Mapping[str, Any] | None = await _in_flight(client, tid)
            if run is None:
                # A thread without state has not started; one with state resumes from its
                # last checkpoint (no input).
                start = None if saved else _input(problem)
                try:
                    run = await client.runs.create(
                        tid,
                        server.graph,
                        input=start,
                        config={"configurable": configurable},
                        metadata=tags,
                        multitask_strategy="reject",
                        durability="sync",
                    )
                except ConflictError:  # a run started meanwhile (another caller): wait for it
                    run = await _in_flight(client, tid)
                    if run is None:
                        raise
            outcome = await _join(client, tid, str(run["run_id"]))
            if outcome is not None:
                return DebateResult(problem.id, problem.question, problem.answer, error=outcome)
            saved = _values(await client.threads.get_state(tid))
            if "consensus_fraction" not in saved:
                raise RuntimeError(f"the run on thread {tid} ended before the vote")
    except (_OtherQuestion, httpx.TransportError):
        raise
    except Exception as exc:  # one bad problem must not sink the run
        return DebateResult(problem.id, problem.question, problem.answer, error=_describe(exc))
    return DebateResult.from_state(problem, saved)


class _OtherQuestion(ValueError):
    """The thread of a problem id holds another question: the whole call is refused."""


def _input(problem: Problem) -> dict[str, Any]:
    """The debate graph's input (:class:`~mafl_graph.debate.state.DebateInput`)."""
    return {"problem_id": problem.id, "question": problem.question, "reference": problem.answer}


def _values(state: Any) -> dict[str, Any]:
    """A thread state's values (none yet: empty)."""
    values = state.get("values") if isinstance(state, Mapping) else None
    return dict(values) if isinstance(values, Mapping) else {}


async def _in_flight(client: LangGraphClient, tid: str) -> Mapping[str, Any] | None:
    """The thread's run that is pending or running, if any (the oldest)."""
    for status in _IN_FLIGHT:
        runs = await client.runs.list(tid, status=status, limit=100)  # type: ignore[arg-type]
        if runs:
            return min(runs, key=lambda r: str(r["created_at"]))
    return None


async def _join(client: LangGraphClient, tid: str, run_id: str) -> str | None:
    """Wait for the run to end; None when it succeeded, else why it did not."""
    while True:
        try:
            final = await client.runs.join(tid, run_id)
        except httpx.ReadTimeout:  # a long debate outlasts one request: wait again
            continue
        run = await client.runs.get(tid, run_id)
        if run["status"] not in _IN_FLIGHT:
            break
        # The join came back early (a server shutting down answers before its runs end; it
        # runs them again when it is back): wait, then join again.
        await asyncio.sleep(0.5)
    if run["status"] == "success":
        return None
    error = final.get("__error__") if isinstance(final, dict) else None
    if isinstance(error, dict):
        return redact(f"{error.get('error')}: {error.get('message')}")
    return f"RunError: the server's run {run_id} ended with status {run['status']!r}"


async def _probe(server: DebateServer) -> None:
    """Refuse a server that does not answer at all, at once.

    The SDK's own client retries a refused connection for about 8 s, which rides over a
    restart in the middle of a run; at the start, a wrong URL or a server not started is
    said at once instead. Any HTTP answer will do: only the connection is checked here.
    """
    try:
        async with httpx.AsyncClient(timeout=10) as probe:
            await probe.get(server.url.rstrip("/") + "/ok")
    except httpx.TransportError as exc:
        raise _unreachable(server, exc) from exc


async def _check_graph(client: LangGraphClient, server: DebateServer) -> None:
    """Refuse a server that does not serve ``server.graph``, before any thread is made."""
    try:
        if await client.assistants.search(graph_id=server.graph, limit=1):
            return
    except NotFoundError:  # servers that refuse an unknown graph id rather than find nothing
        pass
    try:
        uuid.UUID(server.graph)
    except ValueError:
        pass
    else:
        try:
            await client.assistants.get(server.graph)
            return
        except NotFoundError:
            pass
    graphs = sorted({a["graph_id"] for a in await client.assistants.search(limit=100)})
    raise ValueError(
        f"The LangGraph Server at {server.url} serves no graph or assistant {server.graph!r} "
        f"(its graphs: {', '.join(graphs) or 'none'}); serve this repository's langgraph.json "
        "or give DebateServer(graph=...)."
    )


def _shape(graph: StateGraph | CompiledStateGraph | None) -> DebateShape | None:
    if graph is None:
        return None
    builder = getattr(graph, "builder", graph)
    return getattr(builder, "debate_shape", None)


def _configurable(server: DebateServer, shape: DebateShape | None) -> dict[str, Any]:
    """The settings every run sends: the local graph's shape, then the server's own."""
    settings = dict(server.settings)
    if shape is None:
        return settings
    given = {
        "agents": shape.agents,
        "rounds": shape.rounds,
        "summarize": shape.summarize,
        "task": shape.task.name,
    }
    clash = {k: (settings[k], v) for k, v in given.items() if k in settings and settings[k] != v}
    if clash:
        described = ", ".join(f"{k}={s!r} (the graph's: {g!r})" for k, (s, g) in clash.items())
        raise ValueError(
            f"DebateServer settings disagree with the debate graph: {described}; leave "
            f"{', '.join(_SHAPE_KEYS)} out of the settings to take the graph's."
        )
    return {**given, **settings}


def _unreachable(server: DebateServer, exc: BaseException) -> DebateServerError:
    return DebateServerError(
        f"The LangGraph Server at {server.url} cannot be reached ({type(exc).__name__}: "
        f"{exc or 'no answer'}). The debates it finished stay on it: start it again (e.g. "
        "`langgraph dev` in the directory it ran in) or fix the URL, then call again with the "
        "same run_id to resume."
    )
