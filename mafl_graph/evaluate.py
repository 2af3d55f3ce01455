"""Accuracy with standard errors, and what a set of debates says about the society."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from langchain_core.callbacks import BaseCallbackHandler

from mafl_graph.debate.graph import create_debate_graph
from mafl_graph.debate.run import DebateResult, run_debates
from mafl_graph.grading import Verdict
from mafl_graph.society import Society
from mafl_graph.tasks.base import Problem, Task, grade_answer, task_for

if TYPE_CHECKING:
    from mafl_graph.config import ClientOptions, TaskOptions
    from mafl_graph.debate.prompts import DebatePrompts
    from mafl_graph.debate.server import DebateServer
    from mafl_graph.rundir import RunLayout


@dataclass(frozen=True)
class Accuracy:
    """A proportion over problems with its standard error sqrt(p(1-p)/n).

    ``undecided``: how many of the ``n`` could not be graded because grading ran out of time.
    They count in ``n`` but not in ``correct``, so ``mean`` is a lower bound and
    ``(correct + undecided) / n`` the matching upper bound.
    """

    correct: int
    n: int
    undecided: int = 0

    @property
    def mean(self) -> float:
        return self.correct / self.n if self.n else 0.0

    @property
    def stderr(self) -> float:
        return math.sqrt(self.mean * (1 - self.mean) / self.n) if self.n else 0.0

    def __str__(self) -> str:
        undecided = f", {self.undecided} undecided" if self.undecided else ""
        return (
            f"{100 * self.mean:.1f} ± {100 * self.stderr:.1f}% ({self.correct}/{self.n}{undecided})"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "mean": self.mean,
            "stderr": self.stderr,
            "correct": self.correct,
            "n": self.n,
            "undecided": self.undecided,
        }


@dataclass(frozen=True)
class DebateSummary:
    """Consensus accuracy plus how the agents did in each round.

    ``accuracy`` counts every problem, failed debates and unparseable answers as wrong; a
    consensus whose grading ran out of time is neither right nor wrong but undecided (see
    :class:`Accuracy`). ``round_accuracy[r]`` is the accuracy of single agents' answers in
    round r+1, so the effect of debating is visible next to the voted result. ``undecided``
    counts every grade of the run that ran out of time: in the votes (clustering and
    correctness) and in grading each round's answers here.
    """

    accuracy: Accuracy
    round_accuracy: list[Accuracy]
    consensus: float
    failed: int
    undecided: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            **dataclasses.asdict(self),
            "accuracy": self.accuracy.as_dict(),
            "round_accuracy": [a.as_dict() for a in self.round_accuracy],
        }


def accuracy(flags: Sequence[bool | None], *, undecided: int = 0) -> Accuracy:
    """``flags``: True right; False or None (no reference, failed, undecided) not right."""
    return Accuracy(correct=sum(1 for f in flags if f), n=len(flags), undecided=undecided)


def summarize_debates(results: Sequence[DebateResult], task: Task) -> DebateSummary:
    """Accuracy of the votes and of each round's single answers, consensus and failures."""
    rounds = max((r["round"] for res in results for r in res.responses), default=0)
    round_accuracy = []
    undecided = sum(res.undecided for res in results)
    bound = [
        task_for(task, Problem(res.problem_id, res.question, res.reference)) for res in results
    ]
    for round_ in range(1, rounds + 1):
        verdicts = [
            grade_answer(own, r["answer"], res.reference)
            if res.reference is not None
            else Verdict.DIFFERENT
            for res, own in zip(results, bound, strict=True)
            for r in res.responses
            if r["round"] == round_
        ]
        unsure = verdicts.count(Verdict.UNDECIDED)
        undecided += unsure
        round_accuracy.append(
            accuracy([v is Verdict.EQUIVALENT for v in verdicts], undecided=unsure)
        )
    ok = [res for res in results if res.ok]
    unsure_consensus = sum(
        1 for res in ok if res.reference is not None and res.correct is None and res.undecided
    )
    return DebateSummary(
        accuracy=accuracy([res.correct for res in results], undecided=unsure_consensus),
        round_accuracy=round_accuracy,
        consensus=sum(res.consensus_fraction for res in ok) / len(ok) if ok else 0.0,
        failed=len(results) - len(ok),
        undecided=undecided,
    )


@dataclass(frozen=True)
class Evaluation:
    """A society's debates on a problem set: what it scored and what it cost."""

    summary: DebateSummary
    calls: int
    tokens: int
    """Prompt plus reply tokens of every call (0 where the models report no usage)."""
    seconds: float
    results: list[DebateResult]

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.summary.as_dict(),
            "calls": self.calls,
            "tokens": self.tokens,
            "seconds": self.seconds,
        }


def evaluate_society(
    society: Society,
    task: Task,
    problems: Sequence[Problem],
    *,
    db_path: str | Path,
    run_id: str = "eval",
    rounds: int = 2,
    summarize: bool = True,
    seed: int = 0,
    concurrency: int = 16,
    metadata: Mapping[str, Any] | None = None,
    callbacks: Sequence[BaseCallbackHandler] | None = None,
    progress: bool = True,
    prompts: DebatePrompts | None = None,
    server: DebateServer | None = None,
) -> Evaluation:
    """Debate ``problems`` with ``society`` (checkpointed at ``db_path``, so a rerun resumes).

    With one round this is independent answering: one agent is the single-agent baseline,
    n agents are majority voting over n samples. ``callbacks`` see every model call (e.g. a
    :class:`~mafl_graph.usage.UsageRecorder`). ``prompts``: the debate's wording (and global
    instruction), else the task's or the paper's.
    ``server``: debate on this LangGraph Server instead (:mod:`mafl_graph.debate.server`),
    which must build ``society`` (and use the task's prompts) from its settings; its threads
    are named after ``db_path`` (the server's namespace, unless it has one), so a rerun
    resumes them as it would the file. The model calls are made there: ``callbacks`` see
    none of them.
    """
    graph = create_debate_graph(
        society, task, rounds=rounds, summarize=summarize, seed=seed, prompts=prompts
    )
    if server is not None:
        if prompts is not None:
            raise ValueError("custom prompts cannot be sent to a debate server; leave them out.")
        server = server.within(server.namespace or str(Path(db_path).resolve()))
    started = time.perf_counter()
    results = run_debates(
        graph,
        problems,
        run_id=run_id,
        db_path=None if server is not None else db_path,
        max_concurrency=concurrency,
        metadata=metadata,
        callbacks=list(callbacks or []),
        progress=progress,
        server=server,
    )
    seconds = time.perf_counter() - started
    calls = [r for res in results for r in (*res.responses, *res.summaries)]
    return Evaluation(
        summary=summarize_debates(results, task),
        calls=len(calls),
        tokens=sum(r.get("tokens", 0) for r in calls),
        seconds=seconds,
        results=results,
    )


def evaluate_transfer(
    run_dir: str | Path,
    test: TaskOptions,
    *,
    train_task: str,
    n: int = 100,
    concurrency: int = 16,
    client: ClientOptions | None = None,
) -> tuple[list[dict[str, Any]], RunLayout]:
    """Zero-shot transfer (paper Fig. 5): a run's base and tuned society on another task.

    ``run_dir`` is a ``mafl loop`` run (its society, tuned by its method's rules) or a
    ``mafl debate`` + ``mafl tune`` run (each tuned agent and role replaced). Results go to
    ``<run_dir>/transfer/<task>/`` (checkpoints, usage, metrics), whose layout is returned
    with one metrics record per society (iteration 0: base, 1: tuned).
    """
    from mafl_graph.config import DebateConfig, LoopConfig
    from mafl_graph.finetune.tuners import load_tuned, tuned_society
    from mafl_graph.rundir import RunLayout, read_settings, write_json
    from mafl_graph.usage import UsageRecorder

    layout = RunLayout(run_dir)
    if not layout.manifest.is_file():
        raise FileNotFoundError(f"{layout.manifest} not found; is {run_dir} a run directory?")
    settings = read_settings(layout.manifest)
    if settings.get("task") != train_task:
        raise ValueError(f"{run_dir} was tuned on {settings.get('task')!r}, not {train_task!r}.")
    if not layout.tuned.is_file():
        raise FileNotFoundError(f"{layout.tuned} not found: the run has not tuned yet.")
    if "n_train" in settings:
        config, settings = LoopConfig.from_manifest(run_dir, client=client)
        loop = config.loop(parts=config.build(tune_record=settings.get("tune")))
        base, tuned = loop.society, loop.society_after(load_tuned(layout.tuned))
    else:
        debate = DebateConfig.from_manifest(run_dir, client=client)
        base = debate.society()
        tuned = tuned_society(base, load_tuned(layout.tuned))
    task, _ = test.build()
    problems = task.load("test", n)
    out = layout.transfer(task.name)
    usage = UsageRecorder(out.usage)
    records = []
    try:
        for iteration, (name, society) in enumerate({"base": base, "tuned": tuned}.items()):
            evaluation = evaluate_society(
                society,
                task,
                problems,
                db_path=out.transfer_db(name),
                rounds=settings["rounds"],
                summarize=settings["summarize"],
                seed=settings["seed"],
                concurrency=concurrency,
                metadata={"iteration": iteration, "split": "transfer"},
                callbacks=[usage],
            )
            records.append({"iteration": iteration, "eval": evaluation.as_dict()})
    finally:
        usage.save()
    write_json(out.metrics, records)
    return records, out
