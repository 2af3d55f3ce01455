"""What the loop tells its user: an agent left without training data is named, with why, and
the tables print no negative zero."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

pytest.importorskip("langchain_openai")

from fake_http import serve  # noqa: E402
from loop_worker import run_loop  # noqa: E402
from openai_world import OpenAIWorld  # noqa: E402

from mafl_graph.report import rows  # noqa: E402

pytestmark = pytest.mark.allow_hosts(["127.0.0.1"])


def test_an_agent_without_training_data_is_named_with_the_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mafl_graph.loop")
    with serve(OpenAIWorld()) as (url, _):
        metrics = run_loop(tmp_path, url)
    # Iteration 2: every first answer is right, so no critic has a wrong-to-right revision.
    assert metrics[2]["datasets"]["datasets"]["agent1-critic"]["examples"] == 0
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for agent in range(3):
        [line] = [m for m in said if f"agent{agent}-critic" in m]
        assert line.startswith("iteration 2:") and line.endswith("it keeps its model")
        assert "D_C- (first answers wrong, revised to the consensus) has 0" in line
        assert "w = 0.67" in line
    assert not any("generator" in m for m in said)  # generators had data


def test_the_tables_print_no_negative_zero() -> None:
    record = {
        "iteration": 1,
        "eval": {"accuracy": {"mean": 0.5, "stderr": 0.1, "n": 4}},
        "diversity": {"embedding_dissimilarity": -1e-9, "likelihood_nll": -0.001, "kl": -0.0},
    }
    [row] = rows({"loop": [record]})
    assert (row["embedding dissim."], row["NLL"], row["KL"]) == ("0.000", "0.00", "0.000")
