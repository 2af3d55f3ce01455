"""Typed settings of a debate run and of the loop: one set of defaults for library and CLI.

:class:`DebateConfig` is what ``mafl debate`` runs; :class:`LoopConfig` what ``mafl loop``,
``compare`` and ``sweep`` run. Each field's default and help text are the command-line
option's (``mafl_graph.cli`` reads them from here), and :meth:`LoopConfig.from_manifest`
rebuilds a run's settings in Python. Groups shared by several commands are their own
dataclasses: :class:`TaskOptions`, :class:`ClientOptions` and
:class:`~mafl_graph.finetune.tuners.options.TuneOptions`.

This module imports no model, task or tuner code until a run is built, so that ``mafl --help``
stays fast.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from mafl_graph.finetune.tuners.options import TuneOptions, option
from mafl_graph.serving.options import DEFAULT_SERVING, ServingOptions

if TYPE_CHECKING:
    from langchain_core.callbacks import BaseCallbackHandler

    from mafl_graph.debate.server import DebateServer
    from mafl_graph.evaluate import Evaluation
    from mafl_graph.finetune.tuners.registry import TunerFactory
    from mafl_graph.loop import MultiagentFinetuning
    from mafl_graph.serving.base import ServingBackend
    from mafl_graph.society import Society
    from mafl_graph.tasks.base import Task

__all__ = [
    "DEFAULT_W",
    "LOOP_ARITHMETIC",
    "ClientOptions",
    "DebateConfig",
    "LoopConfig",
    "LoopParts",
    "TaskOptions",
    "flat_fields",
    "from_flat",
]

DEFAULT_W = 0.67
"""The paper's share of D_C⁻ (first answer wrong, revised to the target) in a critic's set."""

LOOP_ARITHMETIC: dict[str, Any] = {"terms": 2, "low": 0, "high": 30, "operators": "+"}
"""The loop's arithmetic where no option says otherwise: sums of two numbers up to 30, on
which the embedded SmolLM2-135M scores within 20–60% (docs/results.md), so tuning has room to
help, with enough distinct problems for the default 100 train and 100 test. ``mafl debate``
uses :class:`~mafl_graph.tasks.Arithmetic`'s own, harder defaults."""

LOOP_TASK_DEFAULTS: dict[str, Mapping[str, Any]] = {"arithmetic": LOOP_ARITHMETIC}
"""The loop's defaults per task name, where they differ from the task's own."""


@dataclass(frozen=True)
class TaskOptions:
    """Which task, and its options: each goes to the task whose constructor takes it."""

    task: str = option(
        "arithmetic", "arithmetic, gsm8k, math, dm-math, humaneval, mixed, or a registered task"
    )
    terms: int | None = option(None, "arithmetic: numbers per expression")
    low: int | None = option(None, "arithmetic: smallest number")
    high: int | None = option(None, "arithmetic: largest number")
    operators: str | None = option(None, "arithmetic: operator pattern, e.g. '+*+-*'")
    module: str | None = option(None, "dm-math: the generator's module, e.g. algebra__linear_1d")
    difficulty: str | None = option(
        None, "dm-math: train-easy, train-medium, train-hard or interpolate"
    )
    tasks: str | None = option(
        None, "mixed: [domain=]task[:module],... e.g. 'arithmetic,alg=dm-math:algebra__linear_1d'"
    )
    weights: str | None = option(None, "mixed: each domain's share, e.g. '2,1,1'")
    data_dir: Path | None = option(None, "gsm8k/math/mixed: local data directory")

    def options(
        self, *, seed: int | None = None, defaults: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """The task's constructor options, as a manifest records them.

        ``seed`` goes to tasks that generate or sample problems (those taking ``seed``);
        ``defaults`` fill options left unset. An option the task does not take is refused.
        """
        from mafl_graph.tasks import task_class

        cls = task_class(self.task)
        takes = set(inspect.signature(cls).parameters)
        chosen = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name != "task" and getattr(self, f.name) is not None
        }
        if refused := sorted(set(chosen) - takes):
            flags = ", ".join(f"--{name.replace('_', '-')}" for name in refused)
            accepted = ", ".join(sorted(takes)) or "no options"
            raise ValueError(f"{flags} do not apply to --task {self.task} (it takes {accepted}).")
        chosen = {**{k: v for k, v in (defaults or {}).items() if k in takes}, **chosen}
        if seed is not None and "seed" in takes:
            chosen["seed"] = seed
        if "data_dir" in chosen:
            chosen["data_dir"] = str(chosen["data_dir"])
        return chosen

    def build(
        self, *, seed: int | None = None, defaults: Mapping[str, Any] | None = None
    ) -> tuple[Task, dict[str, Any]]:
        """The task and the options that made it."""
        from mafl_graph.tasks import get_task

        options = self.options(seed=seed, defaults=defaults)
        return get_task(self.task, **options), options

    @classmethod
    def from_settings(cls, task: str, options: Mapping[str, Any]) -> TaskOptions:
        """The options a manifest recorded (``task`` and ``task_options``)."""
        own = {f.name for f in dataclasses.fields(cls)} - {"task"}
        chosen = {k: v for k, v in options.items() if k in own and v is not None}
        if "data_dir" in chosen:
            chosen["data_dir"] = Path(chosen["data_dir"])
        return cls(task=task, **chosen)


@dataclass(frozen=True)
class ClientOptions:
    """How to talk to a hosted provider; never in a manifest, so a resumed run may change it."""

    requests_per_second: float | None = option(
        None, "hosted: at most this many calls per second, all agents together"
    )
    max_retries: int | None = option(None, "hosted: the SDK's retries per call (429/5xx/timeouts)")
    timeout: float | None = option(None, "hosted: seconds before a call is retried")

    def model_options(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


def _model_options(
    seed: int, temperature: float | None, max_tokens: int | None, client: ClientOptions
) -> dict[str, Any]:
    """What every agent's model is made with; agent i samples with ``seed + i``."""
    chosen = {"temperature": temperature, "max_tokens": max_tokens}
    return {
        **{k: v for k, v in chosen.items() if v is not None},
        "seed": seed,
        **client.model_options(),
    }


def _check_sampling(temperature: float | None, max_tokens: int | None) -> None:
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"--max-tokens must be at least 1; got {max_tokens}.")
    if temperature is not None and not 0 <= temperature <= 2:
        raise ValueError(f"--temperature must lie in [0, 2]; got {temperature}.")


@dataclass(frozen=True)
class DebateConfig:
    """One set of debates: ``mafl debate``. :meth:`run` checks, debates and writes results."""

    task_options: TaskOptions = field(default_factory=TaskOptions)
    model: str = option("local:smollm2", "provider:model, e.g. local:smollm2, openai:gpt-4o-mini")
    agents: int = option(3, "number of debating agents")
    rounds: int = option(2, "debate rounds (1 = independent answers)")
    n: int = option(20, "number of problems")
    split: str = option("test", "train or test (mixed: also cross-domain)")
    summarize: bool = option(True, "summarize the other agents' answers")
    seed: int = option(0, "seed for sampling, problems and tie-breaks")
    temperature: float | None = option(None, "sampling temperature")
    max_tokens: int | None = option(None, "at most this many new tokens per reply")
    concurrency: int = option(16, "problems debated at once")
    client: ClientOptions = field(default_factory=ClientOptions)

    def settings(self) -> dict[str, Any]:
        """What the manifest pins (how to reach the provider is left out)."""
        return {
            "task": self.task_options.task,
            "task_options": self.task_options.options(seed=self.seed),
            "model": self.model,
            "agents": self.agents,
            "rounds": self.rounds,
            "n": self.n,
            "split": self.split,
            "summarize": self.summarize,
            "seed": self.seed,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }

    def check(self) -> None:
        """Refuse counts that cannot make a debate, naming the option and the value."""
        for name, value in (
            ("--agents", self.agents),
            ("--rounds", self.rounds),
            ("--n", self.n),
            ("--concurrency", self.concurrency),
        ):
            if value < 1:
                raise ValueError(f"{name} must be at least 1; got {value}.")
        _check_sampling(self.temperature, self.max_tokens)

    @classmethod
    def from_manifest(
        cls, run_dir: str | Path, *, client: ClientOptions | None = None
    ) -> DebateConfig:
        """The config a ``mafl debate`` run directory was made with."""
        from mafl_graph.rundir import RunLayout, read_settings

        manifest = RunLayout(run_dir).manifest
        if not manifest.is_file():
            raise FileNotFoundError(f"{manifest} not found; is {run_dir} a `mafl debate` run?")
        settings = read_settings(manifest)
        needed = ("task", "model", "agents", "rounds", "summarize", "seed")
        if missing := [k for k in needed if k not in settings]:
            raise ValueError(
                f"{manifest} lacks the settings {missing}: `mafl eval` takes a run directory "
                "made by `mafl loop`, or by `mafl debate` then `mafl tune`."
            )
        names = {f.name for f in dataclasses.fields(cls)} - {"task_options", "client"}
        return cls(
            task_options=TaskOptions.from_settings(
                settings["task"], settings.get("task_options", {})
            ),
            client=client or ClientOptions(),
            **{k: v for k, v in settings.items() if k in names},
        )

    def society(self) -> Society:
        from mafl_graph.society import Society

        options = _model_options(self.seed, self.temperature, self.max_tokens, self.client)
        return Society.from_model(self.model, self.agents, **options)

    def run(
        self, run_dir: str | Path, *, callbacks: Sequence[BaseCallbackHandler] = ()
    ) -> Evaluation:
        """Debate into ``run_dir`` (resuming what it holds); writes results and summary.

        Everything is checked before anything is written; ``<run_dir>/usage.json`` records
        tokens and cost per agent and role.
        """
        from mafl_graph.debate.graph import create_debate_graph
        from mafl_graph.debate.run import check_checkpoint_file
        from mafl_graph.evaluate import evaluate_society
        from mafl_graph.rundir import RunLayout, prepare_run_dir, write_results
        from mafl_graph.usage import UsageRecorder

        layout = RunLayout(run_dir)
        self.check()
        task, _ = self.task_options.build(seed=self.seed)
        problems = task.load(self.split, self.n)
        society = self.society()
        # Built here only to check the debate's shape (agents, rounds) before anything is
        # written; evaluate_society builds its own.
        create_debate_graph(
            society, task, rounds=self.rounds, summarize=self.summarize, seed=self.seed
        )
        check_checkpoint_file(layout.debates)
        prepare_run_dir(layout.root, self.settings())
        usage = UsageRecorder(layout.usage)  # a resumed run adds to what was recorded
        try:
            evaluation = evaluate_society(
                society,
                task,
                problems,
                db_path=layout.debates,
                run_id="debate",
                rounds=self.rounds,
                summarize=self.summarize,
                seed=self.seed,
                concurrency=self.concurrency,
                callbacks=[usage, *callbacks],
            )
        finally:
            usage.save()
        write_results(layout.root, evaluation.results, evaluation.as_dict())
        return evaluation


class LoopParts(NamedTuple):
    """What a :class:`LoopConfig` builds: the society, the task, the tuner, the manifest's pins."""

    society: Society
    task: Task
    tuner: TunerFactory
    settings: dict[str, Any]


@dataclass(frozen=True)
class LoopConfig:
    """Every option of ``mafl loop`` / ``compare`` / ``sweep``, with the defaults of both.

    ``model`` picks the tuning backend (``local:`` the local tuner, ``openai:`` OpenAI,
    ``google_genai:`` Vertex AI); ``tune`` says how it tunes. Arithmetic options left unset
    take :data:`LOOP_ARITHMETIC`.
    """

    task_options: TaskOptions = field(default_factory=TaskOptions)
    model: str = option(
        "local:smollm2",
        "the base model: local:smollm2, local:/path, openai:gpt-4o-mini-2024-07-18 or "
        "google_genai:gemini-2.0-flash; it picks the tuner (local LoRA, OpenAI or Vertex AI)",
    )
    agents: int = option(3, "number of debating agents")
    rounds: int = option(2, "debate rounds")
    n_train: int = option(100, "train problems debated per iteration")
    n_test: int = option(100, "test problems evaluated per iteration")
    method: str = option(
        "multiagent",
        "multiagent, single (STaR), majority (majority FT), no-critics, no-summarizer, or a "
        "registered method",
    )
    iterations: int = option(2, "fine-tuning iterations")
    summarize: bool = option(True, "summarize the other agents' answers")
    critics: bool = option(True, "tune critics (--no-critics: the ablation)")
    w: float = option(DEFAULT_W, "share of D_C- in each critic's set")
    seed: int = option(0, "seed for sampling, problems, mixing and tuning")
    temperature: float | None = option(None, "sampling temperature")
    max_tokens: int | None = option(64, "at most this many new tokens per reply")
    concurrency: int = option(16, "problems debated at once")
    # Not in the manifest: a resumed run may report elsewhere.
    report_to: list[str] = option(
        (),
        "experiment trackers that follow the run: wandb, mlflow, tensorboard (repeatable or "
        "comma-separated; 'all': every installed one); needs the tracking extra",
    )
    # Not in the manifest: a resumed run may reach its server elsewhere.
    debate_server: str | None = option(
        None,
        "run the untuned society's debates on this LangGraph Server (URL, e.g. "
        "http://127.0.0.1:2024 from `langgraph dev`; docs/langgraph-server.md)",
    )
    tune: TuneOptions = field(default_factory=TuneOptions)
    client: ClientOptions = field(default_factory=ClientOptions)
    # Not in the manifest either: a resumed run may reach its server elsewhere.
    serve: ServingOptions = field(default_factory=ServingOptions)

    @classmethod
    def of(cls, **values: Any) -> LoopConfig:
        """A config from flat option names (``task="gsm8k", epochs=1``), as the CLI has them."""
        return from_flat(cls, values)

    def replace(self, **values: Any) -> LoopConfig:
        """This config with some flat options changed (a sweep's grid point)."""
        return from_flat(type(self), {**to_flat(self), **values})

    def build(self, *, tune_record: Mapping[str, Any] | None = None) -> LoopParts:
        """Society, task, tuner factory and the settings that pin them in the manifest.

        ``tune_record``: the tuning config a manifest recorded, used instead of ``tune``.
        """
        from mafl_graph.finetune.tuners.registry import (
            tuner_class,
            tuner_for_provider,
        )
        from mafl_graph.society import Society

        _check_sampling(self.temperature, self.max_tokens)
        provider, _, name = self.model.partition(":")
        backend = self.tune.tuner or tuner_for_provider(provider)
        backend_class = tuner_class(backend)
        # A backend chosen by name must tune this provider's models (SVF needs weights).
        if self.tune.tuner and getattr(backend_class, "provider", provider) != provider:
            note = backend_class.provider_note
            raise ValueError(
                f"The {backend!r} tuning backend tunes {backend_class.provider}: models, not "
                f"{self.model!r}{f': {note}' if note else ''}; use the provider's own tuning "
                f"backend ({tuner_for_provider(provider)}), or a {backend_class.provider}: model."
            )
        task, task_options = self.task_options.build(
            seed=self.seed, defaults=LOOP_TASK_DEFAULTS.get(self.task_options.task.lower())
        )
        # Where the backend serves tuned models from a service of its own (Vertex AI), the
        # base model is served by it too, so every iteration is one service.
        # The tuner first: its options are checked (e.g. Vertex needs a project) before any
        # model is set up.
        tuner = backend_class.factory(self.tune, model=name, seed=self.seed, record=tune_record)
        serving = backend_class.serving(self.tune)
        options = _model_options(self.seed, self.temperature, self.max_tokens, self.client)
        # The untuned society answers where the tuned one will (e.g. the base on a vLLM server).
        model, host = self.serving_backend().society_model(self.model)
        society = Society.from_model(model, self.agents, **options, **serving, **host)
        settings: dict[str, Any] = {
            "model": self.model,
            "task_options": task_options,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            **({"serving": serving} if serving else {}),
            **({"tuner": backend} if self.tune.tuner else {}),
            **backend_class.settings(tuner),
        }
        return LoopParts(society, task, tuner, settings)

    def loop_options(self) -> dict[str, Any]:
        """The keyword arguments of :class:`~mafl_graph.loop.MultiagentFinetuning`."""
        return {
            "iterations": self.iterations,
            "n_train": self.n_train,
            "n_test": self.n_test,
            "rounds": self.rounds,
            "summarize": self.summarize,
            "method": self.method,
            "tune_critics": self.critics,
            "w": self.w,
            "seed": self.seed,
            "concurrency": self.concurrency,
            "report_to": list(self.report_to),
            "serving": self.serving_backend(),
        }

    def serving_backend(self) -> ServingBackend:
        """Where the society's models are served (``--serving``; in this process by default)."""
        return self.serve.build(model=self.model, base=self.tune.base)

    def loop(
        self,
        *,
        parts: LoopParts | None = None,
        diversity: Callable[..., dict[str, Any]] | None = None,
        callbacks: Sequence[BaseCallbackHandler] = (),
        progress: bool = True,
    ) -> MultiagentFinetuning:
        """The loop these settings make (``parts``: already built, e.g. by :meth:`build`)."""
        from mafl_graph.loop import MultiagentFinetuning

        society, task, tuner, settings = parts or self.build()
        return MultiagentFinetuning(
            society,
            task,
            tuner,
            **self.loop_options(),
            diversity=diversity,
            settings=settings,
            callbacks=callbacks,
            progress=progress,
            debate_server=self.debate_server_for(settings),
        )

    def debate_server_for(self, settings: Mapping[str, Any]) -> DebateServer | None:
        """``--debate-server`` with the settings that build the untuned society there (what
        ``graphs/debate.py`` reads); ``settings``: :meth:`build`'s."""
        if not self.debate_server:
            return None
        from mafl_graph.debate.server import DebateServer

        if settings.get("serving") or self.serve.serving != DEFAULT_SERVING:
            raise ValueError(
                "--debate-server runs the debates on the LangGraph Server's own models; it "
                "cannot be combined with a base served elsewhere (--serving vllm or sglang, or "
                "a Vertex AI tuning backend): choose one."
            )
        sampling = {"max_tokens": self.max_tokens, "temperature": self.temperature}
        return DebateServer(
            self.debate_server,
            settings={
                "model": self.model,
                "seed": self.seed,
                "task_options": dict(settings.get("task_options", {})),
                **{k: v for k, v in sampling.items() if v is not None},
            },
        )

    @classmethod
    def from_manifest(
        cls, run_dir: str | Path, *, client: ClientOptions | None = None
    ) -> tuple[LoopConfig, dict[str, Any]]:
        """The config a ``mafl loop`` run directory was made with, and its manifest settings.

        ``client``: how to reach a hosted provider (rate, retries, timeout), never recorded.
        ``iterations`` is not pinned by a manifest (a run may be extended); it keeps its
        default. Build the loop with ``config.build(tune_record=settings.get("tune"))``.
        """
        from mafl_graph.rundir import RunLayout, read_settings

        layout = RunLayout(run_dir)
        if not layout.manifest.is_file():
            raise FileNotFoundError(f"{layout.manifest} not found; is {run_dir} a run directory?")
        settings = read_settings(layout.manifest)
        missing = [k for k in ("task", "model", "agents", "n_train", "method") if k not in settings]
        if missing:
            raise ValueError(f"{layout.manifest} lacks {missing}: it is not a `mafl loop` run.")
        serving = settings.get("serving", {})
        tune = TuneOptions(
            base=settings.get("tune_base"),
            tuner=settings.get("tuner"),
            **{k: serving[k] for k in ("project", "location") if serving.get(k)},
        )
        config = cls(
            task_options=TaskOptions.from_settings(
                settings["task"], settings.get("task_options", {})
            ),
            model=settings["model"],
            agents=settings["agents"],
            rounds=settings["rounds"],
            n_train=settings["n_train"],
            n_test=settings["n_test"],
            method=settings["method"],
            summarize=settings["summarize"],
            critics=settings["tune_critics"],
            w=settings["w"],
            seed=settings["seed"],
            temperature=settings.get("temperature"),
            max_tokens=settings.get("max_tokens"),
            tune=tune,
            client=client or ClientOptions(),
        )
        return config, settings


# Flat option names ----------------------------------------------------------------------


class FlatField(NamedTuple):
    """One leaf option of a (nested) settings dataclass: ``path`` leads to it."""

    name: str
    path: tuple[str, ...]
    type: Any
    default: Any
    help: str


def flat_fields(cls: type[Any]) -> list[FlatField]:
    """The leaf options of ``cls``: nested settings dataclasses are opened up, in order."""
    import typing

    hints = typing.get_type_hints(cls)
    found: list[FlatField] = []
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind):
            found += [
                leaf._replace(path=(f.name, *leaf.path))
                for leaf in flat_fields(kind)  # type: ignore[arg-type]
            ]
        else:
            found.append(FlatField(f.name, (f.name,), kind, f.default, f.metadata.get("help", "")))
    names = [leaf.name for leaf in found]
    if len(set(names)) != len(names):
        raise TypeError(f"{cls.__name__} has two options of one name: {names}")
    return found


def from_flat(cls: type[Any], values: Mapping[str, Any]) -> Any:
    """An instance of ``cls`` from flat option names; options not given keep their defaults."""
    leaves = {leaf.name: leaf for leaf in flat_fields(cls)}
    if unknown := sorted(set(values) - set(leaves)):
        raise TypeError(f"{cls.__name__} has no option(s) {unknown}.")
    nested: dict[str, Any] = {}
    for name, value in values.items():
        path = leaves[name].path
        target = nested
        for step in path[:-1]:
            target = target.setdefault(step, {})
        target[path[-1]] = value
    return _build(cls, nested)


def _build(cls: type[Any], values: Mapping[str, Any]) -> Any:
    import typing

    hints = typing.get_type_hints(cls)
    return cls(
        **{
            k: _build(hints[k], v) if dataclasses.is_dataclass(hints[k]) else v
            for k, v in values.items()
        }
    )


def to_flat(value: Any) -> dict[str, Any]:
    """The flat option names and values of a settings dataclass instance."""
    flat: dict[str, Any] = {}
    for leaf in flat_fields(type(value)):
        item = value
        for step in leaf.path:
            item = getattr(item, step)
        flat[leaf.name] = item
    return flat
