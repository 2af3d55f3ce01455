"""SVF experts served by the embedded engine, per row, next to base and LoRA rows."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

PROMPTS = [f"What is {a} + {b}? Answer briefly." for a, b in [(3, 4), (12, 30), (7, 7), (25, 1)]]
GREEDY = {"max_new_tokens": 12, "temperature": 0.0}


def chat(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


@pytest.fixture(scope="module")
def experts(engine, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Expert directories over the engine's base: an identity one, two strong random ones,
    and a LoRA adapter on one SVF target (down_proj) and one other layer."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from mafl_graph.local import prepare_model_dir
    from mafl_graph.local.loading import shared_base
    from mafl_graph.svf import SVFExpert, decompose

    root = tmp_path_factory.mktemp("svf")
    decomposition = decompose(shared_base(prepare_model_dir("smollm2"), "float32"), progress=False)
    paths = {"identity": SVFExpert.identity(decomposition).save(root / "identity")}
    for seed in (1, 2):
        # Spread-out z (scales from ~0.05 to ~0.95) so each expert visibly changes the model.
        expert = SVFExpert.init(decomposition, seed=seed, mean=0.0, std=3.0)
        paths[f"svf{seed}"] = expert.save(root / f"svf{seed}")
    base = AutoModelForCausalLM.from_pretrained(prepare_model_dir("smollm2"))
    torch.manual_seed(0)
    config = LoraConfig(
        r=4, lora_alpha=64, target_modules=["q_proj", "down_proj"], init_lora_weights=False
    )
    get_peft_model(base, config).save_pretrained(root / "lora")
    paths["lora"] = root / "lora"
    return paths


def row_logits(engine, prompts: list[str], adapters: list[Path | None]) -> torch.Tensor:
    """Next-token logits of each prompt under its adapter, all rows in one forward pass."""
    ids = [engine.request(chat(p)).prompt_ids for p in prompts]
    names = [engine.adapter_name(a) if a is not None else "__base__" for a in adapters]
    width = max(map(len, ids))
    batch = torch.tensor([[0] * (width - len(x)) + x for x in ids])
    mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids])
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.inference_mode(), engine._model_lock:
        logits, _ = engine._forward(batch, mask, positions, None, names)
    return logits


@pytest.mark.integration
def test_an_identity_expert_gives_the_base_model(engine, experts) -> None:
    identity = experts["identity"]
    base = row_logits(engine, PROMPTS[:2], [None, None])
    served = row_logits(engine, PROMPTS[:2], [identity, identity])
    assert torch.allclose(served, base, atol=1e-3)
    for prompt in PROMPTS[:2]:
        alone = engine.generate(chat(prompt), **GREEDY).text
        assert engine.generate(chat(prompt), adapter=identity, **GREEDY).text == alone
    scored, _ = engine.next_token_logprobs(chat(PROMPTS[0]), "7", adapter=identity)
    reference, _ = engine.next_token_logprobs(chat(PROMPTS[0]), "7")
    assert torch.allclose(scored, reference, atol=1e-3)


@pytest.mark.integration
def test_an_expert_in_a_mixed_batch_gives_what_it_gives_alone(engine, experts) -> None:
    from mafl_graph.local import prepare_model_dir
    from mafl_graph.local.loading import shared_base
    from mafl_graph.svf import SVFExpert, decompose, use_expert

    adapters = [None, experts["svf1"], experts["lora"], experts["svf2"], experts["svf1"]]
    prompts = [PROMPTS[i % 4] for i in range(5)]
    mixed = row_logits(engine, prompts, adapters)
    alone = torch.cat(
        [row_logits(engine, [p], [a]) for p, a in zip(prompts, adapters, strict=True)]
    )
    # Padding and batch shape change float32 sums in the last bits, and strong random
    # adapters amplify that: measured up to 6e-4 on the SVF rows and 2.3e-3 on the LoRA row
    # (logits of about 30), nowhere near a changed token.
    assert torch.allclose(mixed, alone, atol=5e-3, rtol=1e-4)
    # The same expert's merged weights in a model of its own: the reference computation.
    view = shared_base(prepare_model_dir("smollm2"), "float32")
    decomposition = decompose(view, progress=False)
    ids = torch.tensor([engine.request(chat(prompts[1])).prompt_ids])
    with torch.inference_mode(), use_expert(view, decomposition, SVFExpert.load(adapters[1])):
        merged = view(input_ids=ids).logits[0, -1]
    assert torch.allclose(mixed[1], merged, atol=5e-3, rtol=1e-4)
    base_of_svf1 = row_logits(engine, [prompts[1]], [None])[0]
    assert not torch.allclose(mixed[1], base_of_svf1, atol=1e-2)  # the expert changes its row
    assert not torch.allclose(mixed[1], row_logits(engine, [prompts[1]], [adapters[3]])[0])

    async def together() -> list[str]:
        results = await asyncio.gather(
            *(
                engine.agenerate(chat(p), adapter=a, **GREEDY)
                for p, a in zip(prompts, adapters, strict=True)
            )
        )
        return [r.text for r in results]

    singly = [
        engine.generate(chat(p), adapter=a, **GREEDY).text
        for p, a in zip(prompts, adapters, strict=True)
    ]
    assert asyncio.run(together()) == singly
    logprobs, _ = engine.next_token_logprobs(chat(prompts[1]), singly[1], adapter=adapters[1])
    base_logprobs, _ = engine.next_token_logprobs(chat(prompts[1]), singly[1])
    assert not torch.allclose(logprobs, base_logprobs, atol=1e-2)


@pytest.mark.integration
def test_an_expert_of_another_model_is_refused_clearly(engine, experts, tmp_path: Path) -> None:
    from mafl_graph.svf import SVFExpert

    expert = SVFExpert.load(experts["identity"])
    expert.fingerprint = "0" * 64
    with pytest.raises(ValueError, match="made for base .* use that base model"):
        engine.adapter_name(expert.save(tmp_path / "other-weights"))
    expert = SVFExpert.load(experts["identity"])
    # Taller gate and up projections: the same number of singular values, another matrix.
    expert.shapes = {n: (o + (o > i), i) for n, (o, i) in expert.shapes.items()}
    with pytest.raises(ValueError, match=r"is \(1537, 576\) but the base's is \(1536, 576\)"):
        engine.adapter_name(expert.save(tmp_path / "other-shapes"))
    # Refused before any layer changed: the engine still serves its own expert.
    assert engine.generate(chat(PROMPTS[0]), adapter=experts["identity"], **GREEDY).text
    with pytest.raises(FileNotFoundError, match="No LoRA adapter at .*svf_config.json"):
        engine.adapter_name(tmp_path)


@pytest.mark.integration
def test_a_chat_model_answers_through_an_svf_expert(engine, experts) -> None:
    from mafl_graph.local import LocalChatModel

    model = LocalChatModel(adapter=str(experts["svf1"]), **GREEDY)
    expected = engine.generate(chat(PROMPTS[2]), adapter=experts["svf1"], **GREEDY).text
    assert model.invoke(PROMPTS[2]).content == expected
    assert (
        model.with_adapter(None).invoke(PROMPTS[2]).content
        == engine.generate(chat(PROMPTS[2]), **GREEDY).text
    )
