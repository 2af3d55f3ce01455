"""`mafl loop`, `mafl report` and `mafl eval` on the embedded model: the real path end to end
(debates on SQLite, datasets, LoRA tuning, tuned adapters serving the next debate), tiny.
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from mafl_graph.cli import app

pytestmark = pytest.mark.integration


def test_loop_tunes_adapters_that_the_next_debate_uses(tmp_path, engine):
    run_dir = tmp_path / "loop"
    args = ["loop", "--run-dir", str(run_dir), "--iterations", "1", "--n-train", "8"]
    args += ["--n-test", "3", "--max-tokens", "24", "--max-steps", "1", "--batch-size", "2"]
    args += ["--agents", "2", "--high", "10", "--concurrency", "8"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert [m["iteration"] for m in metrics] == [0, 1]
    tuned = json.loads((run_dir / "tuned.json").read_text())["models"]
    assert tuned, "no agent had a training example"
    for model in tuned:
        assert (run_dir / "adapters" / "iter1" / f"agent{model['agent']}-{model['role']}").is_dir()
    # The evaluation after tuning ran on the tuned adapters.
    from mafl_graph.traces import read_traces_sqlite

    traces = read_traces_sqlite(run_dir / "iter1" / "eval.sqlite", "eval")
    used = {r["model"] for t in traces for r in t.responses}
    assert any("adapters/iter1/agent" in label for label in used), used
    assert metrics[1]["diversity"]["kl"] is not None  # tuned agents differ from one another
    # usage.json counts every call of every debate (the embedded model costs nothing).
    usage = json.loads((run_dir / "usage.json").read_text())["total"]
    steps = [m[step] for m in metrics for step in ("train", "eval") if step in m]
    assert usage["calls"] == sum(s["calls"] for s in steps) and usage["cost_usd"] == 0
    report = CliRunner().invoke(app, ["report", "--run-dir", str(run_dir)])
    assert report.exit_code == 0, report.output
    assert (run_dir / "report.md").is_file() and (run_dir / "accuracy.png").is_file()
    # Zero-shot transfer: the arithmetic-tuned society on a harder arithmetic variant.
    transfer = CliRunner().invoke(
        app,
        [
            "eval",
            "--run-dir",
            str(run_dir),
            "--test-task",
            "arithmetic",
            "--n",
            "2",
            "--terms",
            "3",
            "--operators",
            "+-",
        ],
    )
    assert transfer.exit_code == 0, transfer.output
    records = json.loads((run_dir / "transfer" / "arithmetic" / "metrics.json").read_text())
    assert [r["eval"]["accuracy"]["n"] for r in records] == [2, 2]
    transfer_usage = json.loads((run_dir / "transfer" / "arithmetic" / "usage.json").read_text())
    assert transfer_usage["total"]["calls"] == sum(r["eval"]["calls"] for r in records)
    # Rerunning the finished loop changes nothing.
    before = (run_dir / "metrics.json").read_text()
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0 and (run_dir / "metrics.json").read_text() == before
