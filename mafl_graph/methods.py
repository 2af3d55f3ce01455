"""Methods as strategies: which models a method tunes, on which data, and what society follows.

:class:`~mafl_graph.loop.MultiagentFinetuning` runs every method on one harness (same debates,
datasets, tuners and evaluation), so that their numbers are comparable; a :class:`Method` says
only where a method differs. :func:`~mafl_graph.compare.compare_methods` runs the registered
methods side by side, and the report labels and orders them. A new method is a subclass plus
one :func:`register_method`.

Built-in, in comparison order:

- ``multiagent`` (the paper): each agent's generator and critic are tuned on their own data.
- ``single`` (STaR, and single-agent fine-tuning when iterated): one agent answers the train
  problems alone and is tuned on its answers that match the ground truth; the evaluation
  debate uses copies of that one model.
- ``majority-vote``: no tuning; the base model sampled as many times as the debate has
  answers, then a majority vote.
- ``majority`` (majority FT): one model is tuned on every agent's first answers that agree
  with the debate's majority; copies of it debate.
- ``no-critics`` (ablation): multiagent FT with only generators tuned; each plays its critic.
- ``no-summarizer`` (ablation): multiagent FT, agents read each other's answers unsummarized.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mafl_graph.finetune.datasets import AgentDataset, DatasetStats, Example, Target
from mafl_graph.finetune.tuners.run import Key, sampling_of, tuned_society
from mafl_graph.rundir import RunLayout, prepare_run_dir, write_json
from mafl_graph.society import Society

if TYPE_CHECKING:
    from mafl_graph.finetune.tuners.base import TunedModel
    from mafl_graph.tasks.base import Task

Records = list[dict[str, Any]]
"""A run's metrics (``RunLayout.metrics``): one record per iteration."""


@dataclass(frozen=True)
class Comparison:
    """What :func:`~mafl_graph.compare.compare_methods` hands each method's run.

    The loop options are the comparison's, resolved (the loop's defaults where none was given).
    ``run_loop(method)`` runs ``method`` as a loop in ``layout`` with the comparison's options,
    after copying the debates it shares with another method's run.
    """

    society: Society
    task: Task
    layout: RunLayout
    rounds: int
    n_test: int
    seed: int
    concurrency: int
    settings: Mapping[str, Any]
    progress: bool
    run_loop: Callable[[Method], Records]


class Method:
    """One way of turning a society's debates into the next society.

    The defaults are multiagent fine-tuning's (every agent debates; each agent's generator and
    critic are tuned on their own data, and replace only that agent's models); a subclass
    overrides what its method does differently.
    """

    name: str = ""
    label: str = ""
    """How the report names its rows."""
    long_run: bool = False
    """Runs ``iterations`` in a comparison (a curve over iterations), else
    ``ablation_iterations``; diversity is measured along long runs only."""
    runs_as_loop: bool = True
    """A method that is no fine-tuning loop overrides :meth:`run_in_comparison` instead."""
    options: Mapping[str, Any] = {}
    """Loop options the method fixes, whatever the loop was given (e.g. ``tune_critics``)."""
    tunes_critics: bool = True
    """False: no critic is tuned even when the loop's ``tune_critics`` asks for it."""
    default_target: Target = "consensus"
    """What training answers must agree with when the loop is given no ``target``."""
    shares_with: str = "multiagent"
    """The method whose run holds the debates that :meth:`shared_debates` names."""

    @property
    def recorded_as(self) -> str:
        """The manifest's ``"method"``: an ablation records the method it varies (its
        ``options`` are recorded beside it), so that its run and the same loop run as
        ``mafl loop`` with those options share one manifest."""
        return self.name

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    # The loop ----------------------------------------------------------------------------

    def trainers(self, society: Society) -> Society:
        """Who debates the train split."""
        return society

    def train_rounds(self, rounds: int) -> int:
        """Rounds of the train debates, given the loop's."""
        return rounds

    def dataset_agents(self, society: Society) -> int:
        """How many agents' datasets are built from the train debates."""
        return len(self.trainers(society))

    def training_datasets(
        self, built: Sequence[AgentDataset], *, tune_critics: bool
    ) -> list[AgentDataset]:
        """The datasets to tune on, from every agent's generator and critic datasets."""
        return [d for d in built if d.role == "generator" or tune_critics]

    def society_after(
        self, base: Society, tuned: Mapping[Key, TunedModel], *, tune_critics: bool
    ) -> Society:
        """The society that one iteration's tuned models make from the untuned ``base``.

        ``tuned`` holds every (agent, role) tuned so far, each at its latest iteration.
        """
        tuned = dict(tuned)
        if not tune_critics:  # each agent's tuned generator plays its critic too
            for (agent, role), model in list(tuned.items()):
                if role == "generator":
                    tuned[(agent, "critic")] = model
        return tuned_society(base, tuned)

    # A comparison ------------------------------------------------------------------------

    def shared_debates(self, run: RunLayout) -> tuple[Path, ...]:
        """Debates of this method that ``shares_with``'s run makes identically (same models,
        seeds and problems): the paths in ``run``, which is either method's."""
        return ()

    def run_in_comparison(self, comparison: Comparison) -> Records:
        """Run (or resume) this method in ``comparison.layout``; returns its metrics."""
        return comparison.run_loop(self)


class Multiagent(Method):
    name = "multiagent"
    label = "multiagent FT (ours)"
    long_run = True


class OneModel(Method):
    """Tunes one model (agent 0's generator); copies of it form the next society."""

    tunes_critics = False

    def society_after(
        self, base: Society, tuned: Mapping[Key, TunedModel], *, tune_critics: bool
    ) -> Society:
        # Copies sample with their own seeds, as from_model gives them.
        first = base.agents[0].generator
        one = tuned[(0, "generator")].chat_model(**sampling_of(first))
        return Society.from_model(one, len(base), summarizer=base.summarizer)


class Single(OneModel):
    name = "single"
    label = "single-agent FT (STaR)"
    long_run = True
    default_target = "reference"  # STaR keeps the answers that match the ground truth

    def trainers(self, society: Society) -> Society:
        return Society(agents=society.agents[:1], summarizer=society.summarizer)

    def train_rounds(self, rounds: int) -> int:
        return 1  # one agent alone has nobody to debate with

    def shared_debates(self, run: RunLayout) -> tuple[Path, ...]:
        return (run.eval_db(0),)


class Majority(OneModel):
    name = "majority"
    label = "majority FT"

    def training_datasets(
        self, built: Sequence[AgentDataset], *, tune_critics: bool
    ) -> list[AgentDataset]:
        return [pooled([d for d in built if d.role == "generator"])]

    def shared_debates(self, run: RunLayout) -> tuple[Path, ...]:
        return (run.eval_db(0), run.train_db(1))


class NoCritics(Multiagent):
    name = "no-critics"
    label = "multiagent FT without critics"
    long_run = False
    options = {"tune_critics": False}

    @property
    def recorded_as(self) -> str:
        return Multiagent.name

    def shared_debates(self, run: RunLayout) -> tuple[Path, ...]:
        return (run.eval_db(0), run.train_db(1))


class NoSummarizer(Multiagent):
    name = "no-summarizer"
    label = "multiagent FT without summarizer"
    long_run = False
    # Table 1 compares the tuned societies; the untuned debate without a summarizer would be
    # one more full evaluation, so it is skipped (`mafl loop --no-summarize` gives it).
    options = {"summarize": False, "evaluate_base": False}

    @property
    def recorded_as(self) -> str:
        return Multiagent.name


class MajorityVote(Method):
    """The base model sampled as many times as the debate has answers, then a majority vote."""

    name = "majority-vote"
    label = "majority vote (base, one sample per debate answer)"
    runs_as_loop = False

    def run_in_comparison(self, comparison: Comparison) -> Records:
        from mafl_graph.evaluate import evaluate_society
        from mafl_graph.usage import UsageRecorder

        c, layout = comparison, comparison.layout
        samples = len(c.society) * c.rounds
        voters = Society.from_model(c.society.agents[0].generator, samples)
        settings = {"n_test": c.n_test, "seed": c.seed, **c.settings}
        prepare_run_dir(layout.root, {**settings, "method": self.name, "samples": samples})
        if layout.metrics.is_file():
            return [json.loads(layout.metrics.read_text())[0]]
        usage = UsageRecorder(layout.usage)
        try:
            evaluation = evaluate_society(
                voters,
                c.task,
                c.task.load("test", c.n_test),
                db_path=layout.eval_db(0),
                rounds=1,
                seed=c.seed,
                # As many calls in flight as the debate has: its agents, one problem each.
                concurrency=max(1, c.concurrency * len(c.society) // samples),
                metadata={"iteration": 0, "split": "test"},
                callbacks=[usage],
                progress=c.progress,
            )
        finally:
            usage.save()
        record = {"iteration": 0, "eval": evaluation.as_dict()}
        write_json(layout.metrics, [record])
        return [record]


def pooled(datasets: Sequence[AgentDataset]) -> AgentDataset:
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


# The registry ------------------------------------------------------------------------------

_REGISTRY: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    """Make ``method`` known by its ``name``: to the loop, comparisons and reports.

    A new name comes last in the comparison order; registering a name again replaces that
    method in its place.
    """
    if not isinstance(method, Method):
        raise TypeError(f"register_method takes a Method instance; got {method!r}.")
    if not method.name or not isinstance(method.name, str):
        raise ValueError(f"{type(method).__name__} has no name; set its `name` attribute.")
    _REGISTRY[method.name] = method
    return method


def unregister_method(name: str) -> Method:
    """Forget the method called ``name``; returns it."""
    method = get_method(name)
    del _REGISTRY[name]
    return method


def get_method(name: str) -> Method:
    """The method registered as ``name``."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"Unknown method {name!r}; choose from {', '.join(_REGISTRY)}.") from None


def method_names() -> tuple[str, ...]:
    """Every registered method, in comparison order (which is also the report's)."""
    return tuple(_REGISTRY)


def loop_method_names() -> tuple[str, ...]:
    """The methods that run as a fine-tuning loop (``mafl loop --method``)."""
    return tuple(name for name, method in _REGISTRY.items() if method.runs_as_loop)


for _method in (Multiagent(), Single(), MajorityVote(), Majority(), NoCritics(), NoSummarizer()):
    register_method(_method)
