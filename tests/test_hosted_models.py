"""Gemini and OpenAI in the `mafl` commands and the quickstarts, with token usage and cost.

The real ``langchain-google-genai`` and ``langchain-openai`` clients are pointed, through the
environment variables their SDKs read (``GOOGLE_GEMINI_BASE_URL``, ``OPENAI_BASE_URL``), at
loopback servers that speak those APIs (tests/fake_providers.py): nothing reaches the
internet, and the usage the run directory records is checked against what the server billed.
"""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest

pytest.importorskip("langchain_openai")
pytest.importorskip("langchain_google_genai")

from fake_http import serve  # noqa: E402
from fake_providers import FakeGemini, FakeOpenAIChat  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from mafl_graph.cli import app  # noqa: E402
from mafl_graph.usage import PRICES, UsageRecorder, price_of  # noqa: E402

pytestmark = pytest.mark.allow_hosts(["127.0.0.1"])

ROOT = Path(__file__).resolve().parents[1]
OPENAI_KEY = "sk-proj-hosted-test-9876543210"
GOOGLE_KEY = "AIzaSy-hosted-test-0123456789"


@pytest.fixture
def openai_server(monkeypatch):
    fake = FakeOpenAIChat(OPENAI_KEY)
    with serve(fake) as (url, _):
        monkeypatch.setenv("OPENAI_BASE_URL", f"{url}/v1")
        monkeypatch.delenv("OPENAI_API_BASE", raising=False)
        monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)
        yield fake


@pytest.fixture
def gemini_server(monkeypatch):
    fake = FakeGemini(GOOGLE_KEY)
    with serve(fake) as (url, _):
        monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", url)
        monkeypatch.setenv("GOOGLE_API_KEY", GOOGLE_KEY)
        monkeypatch.delenv("GEMINI_API_KEY", raising=False)
        monkeypatch.delenv("GOOGLE_GENAI_USE_VERTEXAI", raising=False)
        yield fake


def _debate(run_dir: Path, model: str, n: int = 3) -> None:
    args = ["debate", "--model", model, "--agents", "2", "--rounds", "2", "--n", str(n)]
    args += ["--run-dir", str(run_dir), "--terms", "2", "--high", "9", "--operators", "+"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "usage:" in result.output


def _check_run(run_dir: Path, billing, key: str, price: tuple[float, float] | None) -> dict:
    results = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    assert results and all(r["correct"] and r["error"] is None for r in results)
    usage = json.loads((run_dir / "usage.json").read_text())
    # Every call the server billed is in the run directory, split by agent and role.
    assert usage["total"]["calls"] == billing.calls == len(results) * 6
    assert usage["total"]["input_tokens"] == billing.input_tokens
    assert usage["total"]["output_tokens"] == billing.output_tokens
    for agent in ("agent0", "agent1"):
        assert usage["by_agent"][agent]["generator"]["calls"] == len(results)
        assert usage["by_agent"][agent]["critic"]["calls"] == len(results)
    assert usage["summarizer"]["calls"] == 2 * len(results)
    if price is not None:
        expected = (billing.input_tokens * price[0] + billing.output_tokens * price[1]) / 1e6
        assert usage["total"]["cost_usd"] == pytest.approx(expected)
        assert usage["total"]["cost_usd"] > 0
    # The key was sent to the server on every call and written nowhere.
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert key.encode() not in path.read_bytes(), f"API key leaked into {path}"
    return usage


def test_mafl_debate_with_openai_records_usage_and_cost_per_agent(openai_server, tmp_path):
    run_dir = tmp_path / "openai"
    _debate(run_dir, "openai:gpt-4o-mini")
    usage = _check_run(run_dir, openai_server.billing, OPENAI_KEY, PRICES["gpt-4o-mini"])
    # The provider reports the dated snapshot it served; its price is the family's.
    assert list(usage["by_model"]) == ["gpt-4o-mini-2024-07-18"]
    # The datasets command works on the hosted run's checkpoints like on any other (w=0: the
    # fake is always right, so every critic example is D_C+).
    result = CliRunner().invoke(
        app,
        ["datasets", "--run-dir", str(run_dir), "--min-examples", "1", "--w", "0"],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    assert (run_dir / "datasets" / "agent0-generator.openai.jsonl").is_file()


def test_mafl_debate_with_gemini_records_usage_and_cost_per_agent(gemini_server, tmp_path):
    run_dir = tmp_path / "gemini"
    _debate(run_dir, "google_genai:gemini-2.0-flash")
    assert gemini_server.models == {"gemini-2.0-flash"}
    _check_run(run_dir, gemini_server.billing, GOOGLE_KEY, PRICES["gemini-2.0-flash"])


def test_a_resumed_run_adds_to_the_recorded_usage(openai_server, tmp_path):
    run_dir = tmp_path / "resume"
    _debate(run_dir, "openai:gpt-4o-mini", n=2)
    first = json.loads((run_dir / "usage.json").read_text())["total"]
    _debate(run_dir, "openai:gpt-4o-mini", n=2)  # all finished: no call, nothing added
    assert json.loads((run_dir / "usage.json").read_text())["total"] == first
    assert openai_server.billing.calls == 12


@pytest.mark.parametrize(
    ("script", "server"),
    [("quickstart_openai.py", "openai_server"), ("quickstart_gemini.py", "gemini_server")],
)
def test_quickstarts_run_against_the_provider_api(script, server, request, tmp_path, monkeypatch):
    fake = request.getfixturevalue(server)
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(ROOT / "examples" / script), run_name="__main__")
    assert fake.billing.calls > 0
    usage = json.loads(next(tmp_path.rglob("usage.json")).read_text())
    assert usage["total"]["calls"] == fake.billing.calls
    assert usage["total"]["cost_usd"] > 0


def test_prices_resolve_snapshots_and_fine_tuned_names_and_admit_unknowns():
    assert price_of("gpt-4o-mini-2024-07-18") == PRICES["gpt-4o-mini"]
    assert price_of("gpt-4o-2024-08-06") == PRICES["gpt-4o"]
    assert price_of("ft:gpt-4o-mini-2024-07-18:org:agent0-critic:abc") == PRICES["ft:gpt-4o-mini"]
    assert price_of("models/gemini-2.0-flash-001") == PRICES["gemini-2.0-flash"]
    assert price_of("gemini-2.0-flash-lite") == PRICES["gemini-2.0-flash-lite"]
    assert price_of("projects/p/locations/l/endpoints/7") is None
    recorder = UsageRecorder(prices={"my-model": (1.0, 2.0)})
    assert recorder._cost("my-model-v2", None, 1_000_000, 500_000) == pytest.approx(2.0)
    assert recorder._cost("mystery", None, 10, 10) is None
    assert recorder._cost("smollm2", "mafl-local", 10, 10) == 0.0
