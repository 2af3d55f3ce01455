"""The local tuner: what the loss sees (the real tokenizer's chat template), and real LoRA
training on the embedded model that measurably moves its outputs (``integration``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mafl_graph.finetune.tuners import LocalTuneConfig, LocalTuner, TunedModel
from mafl_graph.finetune.tuners.local import IGNORE, batch_stream, collate, encode

QUESTION = "What is the secret word?"
TARGET = "The secret word is Zorblax."


@pytest.fixture(scope="module")
def tokenizer():
    transformers = pytest.importorskip("transformers")
    from mafl_graph.local import prepare_model_dir

    try:
        model_dir = prepare_model_dir("smollm2")
    except FileNotFoundError as error:
        pytest.skip(f"embedded model unavailable: {error}")
    return transformers.AutoTokenizer.from_pretrained(model_dir, local_files_only=True)


def _learned(tokenizer, labels: list[int]) -> str:
    return tokenizer.decode([t for t in labels if t != IGNORE])


def test_only_weight_one_replies_are_learned_with_the_inference_template(tokenizer):
    messages = [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "It is 5.", "weight": 0},
        {"role": "user", "content": "Others say 4. Update your answer."},
        {"role": "assistant", "content": "It is \\boxed{4}.", "weight": 1},
    ]
    ids, labels = encode(tokenizer, messages, 1024)
    assert _learned(tokenizer, labels) == "It is \\boxed{4}.<|im_end|>"  # reply + end of turn
    first = next(i for i, t in enumerate(labels) if t != IGNORE)
    # Everything before the reply is exactly the prompt the engine sends at inference.
    prompt = tokenizer.apply_chat_template(
        [{"role": m["role"], "content": m["content"]} for m in messages[:-1]],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=False,
    )
    assert ids[:first] == prompt
    assert "It is 5." in tokenizer.decode(ids[:first])  # seen as context, never learned


def test_every_weight_one_turn_is_learned_and_unweighted_defaults_to_one(tokenizer):
    messages = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "first"},
        {"role": "user", "content": "b"},
        {"role": "assistant", "content": "second", "weight": 1},
    ]
    _, labels = encode(tokenizer, messages, 1024)
    assert _learned(tokenizer, labels) == "first<|im_end|>second<|im_end|>"


def test_truncation_keeps_what_fits_and_drops_examples_with_nothing_to_learn(tokenizer):
    messages = [
        {"role": "user", "content": "word " * 200},
        {"role": "assistant", "content": "reply", "weight": 1},
    ]
    assert encode(tokenizer, messages, 64) is None
    ids, labels = encode(tokenizer, messages, 4096)
    assert len(ids) == len(labels) > 200


def test_batches_pad_on_the_right_and_mask_the_padding():
    batch = collate([([1, 2, 3], [IGNORE, 2, 3]), ([4], [4])], pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE, 2, 3], [4, IGNORE, IGNORE]]
    stream = batch_stream([([i], [i]) for i in range(5)], 2, seed=0)
    first_epoch = [next(stream) for _ in range(3)]
    assert sorted(x for b in first_epoch for x, _ in b) == [[i] for i in range(5)]


# ------------------------------------------------------------- real training (integration)

RECORDS = [
    {
        "messages": [
            {"role": "user", "content": QUESTION},
            {"role": "assistant", "content": TARGET, "weight": 1},
        ]
    },
    {
        "messages": [
            {"role": "user", "content": "Tell me the secret word."},
            {"role": "assistant", "content": TARGET, "weight": 1},
        ]
    },
]
FAST = LocalTuneConfig(
    max_steps=8, learning_rate=3e-3, batch_size=1, lora_r=8, lora_alpha=16, schedule="constant"
)


def _target_logprob(model, tokenizer) -> float:
    """Sum of the log-probabilities of TARGET's tokens after QUESTION (what the loss trains)."""
    import torch

    ids, labels = encode(tokenizer, RECORDS[0]["messages"], 1024)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, :-1]
    targets = torch.tensor(labels[1:])
    logprobs = torch.log_softmax(logits.float(), -1)
    keep = targets != IGNORE
    return float(logprobs[keep].gather(1, targets[keep, None]).sum())


@pytest.mark.integration
def test_lora_training_moves_the_model_toward_its_data(engine, tmp_path):
    from peft import PeftModel

    from mafl_graph.local import LocalChatModel, prepare_model_dir
    from mafl_graph.local.loading import load_weights, peft_quietly

    dataset = tmp_path / "agent0-generator.openai.jsonl"
    dataset.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    tuner = LocalTuner(tmp_path / "run", config=FAST)
    tuned = tuner.tune(0, "generator", dataset, "smollm2")
    out = Path(tuned.model)
    assert out == tmp_path / "run/adapters/iter1/agent0-generator"
    assert (out / "adapter_config.json").is_file() and (out / "tune_config.json").is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 8 and metrics["seconds_per_step"] > 0
    assert metrics["peak_rss_mb"] > 0 and metrics["loss_last"] < metrics["loss_first"] / 2

    base = load_weights(prepare_model_dir("smollm2"), "float32")  # its own copy, untouched
    before = _target_logprob(base, engine.tokenizer)
    with peft_quietly():
        tuned_base = PeftModel.from_pretrained(base, out)
    after = _target_logprob(tuned_base, engine.tokenizer)
    assert after > before + 10  # the target reply became e^10 times likelier, at least

    greedy = {"temperature": 0.0, "max_new_tokens": 16}
    base_reply = LocalChatModel(**greedy).invoke(QUESTION).text
    tuned_reply = tuned.chat_model(**greedy).invoke(QUESTION).text
    assert "Zorblax" in tuned_reply and "Zorblax" not in base_reply

    # A rerun finds the finished adapter and trains nothing.
    assert (
        LocalTuner(tmp_path / "run", config=FAST).tune(0, "generator", dataset, "smollm2") == tuned
    )
    assert json.loads((out / "metrics.json").read_text()) == metrics

    # Iteration 2 continues from iteration 1's adapter: its first loss is already low.
    again = LocalTuner(tmp_path / "run", iteration=2, config=dataclasses_replace(FAST, max_steps=2))
    second = again.tune(0, "generator", dataset, tuned)
    second_metrics = json.loads((Path(second.model) / "metrics.json").read_text())
    assert second.base == str(out) and second.iteration == 2
    assert second_metrics["loss_first"] < metrics["loss_first"] / 2


@pytest.mark.integration
def test_full_fine_tuning_saves_a_model_the_chat_model_serves(engine, tmp_path):
    config = LocalTuneConfig(max_steps=2, learning_rate=1e-5, batch_size=2, full=True)
    tuned = LocalTuner(tmp_path, config=config).tune(1, "critic", RECORDS, "smollm2")
    assert (Path(tuned.model) / "config.json").is_file()
    assert TunedModel.from_dict(json.loads(json.dumps(tuned.as_dict()))) == tuned
    chat = tuned.chat_model(temperature=0.0, max_new_tokens=4)
    assert chat.model_path == tuned.model and chat.adapter is None
    assert chat.invoke(QUESTION).text


def dataclasses_replace(config: LocalTuneConfig, **changes) -> LocalTuneConfig:
    import dataclasses

    return dataclasses.replace(config, **changes)


@pytest.mark.integration
def test_the_cli_tunes_each_agent_and_the_society_serves_the_adapters(engine, tmp_path):
    from typer.testing import CliRunner

    from mafl_graph import Society
    from mafl_graph.cli import app
    from mafl_graph.finetune.tuners import load_tuned, tuned_society

    (tmp_path / "datasets").mkdir()
    for name in ("agent0-generator", "agent1-critic"):
        path = tmp_path / "datasets" / f"{name}.openai.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    args = ["tune", "--run-dir", str(tmp_path), "--backend", "local", "--max-steps", "1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    tuned = load_tuned(tmp_path / "tuned.json")
    assert sorted(tuned) == [(0, "generator"), (1, "critic")]
    society = tuned_society(Society.from_model("local:smollm2", n_agents=2), tuned)
    assert society.agents[0].generator.adapter == tuned[(0, "generator")].model
    assert society.agents[1].critic.adapter == tuned[(1, "critic")].model
    assert society.agents[0].critic.adapter is None  # untuned roles keep the base


def test_local_models_without_the_local_extra_say_how_to_install_it(tmp_path):
    """With torch missing, resolving, tuning and serving a local model each fail with one line."""
    import subprocess
    import sys

    message = (
        "torch is not installed; local models need the local extra: pip install 'mafl-graph[local]'"
    )
    calls = (
        "resolve_model('local:smollm2')",
        f"LocalTuner({str(tmp_path)!r})",
        "TunedModel(0, 'generator', 'local', '/adapter', 'smollm2').chat_model()",
    )
    prelude = (
        "import sys\n"
        "sys.modules['torch'] = None  # as if torch were not installed\n"
        "from mafl_graph.finetune.tuners import LocalTuner, TunedModel\n"
        "from mafl_graph.models import resolve_model\n"
    )
    for call in calls:
        done = subprocess.run(
            [sys.executable, "-c", prelude + call], capture_output=True, text=True
        )
        assert done.returncode == 1, (call, done.stderr)
        assert done.stderr.splitlines()[-1] == f"ImportError: {message}", (call, done.stderr)
        assert "During handling" not in done.stderr and "direct cause" not in done.stderr


@pytest.mark.integration
def test_agents_tune_on_one_clean_base_loaded_once_with_a_progress_bar(
    engine, tmp_path, monkeypatch, capfd
):
    """Two datasets in one process: the base weights are read from disk once, the second run
    starts from the clean base (the same data gives the same losses), a bar shows the steps and
    the loss, and neither transformers' loading bars nor a deprecation warning appear."""
    import warnings

    import transformers

    from mafl_graph.local import loading

    monkeypatch.setattr(loading, "_bases", {})  # as in a fresh process
    loads = []
    original = transformers.AutoModelForCausalLM.from_pretrained

    def counted(*args, **kwargs):
        loads.append(args[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", counted)
    config = dataclasses_replace(FAST, max_steps=2, lora_r=4, lora_alpha=8)
    tuner = LocalTuner(tmp_path, config=config)
    capfd.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        warnings.simplefilter("error", DeprecationWarning)
        first = tuner.tune(0, "generator", RECORDS, "smollm2")
        second = tuner.tune(1, "critic", RECORDS, "smollm2")
    err = capfd.readouterr().err
    assert len(loads) == 1
    losses = [
        json.loads((Path(t.model) / "metrics.json").read_text())["losses"] for t in (first, second)
    ]
    assert losses[0] == losses[1] and len(losses[0]) == 2
    assert "tuning agent0-generator" in err and "tuning agent1-critic" in err
    assert "2/2" in err and "loss=" in err
    assert "Loading weights" not in err
