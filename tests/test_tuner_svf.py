"""The SVF tuner: real supervised training of an SVF expert on the embedded model (only z
moves, the shared base does not), the expert directory, continuing and resuming, and choosing
the backend from the loop's options and from ``mafl tune --backend svf``."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from mafl_graph.config import LoopConfig
from mafl_graph.finetune.tuners import TunedModel, TuneOptions, tuner_class, tuner_for_provider
from mafl_graph.rundir import prepare_run_dir

QUESTION = "What is the secret word?"
TARGET = "The secret word is Zorblax."
RECORDS = [
    {
        "messages": [
            {"role": "user", "content": question},
            {"role": "assistant", "content": TARGET, "weight": 1},
        ]
    }
    for question in (QUESTION, "Tell me the secret word.")
]


def test_svf_is_chosen_by_name_and_local_models_stay_with_lora():
    from mafl_graph.finetune.tuners.svf import SVFTuneConfig, SVFTuner

    assert tuner_class("svf") is SVFTuner and tuner_for_provider("local") == "local"
    config = SVFTuner.config_from(TuneOptions(epochs=1, batch_size=2, max_steps=3), seed=5)
    assert config == SVFTuneConfig(epochs=1, batch_size=2, max_steps=3, seed=5)
    assert (config.learning_rate, config.max_grad_norm) == (2e-3, 1e-3)  # the reference's
    with pytest.raises(ValueError, match="--full .* does not apply to SVF"):
        SVFTuner.check_options(TuneOptions(full=True))


def test_the_loop_tunes_with_svf_when_asked_and_refuses_it_for_hosted_models(tmp_path):
    parts = LoopConfig.of(model="local:smollm2", tuner="svf", agents=2).build()
    assert parts.tuner.backend == "svf" and parts.settings["tuner"] == "svf"
    assert parts.settings["tune"]["learning_rate"] == 2e-3
    assert type(parts.tuner(tmp_path, iteration=2)).__name__ == "SVFTuner"
    assert LoopConfig.of(model="local:smollm2").build().tuner.backend == "local"
    # a resumed run (and `mafl eval` of it) tunes and serves with the backend it was made with
    config = LoopConfig.of(model="local:smollm2", tuner="svf", agents=2)
    prepare_run_dir(tmp_path / "loop", config.loop(parts=parts).settings())
    assert LoopConfig.from_manifest(tmp_path / "loop")[0].tune.tuner == "svf"
    for model in ("openai:gpt-4o-mini-2024-07-18", "google_genai:gemini-2.0-flash"):
        with pytest.raises(ValueError, match="hosted models have no weights; SVF needs a local"):
            LoopConfig.of(model=model, tuner="svf").build()
    with pytest.raises(ValueError, match="'nope'; choose one of local, openai, vertex, svf"):
        LoopConfig.of(tuner="nope").build()


# ------------------------------------------------------------- real training (integration)


@pytest.fixture(scope="module")
def first(engine, tmp_path_factory):
    """Iteration 1 of one agent, trained once for the module: (run dir, tuned, metrics)."""
    from mafl_graph.finetune.tuners.svf import SVFTuneConfig, SVFTuner

    run = tmp_path_factory.mktemp("svf") / "run"
    dataset = run.parent / "agent0-generator.openai.jsonl"
    dataset.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    # A larger step than the reference's, so that a few steps on two examples show.
    config = SVFTuneConfig(max_steps=4, learning_rate=5e-2, batch_size=2)
    before = _base_weights()
    tuned = SVFTuner(run, config=config, progress=False).tune(0, "generator", dataset, "smollm2")
    metrics = json.loads((Path(tuned.model) / "metrics.json").read_text())
    return run, dataset, config, tuned, metrics, before


def _base_weights() -> dict[str, float]:
    """A checksum of each weight of the process-wide base that every tuner's view shares."""
    from mafl_graph.local.loading import prepare_model_dir, shared_base

    model = shared_base(prepare_model_dir("smollm2"), "float32")
    return {k: float(v.double().abs().sum()) for k, v in model.state_dict().items()}


@pytest.mark.integration
def test_the_loss_falls_and_only_z_moves(first):
    from mafl_graph.local.loading import prepare_model_dir, shared_base
    from mafl_graph.svf import SVFExpert, decompose

    run, _, _, tuned, metrics, before = first
    out = Path(tuned.model)
    assert out == run / "adapters/iter1/agent0-generator"
    assert {"svf_config.json", "svf_expert.safetensors", "tune_config.json"} <= {
        p.name for p in out.iterdir()
    }
    assert metrics["steps"] == 4 and metrics["seconds_per_step"] > 0
    assert metrics["peak_rss_mb"] > 0 and metrics["trainable_parameters"] == 51_840
    losses = metrics["losses"]
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False)), losses
    assert metrics["loss_last"] < metrics["loss_first"] / 2

    assert _base_weights() == before  # the shared base is bit for bit what it was
    model = shared_base(prepare_model_dir("smollm2"), "float32")
    assert not any(p.requires_grad or p.grad is not None for p in model.parameters())
    decomposition = decompose(model, progress=False)
    expert = SVFExpert.load(out, decomposition)  # it fits this base
    start = SVFExpert.init(decomposition, seed=0)
    moved = [(expert.z[n] - start.z[n]).abs().max().item() for n in expert.names]
    assert min(moved) > 0 and not expert.is_identity()
    assert expert.settings["sft"][0]["max_steps"] == 4

    chat = tuned.chat_model(temperature=0.0)  # built, not run: serving is the engine's
    assert (chat.model_path, chat.adapter) == ("smollm2", tuned.model)
    tuner_class("svf").check_served(tuned)
    assert "s ·" in tuner_class("svf").detail(tuned)
    assert TunedModel.from_dict(json.loads(json.dumps(tuned.as_dict()))) == tuned


@pytest.mark.integration
def test_a_rerun_reuses_the_expert_and_iteration_two_continues_it(first):
    from mafl_graph.finetune.tuners.svf import SVFTuner
    from mafl_graph.svf import SVFExpert

    run, dataset, config, tuned, metrics, _ = first
    saved = (Path(tuned.model) / "svf_expert.safetensors").read_bytes()
    again = SVFTuner(run, config=config, progress=False).tune(0, "generator", dataset, "smollm2")
    assert again == tuned
    assert json.loads((Path(tuned.model) / "metrics.json").read_text()) == metrics
    assert (Path(tuned.model) / "svf_expert.safetensors").read_bytes() == saved

    two = dataclasses.replace(config, max_steps=1)
    second = SVFTuner(run, iteration=2, config=two, progress=False).tune(
        0, "generator", dataset, tuned
    )
    assert second.base == tuned.model and second.iteration == 2
    assert second.options == {"model_path": "smollm2"}
    second_metrics = json.loads((Path(second.model) / "metrics.json").read_text())
    # Its first step sees iteration 1's expert: the loss is already where iteration 1 ended.
    assert second_metrics["loss_first"] < metrics["loss_first"] / 2
    assert [s["max_steps"] for s in SVFExpert.load(second.model).settings["sft"]] == [4, 1]


@pytest.mark.integration
def test_the_cli_tunes_each_agent_with_svf(engine, tmp_path):
    from typer.testing import CliRunner

    from mafl_graph.cli import app
    from mafl_graph.finetune.tuners import load_tuned

    (tmp_path / "datasets").mkdir()
    for name in ("agent0-generator", "agent1-critic"):
        path = tmp_path / "datasets" / f"{name}.openai.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    args = ["tune", "--run-dir", str(tmp_path), "--backend", "svf", "--max-steps", "1"]
    args += ["--batch-size", "2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    tuned = load_tuned(tmp_path / "tuned.json")
    assert sorted(tuned) == [(0, "generator"), (1, "critic")]
    for model in tuned.values():
        assert model.backend == "svf" and (Path(model.model) / "svf_config.json").is_file()
    config = json.loads((tmp_path / "tuning/iter1/svf-config.json").read_text())
    assert config["max_steps"] == 1 and config["learning_rate"] == 2e-3


def test_an_svf_boosted_base_starts_the_loop_with_svf_and_is_refused_for_lora(first, tmp_path):
    """Boost, then multiagent fine-tuning: `--tuner svf --base <expert>` serves the untuned
    society from the expert and continues it in iteration 1; LoRA cannot start from one."""
    from mafl_graph.finetune.tuners.svf import SVFTuner

    run, dataset, config, tuned, _, _ = first
    boosted = LoopConfig.of(model="local:smollm2", tuner="svf", base=tuned.model, agents=2)
    parts = boosted.build()
    assert {a.generator.adapter for a in parts.society.agents} == {tuned.model}
    assert parts.settings["serving"] == {"adapter": tuned.model}
    tuner = parts.tuner(tmp_path, iteration=1)
    assert isinstance(tuner, SVFTuner) and tuner.default_base == tuned.model
    with pytest.raises(ValueError, match="is an SVF expert: LoRA and full fine-tuning"):
        LoopConfig.of(model="local:smollm2", base=tuned.model).build()
