"""A KV cache that appends each decoded token in place instead of re-concatenating the cache.

transformers' ``DynamicLayer.update`` does ``torch.cat([keys, new])`` per layer per token: at
the batch sizes a debate decodes (50+ rows, a few hundred tokens of history) every step copies
the whole cache of all 30 layers once more. Here each layer keeps spare columns on the right
and writes the new token into them, and spare rows below for rows that join; the rows that stay
are copied only when the spare columns run out (every ``GROW_TOKENS`` steps) or the spare rows
do. The attention reads a view of the filled columns, so the logits are bit-identical to
``DynamicLayer``'s (``benchmarks/kv_cache.py`` measures a decode step;
tests/test_growing_cache.py checks the equality).

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
    """``DynamicLayer`` over a buffer with spare rows and columns: ``keys``/``values`` are views.

    The rows in use are the buffer's first ``rows``; the history is columns ``[start, start +
    n)``. Rows leave by moving the last rows into their places (:meth:`move_rows`) and rows
    join by writing into the spare rows (:meth:`append_rows`), so neither copies the rows that
    stay: re-indexing and restacking the whole batch for every row that left or joined was 15%
    of a debate's time (benchmarks/debate_throughput.py). Assigning ``keys`` and ``values`` (as
    transformers and the prefix cache do) replaces the contents, the same columns for both.
    """

    def __init__(self, **kwargs: Any) -> None:
        self._k: torch.Tensor | None = None
        self._v: torch.Tensor | None = None
        # First filled column of each buffer, kept apart because keys and values are assigned
        # one after the other.
        self._k_start = self._v_start = 0
        self._n = 0
        self._rows = 0
        super().__init__(**kwargs)

    @property  # type: ignore[override]
    def keys(self) -> torch.Tensor | None:
        if self._k is None:
            return None
        return self._k[: self._rows, :, self._k_start : self._k_start + self._n]

    @keys.setter
    def keys(self, tensor: torch.Tensor | None) -> None:
        self._k, self._k_start = tensor, 0
        four_d = tensor is not None and tensor.dim() == 4
        self._n = tensor.shape[-2] if four_d else 0  # type: ignore[union-attr]
        self._rows = tensor.shape[0] if four_d else 0  # type: ignore[union-attr]

    @property  # type: ignore[override]
    def values(self) -> torch.Tensor | None:
        if self._v is None:
            return None
        return self._v[: self._rows, :, self._v_start : self._v_start + self._n]

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
        rows, k_end, v_end = key_states.shape[0], self._k_start + self._n, self._v_start + self._n
        self._k[:rows, :, k_end : k_end + new] = key_states
        self._v[:rows, :, v_end : v_end + new] = value_states
        self._n += new
        self._rows = rows
        keys, values = self.keys, self.values
        assert keys is not None and values is not None
        return keys, values

    def _reallocate(self, key_states: torch.Tensor, value_states: torch.Tensor, new: int) -> None:
        """A fresh buffer with the filled columns at the left and room for ``GROW_TOKENS``."""
        rows = key_states.shape[0]
        capacity = max(rows, 0 if self._k is None else self._k.shape[0])
        old_k, old_v = self.keys, self.values
        k = _buffer(key_states, capacity, self._n + new + GROW_TOKENS)
        v = _buffer(value_states, capacity, self._n + new + GROW_TOKENS)
        if self._n and old_k is not None and old_v is not None:
            k[:rows, :, : self._n] = old_k
            v[:rows, :, : self._n] = old_v
        self._k, self._v, self._k_start, self._v_start = k, v, 0, 0

    def _room(self) -> int:
        assert self._k is not None and self._v is not None
        return min(self._k.shape[-2] - self._k_start, self._v.shape[-2] - self._v_start) - self._n

    def get_seq_length(self) -> int:
        return self._n

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep rows ``indices`` (in that order): a copy of them, with the spare columns."""
        if self._k is not None and self._v is not None:
            self._k = self._k[: self._rows, :, self._k_start :][indices]
            self._v = self._v[: self._rows, :, self._v_start :][indices]
            self._k_start = self._v_start = 0
            self._rows = len(indices)

    def move_rows(self, holes: list[int], movers: list[int], rows: int) -> None:
        """Copy rows ``movers`` into rows ``holes``, then use only the first ``rows``."""
        if holes and self._k is not None and self._v is not None:
            for buffer, start in ((self._k, self._k_start), (self._v, self._v_start)):
                to = torch.tensor(holes, device=buffer.device)
                source = torch.tensor(movers, device=buffer.device)
                columns = slice(start, start + self._n)
                buffer[to, :, columns] = buffer[source, :, columns]
        self._rows = rows

    def append_rows(self, other: GrowingLayer, width: int, capacity: int) -> None:
        """Add ``other``'s rows below these, both right-aligned in ``width`` columns.

        Written into the spare rows; the rows in use gain masked columns on the left, taken
        from the spare ones there. Only when either runs out is the buffer copied, into one
        with room for ``capacity`` rows and ``GROW_TOKENS`` spare columns on both sides.
        """
        assert self._k is not None and self._v is not None
        joining, extra = other.keys, other.values
        assert joining is not None and extra is not None
        rows, added, left = self._rows, joining.shape[0], width - self._n
        if rows + added > self._k.shape[0] or left > min(self._k_start, self._v_start):
            self._restack(max(capacity, rows + added), width)
        new_start = []
        for buffer, start, source in (
            (self._k, self._k_start, joining),
            (self._v, self._v_start, extra),
        ):
            assert buffer is not None
            start -= left
            pad = width - source.shape[-2]
            # Masked columns, but they must be finite: 0 x NaN is NaN.
            buffer[:rows, :, start : start + left] = 0
            buffer[rows : rows + added, :, start : start + pad] = 0
            buffer[rows : rows + added, :, start + pad : start + width] = source
            new_start.append(start)
        self._k_start, self._v_start = new_start
        self._n, self._rows = width, rows + added

    def _restack(self, capacity: int, width: int) -> None:
        """These rows in a new buffer of ``capacity`` rows, ending at column GROW + width."""
        keys, values = self.keys, self.values
        assert keys is not None and values is not None
        end = GROW_TOKENS + width
        k = _buffer(keys, capacity, end + GROW_TOKENS)
        v = _buffer(values, capacity, end + GROW_TOKENS)
        k[: self._rows, :, end - self._n : end] = keys
        v[: self._rows, :, end - self._n : end] = values
        self._k, self._v = k, v
        self._k_start = self._v_start = end - self._n

    def drop_left(self, columns: int) -> None:
        """Forget the ``columns`` oldest columns (no row attends to them any more)."""
        columns = min(columns, self._n)
        self._k_start += columns
        self._v_start += columns
        self._n -= columns


def _buffer(like: torch.Tensor, rows: int, columns: int) -> torch.Tensor:
    _, heads, _, dim = like.shape
    return like.new_empty(rows, heads, columns, dim)


class GrowingCache(DynamicCache):
    """A ``DynamicCache`` whose layers are :class:`GrowingLayer`."""

    def __init__(self) -> None:
        Cache.__init__(self, layer_class_to_replicate=GrowingLayer)
