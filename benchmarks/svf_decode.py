"""Decoding through the embedded engine: 8 rows each with its own SVF expert, against 8 base
rows and 8 rows each with its own LoRA adapter, side by side.

    python benchmarks/svf_decode.py [--threads 1] [--rows 8] [--steps 32] [--repeats 5]

All adapters are loaded into one engine (SmolLM2-135M-Instruct, float32) before anything is
timed, as a serving engine holds them: SVF experts over the MLP projections of all 30 layers
(z spread as after training, not the near-constant initial one), LoRA adapters of rank
``--lora-rank`` on every linear layer. Each configuration prefills the same ``rows`` prompts and
then runs ``--steps`` decoding steps through the engine's forward pass (greedy tokens, no row
stops early, so every configuration decodes the same number of tokens); the configurations
take turns within each repeat so that a busy neighbour on a shared machine slows all of them
alike. Reports the median tokens/s and the time per token against the base-only batch.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

PROMPTS = [
    "What is 12 + 30? Answer briefly.",
    "Name a prime number larger than 50.",
    "Write one sentence about the sea.",
    "What is the capital of France?",
    "Explain what a matrix is in one sentence.",
    "Give a synonym of 'quick'.",
    "How many legs does a spider have?",
    "What colour is the sky on a clear day?",
]


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            return next(line.split(":", 1)[1].strip() for line in info if "model name" in line)
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def decode_seconds(engine: Any, prompts: list[list[int]], names: list[str], steps: int) -> float:
    """Seconds for ``steps`` decoding steps of ``prompts`` (after their prefill) with row ``i``
    under adapter ``names[i]``."""
    import torch

    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.inference_mode(), engine._model_lock:
        logits, cache = engine._forward(ids, mask, positions, None, names)
        positions = positions[:, -1:]
        start = time.perf_counter()
        for _ in range(steps):
            mask = torch.cat([mask, torch.ones(len(prompts), 1, dtype=mask.dtype)], -1)
            positions = positions + 1
            logits, cache = engine._forward(
                logits.argmax(-1)[:, None], mask, positions, cache, names
            )
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--rows", type=int, default=8, help="batch rows, each its own adapter")
    parser.add_argument("--steps", type=int, default=32, help="decoding steps timed")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--lora-rank", type=int, default=16)
    args = parser.parse_args()

    import torch
    from peft import LoraConfig, get_peft_model

    from mafl_graph.local import LocalEngine, prepare_model_dir
    from mafl_graph.local.loading import peft_quietly, shared_base
    from mafl_graph.svf import SVFExpert, decompose

    torch.set_num_threads(args.threads)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    print(f"{cpu_name()}, {args.threads} thread(s), torch {torch.__version__}")
    print(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, commit {commit or '?'}")
    print("command: python " + " ".join(sys.argv))

    model_dir = prepare_model_dir("smollm2")
    engine = LocalEngine.from_dir(model_dir)
    decomposition = decompose(shared_base(model_dir, "float32"), progress=False)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        svf, lora = [], []
        for i in range(args.rows):
            expert = SVFExpert.init(decomposition, seed=i, mean=0.0, std=3.0)
            svf.append(engine.adapter_name(expert.save(root / f"svf{i}")))
            torch.manual_seed(i)
            config = LoraConfig(
                r=args.lora_rank, target_modules="all-linear", init_lora_weights=False
            )
            with peft_quietly():
                get_peft_model(shared_base(model_dir, "float32"), config).save_pretrained(
                    root / f"lora{i}"
                )
            lora.append(engine.adapter_name(root / f"lora{i}"))
    prompts = [
        engine.request([{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]).prompt_ids
        for i in range(args.rows)
    ]
    half = [name if i % 2 else "__base__" for i, name in enumerate(svf)]
    configurations = {
        "base": ["__base__"] * args.rows,
        f"{args.rows} SVF experts": svf,
        f"{args.rows} LoRA adapters": lora,
        "half base, half SVF": half,
    }
    for names in configurations.values():  # warm-up: first-use allocations and plans
        decode_seconds(engine, prompts, names, 2)
    times: dict[str, list[float]] = {label: [] for label in configurations}
    for _ in range(args.repeats):
        for label, names in configurations.items():
            times[label].append(decode_seconds(engine, prompts, names, args.steps))

    tokens = args.rows * args.steps
    base = statistics.median(times["base"])
    print(f"\n{args.rows} rows x {args.steps} decoding steps, median of {args.repeats}:")
    for label, measured in times.items():
        seconds = statistics.median(measured)
        print(
            f"  {label:>22}: {tokens / seconds:7.1f} tokens/s, {seconds / tokens * 1e3:6.2f} "
            f"ms/token ({seconds / base:.2f}x the base per token)"
        )


if __name__ == "__main__":
    main()
