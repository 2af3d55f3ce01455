"""The token-level mixer of experts on the embedded model (``integration``): probes trained
from a two-pile corpus beat chance on held-out documents; a weight forced to 1 reproduces that
expert's own greedy reply; the weights are a distribution that moves from token to token; a
probe file is refused for other experts, and experts of another base are refused; the mixture
debates as a Society agent.

Two random LoRA adapters over the real base stand in for trained experts: the probes learn the
pile of a document from each expert's hidden states whatever the adapters learned.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mafl_graph.experts.clustering import ClusterResult
from mafl_graph.experts.corpus import Corpus, Document

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.integration

GREEDY = {"max_tokens": 10, "temperature": 0.0}


def chat(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def two_piles(n: int = 8, start: int = 0) -> tuple[Corpus, ClusterResult]:
    """Sums and Python functions, alternating: pile 0 and pile 1."""
    documents = []
    for i in range(start, start + n):
        a, b = 3 * i + 2, 7 * i + 5
        documents.append(Document(f"sum:{i}", "", "sums", f"What is {a} + {b}?", f"{a + b}"))
        name = ["add", "neg", "double", "square", "halve", "inc", "dec", "sign"][i % 8]
        code = f"def {name}(x):\n    return x"
        documents.append(Document(f"code:{i}", "", "code", f"Write {name} in Python.", code))
    corpus = Corpus(tuple(documents))
    labels = tuple(0 if d.domain == "sums" else 1 for d in documents)
    return corpus, ClusterResult("oracle", 2, labels, tuple(corpus.ids))


@pytest.fixture(scope="module")
def experts(engine, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two LoRA adapters over the engine's base, random enough that their replies differ."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from mafl_graph.local import prepare_model_dir
    from mafl_graph.local.loading import peft_quietly

    root = tmp_path_factory.mktemp("mixer")
    base = AutoModelForCausalLM.from_pretrained(prepare_model_dir("smollm2"))
    paths = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        config = LoraConfig(
            r=4, lora_alpha=32, target_modules=["q_proj", "down_proj"], init_lora_weights=False
        )
        with peft_quietly():
            model = get_peft_model(base, config)
            model.save_pretrained(root / f"expert{seed}")
            base = model.unload()
        paths.append(root / f"expert{seed}")
    return paths


@pytest.fixture(scope="module")
def trained(engine, experts):
    from mafl_graph.experts.mixer import train_mixer

    corpus, result = two_piles()
    return train_mixer(
        engine, experts, corpus, result, held_out=0.25, max_tokens_per_doc=16, seed=0
    )


def test_probes_beat_chance_on_held_out_tokens(engine, trained) -> None:
    from mafl_graph.experts.mixer import measure_mixer

    mixer, report = trained
    assert (mixer.k, mixer.hidden_size) == (2, 576)
    assert report.train_documents == 12 and report.test_documents == 4
    for probe in report.probes:
        assert probe.test_tokens > 0 and probe.auc is not None
        assert probe.auc > 0.75, report.table()
        assert probe.accuracy > probe.chance, report.table()
    assert report.router_accuracy > report.router_chance, report.table()
    assert "| expert | pile |" in report.table()
    assert json.dumps(report.as_dict())  # written next to the probes as JSON
    # Documents the probes never saw, sums of other numbers and the functions again.
    corpus, result = two_piles(n=2, start=11)
    other = measure_mixer(engine, mixer, corpus, result.labels, max_tokens_per_doc=16)
    assert other.test_documents == 4 and other.router_accuracy > other.router_chance


def test_a_weight_forced_to_one_gives_that_experts_own_reply(engine, experts) -> None:
    from mafl_graph.experts.mixer import mixed_generate

    messages = chat("What is 12 + 30? Answer briefly.")
    alone = [
        engine.generate(messages, adapter=e, temperature=0.0, max_new_tokens=10).text
        for e in experts
    ]
    assert alone[0] != alone[1]  # the experts differ, so the forced weight decides
    for j, expected in enumerate(alone):
        mixed = mixed_generate(engine, experts, None, messages, force={j: 1.0}, **GREEDY)
        assert mixed.text == expected
        assert mixed.mean_weights[j] == pytest.approx(1.0)


def test_the_weights_are_a_distribution_that_changes_per_token(engine, experts, trained) -> None:
    from mafl_graph.experts.mixer import mixed_generate

    mixer, _ = trained
    messages = chat("Write a Python function that adds 3 + 4.")
    out = mixed_generate(engine, experts, mixer, messages, record_weights=True, **GREEDY)
    assert out.output_tokens > 1 and len(out.weights) >= out.output_tokens
    assert all(sum(w) == pytest.approx(1.0, abs=1e-5) for w in out.weights)
    assert len({round(w[0], 4) for w in out.weights}) > 1
    assert sum(out.mean_weights) == pytest.approx(1.0, abs=1e-5)
    sampled = {"max_tokens": 6, "temperature": 0.8, "seed": 3}
    again = [mixed_generate(engine, None, mixer, messages, **sampled).text for _ in range(2)]
    assert again[0] == again[1]  # seeded draws replay


def test_a_probe_file_is_refused_for_other_experts(trained, experts, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    from mafl_graph.experts.mixer import ExpertMixer

    mixer, _ = trained
    path = mixer.save(tmp_path / "mixer.safetensors")
    loaded = ExpertMixer.load(path, experts)
    assert (loaded.weight == mixer.weight).all() and loaded.experts == mixer.experts
    with pytest.raises(ValueError, match="trained for other experts"):
        ExpertMixer.load(path, list(reversed(experts)))
    # Same directory name and config, other weights: the content hash tells them apart.
    other = tmp_path / "changed" / experts[1].name
    shutil.copytree(experts[1], other)
    weights = load_file(other / "adapter_model.safetensors")
    save_file({k: v + 1e-3 for k, v in weights.items()}, other / "adapter_model.safetensors")
    with pytest.raises(ValueError, match="trained for other experts"):
        ExpertMixer.load(path, [experts[0], other])
    with pytest.raises(ValueError, match="not an expert mixer"):
        ExpertMixer.load(other / "adapter_model.safetensors")


def test_experts_of_different_bases_are_refused(engine, experts, tmp_path: Path) -> None:
    from mafl_graph.experts.mixer import MixtureChatModel, mixed_generate

    other = tmp_path / "other-base"
    shutil.copytree(experts[1], other)
    config = json.loads((other / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "HuggingFaceTB/SmolLM2-360M-Instruct"
    (other / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="different base models"):
        mixed_generate(engine, [experts[0], other], None, chat("Hi"), force={0: 1.0})
    with pytest.raises(ValueError, match="different base models"):
        MixtureChatModel(experts=[str(experts[0]), str(other)], force={0: 1.0})
    with pytest.raises(ValueError, match="engine serves"):
        mixed_generate(engine, [other], None, chat("Hi"), force={0: 1.0})


def test_the_mixture_is_a_chat_model_and_a_debate_agent(trained, tmp_path: Path) -> None:
    import asyncio

    from mafl_graph.debate import create_debate_graph, run_debates
    from mafl_graph.experts.mixer import MixtureChatModel
    from mafl_graph.society import Agent, Society
    from mafl_graph.tasks import Arithmetic

    mixer, _ = trained
    path = mixer.save(tmp_path / "mixer.safetensors")
    mixture = MixtureChatModel(mixer=str(path), temperature=0.0, max_new_tokens=6)
    assert mixture.experts == [i.adapter for i in mixer.experts]
    reply = mixture.invoke("What is 2 + 2?")
    assert reply.usage_metadata is not None and 0 < reply.usage_metadata["output_tokens"] <= 6
    assert sum(reply.response_metadata["expert_weights"]) == pytest.approx(1.0, abs=1e-5)
    assert reply.response_metadata["tokens"] == reply.usage_metadata["output_tokens"]
    assert asyncio.run(mixture.ainvoke("What is 2 + 2?")).content == reply.content
    with pytest.raises(TypeError, match="unsupported call options"):
        mixture.invoke("Hi", frequency_penalty=1.0)

    society = Society(agents=(Agent("mix", generator=mixture, critic=mixture),), summarizer=mixture)
    task = Arithmetic(terms=2, high=9)
    graph = create_debate_graph(society, task, rounds=1, summarize=False)
    [debate] = run_debates(graph, task.load("test", 1), db_path=tmp_path / "d.db", progress=False)
    assert debate.error is None
    assert [r["agent"] for r in debate.responses] == [0]
