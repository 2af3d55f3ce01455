"""MultiagentFinetuning: iterations of debate(train) -> datasets -> tune -> debate(test).

Every step leaves its result in the run directory (:class:`~mafl_graph.rundir.RunLayout`)
before the next begins, and every step resumes by itself: debates from their checkpoints (a
saved answer is never asked for again; one that arrived just before a crash, not yet saved, is:
delivery is at least once), tuning from the tuner's ledger (a finished adapter, an upload or a
created job is never redone, even when the crash came between the provider's answer and the
ledger's record of it). The metrics record each finished step, so a rerun of a killed loop
skips straight to the step it stopped in.

    manifest           settings, seeds, package versions, model ids
    metrics            one record per iteration, one key per finished step
    eval_db(0)         the untuned society on the test split
    train_db(k)        debates of iteration k's society on the train split
    datasets_dir(k)    its per-agent datasets (+ dataset_stats(k))
    tuning_dir(k)      ledgers and tuned_at(k); adapter(k, agent, role) (local)
    eval_db(k)         the tuned society on the test split
    usage              tokens and cost of every debate call, per agent and role

Every method runs on this harness, so that their numbers are comparable; what differs (who is
tuned on which data, and what society follows) is the method's
(:class:`~mafl_graph.methods.Method`): ``multiagent`` (the paper), ``single`` (STaR),
``majority`` (majority FT), and the ablations ``no-critics`` and ``no-summarizer``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from langchain_core.callbacks import BaseCallbackHandler

from mafl_graph.evaluate import Evaluation, evaluate_society
from mafl_graph.finetune.datasets import DEFAULT_W, Target, build_datasets, check_w
from mafl_graph.finetune.export import export_datasets
from mafl_graph.finetune.tuners.base import TunedModel, Tuner
from mafl_graph.finetune.tuners.registry import TunerFactory
from mafl_graph.finetune.tuners.run import Key, load_tuned, tune_run
from mafl_graph.methods import Method, get_method, loop_method_names
from mafl_graph.models import model_label
from mafl_graph.rundir import RunLayout, prepare_run_dir, read_settings, write_json
from mafl_graph.serving.base import ServingBackend
from mafl_graph.serving.inprocess import InProcessServing
from mafl_graph.society import Society
from mafl_graph.tasks.base import Problem, Task
from mafl_graph.traces import read_traces_sqlite
from mafl_graph.tracking import RunTracking, Tracker, make_trackers
from mafl_graph.usage import UsageRecorder

if TYPE_CHECKING:
    from mafl_graph.debate.server import DebateServer

METHODS: tuple[str, ...] = loop_method_names()
"""The built-in loop methods; :func:`~mafl_graph.methods.loop_method_names` also lists those
registered later."""
# Loop options a method may fix (Method.options).
_METHOD_OPTIONS = ("summarize", "tune_critics", "evaluate_base", "target")

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
        method: str | Method = "multiagent",
        tune_critics: bool = True,
        w: float = DEFAULT_W,
        target: Target | None = None,
        seed: int = 0,
        concurrency: int = 16,
        evaluate_base: bool = True,
        diversity: Callable[[Society, Evaluation], dict[str, Any]] | None = None,
        settings: Mapping[str, Any] | None = None,
        callbacks: Sequence[BaseCallbackHandler] = (),
        report_to: str | Tracker | Sequence[str | Tracker] | None = (),
        progress: bool = True,
        serving: ServingBackend | None = None,
        debate_server: DebateServer | None = None,
    ) -> None:
        """
        ``tuner``: makes the tuner of each iteration and says which dataset format it takes
        (e.g. ``TunerFactory("local", config=LocalTuneConfig(epochs=2))``).
        ``method``: a registered method's name (:func:`~mafl_graph.methods.loop_method_names`)
        or a :class:`~mafl_graph.methods.Method`; the options it fixes (an ablation's) win
        over those given here.
        ``tune_critics``: False is the "without critics" ablation: only generators are
        tuned, and each agent's tuned generator also plays its critic.
        ``target``: what training answers must agree with; by default the method's (the
        consensus; the ground truth for single, as STaR does).
        ``evaluate_base``: evaluate the untuned society first (iteration 0); methods sharing
        one base can skip it after the first.
        ``diversity``: measures of a society from its evaluation, recorded per iteration
        (e.g. :func:`mafl_graph.diversity.measure`).
        ``settings``: what built the society and task (model, task options, tuner config), for
        the manifest: a rerun with other settings is refused, not mixed in.
        ``callbacks``: see every model call of every debate, beside the loop's own
        :class:`~mafl_graph.usage.UsageRecorder` (``RunLayout.usage``).
        ``report_to``: experiment trackers that follow the run (:mod:`mafl_graph.tracking`):
        ``"wandb"``, ``"mlflow"``, ``"tensorboard"``, a registered name, ``"all"``, or
        :class:`~mafl_graph.tracking.Tracker` objects; each needs its package, checked here.
        ``serving``: where tuned models are served (:mod:`mafl_graph.serving`, e.g. every
        adapter on one vLLM server); by default in this process, as each tuner serves them.
        The untuned ``society`` should already be served there (``LoopConfig`` builds it so).
        ``debate_server``: run the debates of the untuned society on this LangGraph Server
        (:mod:`mafl_graph.debate.server`; its settings must build ``society``). A tuned
        society's models live in this process and its run directory, so its debates run here.
        """
        self.method = _loop_method(method)
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
        if not isinstance(getattr(tuner, "dataset_format", None), str):
            # Datasets are exported in the tuner's format before any tuner is built.
            raise TypeError(
                f"tuner must say its dataset format, as a TunerFactory does (e.g. "
                f"TunerFactory('local', config=LocalTuneConfig())); got {tuner!r}."
            )
        fixed = {
            "summarize": summarize,
            "tune_critics": tune_critics,
            "evaluate_base": evaluate_base,
            "target": target,
            **self.method.options,
        }
        self.society, self.task, self.tuner = society, task, tuner
        self.iterations, self.n_train, self.n_test = iterations, n_train, n_test
        self.rounds, self.summarize = rounds, bool(fixed["summarize"])
        self.tune_critics = bool(fixed["tune_critics"]) and self.method.tunes_critics and rounds > 1
        self.w = check_w(w)
        self.target: Target = fixed["target"] or self.method.default_target
        self.seed, self.concurrency = seed, concurrency
        self.evaluate_base, self.diversity = bool(fixed["evaluate_base"]), diversity
        self.extra_settings = dict(settings or {})
        self.callbacks = list(callbacks)
        self.trackers = make_trackers(report_to)
        self.progress = progress
        self.serving = serving or InProcessServing()
        self.debate_server = debate_server

    def settings(self) -> dict[str, Any]:
        """What the manifest pins (``iterations`` is left out: a finished run may be extended)."""
        return {
            **self.extra_settings,
            "method": self.method.recorded_as,
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
        layout = RunLayout(run_dir)
        # A server that cannot serve the run (down, another base) is refused before anything
        # is written, so the fixed command starts the same run.
        self.serving.check()
        prepare_run_dir(layout.root, self.settings())
        train = self.task.load("train", self.n_train)
        test = self.task.load("test", self.n_test)
        if overlap := {p.question for p in train} & {p.question for p in test}:
            raise ValueError(
                f"{len(overlap)} test question(s) also appear in the train split (e.g. "
                f"{next(iter(overlap))!r}); a tuned society would be graded on what it learned."
            )
        # Trackers get the manifest's settings (as on disk) and every step, those a resumed
        # run reads back included, so each tracker run holds the run's whole history.
        tracking = RunTracking(self.trackers, layout.root)
        metrics = _Metrics(layout.metrics, on_step=tracking.log_step)
        # A resumed run adds to what the interrupted one recorded (finished calls are not redone).
        usage = UsageRecorder(layout.usage)
        callbacks = [usage, *self.callbacks]
        tracking.start({**read_settings(layout.manifest), "iterations": self.iterations})
        finished = False
        try:
            if self.evaluate_base:
                self._evaluate(metrics, 0, self.society, test, layout, callbacks)
            society, tuned = self.society, dict[Key, TunedModel]()
            for k in range(1, self.iterations + 1):
                log.info("iteration %d: debating %d train problems", k, len(train))
                trainers = self.method.trainers(society)
                metrics.step(
                    k, "train", partial(self._debate, trainers, train, k, layout, callbacks)
                )
                metrics.step(k, "datasets", partial(self._datasets, k, layout, trainers))
                metrics.step(k, "tuning", partial(self._tune, k, layout, tuned))
                previous, tuned = tuned, load_tuned(layout.tuned_at(k))
                society = self.society_after(tuned)
                self.serving.release(previous, keep=tuned)
                self._evaluate(metrics, k, society, test, layout, callbacks)
            finished = True
        finally:
            try:
                usage.save()
            finally:
                tracking.finish(failed=not finished)
        return metrics.records

    # Steps -------------------------------------------------------------------------------

    def _evaluate(
        self,
        metrics: _Metrics,
        k: int,
        society: Society,
        test: list[Problem],
        layout: RunLayout,
        callbacks: list[BaseCallbackHandler],
    ) -> None:
        evaluation: list[Evaluation] = []

        def run() -> dict[str, Any]:
            log.info("iteration %d: evaluating on %d test problems", k, len(test))
            result = evaluate_society(
                society,
                self.task,
                test,
                db_path=layout.eval_db(k),
                rounds=self.rounds,
                summarize=self.summarize,
                seed=self.seed,
                concurrency=self.concurrency,
                metadata={"iteration": k, "split": "test"},
                callbacks=callbacks,
                progress=self.progress,
                server=self._server_for(society, k),
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
        layout: RunLayout,
        callbacks: list[BaseCallbackHandler],
    ) -> Any:
        return evaluate_society(
            society,
            self.task,
            problems,
            db_path=layout.train_db(k),
            run_id="train",
            rounds=self.method.train_rounds(self.rounds),
            summarize=self.summarize,
            seed=self.seed,
            concurrency=self.concurrency,
            metadata={"iteration": k, "split": "train"},
            callbacks=callbacks,
            progress=self.progress,
            server=self._server_for(society, k),
        ).as_dict()

    def _datasets(self, k: int, layout: RunLayout, trainers: Society) -> dict[str, Any]:
        server = self._server_for(trainers, k)
        if server is not None:  # the debates' threads are named after the file (evaluate_society)
            from mafl_graph.debate.server import read_server_traces

            namespace = server.namespace or str(layout.train_db(k).resolve())
            traces = read_server_traces(server.within(namespace), "train")
        else:
            traces = read_traces_sqlite(layout.train_db(k), "train")
        if not traces.traces:
            raise LoopError(f"iteration {k}: no finished train debate to learn from.")
        built = build_datasets(
            traces,
            self.task,
            w=self.w,
            target=self.target,
            seed=self.seed,
            n_agents=self.method.dataset_agents(self.society),
        )
        chosen = self.method.training_datasets(list(built.values()), tune_critics=self.tune_critics)
        usable = [d for d in chosen if d.examples]
        for empty in (d for d in chosen if not d.examples):
            log.warning(
                "iteration %d: %s has no training example (%s); it keeps its model",
                k,
                empty.name,
                empty.stats.why_empty(self.target, self.w),
            )
        if not usable:
            raise LoopError(
                f"iteration {k}: no agent produced a training example (no answer agreed with "
                f"the {self.target}); a stronger base, an easier task or more problems is needed."
            )
        result = export_datasets(
            usable, layout.datasets_dir(k), formats=[self.tuner.dataset_format], min_examples=1
        )
        if not result.ok:
            issues = "; ".join(f"{p.name}: {i[0]}" for p, i in result.failed.items())
            raise LoopError(f"iteration {k}: exported datasets are invalid: {issues}")
        stats = {d.name: d.stats.as_dict() for d in chosen}
        record = {"unfinished": len(traces.unfinished), "datasets": stats}
        write_json(layout.dataset_stats(k), record)
        return record

    def _tune(
        self, k: int, layout: RunLayout, previous: Mapping[Key, TunedModel]
    ) -> dict[str, Any]:
        log.info("iteration %d: tuning", k)
        started = time.perf_counter()
        outcomes = tune_run(
            self._tuner(k, layout),
            layout.root,
            previous=previous,
            datasets_dir=layout.datasets_dir(k),
        )
        if failed := [o for o in outcomes if o.tuned is None]:
            reasons = "; ".join(f"agent{o.agent}-{o.role}: {o.error}" for o in failed)
            raise LoopError(f"iteration {k}: tuning failed ({reasons}); rerun to resume.")
        return {
            "seconds": time.perf_counter() - started,
            "tuned": sorted(f"agent{o.agent}-{o.role}" for o in outcomes),
        }

    # Societies ---------------------------------------------------------------------------

    def _server_for(self, society: Society, k: int) -> DebateServer | None:
        """Where ``society`` debates: on the debate server when the server can build it (the
        untuned society's models, or some of its agents), else in this process."""
        if self.debate_server is None:
            return None
        base = {id(m) for a in self.society.agents for m in (a.generator, a.critic)}
        used = {id(m) for a in society.agents for m in (a.generator, a.critic)}
        if used <= base and society.summarizer is self.society.summarizer:
            return self.debate_server
        log.info("iteration %d: the tuned society debates in this process", k)
        return None

    def _tuner(self, k: int, layout: RunLayout) -> Tuner:
        return self.tuner(layout.root, iteration=k)

    def society_after(self, tuned: Mapping[Key, TunedModel]) -> Society:
        """The society that the tuned models of one iteration make (by this method's rules),
        each served by the loop's serving backend (registered there first if it needs it)."""
        served = self.serving.prepare(tuned)
        return self.method.society_after(self.society, served, tune_critics=self.tune_critics)


def _loop_method(method: str | Method) -> Method:
    """``method`` as a registered Method that runs as a loop and fixes only loop options."""
    if not isinstance(method, Method):
        if method not in loop_method_names():
            raise ValueError(
                f"method must be one of {', '.join(loop_method_names())}; got {method!r}."
            )
        method = get_method(method)
    if not method.runs_as_loop:
        raise ValueError(
            f"method {method.name!r} does not run as a fine-tuning loop; choose one of "
            f"{', '.join(loop_method_names())}."
        )
    if unknown := sorted(set(method.options) - set(_METHOD_OPTIONS)):
        raise ValueError(
            f"method {method.name!r} fixes {unknown}; a method may fix only "
            f"{', '.join(_METHOD_OPTIONS)}."
        )
    return method


def _model_ids(society: Society) -> list[str]:
    return [
        f"{agent.name}: {model_label(agent.generator)} / {model_label(agent.critic)}"
        for agent in society.agents
    ]


class _Metrics:
    """The run's metrics: one record per iteration, one key per finished step, saved at once."""

    def __init__(
        self, path: Path, on_step: Callable[[int, str, dict[str, Any]], None] | None = None
    ) -> None:
        self.path = path
        # Told of every step, run now or read back (a tracker replays a resumed run).
        self.on_step = on_step
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
        if self.on_step is not None:
            self.on_step(k, name, record[name])
        return record[name]  # type: ignore[no-any-return]
