"""Memory of one base model serving many agents: the base alone, then with 6 LoRA adapters
(one per agent and role of a 3-agent society) loaded and used in one mixed batch.

    python benchmarks/adapter_memory.py [--adapters 6] [--rank 16]

The adapters (random LoRA weights on all linear layers, as a tuned agent would have) are
written by a child process first, so building them does not count towards this process's peak.
Nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import resource
import tempfile
import time
from pathlib import Path


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_adapters(folder: str, count: int, rank: int) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from mafl_graph.local import prepare_model_dir

    for i in range(count):
        base = AutoModelForCausalLM.from_pretrained(prepare_model_dir("smollm2"))
        config = LoraConfig(r=rank, target_modules="all-linear", init_lora_weights=False)
        get_peft_model(base, config).save_pretrained(Path(folder) / f"adapter{i}")


async def mixed_batch(engine, adapters: list[Path | None]) -> float:
    start = time.perf_counter()
    await asyncio.gather(
        *(
            engine.agenerate(
                [{"role": "user", "content": "What is 2+3?"}],
                max_new_tokens=16,
                temperature=0,
                adapter=adapter,
            )
            for adapter in adapters
        )
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--adapters", type=int, default=6)
    parser.add_argument("--rank", type=int, default=16)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        child = multiprocessing.get_context("spawn").Process(
            target=write_adapters, args=(folder, args.adapters, args.rank)
        )
        child.start()
        child.join()
        from mafl_graph.local import load_local_model

        engine = load_local_model()
        base_seconds = asyncio.run(mixed_batch(engine, [None] * (args.adapters + 1)))
        base_rss, base_peak = rss_mb(), peak_mb()
        paths = sorted(Path(folder).iterdir())
        size = sum(f.stat().st_size for p in paths for f in p.iterdir()) / 2**20
        start = time.perf_counter()
        for path in paths:
            engine.adapter_name(path)
        load_seconds = time.perf_counter() - start
        mixed_seconds = asyncio.run(mixed_batch(engine, [None, *paths]))
        rss, peak = rss_mb(), peak_mb()

    print(
        f"\n{args.adapters} LoRA adapters, rank {args.rank}, all linear layers, "
        f"{size:.1f} MB on disk together\n"
    )
    print("| state | RSS MB | peak RSS MB | batch of 7, 16 tokens |")
    print("|---|---|---|---|")
    print(f"| base only | {base_rss:.0f} | {base_peak:.0f} | {base_seconds:.2f} s |")
    print(
        f"| base + {args.adapters} adapters, mixed batch | {rss:.0f} | {peak:.0f} | "
        f"{mixed_seconds:.2f} s |"
    )
    print(
        f"\nadapters loaded in {load_seconds:.2f} s; peak with adapters ÷ base-only peak = "
        f"{peak / base_peak:.2f}x"
    )


if __name__ == "__main__":
    main()
