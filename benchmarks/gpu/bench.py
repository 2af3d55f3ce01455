"""On a GPU: the embedded engine's batched decode and the trl tuner's step, side by side.

    python benchmarks/gpu/bench.py [--requests 64] [--max-tokens 64] [--steps 6]
    python benchmarks/gpu/bench.py --allow-cpu     # the same measures on the CPU (a dry run)

(1) Decode: the same greedy requests sent one at a time and all at once to the engine, on the
device it loads on (the first CUDA GPU); generated tokens per second and the batching gain.
(2) Tuning: seconds per step of the local tuner and of the ``trl`` tuner (TRL's SFTTrainer)
on the same conversations, the same LoRA and the same batch size, each in a fresh process.
The first step (allocator and kernel warm-up) is left out of the mean. Nothing is asserted.

Without CUDA it says so and measures nothing (exit 0), unless ``--allow-cpu`` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from lora_step import conversations  # noqa: E402  (the same debate-like records)


def device_line() -> tuple[bool, str]:
    import torch

    if not torch.cuda.is_available():
        return False, f"no CUDA GPU (torch {torch.__version__}, {platform.processor() or 'cpu'})"
    names = {torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())}
    return True, (
        f"{torch.cuda.device_count()} × {', '.join(sorted(names))} "
        f"(torch {torch.__version__}, CUDA {torch.version.cuda})"
    )


def decode(requests: int, max_tokens: int) -> dict[str, float]:
    """Generated tokens per second, one request at a time and all of them at once."""
    from concurrent.futures import ThreadPoolExecutor

    from mafl_graph.local import load_local_model

    engine = load_local_model()
    prompts = [[{"role": "user", "content": f"What is {i} + {2 * i}?"}] for i in range(requests)]
    options = {"max_new_tokens": max_tokens, "temperature": 0.0, "stop": []}
    engine.generate(prompts[0], **options)  # warm-up: kernels, allocator
    started, tokens = time.perf_counter(), 0
    for prompt in prompts[: max(1, requests // 8)]:  # a sample: one at a time is slow
        tokens += engine.generate(prompt, **options).output_tokens
    one = tokens / (time.perf_counter() - started)
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=requests) as pool:
        done = list(pool.map(lambda p: engine.generate(p, **options), prompts))
    batched = sum(g.output_tokens for g in done) / (time.perf_counter() - started)
    return {"one_at_a_time": one, "batched": batched, "device": str(engine.device)}


def tune_step(side: str, steps: int, batch_size: int) -> dict[str, float]:
    """Seconds per step of one tuner (run in its own process: see ``main``)."""
    from mafl_graph.finetune.tuners.local import LocalTuneConfig, LocalTuner, peak_rss_mb

    settings = {"max_steps": steps, "batch_size": batch_size, "lora_r": 16, "lora_alpha": 32}
    if side == "trl":
        from mafl_graph.finetune.tuners.trl_tuner import TRLTuneConfig, TRLTuner

        tuner: LocalTuner = TRLTuner
        config: LocalTuneConfig = TRLTuneConfig(**settings, schedule="constant")
    else:
        tuner, config = LocalTuner, LocalTuneConfig(**settings, schedule="constant")
    records = conversations(4 * batch_size, 120)
    with tempfile.TemporaryDirectory(prefix="mafl-gpu-bench-") as run_dir:
        started = time.perf_counter()
        tuned = tuner(run_dir, config=config).tune(0, "generator", records, "smollm2")
        wall = time.perf_counter() - started
        metrics = json.loads((Path(tuned.model) / "metrics.json").read_text())
    return {"seconds_per_step": metrics["seconds_per_step"], "wall_s": wall, "rss": peak_rss_mb()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--allow-cpu", action="store_true", help="measure on the CPU too")
    parser.add_argument("--side", choices=["local", "trl"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:  # a child: one tuner, printed as JSON
        print(json.dumps(tune_step(args.side, args.steps, args.batch_size)))
        return

    cuda, where = device_line()
    print(f"device: {where}; cpus={os.cpu_count()}")
    if not cuda and not args.allow_cpu:
        print("No GPU is present: nothing measured. Run this on a machine with CUDA.")
        return
    speed = decode(args.requests, args.max_tokens)
    print(
        f"\n(1) greedy decode on {speed['device']}: {args.requests} requests, "
        f"{args.max_tokens} tokens each"
    )
    print(f"| {'measure':<28} | {'tokens / s':>10} |")
    print(f"|{'-' * 30}|{'-' * 12}|")
    print(f"| {'one request at a time':<28} | {speed['one_at_a_time']:>10.1f} |")
    print(f"| {'all at once (batched)':<28} | {speed['batched']:>10.1f} |")
    print(f"batching gain: {speed['batched'] / speed['one_at_a_time']:.1f}x")

    results = {}
    for side in ("local", "trl"):
        argv = [sys.executable, __file__, *sys.argv[1:], "--side", side]
        out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
        results[side] = json.loads(out.strip().splitlines()[-1])
    local, trl = results["local"], results["trl"]
    print(f"\n(2) LoRA r=16, batch {args.batch_size}, {args.steps} steps (~200 tokens/example)")
    print(f"| {'measure':<22} | {'local':>10} | {'trl':>10} | {'ratio':>6} |")
    print(f"|{'-' * 24}|{'-' * 12}|{'-' * 12}|{'-' * 8}|")
    for key, label in (("seconds_per_step", "seconds / step"), ("wall_s", "wall incl. load (s)")):
        ratio = trl[key] / local[key]
        print(f"| {label:<22} | {local[key]:>10.3f} | {trl[key]:>10.3f} | {ratio:>5.2f}x |")


if __name__ == "__main__":
    main()
