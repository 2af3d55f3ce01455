"""A decode step with transformers' concatenating KV cache against the in-place one.

    python benchmarks/kv_cache.py [--rows 54] [--history 250] [--steps 24] [--repeats 3]

The debate's decode batches hold about 54 rows (P1's mean) over a few hundred tokens of
history. Both caches decode the same left-padded batch greedily, alternating, in one process;
the table gives the median milliseconds per step and whether the logits were identical.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import DynamicCache

from mafl_graph.local import load_local_model
from mafl_graph.local.growing_cache import GrowingCache


def decode(engine, ids, mask, steps: int, cache) -> tuple[float, torch.Tensor]:
    """Prefill, then ``steps`` greedy decode steps through the engine's own forward."""
    base = ["__base__"] * len(ids)  # no adapter (the name matters only once one is loaded)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.inference_mode():
        last, cache = engine._forward(ids, mask, positions, cache, base)
        logits = []
        start = time.perf_counter()
        for _ in range(steps):
            mask = torch.cat([mask, torch.ones(len(ids), 1, dtype=mask.dtype)], -1)
            positions = positions[:, -1:] + 1
            last, cache = engine._forward(
                last.argmax(-1, keepdim=True), mask, positions, cache, base
            )
            logits.append(last)
        return (time.perf_counter() - start) / steps, torch.stack(logits)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=54)
    parser.add_argument("--history", type=int, default=250)
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    engine = load_local_model()
    torch.manual_seed(0)
    ids = torch.randint(100, 5000, (args.rows, args.history))
    mask = torch.ones_like(ids)
    for row in range(args.rows):  # left padding of different lengths, as in a real batch
        mask[row, : (row * 3) % 40] = 0
    times: dict[str, list[float]] = {"DynamicCache (torch.cat)": [], "GrowingCache": []}
    logits: dict[str, torch.Tensor] = {}
    for _ in range(args.repeats):
        for name, cache in zip(times, (DynamicCache, GrowingCache), strict=True):
            seconds, logits[name] = decode(engine, ids, mask, args.steps, cache())
            times[name].append(seconds)
    first, second = times
    identical = torch.equal(logits[first], logits[second])
    print(f"\n{args.rows} rows, {args.history} tokens of history, {args.steps} decode steps\n")
    print("| cache | ms per decode step (median) | vs DynamicCache |")
    print("|---|---|---|")
    base = statistics.median(times[first])
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {name} | {1000 * median:.0f} | {base / median:.2f}x |")
    print(f"\nlogits identical: {identical}")


if __name__ == "__main__":
    main()
