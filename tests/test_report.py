"""The comparison report: one row per evaluation, the shared untuned debate shown once."""

from __future__ import annotations

import json
from pathlib import Path

from mafl_graph.report import write_report


def evaluation(correct: int, seconds: float) -> dict:
    acc = {"mean": correct / 10, "stderr": 0.1, "correct": correct, "n": 10}
    return {
        "accuracy": acc,
        "round_accuracy": [acc],
        "consensus": 0.5,
        "tokens": 900 + correct,
        "seconds": seconds,
    }


def test_the_shared_base_appears_once_and_each_tuned_iteration_has_its_row(tmp_path: Path):
    base = {"iteration": 0, "eval": evaluation(3, 60.0), "diversity": {"kl": 0.0}}
    copied = {**base, "eval": evaluation(3, 0.0)}  # the same debates, read back from a copy
    runs = {
        "multiagent": [
            base,
            {"iteration": 1, "eval": evaluation(6, 50.0), "diversity": {"kl": 0.1}},
        ],
        "single": [copied, {"iteration": 1, "eval": evaluation(4, 40.0)}],
        "majority-vote": [{"iteration": 0, "eval": evaluation(2, 10.0)}],
    }
    for method, records in runs.items():
        (tmp_path / method).mkdir()
        (tmp_path / method / "metrics.json").write_text(json.dumps(records))

    table = [line for line in write_report(tmp_path).read_text().splitlines() if "|" in line]

    labels = [line.split("|")[1].strip() for line in table[2:]]
    assert labels == [
        "base (untuned debate)",
        "multiagent FT (ours)",
        "single-agent FT (STaR)",
        "majority vote (base, one sample per debate answer)",
    ]
    assert (tmp_path / "accuracy.png").is_file() and (tmp_path / "diversity.png").is_file()
