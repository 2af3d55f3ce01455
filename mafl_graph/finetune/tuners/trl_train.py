"""The program ``accelerate launch`` runs in every process of a trl tuning job.

``python -m mafl_graph.finetune.tuners.trl_train <work>/spec.json``: the spec and the encoded
dataset next to it are what :meth:`TRLTuner.launch
<mafl_graph.finetune.tuners.trl_tuner.TRLTuner.launch>` wrote; each process trains its share,
the model is saved to the spec's staging directory and the main process writes the result
there for the launching process to publish.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from mafl_graph.finetune.tuners.trl_tuner import read_examples, train_job


def main(argv: Sequence[str] | None = None) -> int:
    """Train the job of the spec file named by the one argument; 0 when done."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m mafl_graph.finetune.tuners.trl_train <spec.json>", file=sys.stderr)
        return 2
    spec = json.loads(Path(args[0]).read_text())
    train_job(spec, read_examples(Path(spec["work"]) / "dataset.jsonl"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
