"""The batching scheduler: unit tests with a toy model, and behaviour on the embedded model."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from mafl_graph.local.batching import BatchScheduler, CancelledRequest, Request

VOCAB, EOS = 12, 11


class ToyCache:
    layers: list = []


SHIFT = {"__base__": 1, "slow": 0}


def toy_forward(ids, mask, positions, cache, adapters):
    """Next token = last token + 1 (+5 under an adapter, +0 under "slow"), then EOS."""
    time.sleep(0.01)
    shift = torch.tensor([SHIFT.get(a, 5) for a in adapters])
    logits = torch.nn.functional.one_hot((ids[:, -1] + shift).clamp(max=EOS), VOCAB).float()
    return logits, cache if cache is not None else ToyCache()


def toy_scheduler(**kwargs) -> BatchScheduler:
    return BatchScheduler(
        toy_forward,
        lambda ids: " ".join(map(str, ids)),
        eos_ids={EOS},
        pad_id=0,
        lock=threading.Lock(),
        **kwargs,
    )


def request(first: int, n: int, **kwargs) -> Request:
    options = {"temperature": 0.0, "top_p": 1.0, "seed": None, "stop": []} | kwargs
    return Request(prompt_ids=[first], max_new_tokens=n, **options)


def test_concurrent_requests_share_one_batch_and_short_ones_return_first() -> None:
    scheduler = toy_scheduler()
    done_order: list[int] = []
    long, short = request(1, 20), request(1, 2)
    futures = [scheduler.submit(long), scheduler.submit(short)]
    for i, f in enumerate(futures):
        f.add_done_callback(lambda _, i=i: done_order.append(i))
    assert futures[0].result(5) == ([2, 3, 4, 5, 6, 7, 8, 9, 10], "stop")  # EOS, not returned
    assert futures[1].result(5) == ([2, 3], "length")
    assert done_order == [1, 0]
    assert scheduler.batch_sizes == [2]


def test_a_request_joins_a_running_batch_instead_of_waiting_for_it() -> None:
    scheduler = toy_scheduler()
    long = scheduler.submit(request(1, 100, adapter="slow"))
    time.sleep(0.1)
    short = scheduler.submit(request(1, 3))
    assert short.result(5) == ([2, 3, 4], "length")
    assert not long.done()  # it finished inside the long one's batch
    assert scheduler.joined == 1
    assert long.result(10) == ([1] * 100, "length")


def test_a_batch_that_never_empties_drops_the_history_no_row_uses() -> None:
    widths: list[tuple[int, bool]] = []

    def forward(ids, mask, positions, cache, adapters):
        widths.append((mask.shape[1], bool(mask.any(0).all())))
        return toy_forward(ids, mask, positions, cache, adapters)

    scheduler = toy_scheduler()
    scheduler._forward = forward
    first = scheduler.submit(request(1, 30, adapter="slow"))
    time.sleep(0.15)
    second = scheduler.submit(request(1, 30, adapter="slow"))  # joins, outlives the first
    assert first.result(10) == ([1] * 30, "length")
    assert second.result(10) == ([1] * 30, "length")
    assert scheduler.joined == 1
    # Every column is some live row's history: once the first row left, the width follows
    # the second row's own length (1 prompt token + 29 generated), not the first's.
    assert all(full for _, full in widths)
    assert max(width for width, _ in widths) <= 31


def test_per_request_parameters_inside_one_batch() -> None:
    scheduler = toy_scheduler()
    stop = request(1, 20, stop=["5"])
    adapter = request(1, 3, adapter="adapter0")
    eos = Request(prompt_ids=[9], max_new_tokens=20, temperature=0.0, top_p=1.0, seed=None, stop=[])
    futures = [scheduler.submit(r) for r in (stop, adapter, eos)]
    assert futures[0].result(5) == ([2, 3, 4, 5], "stop")
    assert futures[1].result(5) == ([6], "stop")  # its own adapter
    assert futures[2].result(5) == ([10], "stop")
    assert scheduler.batch_sizes == [3]


def test_seeded_sampling_does_not_depend_on_the_batch() -> None:
    logits = torch.randn(4, 50)
    rows = [request(0, 1, temperature=1.0, top_p=0.9, seed=s) for s in (1, 2, 3, 4)]
    for r in rows:
        r.generator = torch.Generator().manual_seed(r.seed)
    together = BatchScheduler._sample(rows, logits)
    alone = []
    for i, s in enumerate((1, 2, 3, 4)):
        r = request(0, 1, temperature=1.0, top_p=0.9, seed=s)
        r.generator = torch.Generator().manual_seed(s)
        alone += BatchScheduler._sample([r], logits[i : i + 1])
    assert together == alone


@pytest.mark.parametrize("top_p, nucleus", [(0.8, {0, 1}), (0.4, {0}), (1.0, {0, 1, 2})])
def test_top_p_keeps_only_the_nucleus(top_p: float, nucleus: set[int]) -> None:
    logits = torch.tensor([[3.0, 2.9, 2.0, -20.0]])  # probabilities ≈ .44 .40 .16 0
    draws = set()
    for seed in range(200):
        r = request(0, 1, temperature=1.0, top_p=top_p, seed=seed)
        r.generator = torch.Generator().manual_seed(seed)
        draws |= set(BatchScheduler._sample([r], logits))
    assert draws == nucleus


def test_an_abandoned_request_leaves_the_batch_and_the_others_finish() -> None:
    scheduler = toy_scheduler()
    keep, drop = request(1, 100, adapter="slow"), request(1, 100, adapter="slow")
    futures = [scheduler.submit(keep), scheduler.submit(drop)]
    time.sleep(0.05)
    drop.abandoned = True
    with pytest.raises(CancelledRequest):
        futures[1].result(5)
    assert len(futures[0].result(10)[0]) == 100


def test_a_broken_batch_fails_its_requests_and_the_scheduler_goes_on() -> None:
    calls = {"n": 0}

    def flaky(*args):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("out of memory")
        return toy_forward(*args)

    scheduler = BatchScheduler(flaky, str, eos_ids={EOS}, pad_id=0, lock=threading.Lock())
    with pytest.raises(RuntimeError, match="out of memory"):
        scheduler.submit(request(1, 3)).result(5)
    assert scheduler.submit(request(1, 3)).result(5) == ([2, 3, 4], "length")


# The embedded model ----------------------------------------------------------------------

PROMPTS = [f"What is {a} + {b}? Answer briefly." for a, b in [(3, 4), (12, 30), (7, 7), (25, 1)]]


def chat(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


async def together(engine, prompts: list[str], **options) -> list[str]:
    results = await asyncio.gather(*(engine.agenerate(chat(p), **options) for p in prompts))
    return [r.text for r in results]


def test_stop_ends_the_thread_after_its_step_and_fails_what_is_left() -> None:
    scheduler = toy_scheduler()
    running = scheduler.submit(request(1, 1000, adapter="slow"))
    time.sleep(0.05)
    scheduler.stop()
    assert not scheduler._thread.is_alive()
    with pytest.raises(CancelledRequest):
        running.result(1)
    assert scheduler.submit(request(1, 2)).result(5) == ([2, 3], "length")  # starts anew


EXIT_RIGHT_AFTER_A_BATCH = """
import asyncio
from mafl_graph.local import load_local_model
engine = load_local_model()
question = [{"role": "user", "content": "What is 12 + 30?"}]
async def main():
    return await asyncio.gather(*(engine.agenerate(question, max_new_tokens=16, seed=s)
                                  for s in range(4)))
print(len(asyncio.run(main())))
"""


@pytest.mark.integration
def test_a_process_that_exits_right_after_its_last_reply_exits_cleanly(engine) -> None:
    """The scheduler's daemon thread must not be inside a torch operation at exit (abort)."""
    done = subprocess.run(
        [sys.executable, "-c", EXIT_RIGHT_AFTER_A_BATCH], capture_output=True, text=True
    )
    assert (done.returncode, done.stdout.strip()) == (0, "4"), done.stderr[-2000:]


@pytest.mark.integration
@pytest.mark.parametrize("options", [{"temperature": 0.0}, {"temperature": 0.8, "seed": 7}])
def test_batched_and_single_outputs_agree(engine, options) -> None:
    options = {"max_new_tokens": 24, **options}
    alone = [engine.generate(chat(p), **options).text for p in PROMPTS]
    before = len(engine.scheduler.batch_sizes)
    assert asyncio.run(together(engine, PROMPTS, **options)) == alone
    assert max(engine.scheduler.batch_sizes[before:]) > 1  # they really shared a batch


@pytest.mark.integration
def test_a_request_joining_mid_batch_gets_the_text_it_gets_alone(engine) -> None:
    greedy = {"max_new_tokens": 24, "temperature": 0.0}
    # The first reply must outlast a few decode steps (a short answer could end before the
    # others arrive): counting to 40 does not stop within 24 tokens.
    prompts = ["Count from 1 to 40, separated by commas.", *PROMPTS[1:3]]
    alone = [engine.generate(chat(p), **greedy).text for p in prompts]

    async def staggered():
        steps = engine.scheduler.decode_steps
        first = asyncio.ensure_future(engine.agenerate(chat(prompts[0]), **greedy))
        while engine.scheduler.decode_steps < steps + 3:  # a few decode steps in
            await asyncio.sleep(0.01)
        later = [engine.agenerate(chat(p), **greedy) for p in prompts[1:3]]
        return [r.text for r in await asyncio.gather(first, *later)]

    joined = engine.scheduler.joined
    assert asyncio.run(staggered()) == alone
    assert engine.scheduler.joined == joined + 2


@pytest.mark.integration
def test_a_failing_request_fails_alone(engine) -> None:
    huge = "word " * (engine.context_window + 10)

    async def run():
        return await asyncio.gather(
            engine.agenerate(chat(PROMPTS[0]), max_new_tokens=8, temperature=0),
            engine.agenerate(chat(huge), max_new_tokens=8),
            engine.agenerate(chat(PROMPTS[1]), max_new_tokens=8, temperature=0),
            return_exceptions=True,
        )

    good, bad, other = asyncio.run(run())
    assert isinstance(bad, ValueError) and "context window" in str(bad)
    assert good.text and other.text


@pytest.mark.integration
def test_cancelling_one_waiter_does_not_hang_the_others(engine) -> None:
    async def run():
        slow = asyncio.ensure_future(engine.agenerate(chat(PROMPTS[0]), max_new_tokens=200))
        fast = asyncio.ensure_future(
            engine.agenerate(chat(PROMPTS[1]), max_new_tokens=16, temperature=0)
        )
        await asyncio.sleep(0.3)
        slow.cancel()
        result = await asyncio.wait_for(fast, timeout=60)
        with pytest.raises(asyncio.CancelledError):
            await slow
        return result

    assert asyncio.run(run()).output_tokens > 0


@pytest.mark.integration
def test_an_adapter_changes_only_its_own_rows(engine, tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from mafl_graph.local import LocalChatModel, prepare_model_dir

    base = AutoModelForCausalLM.from_pretrained(prepare_model_dir("smollm2"))
    # Random (not zero) LoRA weights, seeded and strongly scaled, so the change always shows.
    torch.manual_seed(0)
    config = LoraConfig(
        r=4, lora_alpha=256, target_modules=["q_proj", "v_proj"], init_lora_weights=False
    )
    get_peft_model(base, config).save_pretrained(tmp_path / "agent1")
    options = {"max_new_tokens": 16, "temperature": 0.0}
    plain = [engine.generate(chat(p), **options).text for p in PROMPTS[:2]]

    async def mixed():
        return await asyncio.gather(
            engine.agenerate(chat(PROMPTS[0]), **options),
            engine.agenerate(chat(PROMPTS[1]), adapter=tmp_path / "agent1", **options),
            engine.agenerate(chat(PROMPTS[1]), **options),
        )

    def base_storage() -> set[int]:
        return {p.data_ptr() for n, p in engine.model.named_parameters() if "lora_" not in n}

    before = base_storage()
    first, tuned, second = asyncio.run(mixed())
    assert (first.text, second.text) == (plain[0], plain[1])
    assert tuned.text != plain[1]
    assert base_storage() == before  # the adapter was injected into the base, not a copy
    agent = LocalChatModel(max_new_tokens=16, temperature=0).with_adapter(tmp_path / "agent1")
    assert agent.invoke(PROMPTS[1]).content == tuned.text  # how a Society points at it
    with pytest.raises(FileNotFoundError, match="No LoRA adapter"):
        engine.request(chat("hi"), adapter=tmp_path / "missing")
    with pytest.raises(ValueError, match="No LoRA adapter"):
        LocalChatModel(adapter=str(tmp_path / "missing"))


@pytest.mark.integration
def test_mixed_adapter_batches_match_peft_and_each_adapter_alone(engine, tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from mafl_graph.local import prepare_model_dir
    from mafl_graph.local.mixed_lora import use_fused_mixed_batches

    for i, (rank, modules) in enumerate([(4, "all-linear"), (8, ["q_proj", "down_proj"])]):
        base = AutoModelForCausalLM.from_pretrained(prepare_model_dir("smollm2"))
        torch.manual_seed(i)
        config = LoraConfig(r=rank, lora_alpha=64, target_modules=modules, init_lora_weights=False)
        get_peft_model(base, config).save_pretrained(tmp_path / f"a{i}")
    names = [engine.adapter_name(tmp_path / f"a{i}") for i in range(2)]
    rows = ["__base__", names[0], names[1], names[0]]
    prompts = [chat(PROMPTS[i % 2]) for i in range(4)]
    ids = [engine.request(p).prompt_ids for p in prompts]
    width = max(map(len, ids))
    batch = torch.tensor([[0] * (width - len(x)) + x for x in ids])
    mask = (batch != 0).long()
    modules = [m for m in engine._peft.modules() if hasattr(m, "_mafl_fused")]

    def logits() -> torch.Tensor:
        with torch.inference_mode():
            out = engine._peft(input_ids=batch, attention_mask=mask, adapter_names=rows)
        return out.logits[:, -1]

    fused = logits()
    for module in modules:  # PEFT's own per-adapter loop, for reference
        del module._mixed_batch_forward
    try:
        reference = logits()
    finally:
        use_fused_mixed_batches(engine._peft)
    assert len(modules) == 30 * 7  # every linear layer of every block carries LoRA
    # Same sums in another order, through 210 LoRA layers of strong random adapters: float32
    # rounding reaches 2e-4 on logits of about 20 (measured), nowhere near a changed token.
    assert torch.allclose(fused, reference, atol=1e-3, rtol=1e-4)
    assert torch.equal(fused[1], fused[3])  # same prompt, same adapter
    assert not torch.allclose(fused[0], fused[2], atol=1e-2)  # same prompt, base vs a1

    # Each row of a mixed batch gives exactly what its request gives alone.
    options = {"max_new_tokens": 12, "temperature": 0.0}
    adapters = [None, tmp_path / "a0", tmp_path / "a1", tmp_path / "a0"]

    async def together():
        return await asyncio.gather(
            *(
                engine.agenerate(p, adapter=a, **options)
                for p, a in zip(prompts, adapters, strict=True)
            )
        )

    alone = [
        engine.generate(p, adapter=a, **options).text
        for p, a in zip(prompts, adapters, strict=True)
    ]
    assert [g.text for g in asyncio.run(together())] == alone
    assert len(set(alone[:3])) == 3  # base and both adapters answer differently
