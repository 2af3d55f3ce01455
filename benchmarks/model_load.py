"""How long the embedded model takes to load, the first time and from the cache, and how fast
one stream generates.

The first load parses and dequantises the GGUF and writes bf16 safetensors into a fresh
temporary cache; the cached load reads those back. Both run in this one process, one after the
other, so the ratio compares like with like. Nothing is asserted: the numbers are printed.

    python benchmarks/model_load.py [--source smollm2] [--dtype float32] [--new-tokens 64]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch
import transformers  # noqa: F401  (imported up front so neither load pays for the import)

from mafl_graph.local import LocalEngine, prepare_model_dir


def timed_load(source: str, cache_dir: str, dtype: str) -> tuple[LocalEngine, float]:
    """Prepare (convert or find in the cache) and load ``source``; the seconds it took."""
    start = time.perf_counter()
    engine = LocalEngine.from_dir(prepare_model_dir(source, cache_dir=cache_dir), dtype=dtype)
    return engine, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default="smollm2", help="'smollm2' or a .gguf file")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--prompt", default="Write a long story about a dragon and a knight.")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="mafl-bench-") as cache_dir:
        _, first = timed_load(args.source, cache_dir, args.dtype)
        engine, cached = timed_load(args.source, cache_dir, args.dtype)

    messages = [{"role": "user", "content": args.prompt}]
    engine.generate(messages, max_new_tokens=4, temperature=0)  # warm-up
    start = time.perf_counter()
    result = engine.generate(messages, max_new_tokens=args.new_tokens, temperature=0)
    seconds = time.perf_counter() - start

    load1 = os.getloadavg()[0]
    print(f"\nsource={args.source} dtype={args.dtype} torch threads={torch.get_num_threads()}")
    print(f"cpus={os.cpu_count()} load average (1 min)={load1:.2f}\n")
    print(f"| {'step':<38} | {'seconds':>8} |")
    print(f"|{'-' * 40}|{'-' * 10}|")
    print(f"| {'first load (GGUF -> fresh cache)':<38} | {first:>8.2f} |")
    print(f"| {'cached load (safetensors)':<38} | {cached:>8.2f} |")
    print(f"| {'ratio first / cached':<38} | {first / cached:>7.1f}x |")
    print(f"| {f'generate {result.output_tokens} tokens, greedy, batch 1':<38} | {seconds:>8.2f} |")
    print(f"| {'tokens/s (single stream)':<38} | {result.output_tokens / seconds:>8.1f} |")


if __name__ == "__main__":
    main()
