"""Methods as strategies: what each keeps, pools and builds, the registry, and a new method
that is one class plus one registration, run by the loop and by a comparison."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from fakes import ScriptedModel, SplitTask

from mafl_graph.compare import BASELINES, compare_methods
from mafl_graph.finetune.datasets import AgentDataset, DatasetStats
from mafl_graph.finetune.tuners import registry
from mafl_graph.finetune.tuners.base import JobLedger, TunedModel, TunerBackend
from mafl_graph.loop import METHODS, MultiagentFinetuning, TunerFactory
from mafl_graph.methods import (
    Method,
    get_method,
    loop_method_names,
    method_names,
    pooled,
    register_method,
    unregister_method,
)
from mafl_graph.report import write_report
from mafl_graph.rundir import RunLayout, read_settings
from mafl_graph.society import Society
from mafl_graph.traces import read_traces_sqlite

# Fakes -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Config:
    pass


class RecordingTuner(TunerBackend):
    """Tunes instantly: the tuned model is a scripted model named after agent, role, iteration."""

    backend = "test-recording"
    config_type = _Config
    default_base = "scripted"
    jobs: ClassVar[list[str]] = []

    def _run(self, ledger: JobLedger, facts: dict[str, Any], dataset: Any, cfg: Any) -> None:
        name = f"tuned-agent{facts['agent']}-{facts['role']}-it{self.iteration}"
        type(self).jobs.append(name)
        ledger.update(status="succeeded", model=name)

    @classmethod
    def serve(cls, tuned: TunedModel, **kwargs: Any) -> ScriptedModel:
        return ScriptedModel(label=tuned.model, reply=lambda messages: "\\boxed{7}")

    @classmethod
    def _config_from_options(cls, options: Any, seed: int) -> _Config:
        return _Config()


@pytest.fixture
def tuner(monkeypatch: pytest.MonkeyPatch) -> Iterator[TunerFactory]:
    # Registered for this test only: the registry is restored when it ends.
    monkeypatch.setitem(registry._REGISTRY, RecordingTuner.backend, RecordingTuner)
    RecordingTuner.jobs.clear()
    yield TunerFactory(RecordingTuner.backend)


def _says(text: str) -> Callable[[list[Any]], str]:
    return lambda messages: text


def _society(n: int = 3) -> Society:
    # Agent 2 errs, so that the debate has something to agree on and something to revise.
    replies = ["\\boxed{5}" if i == 2 else "\\boxed{7}" for i in range(n)]
    agents = [ScriptedModel(label=f"base{i}", reply=_says(text)) for i, text in enumerate(replies)]
    society = Society.from_model(agents[0], n)
    return society.replace(generators=dict(enumerate(agents)), critics=dict(enumerate(agents)))


def _dataset(agent: int, role: str, n: int) -> AgentDataset:
    examples: list[Any] = [{"agent": agent, "text": f"{agent}{role[0]}{i}"} for i in range(n)]
    stats = DatasetStats(agent=agent, role=role, examples=n, candidates=n + 1, no_target=1)  # type: ignore[arg-type]
    return AgentDataset(agent=agent, role=role, examples=examples, stats=stats)  # type: ignore[arg-type]


BUILT = [_dataset(a, r, 2) for a in range(3) for r in ("generator", "critic")]


def _tuned(*keys: tuple[int, str]) -> dict[tuple[int, str], TunedModel]:
    return {
        (agent, role): TunedModel(
            agent=agent,
            role=role,  # type: ignore[arg-type]
            backend=RecordingTuner.backend,
            model=f"tuned-agent{agent}-{role}",
            base="scripted",
        )
        for agent, role in keys
    }


def _labels(society: Society) -> list[tuple[str, str]]:
    return [(a.generator.model_name, a.critic.model_name) for a in society.agents]  # type: ignore[attr-defined]


# What each method keeps, pools and builds ---------------------------------------------------


def test_each_method_keeps_its_datasets() -> None:
    names = lambda kept: [d.name for d in kept]  # noqa: E731
    everything = names(BUILT)
    generators = [f"agent{a}-generator" for a in range(3)]
    assert names(get_method("multiagent").training_datasets(BUILT, tune_critics=True)) == everything
    assert (
        names(get_method("multiagent").training_datasets(BUILT, tune_critics=False)) == generators
    )
    assert names(get_method("single").training_datasets(BUILT[:2], tune_critics=False)) == [
        "agent0-generator"
    ]
    [one] = get_method("majority").training_datasets(BUILT, tune_critics=False)
    assert (one.agent, one.role, len(one.examples)) == (0, "generator", 6)


def test_majority_pools_every_agents_examples_interleaved_as_agent_0() -> None:
    sets = [_dataset(0, "generator", 3), _dataset(1, "generator", 1), _dataset(2, "generator", 2)]
    one = pooled(sets)
    assert [e["text"] for e in one.examples] == ["0g0", "1g0", "2g0", "0g1", "2g1", "0g2"]  # type: ignore[typeddict-item]
    assert {e["agent"] for e in one.examples} == {0}
    assert (one.stats.examples, one.stats.candidates, one.stats.no_target) == (6, 9, 3)


def test_single_and_majority_debate_with_copies_of_one_model(tuner: TunerFactory) -> None:
    base = _society()
    tuned = _tuned((0, "generator"), (1, "generator"))
    for name in ("single", "majority"):
        after = get_method(name).society_after(base, tuned, tune_critics=False)
        assert _labels(after) == [("tuned-agent0-generator", "tuned-agent0-generator")] * 3
        assert after.summarizer is base.summarizer


def test_multiagent_replaces_each_agents_own_models(tuner: TunerFactory) -> None:
    base = _society()
    tuned = _tuned((0, "generator"), (0, "critic"), (1, "generator"))
    after = get_method("multiagent").society_after(base, tuned, tune_critics=True)
    assert _labels(after) == [
        ("tuned-agent0-generator", "tuned-agent0-critic"),
        ("tuned-agent1-generator", "base1"),
        ("base2", "base2"),
    ]
    # Without tuned critics, each agent's tuned generator plays its critic.
    without = get_method("no-critics").society_after(
        base, _tuned((0, "generator"), (1, "generator")), tune_critics=False
    )
    assert _labels(without)[:2] == [
        ("tuned-agent0-generator", "tuned-agent0-generator"),
        ("tuned-agent1-generator", "tuned-agent1-generator"),
    ]


def test_single_debates_alone_in_one_round() -> None:
    single, base = get_method("single"), _society()
    assert len(single.trainers(base)) == 1 and single.dataset_agents(base) == 1
    assert single.train_rounds(3) == 1 and single.default_target == "reference"
    assert get_method("multiagent").train_rounds(3) == 3


# The registry -------------------------------------------------------------------------------


def test_the_registry_orders_the_comparison_and_names_the_loops() -> None:
    order = ("multiagent", "single", "majority-vote", "majority", "no-critics", "no-summarizer")
    assert method_names() == order == BASELINES
    assert loop_method_names() == tuple(m for m in order if m != "majority-vote") == METHODS
    assert get_method("single").label == "single-agent FT (STaR)"
    with pytest.raises(ValueError, match="Unknown method 'star'; choose from multiagent, single"):
        get_method("star")
    with pytest.raises(TypeError, match="Method instance"):
        register_method("star")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no name"):
        register_method(Method())


def test_the_loop_records_each_method_as_before(tuner: TunerFactory) -> None:
    def settings(**options: Any) -> dict[str, Any]:
        loop = MultiagentFinetuning(_society(), SplitTask(), tuner, **options)
        return {k: loop.settings()[k] for k in ("method", "summarize", "tune_critics", "target")}

    assert settings() == {
        "method": "multiagent",
        "summarize": True,
        "tune_critics": True,
        "target": "consensus",
    }
    assert settings(method="single") == {
        "method": "single",
        "summarize": True,
        "tune_critics": False,
        "target": "reference",
    }
    assert settings(method="majority", tune_critics=True) == {
        "method": "majority",
        "summarize": True,
        "tune_critics": False,
        "target": "consensus",
    }
    # The ablations record the method they vary, with the option they change.
    assert settings(method="no-critics") == {**settings(), "tune_critics": False}
    assert settings(method="no-summarizer", summarize=True) == {**settings(), "summarize": False}
    assert not MultiagentFinetuning(
        _society(), SplitTask(), tuner, method="no-summarizer"
    ).evaluate_base
    assert settings(method="multiagent", tune_critics=False) == settings(method="no-critics")
    assert settings(rounds=1)["tune_critics"] is False  # no critique in a one-round debate


def test_the_loop_refuses_what_it_cannot_run(tuner: TunerFactory) -> None:
    society, task = _society(), SplitTask()
    with pytest.raises(ValueError, match="method must be one of multiagent, single, majority"):
        MultiagentFinetuning(society, task, tuner, method="majority-vote")
    with pytest.raises(ValueError, match="does not run as a fine-tuning loop"):
        MultiagentFinetuning(society, task, tuner, method=get_method("majority-vote"))

    class Tempered(Method):
        name = "tempered"
        options = {"temperature": 0.1}

    with pytest.raises(ValueError, match=r"fixes \['temperature'\]; a method may fix only"):
        MultiagentFinetuning(society, task, tuner, method=Tempered())
    with pytest.raises(TypeError, match="TunerFactory"):
        MultiagentFinetuning(society, task, lambda run_dir, iteration: None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"unknown method\(s\) \['star'\]"):
        compare_methods(society, task, tuner, "unused", methods=["star"])


# A new method: one class, one registration ---------------------------------------------------


class FirstGenerator(Method):
    """Tunes only agent 0's generator; it also plays agent 0's critic."""

    name = "generators-only-first-agent"
    label = "agent 0's generator tuned"
    tunes_critics = False

    def training_datasets(self, built: Any, *, tune_critics: bool) -> list[AgentDataset]:
        return [d for d in built if (d.agent, d.role) == (0, "generator")]

    def shared_debates(self, run: RunLayout) -> tuple[Path, ...]:
        return (run.eval_db(0),)


@pytest.fixture
def first_generator() -> Iterator[Method]:
    method = register_method(FirstGenerator())
    yield method
    unregister_method(method.name)


def test_a_registered_method_runs_in_the_loop_and_in_a_comparison(
    tmp_path: Path, tuner: TunerFactory, first_generator: Method
) -> None:
    assert method_names()[-1] == first_generator.name
    assert first_generator.name in loop_method_names()
    society, task = _society(), SplitTask()
    options: dict[str, Any] = {"n_train": 4, "n_test": 3, "concurrency": 2, "progress": False}

    # As a loop, by name.
    loop = MultiagentFinetuning(
        society, task, tuner, method=first_generator.name, iterations=1, **options
    )
    metrics = loop.run(tmp_path / "loop")
    assert RecordingTuner.jobs == ["tuned-agent0-generator-it1"]
    assert metrics[1]["tuning"]["tuned"] == ["agent0-generator"]
    assert read_settings(RunLayout(tmp_path / "loop").manifest)["method"] == first_generator.name
    eval1 = read_traces_sqlite(RunLayout(tmp_path / "loop").eval_db(1), "eval")
    used = {(r["agent"], r["role"], r["model"]) for t in eval1 for r in t.responses}
    assert (0, "critic", "tuned-agent0-generator-it1") in used
    assert {m for a, _, m in used if a != 0} <= {"base1", "base2"}

    # In a comparison, beside a built-in method and the majority vote.
    RecordingTuner.jobs.clear()
    run = RunLayout(tmp_path / "compare")
    results = compare_methods(
        society,
        task,
        tuner,
        run.root,
        methods=[first_generator.name, "majority-vote", "multiagent"],
        iterations=1,
        ablation_iterations=1,
        **options,
    )
    assert list(results) == ["multiagent", "majority-vote", first_generator.name]
    assert results[first_generator.name][1]["tuning"]["tuned"] == ["agent0-generator"]
    # Its untuned debate is multiagent's, copied rather than asked for again: its usage counts
    # only the calls of iteration 1.
    mine = results[first_generator.name]
    usage = json.loads(run.method(first_generator.name).usage.read_text())["total"]
    assert usage["calls"] == mine[1]["train"]["calls"] + mine[1]["eval"]["calls"]
    assert (
        results[first_generator.name][0]["eval"]["accuracy"]
        == results["multiagent"][0]["eval"]["accuracy"]
    )
    assert results["majority-vote"][0]["iteration"] == 0
    report = write_report(run.root).read_text()
    assert "agent 0's generator tuned" in report and "multiagent FT (ours)" in report


def test_only_societies_the_debate_server_can_build_debate_there(tuner: TunerFactory) -> None:
    from mafl_graph.config import LoopConfig
    from mafl_graph.debate.server import DebateServer

    server = DebateServer("http://127.0.0.1:9")
    society = _society()
    loop = MultiagentFinetuning(society, SplitTask(), tuner, debate_server=server)
    assert loop._server_for(society, 0) is server
    # Some of the untuned agents (single-agent methods debate with one of them): still there.
    assert loop._server_for(Society(society.agents[:1], society.summarizer), 1) is server
    tuned = society.replace(generators={0: ScriptedModel(label="tuned")})
    assert loop._server_for(tuned, 1) is None  # a tuned model lives in this process
    assert MultiagentFinetuning(society, SplitTask(), tuner)._server_for(society, 0) is None
    config = LoopConfig.of(debate_server="http://127.0.0.1:9", serving="vllm", serving_url="x")
    with pytest.raises(ValueError, match="cannot be combined with a base served elsewhere"):
        config.debate_server_for({})
