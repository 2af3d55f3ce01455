"""The evidence run of docs/experts.md: every clustering method on a mixed corpus of three
domains, one expert per pile, perplexity per expert and domain, the report.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/experts_evidence.py [RUN_DIR]

Each step is a ``mafl experts`` command (run in this process, torch at one thread); every
step resumes, so running the script again after an interruption redoes nothing finished.
"""

from __future__ import annotations

import sys
import time

RUN_DIR = sys.argv[1] if len(sys.argv) > 1 else "runs/experts/mixed3"
TRAINED = "kmeans,random,mc-em"
STEPS = [
    ["corpus", "--n", "240", "--test-n", "60"],
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


def main() -> None:
    import torch

    torch.set_num_threads(1)
    import mafl_graph.cli.experts  # noqa: F401 - registers `mafl experts`
    from mafl_graph.cli import app

    for step in STEPS:
        started = time.perf_counter()
        args = ["experts", *step[:1], "--run-dir", RUN_DIR, *step[1:]]
        print("$ mafl " + " ".join(args), flush=True)
        try:
            app(args, prog_name="mafl")
        except SystemExit as exit_:
            if exit_.code:
                raise
        print(f"({time.perf_counter() - started:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
