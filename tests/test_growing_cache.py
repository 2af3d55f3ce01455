"""The in-place KV cache holds exactly what transformers' concatenating cache holds."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from mafl_graph.local.batching import compaction
from mafl_graph.local.growing_cache import GROW_TOKENS, GrowingCache, GrowingLayer


def kv(batch: int, tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(batch, 3, tokens, 8), torch.randn(batch, 3, tokens, 8)


def same(layer: GrowingLayer, reference: DynamicLayer) -> bool:
    return bool(
        layer.get_seq_length() == reference.get_seq_length()
        and torch.equal(layer.keys, reference.keys)
        and torch.equal(layer.values, reference.values)
    )


def test_appends_selects_drops_and_merges_like_dynamic_layer() -> None:
    torch.manual_seed(0)
    layer, reference = GrowingLayer(), DynamicLayer()
    for tokens in (20, *[1] * (GROW_TOKENS + 5)):  # a prefill, then decode past one regrowth
        k, v = kv(4, tokens)
        out = layer.update(k, v)
        assert torch.equal(out[0], reference.update(k, v)[0])
        assert same(layer, reference)
    rows = torch.tensor([0, 2, 3])
    layer.batch_select_indices(rows)
    reference.batch_select_indices(rows)
    assert same(layer, reference)
    layer.drop_left(7)
    reference.keys, reference.values = reference.keys[:, :, 7:], reference.values[:, :, 7:]
    assert same(layer, reference)
    k, v = kv(3, 1)
    layer.update(k, v)
    reference.update(k, v)
    assert same(layer, reference)
    # The scheduler's merge assigns new contents (rows joining a batch); decoding goes on.
    for target in (layer, reference):
        target.keys = torch.cat([target.keys, target.keys[:1]])
        target.values = torch.cat([target.values, target.values[:1]])
    k, v = kv(4, 1)
    layer.update(k, v)
    reference.update(k, v)
    assert same(layer, reference)


def restack(reference: DynamicLayer, joining: DynamicLayer, width: int) -> None:
    """The reference's way to join rows: left-pad both row sets to ``width`` and concatenate."""

    def padded(tensor: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.pad(tensor, (0, 0, width - tensor.shape[-2], 0))

    reference.keys = torch.cat([padded(reference.keys), padded(joining.keys)])
    reference.values = torch.cat([padded(reference.values), padded(joining.values)])


def test_rows_leave_and_join_in_place_like_a_restacked_layer() -> None:
    """What the scheduler does as rows finish and join, against re-indexing and concatenating."""
    torch.manual_seed(0)
    layer, reference = GrowingLayer(), DynamicLayer()
    for tokens in (20, 1, 1):
        k, v = kv(5, tokens)
        layer.update(k, v)
        reference.update(k, v)
    order, holes, movers = compaction([0, 2, 4], 5)
    assert (order, holes, movers) == ([0, 4, 2], [1], [4])  # one row moved, two stay put
    layer.move_rows(holes, movers, len(order))
    reference.batch_select_indices(torch.tensor(order))
    assert same(layer, reference)

    # Wider rows join: the buffer grows (and gets spare rows and columns on both sides).
    wider = GrowingLayer()
    wider.update(*kv(2, 30))
    layer.append_rows(wider, 30, capacity=8)
    restack(reference, wider, 30)
    assert same(layer, reference)
    buffer = layer._k

    # Rows leave, the history no row uses is dropped, narrower and wider rows join: all in the
    # same buffer (no copy of the rows that stay).
    order, holes, movers = compaction([1, 2, 3, 4], 5)
    layer.move_rows(holes, movers, len(order))
    reference.batch_select_indices(torch.tensor(order))
    layer.drop_left(5)
    reference.keys, reference.values = reference.keys[:, :, 5:], reference.values[:, :, 5:]
    assert same(layer, reference)
    for tokens, width in ((10, 25), (27, 27)):
        joining = GrowingLayer()
        joining.update(*kv(1, tokens))
        layer.append_rows(joining, width, capacity=8)
        restack(reference, joining, width)
        assert same(layer, reference)
    assert layer._k is buffer
    for _ in range(GROW_TOKENS + 3):  # decoding goes on, past a regrowth
        k, v = kv(6, 1)
        layer.update(k, v)
        reference.update(k, v)
    assert same(layer, reference)


@pytest.mark.integration
def test_the_model_decodes_the_same_logits_with_it(engine) -> None:
    """Greedy decoding of a left-padded batch, rows leaving midway: bit-identical logits."""
    torch.manual_seed(0)
    ids = torch.randint(100, 5000, (3, 12))
    mask = torch.ones_like(ids)
    mask[1, :5] = 0

    def decode(cache) -> list[torch.Tensor]:
        step_ids, step_mask = ids, mask
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = []
        with torch.inference_mode():
            for step in range(8):
                rows = ["__base__"] * len(step_ids)
                last, cache = engine._forward(step_ids, step_mask, positions, cache, rows)
                logits.append(last)
                step_ids = last.argmax(-1, keepdim=True)
                if step == 3:  # the first row leaves the batch
                    cache.batch_select_indices(torch.tensor([1, 2]))
                    step_ids, step_mask, positions = step_ids[1:], step_mask[1:], positions[1:]
                step_mask = torch.cat([step_mask, torch.ones(len(step_ids), 1, dtype=int)], -1)
                positions = positions[:, -1:] + 1
        return logits

    for grown, reference in zip(decode(GrowingCache()), decode(DynamicCache()), strict=True):
        assert torch.equal(grown, reference)
