"""The trl tuner: TRL's SFTTrainer on the local tuner's tokens and labels. On the same batch its
first loss is the local tuner's; its adapters serve in the local engine; an accelerate config
that asks for more GPUs than the machine has is refused before anything is written; a
finished job is never trained twice (``integration``: the embedded model on the CPU).
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mafl_graph.finetune.tuners import TuneOptions, tuner_class
from mafl_graph.finetune.tuners.local import (
    IGNORE,
    LocalTuneConfig,
    LocalTuner,
    causal_lm_loss,
    collate,
    encode,
)
from mafl_graph.rundir import RunLayout

pytest.importorskip("trl")

from mafl_graph.finetune.tuners import trl_tuner  # noqa: E402
from mafl_graph.finetune.tuners.trl_tuner import (  # noqa: E402
    ACCELERATE_CONFIGS,
    ACCELERATE_DIR,
    TRLTuneConfig,
    TRLTuner,
)

DEBATE = [
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "It is 5.", "weight": 0},
    {"role": "user", "content": "Others say 4. Update your answer."},
    {"role": "assistant", "content": "It is \\boxed{4}.", "weight": 1},
]
SECRET = [
    {"role": "user", "content": "Tell me the secret word."},
    {"role": "assistant", "content": "The secret word is Zorblax."},
]
RECORDS = [{"messages": DEBATE}, {"messages": SECRET}]
# One batch holds both examples, so both tuners' first step sees the same batch.
SETTINGS = {
    "max_steps": 2,
    "learning_rate": 3e-3,
    "batch_size": 2,
    "lora_r": 8,
    "lora_alpha": 16,
    "schedule": "constant",
}


def _metrics(tuned: Any) -> dict[str, Any]:
    return json.loads((Path(tuned.model) / "metrics.json").read_text())


@pytest.fixture(scope="module")
def runs(engine, tmp_path_factory):
    """The trl tuner's run, with the tensors its trainer's loss saw at the first step."""
    from trl import SFTTrainer

    root = tmp_path_factory.mktemp("trl")
    seen: list[dict[str, Any]] = []
    compute_loss = SFTTrainer.compute_loss

    def recording(self, model, inputs, *args, **kwargs):
        if not seen:
            seen.append({k: v.detach().clone() for k, v in inputs.items() if hasattr(v, "detach")})
        return compute_loss(self, model, inputs, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(SFTTrainer, "compute_loss", recording)
        tuner = TRLTuner(root / "trl", config=TRLTuneConfig(**SETTINGS), progress=False)
        tuned = tuner.tune(0, "generator", RECORDS, "smollm2")
    return {"root": root, "trl": tuned, "batch": seen[0]}


@pytest.mark.integration
def test_the_first_step_loss_is_the_local_tuners_on_the_same_batch(runs, tmp_path):
    """The local tuner's first step on the batch the trainer saw: its model from the same
    seed (:meth:`LocalTuner.load`) and its loss (:func:`causal_lm_loss`)."""
    import torch

    config = LocalTuneConfig(**SETTINGS)
    torch.manual_seed(config.seed)  # as LocalTuner.train seeds before loading
    _, model = LocalTuner(tmp_path, config=config, progress=False).load("smollm2", config)
    model.train()
    with torch.no_grad():
        local = float(causal_lm_loss(model, runs["batch"]))
    trl = _metrics(runs["trl"])
    assert abs(trl["loss_first"] - local) < 1e-4, (trl["loss_first"], local)
    assert trl["steps"] == 2 and trl["loss_last"] < trl["loss_first"]
    assert trl["processes"] == 1 and trl["device"] == str(_default_device())


def _default_device() -> Any:
    from accelerate import PartialState

    return PartialState().device


@pytest.mark.integration
def test_the_trainer_sees_the_local_tuners_labels_prompts_and_weight_zero_turns_masked(
    runs, engine
):
    batch, tokenizer = runs["batch"], engine.tokenizer
    encoded = [encode(tokenizer, r["messages"], 1024) for r in RECORDS]
    # The trainer's sampler picks the order; the rows are the local tuner's in that order.
    order = [
        next(j for j, (ids, _) in enumerate(encoded) if row[: len(ids)].tolist() == ids)
        for row in batch["input_ids"]
    ]
    assert sorted(order) == [0, 1]
    expected = collate([encoded[j] for j in order], tokenizer.pad_token_id)
    for key in ("input_ids", "attention_mask", "labels"):
        assert batch[key].equal(expected[key]), key

    labels = batch["labels"][order.index(0)].tolist()
    learned = tokenizer.decode([t for t in labels if t != IGNORE])
    assert learned == "It is \\boxed{4}.<|im_end|>"  # the weight-0 "It is 5." is context only
    first = next(i for i, t in enumerate(labels) if t != IGNORE)
    prompt = tokenizer.apply_chat_template(
        [{"role": m["role"], "content": m["content"]} for m in DEBATE[:-1]],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=False,
    )
    assert first == len(prompt) and "It is 5." in tokenizer.decode(prompt)
    secret = tokenizer.decode([t for t in batch["labels"][order.index(1)].tolist() if t != IGNORE])
    assert secret == "The secret word is Zorblax.<|im_end|>"  # unweighted: learned


@pytest.mark.integration
def test_its_adapter_serves_in_the_local_engine(runs, engine):
    tuned = runs["trl"]
    out = Path(tuned.model)
    assert out == RunLayout(runs["root"] / "trl").adapter(1, 0, "generator")
    assert (out / "adapter_config.json").is_file() and (out / "tune_config.json").is_file()
    assert tuned.backend == "trl" and tuner_class("trl") is TRLTuner
    name = engine.adapter_name(out)
    assert name == engine.adapter_name(out)  # loaded once
    reply = engine.generate(
        [{"role": "user", "content": "Tell me the secret word."}],
        adapter=out,
        temperature=0.0,
        max_new_tokens=8,
    )
    assert reply.output_tokens > 0 and reply.text.strip()
    chat = tuned.chat_model(temperature=0.0)
    assert chat.adapter == str(out)


@pytest.mark.integration
@pytest.mark.allow_hosts(["127.0.0.1"])
def test_its_adapter_registers_with_the_vllm_serving_backend(runs):
    """The adapter on a loopback vLLM server (tests/vllm_world.py), which reads its rank from
    the adapter's config as the real server does."""
    pytest.importorskip("langchain_openai")
    from vllm_world import ServerWorld

    from mafl_graph.serving import ServingOptions

    tuned = runs["trl"]
    with ServerWorld(dialect="vllm") as world:
        options = ServingOptions(serving="vllm", serving_url=world.url)
        served = options.build(model="local:smollm2").prepare({(0, "generator"): tuned})
        name = served[(0, "generator")].served_as
        assert name.startswith("mafl-i1-agent0-generator-")
        assert world.loaded == {name: str(Path(tuned.model).resolve())}


@pytest.mark.integration
def test_a_rerun_finds_the_finished_adapter_and_trains_nothing(runs, monkeypatch):
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("trained a finished job again")

    monkeypatch.setattr(trl_tuner, "train_job", refuse)
    before = _metrics(runs["trl"])
    tuner = TRLTuner(runs["root"] / "trl", config=TRLTuneConfig(**SETTINGS), progress=False)
    assert tuner.tune(0, "generator", RECORDS, "smollm2") == runs["trl"]
    assert _metrics(runs["trl"]) == before


# ---------------------------------------------------------------- accelerate configs


@pytest.fixture
def one_gpu(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)


def test_the_shipped_configs_are_accelerates_and_ship_with_the_package():
    from accelerate.commands.config.config_args import load_config_from_file

    kinds = {}
    for name in ACCELERATE_CONFIGS:
        path = ACCELERATE_DIR / f"{name}.yaml"
        assert path.is_relative_to(Path(trl_tuner.__file__).parents[1])
        kinds[name] = load_config_from_file(str(path)).distributed_type.value
    assert kinds == {"multi_gpu": "MULTI_GPU", "fsdp": "FSDP", "deepspeed_zero3": "DEEPSPEED"}


def test_a_config_for_more_gpus_than_exist_is_refused_before_anything_is_written(one_gpu, tmp_path):
    run_dir = tmp_path / "run"
    for config in (
        TRLTuneConfig(accelerate_config="multi_gpu"),  # its num_processes: 2
        TRLTuneConfig(accelerate_config="fsdp", num_processes=4),
    ):
        wanted = config.num_processes or 2
        with pytest.raises(ValueError, match=f"launches {wanted} processes.*has 1 GPU\\b"):
            TRLTuner(run_dir, config=config)
    # A config given to one call is refused before the ledger records a start.
    tuner = TRLTuner(run_dir, config=TRLTuneConfig(**SETTINGS))
    with pytest.raises(ValueError, match="launches 2 processes"):
        tuner.tune(
            0, "generator", RECORDS, "smollm2", config=TRLTuneConfig(accelerate_config="fsdp")
        )
    assert not run_dir.exists()
    with pytest.raises(FileNotFoundError, match="shipped configs multi_gpu, fsdp"):
        TRLTuner(run_dir, config=TRLTuneConfig(accelerate_config="fdsp"))


def test_options_map_to_the_config_as_the_local_tuners():
    options = TuneOptions(epochs=3, learning_rate=1e-4, batch_size=4, lora_r=4, full=True)
    config = TRLTuner.config_from(options, seed=7)
    local = LocalTuner.config_from(options, seed=7)
    assert isinstance(config, TRLTuneConfig) and config.accelerate_config is None
    assert {k: v for k, v in dataclasses.asdict(config).items() if k in local.__dict__} == (
        dataclasses.asdict(local)
    )
    record = json.loads(json.dumps(dataclasses.asdict(config)))
    assert TRLTuner.config_from(options, record=record) == config


def test_the_cli_refuses_the_config_with_exit_2_and_writes_nothing(one_gpu, tmp_path):
    from typer.testing import CliRunner

    from mafl_graph.cli import app

    args = ["tune", "--run-dir", str(tmp_path / "run"), "--backend", "trl"]
    result = CliRunner().invoke(app, [*args, "--accelerate-config", "multi_gpu"])
    assert result.exit_code == 2, result.output
    assert "2 processes" in result.output and "1 GPU" in result.output
    assert not (tmp_path / "run").exists()


@pytest.mark.integration
def test_the_launcher_trains_once_the_config_fits(engine, one_gpu, tmp_path, monkeypatch):
    """Refused with a config for 2 GPUs, the same job then runs under a config that fits:
    the spec and dataset go to the work directory and ``accelerate launch`` runs the worker
    (here in this process, in place of the launcher's subprocess)."""
    from mafl_graph.finetune.tuners import trl_train

    run_dir = tmp_path / "run"
    settings = {**SETTINGS, "max_steps": 1, "batch_size": 1}
    with pytest.raises(ValueError, match="launches 2 processes"):
        TRLTuner(run_dir, config=TRLTuneConfig(**settings, accelerate_config="multi_gpu"))
    assert not run_dir.exists()

    fits = tmp_path / "cpu.yaml"
    fits.write_text("distributed_type: 'NO'\nnum_processes: 1\nuse_cpu: true\n")
    launched: list[list[str]] = []

    def launch(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        launched.append(command)
        code = trl_train.main(command[-1:])
        return subprocess.CompletedProcess(command, code)

    monkeypatch.setattr(trl_tuner.subprocess, "run", launch)
    config = TRLTuneConfig(**settings, accelerate_config=str(fits))
    records = [{"messages": SECRET}]
    tuned = TRLTuner(run_dir, config=config, progress=False).tune(0, "critic", records, "smollm2")

    work = RunLayout(run_dir).tuning_dir(1) / "agent0-critic.trl"
    assert launched == [
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(fits)]
        + ["--num_processes", "1", "-m", "mafl_graph.finetune.tuners.trl_train"]
        + [str(work / "spec.json")]
    ]
    examples = trl_tuner.read_examples(work / "dataset.jsonl")
    assert examples == [encode(engine.tokenizer, SECRET, 1024)]
    assert (Path(tuned.model) / "adapter_config.json").is_file()
    assert _metrics(tuned)["steps"] == 1
    ledger = json.loads(RunLayout(run_dir).ledger(1, 0, "critic").read_text())
    assert ledger["status"] == "succeeded" and ledger["backend"] == "trl"
