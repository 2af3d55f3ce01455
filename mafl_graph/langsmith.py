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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mafl_graph.debate.run import RUN_KEY
from mafl_graph.debate.state import Response
from mafl_graph.finetune.datasets import AgentDataset, Example
from mafl_graph.traces import DebateTrace, RunTraces, UnfinishedThread

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
    """Every debate of ``run_id`` (the ``run_id`` given to ``run_debates``) in a project.

    ``client``: a ``langsmith.Client`` (default: one configured from ``LANGSMITH_API_KEY`` /
    ``LANGSMITH_ENDPOINT``). ``filter``: more metadata conditions, e.g. ``{"iteration": 2}``,
    checked on each run. A debate that was resumed or repeated has several ``vote`` runs; the
    latest counts. Traces are sorted by thread id, as the checkpoint reader sorts them.
    """
    if not run_id:
        raise ValueError("run_id must be a non-empty string (the run_id given to run_debates).")
    client = client or _client()
    wanted = {RUN_KEY: run_id, **(filter or {})}
    query = _metadata_filter(RUN_KEY, run_id)
    # Every run of the run_id, without inputs and outputs: which debates started, and errors.
    started: dict[str, tuple[str, str | None]] = {}  # problem id -> (thread id, first error)
    for run in _list_runs(
        client, project_name, query, select=["id", "name", "extra", "error", "start_time"]
    ):
        meta = run.metadata
        if not _matches(meta, wanted) or "problem_id" not in meta:
            continue
        problem = str(meta["problem_id"])
        thread, error = started.get(problem, (str(meta.get("thread_id", "")), None))
        started[problem] = (thread or f"{run_id}/{problem}", error or run.error or None)
    # The vote runs, with the debate state they were given and the verdict they returned.
    latest: dict[str, Any] = {}
    for run in _list_runs(client, project_name, f'and(eq(name, "{VOTE_NODE}"), {query})'):
        meta = run.metadata
        if run.name != VOTE_NODE or run.error or not _matches(meta, wanted):
            continue
        state = run.inputs or {}
        if "responses" not in state or "question" not in state or run.outputs is None:
            continue  # a node called "vote" in another graph of the caller's app
        thread = str(meta.get("thread_id") or f"{run_id}/{state.get('problem_id')}")
        if thread not in latest or run.start_time > latest[thread].start_time:
            latest[thread] = run
    traces = [_trace(run_id, thread, run) for thread, run in sorted(latest.items())]
    finished = {t.problem_id for t in traces}
    unfinished = [
        UnfinishedThread(thread, problem, None, error)
        for problem, (thread, error) in sorted(started.items())
        if problem not in finished
    ]
    return RunTraces(run_id, traces, unfinished)


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


def _trace(run_id: str, thread: str, run: Any) -> DebateTrace:
    state, verdict = run.inputs, run.outputs
    metadata = {
        k: v
        for k, v in run.metadata.items()
        if isinstance(v, str | int | float | bool) and not k.startswith(("ls_", "langgraph_"))
    }
    return DebateTrace(
        run_id=run_id,
        thread_id=thread,
        problem_id=str(state.get("problem_id", metadata.get("problem_id", thread))),
        question=state["question"],
        reference=state.get("reference"),
        consensus=verdict.get("consensus"),
        consensus_fraction=float(verdict.get("consensus_fraction", 0.0)),
        correct=verdict.get("correct"),
        responses=[Response(**r) for r in state.get("responses", [])],  # type: ignore[typeddict-item]
        summaries=[Response(**r) for r in state.get("summaries", [])],  # type: ignore[typeddict-item]
        metadata=metadata,
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
