"""The evidence runs of docs/experts.md: every clustering method on a mixed corpus of three
domains, one expert per pile, perplexity per expert and domain, the reports; then MC-EM at
temperature 0.1 and union-find by likelihood on the same corpus, each in a run of its own.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/experts_evidence.py [ROOT]

``ROOT`` (default ``runs/experts``) gets ``mixed3``, ``mixed3-t0.1`` and
``mixed3-uf-likelihood``. Each step is a ``mafl experts`` command (run in this process, torch
at one thread); every step resumes, so running the script again redoes nothing finished.
"""

from __future__ import annotations

import sys
import time
from typing import Any

ROOT = sys.argv[1] if len(sys.argv) > 1 else "runs/experts"
CORPUS = ["corpus", "--n", "240", "--test-n", "60"]
TRAINED = "kmeans,random,mc-em"
STEPS = [
    CORPUS,
    ["cluster", "--method", "oracle,kmeans,random,single", "--k", "3"],
    ["cluster", "--method", "mc-em", "--k", "3"],
    ["cluster", "--method", "llm-union-find", "--k", "3"],
    # Equal compute: 3 experts x 2 steps against the single model's 6 (4 examples a step;
    # about 40 s a step on one core). The oracle's piles are trained when K-means' differ
    # from them; union-find's are trained when they are not one pile and scraps.
    ["train", "--method", TRAINED, "--max-steps", "2", "--batch-size", "4"],
    ["train", "--method", "single", "--max-steps", "6", "--batch-size", "4"],
    ["evaluate", "--method", f"single,{TRAINED}", "--per-domain", "10"],
    ["report"],
]
RUNS = {
    "mixed3": STEPS,
    "mixed3-t0.1": [
        CORPUS,  # the same corpus: the draw is seeded
        ["cluster", "--method", "mc-em", "--k", "3", "--temperature", "0.1"],
        ["train", "--method", "mc-em", "--max-steps", "2", "--batch-size", "4"],
        ["evaluate", "--method", "mc-em", "--per-domain", "10"],
        ["report"],
    ],
    "mixed3-uf-likelihood": [
        CORPUS,
        ["cluster", "--method", "llm-union-find", "--k", "3", "--pick", "likelihood"],
        ["report"],
    ],
}


def main() -> None:
    import torch

    torch.set_num_threads(1)
    import mafl_graph.cli.experts  # noqa: F401 - registers `mafl experts`
    from mafl_graph.cli import app

    for run, steps in RUNS.items():
        for step in steps:
            _run(app, step, f"{ROOT}/{run}")


def _run(app: Any, step: list[str], run_dir: str) -> None:
    """One ``mafl experts`` command; a failing one stops the script with its exit code."""
    started = time.perf_counter()
    args = ["experts", *step[:1], "--run-dir", run_dir, *step[1:]]
    print("$ mafl " + " ".join(args), flush=True)
    try:
        app(args, prog_name="mafl")
    except SystemExit as exit_:
        if exit_.code:
            raise
    print(f"({time.perf_counter() - started:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
