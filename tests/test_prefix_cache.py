"""Kept replies: a continued conversation prefills only its new turns, and says the same."""

from __future__ import annotations

import asyncio
import threading

import pytest
import torch

from mafl_graph.local import LocalChatModel
from mafl_graph.local.batching import Request, _followers
from mafl_graph.local.prefix_cache import MIN_REUSE_TOKENS, PrefixCache
from mafl_graph.models import CONTINUED_KEY


def kv(tokens: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(torch.zeros(1, tokens, 2), torch.zeros(1, tokens, 2))]


def test_lookup_finds_the_longest_prefix_of_the_same_adapter() -> None:
    cache = PrefixCache(max_tokens=1000)
    short, long = list(range(40)), list(range(60)) + [7, 7]
    cache.store("a", short, kv(40))
    cache.store("b", long, kv(62))
    cache.store("a", [1] * 50, kv(50))
    prompt = list(range(70))
    assert cache.lookup("a", prompt)[0] == 40
    assert cache.lookup("b", prompt)[0] == 60
    assert cache.lookup("c", prompt) == (0, None)
    # the prompt's last token is always left to run: its logits start the reply
    assert cache.lookup("a", short)[0] == 39
    # too short a shared prefix (a chat template's system prompt) is not worth reusing
    assert cache.lookup("a", list(range(MIN_REUSE_TOKENS - 1)) + [99, 99])[0] == 0
    assert (cache.hits, cache.reused_tokens) == (3, 40 + 60 + 39)


def test_budget_evicts_least_recently_used_and_extensions_replace_their_prefix() -> None:
    cache = PrefixCache(max_tokens=100)
    first, second = [1] * 40, [2] * 40
    cache.store("a", first, kv(40))
    cache.store("a", second, kv(40))
    cache.lookup("a", first + [5])  # first is now the most recently used
    cache.store("a", [3] * 40, kv(40))
    assert cache.tokens == 80
    assert cache.lookup("a", second + [5])[0] == 0  # evicted
    assert cache.lookup("a", first + [5])[0] == 40
    cache.store("a", first + [4] * 10, kv(50))  # the next turn of the same conversation
    assert cache.tokens == 90
    cache.store("a", [9] * 101, kv(101))  # larger than the whole budget: not kept
    assert cache.tokens == 90
    with pytest.raises(ValueError, match="at least 0"):
        PrefixCache(-1)


def conversation(engine, question: str, max_new_tokens: int = 24) -> tuple[list, str]:
    first = [{"role": "user", "content": question}]
    reply = engine.generate(first, max_new_tokens=max_new_tokens, temperature=0.0, keep=True)
    return first + [
        {"role": "assistant", "content": reply.text},
        {"role": "user", "content": "Check your answer step by step and give it again."},
    ], reply.text


def in_one_batch(engine, prompts: list[list[dict]]) -> list[str]:
    replies: list[str] = [""] * len(prompts)

    def reply(i: int) -> None:
        replies[i] = engine.generate(prompts[i], max_new_tokens=24, temperature=0.0).text

    threads = [threading.Thread(target=reply, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return replies


def test_a_continued_turn_reuses_the_kept_reply_and_answers_the_same(engine) -> None:
    kept = engine.scheduler.prefixes
    kept.clear()
    second, _ = conversation(engine, "What is 12 + 30?")
    assert kept.tokens > 0
    hits, reused = kept.hits, kept.reused_tokens
    # one row starts from the kept keys and values, the other from nothing (or the shared
    # system prompt): each must say what it says with nothing kept
    prompts = [second, [{"role": "user", "content": "Name a colour."}]]
    reusing = in_one_batch(engine, prompts)
    assert kept.hits > hits
    assert kept.reused_tokens - reused > len(engine.request(second).prompt_ids) // 2
    kept.clear()
    hits = kept.hits
    assert in_one_batch(engine, prompts) == reusing
    assert kept.hits == hits  # these calls kept nothing, so nothing was reused


def test_only_calls_marked_as_continued_are_kept(engine) -> None:
    kept = engine.scheduler.prefixes
    kept.clear()
    model = LocalChatModel(temperature=0.0, max_new_tokens=8)
    model.invoke("Say hi.", config={"metadata": {CONTINUED_KEY: False}})
    model.invoke("Say hello.")
    assert kept.tokens == 0
    model.invoke("Say hey.", config={"metadata": {CONTINUED_KEY: True}})
    assert kept.tokens > 0


def test_a_prompt_follows_the_earlier_prompt_of_its_batch_that_shares_most_with_it() -> None:
    def request(ids: list[int], adapter: str = "__base__") -> Request:
        return Request(ids, 8, 0.0, 1.0, None, [], adapter=adapter)

    question, other = list(range(40)), [99] * 40
    batch = [
        request(question),
        request(question),  # the same question: all but its last token shared
        request(question, adapter="tuned"),  # another adapter's keys and values differ
        request(question[:30] + [7] * 10),  # shares 30 tokens with the first
        request(other),
        request(question[:30] + [7] * 10 + [8]),  # shares 40 with the fourth: no follower leads
    ]
    nothing = [(0, None)] * len(batch)
    assert _followers(batch, nothing) == {1: (0, 39), 3: (0, 30), 5: (0, 30)}
    # a prefix the cache already gives (25 tokens) leaves too little to gain: the fourth
    # prompt leads, and the last one follows it
    hits = list(nothing)
    hits[3] = (25, None)
    assert _followers(batch, hits) == {1: (0, 39), 5: (3, 40)}
    assert _followers([batch[0], batch[4]], nothing) == {}


def test_prompts_alike_in_one_batch_run_their_shared_part_once_and_answer_the_same(
    engine,
) -> None:
    engine.scheduler.prefixes.clear()
    question = [{"role": "user", "content": "What is 12 + 30? Explain briefly."}]
    prompts = [question, question, [{"role": "user", "content": "Name a colour."}], question]
    greedy = {"max_new_tokens": 24, "temperature": 0.0}
    alone = [engine.generate(p, **greedy).text for p in prompts]
    shared, batches = engine.scheduler.shared_prompts, len(engine.scheduler.batch_sizes)

    async def together() -> list[str]:
        replies = await asyncio.gather(*(engine.agenerate(p, **greedy) for p in prompts))
        return [r.text for r in replies]

    assert asyncio.run(together()) == alone
    assert engine.scheduler.batch_sizes[batches:] == [4]
    # the colour prompt follows too: every prompt starts with the chat template's system turn
    assert engine.scheduler.shared_prompts == shared + 3
