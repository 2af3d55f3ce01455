"""Seconds per LoRA step and peak RSS: our local tuner against a bare PEFT loop, same batches.

Both sides train the same LoRA (same rank, targets and optimizer) on the same tokenized batches
(the tuner's own ``encode`` + ``batch_stream`` + ``collate``, so the data are identical), each
in a fresh subprocess so that peak RSS belongs to one side only. The first step (allocator and
kernel warm-up) is left out of the mean. Nothing is asserted: the ratio is printed.

    python benchmarks/lora_step.py [--steps 6] [--batch-size 4] [--reply-words 120] [--r 16]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mafl_graph.finetune.tuners.local import (
    LocalTuneConfig,
    LocalTuner,
    batch_stream,
    collate,
    encode,
    peak_rss_mb,
)


def conversations(n: int, reply_words: int) -> list[dict]:
    """Debate-like records: a question, and a long worked answer that is learned."""
    records = []
    for i in range(n):
        reply = " ".join(f"step {j}: {i} plus {j} is {i + j}." for j in range(reply_words // 6))
        records.append(
            {
                "messages": [
                    {"role": "user", "content": f"What is {i} + {2 * i}? Explain each step."},
                    {"role": "assistant", "content": reply + f" \\boxed{{{3 * i}}}", "weight": 1},
                ]
            }
        )
    return records


def config(args: argparse.Namespace) -> LocalTuneConfig:
    return LocalTuneConfig(
        max_steps=args.steps,
        batch_size=args.batch_size,
        lora_r=args.r,
        lora_alpha=2 * args.r,
        schedule="constant",
    )


def run_tuner(args: argparse.Namespace, records: list[dict]) -> dict:
    with tempfile.TemporaryDirectory(prefix="mafl-bench-") as run_dir:
        started = time.perf_counter()
        tuned = LocalTuner(run_dir, config=config(args)).tune(0, "generator", records, "smollm2")
        total = time.perf_counter() - started
        metrics = json.loads((Path(tuned.model) / "metrics.json").read_text())
    return {
        "seconds_per_step": metrics["seconds_per_step"],
        "peak_rss_mb": peak_rss_mb(),
        "wall_s": total,
    }


def run_bare(args: argparse.Namespace, records: list[dict]) -> dict:
    """The same training with nothing but transformers, PEFT and torch.optim."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mafl_graph.local import prepare_model_dir

    cfg = config(args)
    started = time.perf_counter()
    torch.manual_seed(cfg.seed)
    model_dir = prepare_model_dir("smollm2")
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    lora = LoraConfig(
        r=cfg.lora_r, lora_alpha=cfg.lora_alpha, target_modules="all-linear", task_type="CAUSAL_LM"
    )
    model = get_peft_model(model, lora)
    encoded = [encode(tokenizer, r["messages"], cfg.max_length) for r in records]
    stream = batch_stream([e for e in encoded if e], cfg.batch_size, cfg.seed)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=cfg.learning_rate
    )
    model.train()
    seconds = []
    for _ in range(cfg.max_steps or 1):
        batch = collate(next(stream), tokenizer.pad_token_id)
        step = time.perf_counter()
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seconds.append(time.perf_counter() - step)
    with tempfile.TemporaryDirectory(prefix="mafl-bench-") as out:
        model.save_pretrained(out)
    return {
        "seconds_per_step": sum(seconds[1:]) / max(1, len(seconds) - 1),
        "peak_rss_mb": peak_rss_mb(),
        "wall_s": time.perf_counter() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--examples", type=int, default=16)
    parser.add_argument("--reply-words", type=int, default=120)
    parser.add_argument("--r", type=int, default=16)
    parser.add_argument("--side", choices=["tuner", "bare"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    records = conversations(args.examples, args.reply_words)
    if args.side:  # a child: measure one side and print it as JSON
        result = (run_tuner if args.side == "tuner" else run_bare)(args, records)
        print(json.dumps(result))
        return

    results = {}
    for side in ("bare", "tuner"):
        argv = [sys.executable, __file__, *sys.argv[1:], "--side", side]
        out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
        results[side] = json.loads(out.strip().splitlines()[-1])
    bare, ours = results["bare"], results["tuner"]
    tokens = sum(len(json.dumps(r)) for r in records) / 4 / len(records)
    print(
        f"\nsteps={args.steps} batch={args.batch_size} (~{tokens:.0f} tokens/example) "
        f"r={args.r} cpus={os.cpu_count()} load average (1 min)={os.getloadavg()[0]:.2f}\n"
    )
    print(f"| {'measure':<22} | {'bare PEFT':>10} | {'LocalTuner':>10} | {'ratio':>6} |")
    print(f"|{'-' * 24}|{'-' * 12}|{'-' * 12}|{'-' * 8}|")
    for key, label in (
        ("seconds_per_step", "seconds / step"),
        ("peak_rss_mb", "peak RSS (MB)"),
        ("wall_s", "wall incl. load (s)"),
    ):
        ratio = ours[key] / bare[key]
        print(f"| {label:<22} | {bare[key]:>10.2f} | {ours[key]:>10.2f} | {ratio:>5.2f}x |")


if __name__ == "__main__":
    main()
