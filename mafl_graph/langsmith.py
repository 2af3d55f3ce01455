"""Debate traces from LangSmith, and per-agent datasets pushed to LangSmith.

For users whose debates live in a LangSmith project rather than in a checkpointer (an app
that embeds the debate graph and traces to LangSmith, or a deployment whose checkpoints are
out of reach), :func:`read_traces_langsmith` hands out the same :class:`DebateTrace` records
as :func:`mafl_graph.read_traces`, so :func:`mafl_graph.build_datasets` builds the same
per-agent datasets from either source.

How a debate is found in a project. Every run of a debate carries the run's metadata
(``mafl_run_id``, ``problem_id``, anything passed as ``metadata=`` such as ``iteration``), so
one metadata filter finds a run's runs, wherever the graph sits in the caller's trace. The
``vote`` node runs once per finished debate and is traced with the whole debate state as its
input (question, reference, every response with the exact messages it was sent) and the
verdict as its output, which is exactly a :class:`DebateTrace`. A debate with runs but no
``vote`` never finished and is reported in ``RunTraces.unfinished``, as the checkpoint reader
does.

Runs are listed with ``Client.list_runs`` (``POST /runs/query``), which every ``langsmith``
release this package supports has and every LangSmith backend serves. langsmith 0.15 marks it
deprecated (until January 2027) in favour of ``Client.runs.query``, which needs a 0.16+
backend and returns only the last day's runs unless told otherwise; the warning is silenced
here, and the move is due when list_runs goes.
"""

from __future__ import annotations

import json
import uuid
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mafl_graph.debate.run import RUN_KEY
from mafl_graph.debate.state import Response
from mafl_graph.finetune.datasets import AgentDataset, Example
from mafl_graph.traces import (
    DebateTrace,
    RunTraces,
    UnfinishedThread,
    error_message,
    within_namespace,
)

if TYPE_CHECKING:
    from langsmith import Client

VOTE_NODE = "vote"
_NAMESPACE = uuid.UUID("6f1c7a52-3a57-4d0c-9b1e-4d2b8f0c9a11")  # example ids: stable per dataset


def read_traces_langsmith(
    project_name: str,
    run_id: str,
    *,
    client: Client | None = None,
    filter: Mapping[str, Any] | None = None,
) -> RunTraces:
    """Every debate of ``run_id`` (given to ``run_debates``, or as ``mafl_run_id`` in the
    metadata an app is invoked with) in a project.

    ``client``: a ``langsmith.Client`` (default: one configured from ``LANGSMITH_API_KEY`` /
    ``LANGSMITH_ENDPOINT``). ``filter``: more metadata conditions, e.g. ``{"iteration": 2}``,
    checked on each run. A debate is identified as the checkpoint reader identifies it: its
    thread and its own checkpoint namespace, which LangGraph records on every run inside it,
    so an app's several debates in one thread are each read back. A debate that was resumed
    or repeated has several ``vote`` runs; the latest counts. Traces are sorted by thread id
    and namespace, as the checkpoint reader sorts them; errors and metadata come in the
    checkpoint reader's form (``Type: message``; the run's own metadata, not LangSmith's).
    """
    if not run_id:
        raise ValueError("run_id must be a non-empty string (the run_id given to run_debates).")
    client = client or _client()
    wanted = {RUN_KEY: run_id, **(filter or {})}
    query = _metadata_filter(RUN_KEY, run_id)
    # Every run of the run_id, without inputs and outputs: which debates started, and errors.
    started: dict[tuple[str, str], _Started] = {}
    for run in _list_runs(
        client,
        project_name,
        query,
        select=["id", "name", "run_type", "extra", "error", "start_time", "trace_id"],
    ):
        meta = run.metadata
        debate = _debate_of(run)
        if debate is None or not _matches(meta, wanted):
            continue
        seen = started.setdefault(debate, _Started())
        if "problem_id" in meta:
            seen.problem_id = seen.problem_id or str(meta["problem_id"])
        seen.runs.append(run)
    # The vote runs, with the debate state they were given and the verdict they returned.
    latest: dict[tuple[str, str], Any] = {}
    for run in _list_runs(client, project_name, f'and(eq(name, "{VOTE_NODE}"), {query})'):
        meta = run.metadata
        debate = _debate_of(run)
        if run.name != VOTE_NODE or run.error or debate is None or not _matches(meta, wanted):
            continue
        state = run.inputs or {}
        if "responses" not in state or "question" not in state or run.outputs is None:
            continue  # a node called "vote" in another graph of the caller's app
        if debate not in latest or run.start_time > latest[debate].start_time:
            latest[debate] = run
    # As in the checkpoint reader: a namespace that holds another debate's is the app's.
    hosts = {
        outer
        for outer in started.keys() | latest.keys()
        for inner in started.keys() | latest.keys()
        if inner != outer and inner[0] == outer[0] and within_namespace(inner[1], outer[1])
    }
    latest = {debate: run for debate, run in latest.items() if debate not in hosts}
    traces = sorted(
        (_trace(run_id, debate, run) for debate, run in latest.items()),
        key=lambda t: (t.thread_id, t.checkpoint_ns),
    )
    unfinished = sorted(
        (
            UnfinishedThread(
                _thread(run_id, debate, seen.problem_id),
                seen.problem_id or "",
                None,
                seen.error(),
                debate[1],
            )
            for debate, seen in started.items()
            if debate not in latest and debate not in hosts and seen.problem_id is not None
        ),
        key=lambda u: (u.thread_id, u.checkpoint_ns),
    )
    return RunTraces(run_id, traces, unfinished)


@dataclass
class _Started:
    """What the runs of one debate say before its vote: its problem, and its runs."""

    problem_id: str | None = None
    runs: list[Any] = field(default_factory=list)

    def error(self) -> str | None:
        """The error that stopped the debate, chosen as the checkpoint reader chooses it.

        A checkpoint keeps the last step's failed tasks, each with the exception of its last
        attempt. So: per task (a node's namespace, which its retries share), the last attempt,
        unless one attempt succeeded; of those, the latest step's; a cancellation only if alone;
        then the first in sort order. The node's run holds the exception the graph recorded
        (it names the call); a model's run only the provider's message, used where no node's
        run failed.
        """
        for node_runs in (True, False):
            tasks: dict[str, list[Any]] = {}
            for run in self.runs:
                if (run.run_type != "llm") == node_runs:
                    tasks.setdefault(str(run.metadata.get("langgraph_checkpoint_ns")), []).append(
                        run
                    )
            failed = [
                max(attempts, key=lambda r: str(r.start_time))
                for attempts in tasks.values()
                if all(r.error for r in attempts)
            ]
            if failed:
                step = max(_step(r) for r in failed)
                errors = sorted(error_message(r.error) for r in failed if _step(r) == step)
                causes = [e for e in errors if not e.startswith("CancelledError")]
                return (causes or errors)[0]
        return None


def _step(run: Any) -> int:
    step = run.metadata.get("langgraph_step")
    return step if isinstance(step, int) else -1


@dataclass(frozen=True)
class PushedDataset:
    """Where a dataset went: its LangSmith id and name, and how many examples were added."""

    dataset_id: str
    name: str
    added: int
    already_there: int


def push_dataset(
    dataset: AgentDataset,
    name: str,
    *,
    client: Client | None = None,
    description: str | None = None,
) -> PushedDataset:
    """Upload one agent's dataset to LangSmith as dataset ``name`` (created if missing).

    Each example becomes ``inputs={"messages": [...]}`` (what the model was sent, earlier
    assistant turns with ``weight`` 0) and ``outputs={"message": {"role": "assistant",
    "content": reply}}`` (what it learns), with ``problem_id``, ``agent``, ``role`` and
    ``subset`` (D_G, D_C-, D_C+) as metadata and split ``train``. Example ids are derived from
    the dataset name and problem, so pushing again (after an interruption, or a rebuilt
    dataset) adds only what is missing and never duplicates.
    """
    if not name:
        raise ValueError("push_dataset needs a dataset name, e.g. 'mafl-run1-agent0-generator'.")
    from langsmith.schemas import DataType

    client = client or _client()
    if client.has_dataset(dataset_name=name):
        remote = client.read_dataset(dataset_name=name)
    else:
        remote = client.create_dataset(
            name,
            description=description
            or f"mafl_graph {dataset.role} dataset of agent {dataset.agent} "
            "(multiagent fine-tuning: conversations the agent had, and the reply to learn).",
            data_type=DataType.kv,
            metadata={"agent": dataset.agent, "role": dataset.role, **dataset.stats.as_dict()},
        )
    existing = {str(e.id) for e in client.list_examples(dataset_id=remote.id)}
    new = [
        (example_id, example)
        for example in dataset.examples
        if (example_id := str(uuid.uuid5(_NAMESPACE, f"{name}/{example['problem_id']}")))
        not in existing
    ]
    if new:
        client.create_examples(dataset_id=remote.id, examples=[_example(i, e) for i, e in new])
    return PushedDataset(str(remote.id), name, len(new), len(dataset.examples) - len(new))


def push_datasets(
    datasets: Mapping[Any, AgentDataset] | Iterable[AgentDataset],
    prefix: str,
    *,
    client: Client | None = None,
) -> list[PushedDataset]:
    """:func:`push_dataset` for every dataset, named ``<prefix>-agent<i>-<role>``."""
    values = datasets.values() if isinstance(datasets, Mapping) else datasets
    client = client or _client()
    return [push_dataset(d, f"{prefix}-{d.name}", client=client) for d in values]


# Internals ---------------------------------------------------------------------------------


def _client() -> Client:
    from langsmith import Client

    return Client()


def _list_runs(client: Client, project: str, query: str, **options: Any) -> list[Any]:
    with warnings.catch_warnings():  # list_runs' deprecation: see the module docstring
        warnings.filterwarnings("ignore", message=r"list_runs\(\) is deprecated")
        return list(client.list_runs(project_name=project, filter=query, **options))


def _metadata_filter(key: str, value: Any) -> str:
    """LangSmith's filter for a metadata key-value pair (strings quoted as JSON quotes them)."""
    return f"and(eq(metadata_key, {json.dumps(key)}), eq(metadata_value, {json.dumps(value)}))"


def _matches(metadata: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    """Checked here too: the server's filter compares strings, and a stand-in may not filter."""
    return all(k in metadata and str(metadata[k]) == str(v) for k, v in wanted.items())


def _debate_of(run: Any) -> tuple[str, str] | None:
    """The debate a run belongs to: (thread, the debate's checkpoint namespace), or None for a
    run outside any graph node (the graph's own root run, an app's runs).

    LangGraph records the namespace of the node a run is in (``langgraph_checkpoint_ns``,
    e.g. ``debate:<task id>|generate:<task id>``); the debate's own is that without its last
    level. Without a thread (a graph compiled without a checkpointer) the trace stands for it.
    """
    meta = run.metadata
    node_ns = meta.get("langgraph_checkpoint_ns")
    if not isinstance(node_ns, str) or not node_ns:
        return None
    ns = node_ns.rsplit("|", 1)[0] if "|" in node_ns else ""
    thread = meta.get("thread_id")
    return (str(thread) if thread else f"trace:{run.trace_id}", ns)


def _thread(run_id: str, debate: tuple[str, str], problem_id: str | None) -> str:
    thread = debate[0]
    return f"{run_id}/{problem_id}" if thread.startswith("trace:") else thread


# What LangSmith and LangGraph add to a run's metadata, beside what the run was given.
_TRACING_METADATA = ("revision_id", "thread_id", "checkpoint_ns", "checkpoint_id")
_TRACING_PREFIXES = ("ls_", "langgraph_", "LANGSMITH_", "LANGCHAIN_", "__")


def _trace(run_id: str, debate: tuple[str, str], run: Any) -> DebateTrace:
    state, verdict = run.inputs, run.outputs
    metadata = {
        k: v
        for k, v in run.metadata.items()
        if isinstance(v, str | int | float | bool)
        and k not in _TRACING_METADATA
        and not k.startswith(_TRACING_PREFIXES)
    }
    return DebateTrace(
        run_id=run_id,
        thread_id=_thread(run_id, debate, state.get("problem_id")),
        problem_id=str(state.get("problem_id", metadata.get("problem_id", debate[0]))),
        question=state["question"],
        reference=state.get("reference"),
        consensus=verdict.get("consensus"),
        consensus_fraction=float(verdict.get("consensus_fraction", 0.0)),
        correct=verdict.get("correct"),
        responses=[Response(**r) for r in state.get("responses", [])],  # type: ignore[typeddict-item]
        summaries=[Response(**r) for r in state.get("summaries", [])],  # type: ignore[typeddict-item]
        metadata=metadata,
        checkpoint_ns=debate[1],
    )


def _example(example_id: str, example: Example) -> dict[str, Any]:
    *context, reply = example["messages"]
    record: dict[str, Any] = {
        "id": example_id,
        "inputs": {"messages": [dict(m) for m in context]},
        _OUTPUTS_FIELD: {"message": {"role": "assistant", "content": reply["content"]}},
        "metadata": {
            "problem_id": example["problem_id"],
            "agent": example["agent"],
            "role": example["role"],
            "subset": example["subset"],
        },
        "split": "train",
    }
    return record


def _outputs_field() -> str:
    """``reference_outputs`` where langsmith has it (0.15+: ``outputs`` is deprecated there)."""
    from langsmith import schemas

    fields = getattr(schemas.ExampleCreate, "model_fields", {})
    return "reference_outputs" if "reference_outputs" in fields else "outputs"


_OUTPUTS_FIELD = _outputs_field()
