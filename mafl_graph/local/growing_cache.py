"""A KV cache that appends each decoded token in place instead of re-concatenating the cache.

transformers' ``DynamicLayer.update`` does ``torch.cat([keys, new])`` per layer per token: at
the batch sizes a debate decodes (50+ rows, a few hundred tokens of history) every step copies
the whole cache of all 30 layers once more. Here each layer keeps spare columns on the right
and writes the new token into them; a copy happens only when the spare columns run out (every
``GROW_TOKENS`` steps), when rows join a batch, or when a row set is re-indexed. The attention
reads a view of the filled columns, so the logits are bit-identical to ``DynamicLayer``'s
(``benchmarks/kv_cache.py`` measures a decode step; tests/test_growing_cache.py checks the
equality).

transformers has no such dynamic layer (``StaticLayer`` preallocates a fixed maximum length
for every row, which a batch whose rows come and go cannot use), hence this subclass.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

GROW_TOKENS = 64
"""Spare columns added when a layer fills up: a copy every 64 decode steps, ≤64 columns idle."""


class GrowingLayer(DynamicLayer):
    """``DynamicLayer`` over a buffer with spare columns: ``keys``/``values`` are views of it.

    Assigning ``keys`` and ``values`` (as transformers and the scheduler's merge do) replaces
    the contents, the same columns for both.
    """

    def __init__(self, **kwargs: Any) -> None:
        self._k: torch.Tensor | None = None
        self._v: torch.Tensor | None = None
        # First filled column of each buffer (dropping left columns only moves it), kept apart
        # because keys and values are assigned one after the other.
        self._k_start = self._v_start = 0
        self._n = 0
        super().__init__(**kwargs)

    @property  # type: ignore[override]
    def keys(self) -> torch.Tensor | None:
        return None if self._k is None else self._k[:, :, self._k_start : self._k_start + self._n]

    @keys.setter
    def keys(self, tensor: torch.Tensor | None) -> None:
        self._k, self._k_start = tensor, 0
        self._n = 0 if tensor is None or tensor.dim() < 4 else tensor.shape[-2]

    @property  # type: ignore[override]
    def values(self) -> torch.Tensor | None:
        return None if self._v is None else self._v[:, :, self._v_start : self._v_start + self._n]

    @values.setter
    def values(self, tensor: torch.Tensor | None) -> None:
        self._v, self._v_start = tensor, 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        self.keys = self.values = None
        self.is_initialized = True

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        new = key_states.shape[-2]
        if self._k is None or self._v is None or self._room() < new:
            self._reallocate(key_states, value_states, new)
        assert self._k is not None and self._v is not None
        k_end, v_end = self._k_start + self._n, self._v_start + self._n
        self._k[:, :, k_end : k_end + new] = key_states
        self._v[:, :, v_end : v_end + new] = value_states
        self._n += new
        keys, values = self.keys, self.values
        assert keys is not None and values is not None
        return keys, values

    def _reallocate(self, key_states: torch.Tensor, value_states: torch.Tensor, new: int) -> None:
        """A fresh buffer with the filled columns at the left and room for ``GROW_TOKENS``."""
        batch, heads, _, dim = key_states.shape
        width = self._n + new + GROW_TOKENS
        k = key_states.new_empty(batch, heads, width, dim)
        v = value_states.new_empty(batch, heads, width, value_states.shape[-1])
        old_k, old_v = self.keys, self.values
        if self._n and old_k is not None and old_v is not None:
            k[:, :, : self._n] = old_k
            v[:, :, : self._n] = old_v
        self._k, self._v, self._k_start, self._v_start = k, v, 0, 0

    def _room(self) -> int:
        assert self._k is not None and self._v is not None
        return min(self._k.shape[-2] - self._k_start, self._v.shape[-2] - self._v_start) - self._n

    def get_seq_length(self) -> int:
        return self._n

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep rows ``indices``; the buffer keeps its spare columns, not the dropped ones."""
        if self._k is not None and self._v is not None:
            # Slice before indexing: the copy then skips the columns drop_left forgot.
            self._k = self._k[:, :, self._k_start :][indices]
            self._v = self._v[:, :, self._v_start :][indices]
            self._k_start = self._v_start = 0

    def stack(self, other: GrowingLayer, width: int) -> None:
        """Append ``other``'s rows below these, both right-aligned in ``width`` columns.

        One copy into a buffer with spare columns: padding and concatenating the views would
        copy the batch twice, and the next decoded token would find no room and copy it again.
        """
        assert self.keys is not None and self.values is not None
        assert other.keys is not None and other.values is not None
        self._k = _stacked(self.keys, other.keys, width)
        self._v = _stacked(self.values, other.values, width)
        self._k_start = self._v_start = 0
        self._n = width

    def drop_left(self, columns: int) -> None:
        """Forget the ``columns`` oldest columns (no row attends to them any more)."""
        columns = min(columns, self._n)
        self._k_start += columns
        self._v_start += columns
        self._n -= columns


def _stacked(top: torch.Tensor, bottom: torch.Tensor, width: int) -> torch.Tensor:
    """``top``'s rows over ``bottom``'s, right-aligned in ``width`` of ``width + GROW_TOKENS``."""
    batch, heads, _, dim = top.shape
    buffer = top.new_empty(batch + bottom.shape[0], heads, width + GROW_TOKENS, dim)
    for part, source in ((buffer[:batch], top), (buffer[batch:], bottom)):
        pad = width - source.shape[-2]
        part[:, :, :pad] = 0  # masked, but must be finite: 0 x NaN is NaN
        part[:, :, pad:width] = source
    return buffer


class GrowingCache(DynamicCache):
    """A ``DynamicCache`` whose layers are :class:`GrowingLayer`."""

    def __init__(self) -> None:
        Cache.__init__(self, layer_class_to_replicate=GrowingLayer)
