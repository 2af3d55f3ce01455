"""The comparison report: one row per evaluation, the shared untuned debate shown once; the
console's compact table fits 80 columns; a loop's rows carry its method's label."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from mafl_graph.report import console_table, load_metrics, method_of, rows, write_report
from mafl_graph.rundir import prepare_run_dir


def evaluation(correct: int, seconds: float, undecided: int = 0) -> dict:
    acc = {"mean": correct / 10, "stderr": 0.1, "correct": correct, "n": 10}
    return {
        "accuracy": {**acc, "undecided": undecided},
        "round_accuracy": [acc],
        "consensus": 0.5,
        "tokens": 900 + correct,
        "seconds": seconds,
    }


def comparison(root: Path) -> Path:
    base = {"iteration": 0, "eval": evaluation(3, 60.0), "diversity": {"kl": 0.0}}
    copied = {**base, "eval": evaluation(3, 0.0)}  # the same debates, read back from a copy
    tuned = {"train": {"seconds": 120.0}, "tuning": {"seconds": 300.0}}
    runs = {
        "multiagent": [
            base,
            {"iteration": 1, "eval": evaluation(6, 50.0), "diversity": {"kl": 0.1}, **tuned},
            {"iteration": 2, "eval": evaluation(7, 50.0, undecided=2), **tuned},
        ],
        "single": [copied, {"iteration": 1, "eval": evaluation(4, 40.0), **tuned}],
        "majority-vote": [{"iteration": 0, "eval": evaluation(2, 10.0)}],
        "no-summarizer": [{"iteration": 1, "eval": evaluation(5, 45.0), **tuned}],
    }
    for method, records in runs.items():
        (root / method).mkdir()
        (root / method / "metrics.json").write_text(json.dumps(records))
    return root


def test_the_shared_base_appears_once_and_each_tuned_iteration_has_its_row(tmp_path: Path):
    table = [
        line for line in write_report(comparison(tmp_path)).read_text().splitlines() if "|" in line
    ]

    labels = [line.split("|")[1].strip() for line in table[2:]]
    assert labels == [
        "base (untuned debate)",
        "multiagent FT (ours)",
        "multiagent FT (ours)",
        "single-agent FT (STaR)",
        "majority vote (base, one sample per debate answer)",
        "multiagent FT without summarizer",
    ]
    assert (tmp_path / "accuracy.png").is_file() and (tmp_path / "diversity.png").is_file()
    # report.md keeps every column, undecided grades counted.
    assert table[0].count("|") == 13 and "70.0 ± 10.0 (2 undecided)" in table[4]


def test_the_console_table_fits_80_columns_and_wide_has_every_column(tmp_path: Path):
    metrics = load_metrics(comparison(tmp_path))
    console = Console(width=80, record=True)
    console.print(console_table(metrics, title=str(tmp_path)))
    text = console.export_text()
    lines = text.splitlines()

    assert all(len(line) <= 80 for line in lines), text
    assert "…" not in text
    for header in ("method", "iteration", "round-1", "vote", "consensus", "time"):
        assert header in text
    # Labels wrap at spaces, whole: the longest is on three lines, "multiagent FT (ours)" on one.
    assert "multiagent FT (ours)" in text and "answer)" in text
    assert "70.0 ± 10.0*" in text and "* some grades undecided" in text
    # The tuned iteration's time is its train debates, tuning and evaluation: 470 s.
    assert "7.8" in [line.split()[-1] for line in lines if line.startswith("multiagent FT (ours)")]
    compact = rows(metrics, wide=False)
    assert list(compact[0]) == [
        "method",
        "iteration",
        "round-1 accuracy (%)",
        "vote accuracy (%)",
        "consensus (%)",
        "time (min)",
    ]

    wide = Console(width=250, record=True)
    wide.print(console_table(metrics, wide=True))
    every = wide.export_text()
    for column in ("embedding dissim.", "NLL", "KL", "eval tokens", "train+tune time"):
        assert column in every


@pytest.mark.parametrize(
    ("settings", "label"),
    [
        ({"method": "multiagent", "tune_critics": True, "summarize": True}, "multiagent FT (ours)"),
        (
            {"method": "multiagent", "tune_critics": False, "summarize": True},
            "multiagent FT without critics",
        ),
        (
            {"method": "multiagent", "tune_critics": True, "summarize": False},
            "multiagent FT without summarizer",
        ),
        (
            {"method": "multiagent", "tune_critics": False, "summarize": False},
            "multiagent (tune_critics=False, summarize=False)",
        ),
        ({"method": "single", "tune_critics": False, "summarize": True}, "single-agent FT (STaR)"),
        ({"method": "someone-elses", "summarize": True}, "someone-elses"),
    ],
)
def test_a_loop_run_is_labelled_by_the_method_in_its_manifest(
    tmp_path: Path, settings: dict, label: str
):
    prepare_run_dir(tmp_path, settings)
    records = [
        {"iteration": 0, "eval": evaluation(3, 60.0)},
        {"iteration": 1, "eval": evaluation(6, 50.0)},
    ]
    (tmp_path / "metrics.json").write_text(json.dumps(records))

    assert [row["method"] for row in rows(load_metrics(tmp_path))] == [
        "base (untuned debate)",
        label,
    ]


def test_a_loop_without_a_manifest_is_a_loop(tmp_path: Path):
    assert method_of(tmp_path) == "loop"
