"""The token-level mixer of k experts against one expert's own decoding, per generated token.

    python benchmarks/mixer_decode.py [--threads 1] [--tokens 48] [--repeats 3] [--experts 2,3]

One engine (SmolLM2-135M-Instruct, float32) holds three LoRA adapters (rank ``--lora-rank`` on
every linear layer, random weights: the cost does not depend on what they learned) and random
probes. Side by side in each repeat: one expert decoding alone through the engine's normal path
(``engine.generate``, greedy, one row), and ``mixed_generate`` over k experts (k rows in one
batched forward per token, the probes, the mix, greedy). Each is timed for ``--tokens`` new
tokens and for 1, so that the difference over the difference in tokens is the decode time per
token, prefill left out. Reports the medians and the ratio mixed / (k × one expert): the target
is ≤ 1.2, i.e. the k rows of one forward cost at most what k separate decodes would.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

MESSAGES = [{"role": "user", "content": "Count from 1 to 300, separated by commas."}]


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            return next(line.split(":", 1)[1].strip() for line in info if "model name" in line)
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def per_token(call: Callable[[int], int], tokens: int) -> float:
    """Seconds per decoded token: (time of ``tokens`` − time of 1) / (their token counts' gap)."""
    start = time.perf_counter()
    one = call(1)
    short = time.perf_counter() - start
    start = time.perf_counter()
    many = call(tokens)
    long = time.perf_counter() - start
    if many <= one:
        raise RuntimeError(f"the reply stopped after {many} tokens; use another prompt")
    return (long - short) / (many - one)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--tokens", type=int, default=48, help="new tokens per timed reply")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--experts", default="2,3", help="mixture sizes k (commas)")
    parser.add_argument("--lora-rank", type=int, default=16)
    args = parser.parse_args()
    sizes = [int(k) for k in args.experts.split(",")]

    import numpy as np
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from mafl_graph.experts.mixer import ExpertMixer, expert_identity, mixed_generate
    from mafl_graph.local import LocalEngine, prepare_model_dir
    from mafl_graph.local.loading import peft_quietly

    torch.set_num_threads(args.threads)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    print(f"{cpu_name()}, {args.threads} thread(s), torch {torch.__version__}")
    print(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, commit {commit or '?'}")
    print("command: python " + " ".join(sys.argv))

    model_dir = prepare_model_dir("smollm2")
    engine = LocalEngine.from_dir(model_dir)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        # A copy of the base to write the adapters from: PEFT injects into the model it wraps.
        base = AutoModelForCausalLM.from_pretrained(model_dir)
        adapters = []
        for i in range(max(sizes)):
            torch.manual_seed(i)
            config = LoraConfig(
                r=args.lora_rank, target_modules="all-linear", init_lora_weights=False
            )
            with peft_quietly():
                model = get_peft_model(base, config)
                model.save_pretrained(root / f"expert{i}")
                base = model.unload()
            adapters.append(root / f"expert{i}")
        identities = [expert_identity(a) for a in adapters]
        for adapter in adapters:
            engine.adapter_name(adapter)
        hidden = int(engine.model.config.hidden_size)
        rng = np.random.default_rng(0)
        mixers = {
            k: ExpertMixer(
                tuple(identities[:k]),
                rng.normal(0, 0.01, (k, hidden)).astype(np.float32),
                np.zeros(k, np.float32),
            )
            for k in sizes
        }

        def single(tokens: int) -> int:
            options: dict[str, Any] = {"temperature": 0.0, "max_new_tokens": tokens}
            return engine.generate(MESSAGES, adapter=adapters[0], **options).output_tokens

        def mixed(k: int) -> Callable[[int], int]:
            def call(tokens: int) -> int:
                out = mixed_generate(
                    engine, adapters[:k], mixers[k], MESSAGES, max_tokens=tokens, temperature=0.0
                )
                return out.output_tokens

            return call

        configurations: dict[str, Callable[[int], int]] = {"one expert": single}
        configurations.update({f"mixer of {k}": mixed(k) for k in sizes})
        for call in configurations.values():  # warm-up: first-use allocations and plans
            call(4)
        times: dict[str, list[float]] = {label: [] for label in configurations}
        for _ in range(args.repeats):
            for label, call in configurations.items():
                times[label].append(per_token(call, args.tokens))

    one = statistics.median(times["one expert"])
    print(f"\ndecode time per token ({args.tokens} tokens vs 1), median of {args.repeats}:")
    print(f"  {'one expert':>12}: {one * 1e3:6.2f} ms/token")
    for k in sizes:
        seconds = statistics.median(times[f"mixer of {k}"])
        print(
            f"  {f'mixer of {k}':>12}: {seconds * 1e3:6.2f} ms/token = {seconds / one:.2f}x one "
            f"expert; mixed / ({k} x one expert) = {seconds / (k * one):.2f} (target <= 1.2)"
        )


if __name__ == "__main__":
    main()
