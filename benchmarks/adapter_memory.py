"""Memory of one base model serving many agents: the base alone, then with 6 LoRA adapters
(one per agent and role of a 3-agent society) loaded and used in one mixed batch, served by
the engine's fused mixed-adapter layers and, side by side, by PEFT's own per-adapter loop.

    python benchmarks/adapter_memory.py [--adapters 6] [--rank 16] [--rows 28]

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
    """Seconds per generated token (rows stop at EOS, so batches differ in length)."""
    start = time.perf_counter()
    replies = await asyncio.gather(
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
    return (time.perf_counter() - start) / sum(r.output_tokens for r in replies)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--adapters", type=int, default=6)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--rows", type=int, default=28, help="rows per batch, adapters cycled")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        child = multiprocessing.get_context("spawn").Process(
            target=write_adapters, args=(folder, args.adapters, args.rank)
        )
        child.start()
        child.join()
        from mafl_graph.local import load_local_model

        engine = load_local_model()
        base_seconds = asyncio.run(mixed_batch(engine, [None] * args.rows))
        base_rss, base_peak = rss_mb(), peak_mb()
        paths = sorted(Path(folder).iterdir())
        size = sum(f.stat().st_size for p in paths for f in p.iterdir()) / 2**20
        start = time.perf_counter()
        for path in paths:
            engine.adapter_name(path)
        load_seconds = time.perf_counter() - start
        cycle = [None, *paths]
        rows = [cycle[i % len(cycle)] for i in range(args.rows)]
        mixed_seconds = asyncio.run(mixed_batch(engine, rows))
        rss, peak = rss_mb(), peak_mb()
        for module in engine._peft.modules():  # PEFT's per-adapter loop, for comparison
            module.__dict__.pop("_mixed_batch_forward", None)
        peft_seconds = asyncio.run(mixed_batch(engine, rows))

    print(
        f"\n{args.adapters} LoRA adapters, rank {args.rank}, all linear layers, "
        f"{size:.1f} MB on disk together\n"
    )
    print(f"| state | RSS MB | peak RSS MB | batch of {args.rows}: ms per generated token |")
    print("|---|---|---|---|")
    print(f"| base only | {base_rss:.0f} | {base_peak:.0f} | {1000 * base_seconds:.1f} |")
    print(
        f"| base + {args.adapters} adapters, mixed batch (fused) | {rss:.0f} | {peak:.0f} | "
        f"{1000 * mixed_seconds:.1f} |"
    )
    print(f"| same batch, PEFT's per-adapter loop | | | {1000 * peft_seconds:.1f} |")
    print(
        f"\nadapters loaded in {load_seconds:.2f} s; peak with adapters ÷ base-only peak = "
        f"{peak / base_peak:.2f}x; mixed batch ÷ base-only batch: fused "
        f"{mixed_seconds / base_seconds:.2f}x, PEFT {peft_seconds / base_seconds:.2f}x"
    )


if __name__ == "__main__":
    main()
