"""SVF on SmolLM2-135M: the decomposition cache, an expert's size against a LoRA adapter's,
and what a batch whose rows each use another expert costs against a base-only batch.

    python benchmarks/svf_size.py [--threads 1] [--rows 8] [--prompt-tokens 64] [--repeats 5]

Targets are the reference's: the MLP projections of all 30 layers (90 matrices). The LoRA size
is computed from shapes: r·(in + out) float32 parameters per linear layer of every decoder
layer (PEFT's "all-linear", r = 16). Layer times run every target module once on random input
of ``rows`` rows, as a decoding step (1 token a row) and as a prompt (``--prompt-tokens`` a
row); model times run the whole model. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import gc
import platform
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path


def best_of(repeats: int, run: Callable[[], object]) -> float:
    """Median seconds of ``repeats`` runs after one warm-up run."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            return next(line.split(":", 1)[1].strip() for line in info if "model name" in line)
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--rows", type=int, default=8, help="batch rows, each its own expert")
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import torch

    from mafl_graph.local.loading import prepare_model_dir, shared_base
    from mafl_graph.svf import SVFExpert, decompose, mixed_experts, target_modules
    from mafl_graph.svf.expert import EXPERT_FILE

    torch.set_num_threads(args.threads)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    print(f"{cpu_name()}, {args.threads} thread(s), torch {torch.__version__}")
    print(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, commit {commit or '?'}")

    model = shared_base(prepare_model_dir("smollm2"), "float32")
    start = time.perf_counter()
    decomposition = decompose(model, progress=False)
    first = time.perf_counter() - start
    path = decomposition.path
    assert path is not None
    del decomposition
    gc.collect()  # so that the next call reads the file instead of the in-process copy
    start = time.perf_counter()
    decomposition = decompose(model, progress=False)
    cached = time.perf_counter() - start
    # safetensors maps the file: read every page too, as the first forward passes would.
    sum(float(t.sum()) for part in (decomposition.u, decomposition.v) for t in part.values())
    touched = time.perf_counter() - start
    print(
        f"\ndecomposition: {len(decomposition.names)} matrices, {path.stat().st_size / 2**20:.0f} "
        f"MiB file; first call {first:.2f} s (the SVDs, unless already cached); from the cache "
        f"{cached:.2f} s (weights hashed, file mapped), {touched:.2f} s with every page read"
    )

    # Sizes.
    with tempfile.TemporaryDirectory() as folder:
        expert = SVFExpert.init(decomposition, seed=0)
        size = (expert.save(Path(folder)) / EXPERT_FILE).stat().st_size
        total = sum(f.stat().st_size for f in Path(folder).iterdir())
    lora = sum(
        16 * (module.in_features + module.out_features)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and ".layers." in name
    )
    print(
        f"\nexpert: {expert.num_parameters:,} parameters, {size / 1024:.0f} KiB "
        f"(+ config: {total / 1024:.0f} KiB); LoRA r=16 all-linear: {lora:,} parameters, "
        f"{lora * 4 / 2**20:.1f} MiB float32; expert/LoRA = 1/{lora * 4 / size:.0f} "
        f"(parameters 1/{lora / expert.num_parameters:.0f})"
    )

    # Mixed-batch cost.
    experts = [SVFExpert.init(decomposition, seed=i) for i in range(args.rows)]
    modules = target_modules(model, decomposition)
    print(f"\nper forward of the {len(modules)} target layers, {args.rows} rows:")
    for label, tokens in (("decode step", 1), ("prompt", args.prompt_tokens)):
        inputs = {
            name: torch.randn(args.rows, tokens, module.in_features)
            for name, module in modules.items()
        }

        def layers(inputs: dict[str, torch.Tensor] = inputs) -> None:
            for name, module in modules.items():
                module(inputs[name])

        with torch.inference_mode():
            base = best_of(args.repeats, layers)
            line = f"  {label} ({tokens} token/row): base {base * 1e3:.1f} ms"
            for method in ("factors", "correction", "merged"):
                with mixed_experts(model, decomposition, experts, method=method):  # type: ignore[arg-type]
                    mixed = best_of(args.repeats, layers)
                line += f"; {method} {mixed * 1e3:.1f} ms ({mixed / base:.2f}x)"
            half = [e if i % 2 else None for i, e in enumerate(experts)]
            line += "\n    half the rows base:"
            for method in ("factors", "correction", "merged"):
                with mixed_experts(model, decomposition, half, method=method):  # type: ignore[arg-type]
                    mixed = best_of(args.repeats, layers)
                line += f" {method} {mixed / base:.2f}x;"
        print(line.rstrip(";"))

    line = f"  opening the context for {args.rows} experts:"
    with torch.inference_mode():
        for method in ("factors", "correction", "merged"):
            start = time.perf_counter()
            with mixed_experts(model, decomposition, experts, method=method):  # type: ignore[arg-type]
                opened = time.perf_counter() - start
            line += f" {method} {opened:.3f} s;"
    print(line.rstrip(";"))

    ids = torch.randint(0, model.config.vocab_size, (args.rows, args.prompt_tokens))
    with torch.inference_mode():
        base = best_of(args.repeats, lambda: model(ids))
        line = f"\nwhole model, {args.rows} x {args.prompt_tokens} tokens: base {base:.3f} s"
        for method in ("factors", "correction", "merged"):
            with mixed_experts(model, decomposition, experts, method=method):  # type: ignore[arg-type]
                mixed = best_of(args.repeats, lambda: model(ids))
            line += f"; {method} {mixed:.3f} s ({mixed / base:.2f}x)"
    print(line)


if __name__ == "__main__":
    main()
