"""Keys and values of finished replies, kept so that the next turn of a conversation skips them.

A critic's prompt is the agent's own earlier turn (its prompt and its reply) followed by the
others' answers: about half of every critic prompt was already run through the model when that
reply was generated. On a CPU prefill is compute-bound, so reading the earlier turn again cost
a tenth of a debate's time (benchmarks/debate_throughput.py: 130 s before, 117 s with kept
replies, the same 12,430 tokens generated). The scheduler stores the keys and values of a
finished reply that its caller marked as continued (``Request.keep``), and a later prompt of
the same adapter that starts with those tokens prefills only the rest.

Hand-written because transformers' caches hold one batch in flight, not a store of finished
sequences, and its prefix-caching servers (vLLM, TGI, SGLang) are GPU servers, not a library
to embed. Entries are evicted least recently used first, within a budget of tokens.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

MIN_REUSE_TOKENS = 16
"""Shorter shared prefixes are prefilled again: the copy and the wider attention would cost
about what they save. (SmolLM2's default system prompt, which every prompt starts with, is 24
tokens: any kept entry gives every other prompt those.)"""


@dataclass
class Entry:
    ids: list[int]
    layers: list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values [heads, T, dim]


class PrefixCache:
    """Finished sequences' keys and values per adapter, at most ``max_tokens`` tokens in all."""

    def __init__(self, max_tokens: int) -> None:
        if max_tokens < 0:
            raise ValueError(f"max_tokens must be at least 0; got {max_tokens}")
        self.max_tokens = max_tokens
        self._entries: OrderedDict[tuple[str, int], Entry] = OrderedDict()
        self._tokens = 0
        self._next_key = 0
        self.hits = 0  # for benchmarks: prompts that reused an entry, and the tokens they skipped
        self.reused_tokens = 0

    @property
    def tokens(self) -> int:
        return self._tokens

    def clear(self) -> None:
        self._entries.clear()
        self._tokens = 0

    def lookup(self, adapter: str, prompt: list[int]) -> tuple[int, Entry | None]:
        """The longest stored prefix of ``prompt`` for ``adapter``: its length and entry.

        At least the prompt's last token is left to prefill (its logits start the reply).
        """
        best, found_key = 0, None
        for key, entry in self._entries.items():
            if key[0] == adapter:
                shared = common_prefix(entry.ids, prompt, len(prompt) - 1)
                if shared > best:
                    best, found_key = shared, key
        if found_key is None or best < MIN_REUSE_TOKENS:
            return 0, None
        self._entries.move_to_end(found_key)
        self.hits += 1
        self.reused_tokens += best
        return best, self._entries[found_key]

    def store(
        self, adapter: str, ids: list[int], layers: list[tuple[torch.Tensor, torch.Tensor]]
    ) -> None:
        """Keep ``layers`` (the keys and values of ``ids``); entries it extends are dropped."""
        if len(ids) > self.max_tokens:
            return
        for key in [k for k, e in self._entries.items() if k[0] == adapter]:
            if ids[: len(self._entries[key].ids)] == self._entries[key].ids:
                self._drop(key)
        self._entries[(adapter, self._next_key)] = Entry(list(ids), layers)
        self._next_key += 1
        self._tokens += len(ids)
        while self._tokens > self.max_tokens:
            self._drop(next(iter(self._entries)))

    def _drop(self, key: tuple[str, int]) -> None:
        self._tokens -= len(self._entries.pop(key).ids)


def common_prefix(a: list[int], b: list[int], limit: int) -> int:
    """How many leading tokens ``a`` and ``b`` share, at most ``limit``.

    Bisection over slice equality: each comparison runs in C, a few per entry and prompt.
    """
    low, high = 0, min(len(a), len(b), limit)
    if a[:high] == b[:high]:
        return high
    while low < high:  # invariant: a[:low] == b[:low] and a[:high+1] != b[:high+1]
        middle = (low + high + 1) // 2
        if a[:middle] == b[:middle]:
            low = middle
        else:
            high = middle - 1
    return low


def batch_cache(hits: list[tuple[int, Entry | None]]) -> tuple[Any, torch.Tensor]:
    """A batch's KV cache holding each row's reused prefix, right-aligned, and its mask.

    Rows are left-padded up to the longest reused prefix; the prompt's remaining tokens follow
    (left-padded in turn), so a row's tokens may have masked columns between them: the 2-D
    attention mask and explicit positions make that exact (tests/test_prefix_cache.py).
    """
    import torch

    from mafl_graph.local.growing_cache import GrowingCache, GrowingLayer

    width = max(h for h, _ in hits)
    template = next(e for _, e in hits if e is not None).layers
    cache = GrowingCache()
    for j, (keys0, values0) in enumerate(template):
        heads, _, dim = keys0.shape
        keys = keys0.new_zeros(len(hits), heads, width, dim)
        values = values0.new_zeros(len(hits), heads, width, values0.shape[-1])
        for i, (h, entry) in enumerate(hits):
            if entry is not None:
                keys[i, :, width - h :] = entry.layers[j][0][:, :h]
                values[i, :, width - h :] = entry.layers[j][1][:, :h]
        layer = GrowingLayer()
        layer.lazy_initialization(keys, values)
        layer.keys, layer.values = keys, values
        cache.layers.append(layer)
    mask = torch.tensor([[0] * (width - h) + [1] * h for h, _ in hits])
    return cache, mask


def row_layers(
    cache: Any, row: int, columns: torch.Tensor
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Copies of one row's keys and values at ``columns`` (its unmasked ones), every layer."""
    columns = columns.to(cache.layers[0].keys.device)  # the mask stays on the CPU
    return [
        (layer.keys[row].index_select(1, columns), layer.values[row].index_select(1, columns))
        for layer in cache.layers
    ]
