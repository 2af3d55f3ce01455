"""The report's figures, read back: labelled axes with units, integer iteration ticks, error
bars, ranges that do not draw noise as a slope, and one legend per figure."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from matplotlib.container import ErrorbarContainer  # noqa: E402

from mafl_graph.report import (  # noqa: E402
    MIN_ACCURACY_SPAN,
    accuracy_figure,
    accuracy_range,
    diversity_figure,
    write_report,
)


def acc(mean: float, stderr: float = 0.04) -> dict:
    return {"mean": mean, "stderr": stderr, "correct": round(100 * mean), "n": 100}


def record(iteration: int, vote: float, first: float, diversity: dict | None = None) -> dict:
    evaluation = {"accuracy": acc(vote), "round_accuracy": [acc(first)], "consensus": 0.8}
    return {"iteration": iteration, "eval": {**evaluation, "seconds": 1.0}, "diversity": diversity}


def measures(consensus: float, dissimilarity: float, nll: float | None, kl: float | None) -> dict:
    return {
        "consensus": consensus,
        "embedding_dissimilarity": dissimilarity,
        "likelihood_nll": nll,
        "kl": kl,
    }


# The NLLs vary by 0.008, as the run that drew a steep 0.601–0.609 axis did.
BASE = record(0, 0.55, 0.48, measures(0.80, 0.25, 0.605, 0.030))
METRICS = {
    "multiagent": [
        BASE,
        record(1, 0.60, 0.55, measures(0.78, 0.26, 0.607, 0.035)),
        record(2, 0.63, 0.58, measures(0.77, 0.27, 0.609, 0.040)),
    ],
    "single": [
        BASE,
        record(1, 0.57, 0.52, measures(0.90, 0.06, 0.603, 0.010)),
        record(2, 0.56, 0.51, measures(0.97, 0.01, 0.601, 0.002)),
    ],
    "majority-vote": [record(0, 0.53, 0.47)],
}
LABELS = [
    "multiagent FT (ours)",
    "single-agent FT (STaR)",
    "majority vote (base, one sample per debate answer)",
]


def legend_texts(figure) -> list[str]:
    [legend] = figure.legends  # one legend for the figure ...
    assert all(ax.get_legend() is None for ax in figure.axes)  # ... and none per panel
    return [text.get_text() for text in legend.get_texts()]


def test_the_accuracy_figure_has_labelled_axes_error_bars_and_an_honest_range():
    figure = accuracy_figure(METRICS)
    assert figure is not None
    vote, first = figure.axes

    assert [ax.get_title() for ax in (vote, first)] == [
        "Debate (majority vote of the final round)",
        "Single agent (round-1 answers)",
    ]
    assert vote.get_ylabel() == "accuracy (%)"
    for ax in (vote, first):
        assert ax.get_xlabel() == "fine-tuning iteration"
        assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "1", "2"]
        bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
        assert len(bars) == 2  # one per iterating method, ±1 standard error
        assert all(c.has_yerr for c in bars)
    low, high = vote.get_ylim()
    assert high - low >= MIN_ACCURACY_SPAN and 0 <= low < high <= 100
    assert low <= 55 - 4 - 5 and high >= 63 + 4 + 5  # every error bar, padded
    assert legend_texts(figure) == LABELS


def test_the_diversity_figure_has_a_titled_panel_per_measure_with_units_and_zero_based_ranges():
    figure = diversity_figure(METRICS)
    assert figure is not None
    panels = figure.axes

    assert [ax.get_title() for ax in panels] == [
        "Consensus",
        "Embedding dissimilarity",
        "Likelihood NLL",
        "KL divergence",
    ]
    assert [ax.get_ylabel() for ax in panels] == [
        "agreement with the majority (%)",
        "1 − cosine similarity",
        "cross-agent NLL (nats/token)",
        "KL (nats/token)",
    ]
    for ax in panels:
        assert ax.get_xlabel() == "fine-tuning iteration"
        assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "1", "2"]
        assert ax.get_ylim()[0] == 0
    consensus, _, nll, _ = panels
    assert consensus.get_ylim() == (0, 100)
    # A spread of 0.008 nats/token fills less than 2% of the panel's height.
    assert 0.008 / (nll.get_ylim()[1] - nll.get_ylim()[0]) < 0.02
    # Majority vote measured no diversity: it is not in this figure's legend.
    assert legend_texts(figure) == LABELS[:2]


def test_measures_a_hosted_society_lacks_have_no_panel():
    hosted = {
        method: [
            {**r, "diversity": {**r["diversity"], "likelihood_nll": None, "kl": None}}
            for r in records
            if r["diversity"]
        ]
        for method, records in METRICS.items()
        if method != "majority-vote"
    }
    figure = diversity_figure(hosted)
    assert figure is not None
    assert [ax.get_title() for ax in figure.axes] == ["Consensus", "Embedding dissimilarity"]


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([60.1, 60.9], (50, 75)),  # a sliver is widened to the minimum span
        ([0.0, 2.0], (0, 20)),  # ... within 0-100
        ([98.0, 100.0], (80, 100)),
        ([10.0, 90.0], (5, 95)),  # wide data is only padded
    ],
)
def test_the_accuracy_range_is_padded_at_least_the_minimum_span_and_within_0_100(values, expected):
    assert accuracy_range(values) == expected


def test_writing_the_report_warns_of_no_empty_legend(tmp_path: Path):
    import json

    for method, records in METRICS.items():
        (tmp_path / method).mkdir()
        (tmp_path / method / "metrics.json").write_text(json.dumps(records))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "No artists with labels found to put in legend"
        report = write_report(tmp_path)
    assert "![accuracy.png](accuracy.png)" in report.read_text()
    assert (tmp_path / "diversity.png").is_file()
