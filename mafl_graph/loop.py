"""MultiagentFinetuning: iterations of debate(train) -> datasets -> tune -> debate(test).

Every step leaves its result in the run directory before the next begins, and every step
resumes by itself: debates from their checkpoints (a saved answer is never asked for again; one
that arrived just before a crash, not yet saved, is: delivery is at least once), tuning from the
tuner's ledger (a finished adapter, an upload or a created job is never redone, even when the
crash came between the provider's answer and the ledger's record of it).
``metrics.json`` records each finished step, so a rerun of a killed loop skips straight to
the step it stopped in.

    <run_dir>/manifest.json           settings, seeds, package versions, model ids
    <run_dir>/metrics.json            one record per iteration, one key per finished step
    <run_dir>/iter0/eval.sqlite       the untuned society on the test split
    <run_dir>/iter<k>/train.sqlite    debates of iteration k's society on the train split
    <run_dir>/iter<k>/datasets/       its per-agent datasets (+ stats.json)
    <run_dir>/tuning/iter<k>/         ledgers and tuned.json; adapters/iter<k>/ (local)
    <run_dir>/iter<k>/eval.sqlite     the tuned society on the test split
    <run_dir>/usage.json              tokens and cost of every debate call, per agent and role

Three methods share this harness, so that their numbers are comparable:

- ``multiagent`` (the paper): each agent's generator and critic are tuned on their own data.
- ``single`` (STaR, and single-agent fine-tuning when iterated): one agent answers the train
  problems alone and is tuned on its answers that match the ground truth; the evaluation
  debate uses copies of that one model.
- ``majority`` (majority FT): one model is tuned on every agent's first answers that agree
  with the debate's majority; copies of it debate.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Literal

from langchain_core.callbacks import BaseCallbackHandler

from mafl_graph.evaluate import Evaluation, evaluate_society
from mafl_graph.finetune.datasets import (
    DEFAULT_W,
    AgentDataset,
    DatasetStats,
    Example,
    Target,
    build_datasets,
    check_w,
)
from mafl_graph.finetune.export import export_datasets
from mafl_graph.finetune.tuners.base import TunedModel, Tuner
from mafl_graph.finetune.tuners.run import Key, load_tuned, sampling_of, tune_run, tuned_society
from mafl_graph.models import model_label
from mafl_graph.rundir import prepare_run_dir, write_json
from mafl_graph.society import Society
from mafl_graph.tasks.base import Problem, Task
from mafl_graph.traces import read_traces_sqlite
from mafl_graph.usage import UsageRecorder

Method = Literal["multiagent", "single", "majority"]
METHODS: tuple[str, ...] = ("multiagent", "single", "majority")
TunerFactory = Callable[..., Tuner]
"""Called as ``factory(run_dir, iteration=k)``, e.g. ``functools.partial(get_tuner, "local")``."""

log = logging.getLogger(__name__)


class LoopError(RuntimeError):
    """A step of the loop failed; what finished stays on disk and a rerun resumes there."""


class MultiagentFinetuning:
    """The paper's loop on one task: the society debates, each agent learns, and again."""

    def __init__(
        self,
        society: Society,
        task: Task,
        tuner: TunerFactory,
        *,
        iterations: int = 2,
        n_train: int = 100,
        n_test: int = 100,
        rounds: int = 2,
        summarize: bool = True,
        method: Method = "multiagent",
        tune_critics: bool = True,
        w: float = DEFAULT_W,
        target: Target | None = None,
        seed: int = 0,
        concurrency: int = 16,
        evaluate_base: bool = True,
        diversity: Callable[[Society, Evaluation], dict[str, Any]] | None = None,
        settings: Mapping[str, Any] | None = None,
        callbacks: Sequence[BaseCallbackHandler] = (),
        progress: bool = True,
    ) -> None:
        """
        ``tuner``: makes the tuner of each iteration (see :data:`TunerFactory`).
        ``tune_critics``: False is the "without critics" ablation: only generators are
        tuned, and each agent's tuned generator also plays its critic.
        ``target``: what training answers must agree with; by default the consensus
        (multiagent, majority) or the ground truth (single, as STaR does).
        ``evaluate_base``: evaluate the untuned society first (iteration 0); methods sharing
        one base can skip it after the first.
        ``diversity``: measures of a society from its evaluation, recorded per iteration
        (e.g. :func:`mafl_graph.diversity.measure`).
        ``settings``: what built the society and task (model, task options, tuner config), for
        the manifest: a rerun with other settings is refused, not mixed in.
        ``callbacks``: see every model call of every debate, beside the loop's own
        :class:`~mafl_graph.usage.UsageRecorder` (``<run_dir>/usage.json``).
        """
        if method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}; got {method!r}.")
        for name, value, least in (
            ("iterations", iterations, 0),
            ("n_train", n_train, 1),
            ("n_test", n_test, 1),
            ("rounds", rounds, 1),
            ("concurrency", concurrency, 1),
        ):
            if value < least:
                raise ValueError(f"{name} must be at least {least}; got {value}.")
        if rounds > 1 and len(society) < 2:
            raise ValueError(f"A debate of {rounds} rounds needs at least 2 agents; use rounds=1.")
        self.society, self.task, self.tuner = society, task, tuner
        self.iterations, self.n_train, self.n_test = iterations, n_train, n_test
        self.rounds, self.summarize, self.method = rounds, summarize, method
        self.tune_critics = tune_critics and method == "multiagent" and rounds > 1
        self.w = check_w(w)
        self.target: Target = target or ("reference" if method == "single" else "consensus")
        self.seed, self.concurrency = seed, concurrency
        self.evaluate_base, self.diversity = evaluate_base, diversity
        self.extra_settings = dict(settings or {})
        self.callbacks = list(callbacks)
        self.progress = progress

    def settings(self) -> dict[str, Any]:
        """What the manifest pins (``iterations`` is left out: a finished run may be extended)."""
        return {
            **self.extra_settings,
            "method": self.method,
            "agents": len(self.society),
            "models": _model_ids(self.society),
            "task": self.task.name,
            "n_train": self.n_train,
            "n_test": self.n_test,
            "rounds": self.rounds,
            "summarize": self.summarize,
            "tune_critics": self.tune_critics,
            "w": self.w,
            "target": self.target,
            "seed": self.seed,
        }

    def run(self, run_dir: str | Path) -> list[dict[str, Any]]:
        """Run (or resume) every iteration; returns the per-iteration metrics."""
        run_dir = Path(run_dir)
        prepare_run_dir(run_dir, self.settings())
        train = self.task.load("train", self.n_train)
        test = self.task.load("test", self.n_test)
        if overlap := {p.question for p in train} & {p.question for p in test}:
            raise ValueError(
                f"{len(overlap)} test question(s) also appear in the train split (e.g. "
                f"{next(iter(overlap))!r}); a tuned society would be graded on what it learned."
            )
        metrics = _Metrics(run_dir / "metrics.json")
        # A resumed run adds to what the interrupted one recorded (finished calls are not redone).
        usage = UsageRecorder(run_dir / "usage.json")
        callbacks = [usage, *self.callbacks]
        try:
            if self.evaluate_base:
                self._evaluate(metrics, 0, self.society, test, run_dir, callbacks)
            society, tuned = self.society, dict[Key, TunedModel]()
            for k in range(1, self.iterations + 1):
                log.info("iteration %d: debating %d train problems", k, len(train))
                trainers = self._trainers(society)
                metrics.step(
                    k, "train", partial(self._debate, trainers, train, k, run_dir, callbacks)
                )
                metrics.step(k, "datasets", partial(self._datasets, k, run_dir))
                metrics.step(k, "tuning", partial(self._tune, k, run_dir, tuned))
                tuned = load_tuned(run_dir / "tuning" / f"iter{k}" / "tuned.json")
                society = self.society_after(tuned)
                self._evaluate(metrics, k, society, test, run_dir, callbacks)
        finally:
            usage.save()
        return metrics.records

    # Steps -------------------------------------------------------------------------------

    def _evaluate(
        self,
        metrics: _Metrics,
        k: int,
        society: Society,
        test: list[Problem],
        run_dir: Path,
        callbacks: list[BaseCallbackHandler],
    ) -> None:
        evaluation: list[Evaluation] = []

        def run() -> dict[str, Any]:
            log.info("iteration %d: evaluating on %d test problems", k, len(test))
            result = evaluate_society(
                society,
                self.task,
                test,
                db_path=run_dir / f"iter{k}" / "eval.sqlite",
                rounds=self.rounds,
                summarize=self.summarize,
                seed=self.seed,
                concurrency=self.concurrency,
                metadata={"iteration": k, "split": "test"},
                callbacks=callbacks,
                progress=self.progress,
            )
            evaluation.append(result)
            return result.as_dict()

        metrics.step(k, "eval", run)
        if self.diversity is not None:

            def measure() -> dict[str, Any]:
                if not evaluation:  # the evaluation finished in an earlier run: reread it
                    run()
                assert self.diversity is not None
                return self.diversity(society, evaluation[0])

            metrics.step(k, "diversity", measure)

    def _debate(
        self,
        society: Society,
        problems: list[Problem],
        k: int,
        run_dir: Path,
        callbacks: list[BaseCallbackHandler],
    ) -> Any:
        single = self.method == "single"
        return evaluate_society(
            society,
            self.task,
            problems,
            db_path=run_dir / f"iter{k}" / "train.sqlite",
            run_id="train",
            rounds=1 if single else self.rounds,
            summarize=self.summarize,
            seed=self.seed,
            concurrency=self.concurrency,
            metadata={"iteration": k, "split": "train"},
            callbacks=callbacks,
            progress=self.progress,
        ).as_dict()

    def _datasets(self, k: int, run_dir: Path) -> dict[str, Any]:
        traces = read_traces_sqlite(run_dir / f"iter{k}" / "train.sqlite", "train")
        if not traces.traces:
            raise LoopError(f"iteration {k}: no finished train debate to learn from.")
        n_agents = 1 if self.method == "single" else len(self.society)
        built = build_datasets(
            traces, self.task, w=self.w, target=self.target, seed=self.seed, n_agents=n_agents
        )
        chosen = [d for d in built.values() if d.role == "generator" or self.tune_critics]
        if self.method == "majority":
            chosen = [_pooled(chosen)]
        usable = [d for d in chosen if d.examples]
        for empty in (d for d in chosen if not d.examples):
            log.warning(
                "iteration %d: %s has no training example (%s); it keeps its model",
                k,
                empty.name,
                self._why_empty(empty.stats),
            )
        if not usable:
            raise LoopError(
                f"iteration {k}: no agent produced a training example (no answer agreed with "
                f"the {self.target}); a stronger base, an easier task or more problems is needed."
            )
        out = run_dir / f"iter{k}" / "datasets"
        suffix = str(getattr(self._tuner(k, run_dir), "dataset_suffix", ".openai.jsonl"))
        fmt = "vertex" if suffix.startswith(".vertex") else "openai"
        result = export_datasets(usable, out, formats=[fmt], min_examples=1)
        if not result.ok:
            issues = "; ".join(f"{p.name}: {i[0]}" for p, i in result.failed.items())
            raise LoopError(f"iteration {k}: exported datasets are invalid: {issues}")
        stats = {d.name: d.stats.as_dict() for d in chosen}
        write_json(out / "stats.json", {"unfinished": len(traces.unfinished), "datasets": stats})
        return {"unfinished": len(traces.unfinished), "datasets": stats}

    def _tune(self, k: int, run_dir: Path, previous: Mapping[Key, TunedModel]) -> dict[str, Any]:
        log.info("iteration %d: tuning", k)
        started = time.perf_counter()
        outcomes = tune_run(
            self._tuner(k, run_dir),
            run_dir,
            previous=previous,
            datasets_dir=run_dir / f"iter{k}" / "datasets",
        )
        if failed := [o for o in outcomes if o.tuned is None]:
            reasons = "; ".join(f"agent{o.agent}-{o.role}: {o.error}" for o in failed)
            raise LoopError(f"iteration {k}: tuning failed ({reasons}); rerun to resume.")
        return {
            "seconds": time.perf_counter() - started,
            "tuned": sorted(f"agent{o.agent}-{o.role}" for o in outcomes),
        }

    def _why_empty(self, stats: DatasetStats) -> str:
        if not stats.candidates:
            return f"none of its debates had a {self.target} ({stats.no_target} without)"
        if stats.role == "critic" and (stats.wrong_first or stats.right_first):
            return (
                f"D_C- (first answers wrong, revised to the {self.target}) has "
                f"{stats.wrong_first} and D_C+ {stats.right_first}; w = {self.w:g} asks for "
                f"{self.w:.0%} of D_C-"
            )
        undecided = f", {stats.undecided} undecided" if stats.undecided else ""
        return f"none of its {stats.candidates} answers agreed with the {self.target}{undecided}"

    # Societies ---------------------------------------------------------------------------

    def _tuner(self, k: int, run_dir: Path) -> Tuner:
        return self.tuner(run_dir, iteration=k)

    def _trainers(self, society: Society) -> Society:
        """Who debates the train split: the society, or one agent alone (single)."""
        if self.method == "single":
            return Society(agents=society.agents[:1], summarizer=society.summarizer)
        return society

    def society_after(self, tuned: Mapping[Key, TunedModel]) -> Society:
        """The society that the tuned models of one iteration make (by this method's rules)."""
        if self.method in ("single", "majority"):
            # One tuned model; its copies debate (with their own seeds, as from_model gives).
            base = self.society.agents[0].generator
            one = tuned[(0, "generator")].chat_model(**sampling_of(base))
            copies = Society.from_model(one, len(self.society), summarizer=self.society.summarizer)
            return copies
        tuned = dict(tuned)
        if not self.tune_critics:  # each agent's tuned generator plays its critic too
            for (agent, role), model in list(tuned.items()):
                if role == "generator":
                    tuned[(agent, "critic")] = model
        return tuned_society(self.society, tuned)


def _pooled(datasets: list[AgentDataset]) -> AgentDataset:
    """Every agent's generator examples as agent 0's: the one model majority FT trains.

    Interleaved by agent, so a run cut short by ``max_steps`` still sees every agent's answers.
    """
    rows = itertools.zip_longest(*(d.examples for d in datasets))
    examples: list[Example] = [
        {**example, "agent": 0} for group in rows for example in group if example is not None
    ]
    stats = DatasetStats(
        agent=0,
        role="generator",
        examples=len(examples),
        candidates=sum(d.stats.candidates for d in datasets),
        no_target=sum(d.stats.no_target for d in datasets),
    )
    return AgentDataset(agent=0, role="generator", examples=examples, stats=stats)


def _model_ids(society: Society) -> list[str]:
    return [
        f"{agent.name}: {model_label(agent.generator)} / {model_label(agent.critic)}"
        for agent in society.agents
    ]


class _Metrics:
    """``metrics.json``: one record per iteration, one key per finished step, saved at once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: list[dict[str, Any]] = []
        if path.is_file():
            try:
                self.records = json.loads(path.read_text())
            except json.JSONDecodeError as exc:
                raise ValueError(
                    f"{path} is unreadable ({exc}); move it aside to recompute the metrics "
                    "(finished debates and tuning are kept and will not be redone)."
                ) from exc

    def step(self, k: int, name: str, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        record = next((r for r in self.records if r["iteration"] == k), None)
        if record is None:
            record = {"iteration": k}
            self.records.append(record)
            self.records.sort(key=lambda r: r["iteration"])
        if name not in record:
            record[name] = run()
            write_json(self.path, self.records)
        return record[name]  # type: ignore[no-any-return]
