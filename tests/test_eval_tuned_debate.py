"""`mafl eval` on a run directory made by `mafl debate`, `mafl datasets` and `mafl tune` (no
loop): it evaluates that debate's society and the same society with its tuned models, against a
loopback OpenAI that chats and fine-tunes (tests/openai_world.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("langchain_openai")

from fake_http import serve  # noqa: E402
from openai_world import KEY, OpenAIWorld  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from mafl_graph.cli import app  # noqa: E402

pytestmark = pytest.mark.allow_hosts(["127.0.0.1"])
ARITHMETIC = ["--terms", "2", "--low", "0", "--high", "30", "--operators", "+"]


def test_mafl_eval_evaluates_the_tuned_society_of_a_debate_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = OpenAIWorld()
    run_dir = str(tmp_path / "run")
    with serve(world) as (url, _):
        monkeypatch.setenv("OPENAI_BASE_URL", url + "/v1")
        monkeypatch.setenv("OPENAI_API_KEY", KEY)

        def mafl(*args: str) -> None:
            result = CliRunner().invoke(app, list(args))
            assert result.exit_code == 0, result.output[-3000:]

        mafl("debate", "--model", "openai:gpt-4o-mini", "--n", "6", "--split", "train",
             "--run-dir", run_dir, *ARITHMETIC)  # fmt: skip
        mafl("datasets", "--run-dir", run_dir, "--format", "openai", "--min-examples", "1")
        mafl("tune", "--run-dir", run_dir, "--backend", "openai", "--poll-interval", "0.01")
        base_chats = len(world.chats)
        mafl("eval", "--run-dir", run_dir, "--train-task", "arithmetic",
             "--test-task", "arithmetic", "--n", "4", *ARITHMETIC)  # fmt: skip
    records = json.loads(
        (tmp_path / "run" / "transfer" / "arithmetic" / "metrics.json").read_text()
    )
    base, tuned = (r["eval"] for r in records)
    # The untuned society misses even sums; the tuned generators (ft:…) answer every one.
    assert base["round_accuracy"][0]["mean"] < 1.0 == tuned["round_accuracy"][0]["mean"]
    tuned_models = {json.loads(c)[0] for c in world.chats[base_chats:]}
    assert any(m.startswith("ft:") for m in tuned_models)
    assert "gpt-4o-mini" in tuned_models  # the base society's own calls, and its summarizer


def test_mafl_eval_says_what_a_run_directory_lacks(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "manifest.json").write_text(json.dumps({"settings": {"task": "arithmetic"}}))
    (run_dir / "tuned.json").write_text(json.dumps({"models": []}))
    result = CliRunner().invoke(
        app, ["eval", "--run-dir", str(run_dir), "--test-task", "arithmetic"]
    )
    assert result.exit_code == 2
    assert "mafl loop" in result.output and "mafl debate" in result.output
    assert "'model'" in result.output
