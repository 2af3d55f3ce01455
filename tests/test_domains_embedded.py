"""`mafl debate` on the new domains with the embedded SmolLM2-135M: DeepMind Mathematics,
HumanEval (its code graded in the sandbox) and a mixed corpus, each asked in its own words."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mafl_graph.cli import app

pytestmark = pytest.mark.integration
SMALL = ["--agents", "2", "--rounds", "2", "--no-summarize", "--model", "local:smollm2"]


def _debate(tmp_path: Path, *args: str) -> list[dict]:
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(app, ["debate", "--run-dir", str(run_dir), *SMALL, *args])
    assert result.exit_code == 0, result.output[-3000:]
    assert "single-agent answers, round 1" in result.output
    return [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]


def test_dm_math_debates(engine, tmp_path: Path) -> None:
    records = _debate(
        tmp_path, "--task", "dm-math", "--module", "arithmetic__add_or_sub", "--n", "2",
        "--max-tokens", "24",
    )  # fmt: skip
    assert len(records) == 2 and all(r["error"] is None for r in records)
    first = records[0]["responses"][0]["messages"][0]["content"]
    assert "\\boxed{" in first


def test_humaneval_debates_with_code_prompts(engine, tmp_path: Path) -> None:
    [record] = _debate(tmp_path, "--task", "humaneval", "--n", "1", "--max-tokens", "96")
    assert record["error"] is None and isinstance(record["correct"], bool)
    critique = next(r for r in record["responses"] if r["round"] == 2)
    assert "```python" in critique["messages"][-1]["content"]
    assert "\\boxed" not in critique["messages"][-1]["content"]


def test_a_mixed_corpus_debates_each_problem_in_its_own_words(engine, tmp_path: Path) -> None:
    records = _debate(
        tmp_path, "--task", "mixed", "--tasks", "sums=arithmetic,code=humaneval", "--n", "2",
        "--seed", "1", "--max-tokens", "32",
    )  # fmt: skip
    domains = {r["problem_id"].split(":")[0] for r in records}
    assert domains == {"sums", "code"}, domains
    for record in records:
        prompt = record["responses"][0]["messages"][0]["content"]
        assert ("```python" in prompt) is record["problem_id"].startswith("code:")
