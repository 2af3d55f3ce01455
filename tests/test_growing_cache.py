"""The in-place KV cache holds exactly what transformers' concatenating cache holds."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

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
