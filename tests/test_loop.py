"""The fine-tuning loop end to end: real OpenAI SDK and LangChain client against a loopback
OpenAI that chats and fine-tunes (tests/openai_world.py), SQLite checkpoints, real datasets.
"""

from __future__ import annotations

import json
import logging
import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

pytest.importorskip("langchain_openai")

from fake_http import serve  # noqa: E402
from loop_worker import run_loop  # noqa: E402
from openai_world import KEY, OpenAIWorld  # noqa: E402
from typer.testing import CliRunner, Result  # noqa: E402

from mafl_graph.cli import app  # noqa: E402

pytestmark = pytest.mark.allow_hosts(["127.0.0.1"])
HERE = Path(__file__).parent


def _scores(metrics):
    return [
        (m["iteration"], m["eval"]["accuracy"]["mean"], m["eval"]["round_accuracy"][0]["mean"])
        for m in metrics
    ]


def test_each_agent_learns_from_its_own_data_and_a_rerun_redoes_nothing(tmp_path):
    world = OpenAIWorld()
    with serve(world) as (url, _):
        metrics = run_loop(tmp_path, url)
        chats, jobs, uploads = len(world.chats), len(world.jobs), world.uploads
        again = run_loop(tmp_path, url)
    assert [m["iteration"] for m in metrics] == [0, 1, 2]
    assert all({"eval"} <= set(m) for m in metrics)
    assert all({"train", "datasets", "tuning"} <= set(m) for m in metrics[1:])
    # Untuned generators miss even sums; tuned ones (ft:…) answer all, so round-1
    # accuracy rises to 1 after the first iteration.
    first = [s[2] for s in _scores(metrics)]
    assert first[0] < 1.0 and first[1:] == [1.0, 1.0]
    # Iteration 1: six models (3 agents × generator/critic), each tuned on its own file.
    suffixes = sorted(j["suffix"] for j in world.jobs[:6])
    assert suffixes == sorted(f"agent{a}-{r}" for a in range(3) for r in ("generator", "critic"))
    # Iteration 2: every first answer is right, so no critic has a wrong-to-right example and
    # the w-mix (w = 0.67 of D_C-) leaves critics nothing: only generators are tuned, each
    # from its own iteration-1 model, and critics keep theirs.
    assert jobs == 9 and uploads == 9
    assert sorted(j["suffix"] for j in world.jobs[6:]) == [f"agent{a}-generator" for a in range(3)]
    assert metrics[2]["datasets"]["datasets"]["agent0-critic"]["wrong_first"] == 0
    tuned1 = json.loads((tmp_path / "tuning" / "iter1" / "tuned.json").read_text())["models"]
    tuned2 = json.loads((tmp_path / "tuning" / "iter2" / "tuned.json").read_text())["models"]
    for job in world.jobs[6:]:
        previous = next(m for m in tuned1 if f"agent{m['agent']}-{m['role']}" == job["suffix"])
        assert job["model"] == previous["model"]
    critics = lambda models: [m["model"] for m in models if m["role"] == "critic"]  # noqa: E731
    assert critics(tuned2) == critics(tuned1)
    # Critics learn only from conversations whose final answer matched the consensus.
    stats = metrics[1]["datasets"]["datasets"]
    assert stats["agent0-critic"]["examples"] > 0 and stats["agent0-generator"]["examples"] > 0
    # The rerun found everything finished: no chat, upload or job repeated.
    assert (len(world.chats), len(world.jobs), world.uploads) == (chats, jobs, uploads)
    assert again == metrics
    assert KEY not in (tmp_path / "manifest.json").read_text()


def test_single_and_majority_tune_one_model_whose_copies_debate(tmp_path):
    world = OpenAIWorld()
    with serve(world) as (url, _):
        single = run_loop(tmp_path / "single", url, method="single", iterations=1)
        majority = run_loop(tmp_path / "majority", url, method="majority", iterations=1)
    assert [j["suffix"] for j in world.jobs] == ["agent0-generator", "agent0-generator"]
    # STaR keeps only answers matching the ground truth: base misses even sums.
    star = single[1]["datasets"]["datasets"]["agent0-generator"]
    assert 0 < star["examples"] < 6
    pooled = majority[1]["datasets"]["datasets"]["agent0-generator"]
    assert pooled["examples"] > star["examples"]  # three agents' answers in one set
    assert single[1]["eval"]["round_accuracy"][0]["mean"] == 1.0


def test_a_killed_loop_resumes_to_the_same_result_without_paying_twice(tmp_path):
    """SIGKILL at random requests (chats, uploads, job creation, polls), then resume."""
    world = OpenAIWorld()
    with serve(world) as (url, _):
        reference = run_loop(tmp_path / "reference", url)
        total, paid = world.requests, Counter(world.chats)
        for seed in range(3):
            world.chats.clear()
            world.jobs.clear()
            run_dir = tmp_path / f"killed{seed}"
            world.requests = 0
            world.kill_at = random.Random(seed).randint(2, total - 1)
            env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parent)])}
            args = [sys.executable, str(HERE / "loop_worker.py"), str(run_dir), url]
            killed = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            world.pid = killed.pid
            _, stderr = killed.communicate(timeout=300)
            assert killed.returncode == -9, stderr.decode()[-2000:]
            world.kill_at = None
            done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, done.stderr[-2000:]
            metrics = json.loads(done.stdout.strip().splitlines()[-1])
            assert _scores(metrics) == _scores(reference)
            # Same requests as the uninterrupted run, none more: no answered call paid twice.
            # (Identical requests do recur legitimately, e.g. an untuned summarizer shown the
            # same answers, hence the comparison with the reference rather than uniqueness.)
            extra = Counter(world.chats) - paid
            assert not extra, f"seed {seed}: {sum(extra.values())} paid call(s) repeated"
            assert len(world.jobs) == 9  # no job created twice


@pytest.fixture
def mafl(monkeypatch: pytest.MonkeyPatch):
    """The `mafl` command line, configured as a user's shell would be to reach an OpenAI."""

    def run(*args: str, url: str) -> Result:
        monkeypatch.setenv("OPENAI_BASE_URL", url + "/v1")
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        return CliRunner().invoke(app, list(args))

    # The loop commands set up console logging, as a CLI does; later tests get theirs back.
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield run
    root.handlers[:], root.level = handlers, level


def _usage_total(path: Path) -> dict:
    return json.loads(path.read_text())["total"]


def test_mafl_loop_tunes_an_openai_model_with_openai_jobs_and_records_usage(tmp_path, mafl):
    world = OpenAIWorld()
    common = ["--model", "openai:gpt-4o-mini", "--n-train", "6", "--n-test", "4"]
    common += ["--concurrency", "2", "--poll-interval", "0.01", "--requests-per-second", "100"]
    with serve(world) as (url, _):
        done = mafl("loop", "--run-dir", str(tmp_path), "--iterations", "1", *common, url=url)
        assert done.exit_code == 0, done.output[-3000:]
        chats = len(world.chats)
        again = mafl("loop", "--run-dir", str(tmp_path), "--iterations", "1", *common, url=url)
        assert again.exit_code == 0, again.output[-3000:]
    # Every agent and role got its own OpenAI job, starting from the model named by --model.
    assert sorted(j["suffix"] for j in world.jobs) == sorted(
        f"agent{a}-{r}" for a in range(3) for r in ("generator", "critic")
    )
    assert {j["model"] for j in world.jobs} == {"gpt-4o-mini"}
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics[1]["eval"]["round_accuracy"][0]["mean"] == 1.0  # the ft: models answer
    # usage.json holds what the server billed (10 in, 5 out per chat), per agent and role,
    # and the rerun (nothing left to do) neither called the server nor changed the count.
    assert len(world.chats) == chats and len(world.jobs) == 6
    total = _usage_total(tmp_path / "usage.json")
    assert (total["calls"], total["input_tokens"], total["output_tokens"]) == (
        chats,
        10 * chats,
        5 * chats,
    )
    usage = json.loads((tmp_path / "usage.json").read_text())
    assert set(usage["by_agent"]) == {"agent0", "agent1", "agent2"}
    assert any(m.startswith("ft:gpt-4o-mini") for m in usage["by_model"])
    assert total["cost_usd"] > 0  # gpt-4o-mini and its tuned models have list prices
    assert KEY not in (tmp_path / "usage.json").read_text()
    assert KEY not in (tmp_path / "manifest.json").read_text()
    # Zero-shot transfer of the tuned hosted society, rate-limited, with its own usage.
    with serve(world) as (url, _):
        transfer = mafl(
            "eval",
            *("--run-dir", str(tmp_path), "--test-task", "arithmetic", "--n", "2"),
            *("--terms", "2", "--high", "40", "--requests-per-second", "100"),
            url=url,
        )
    assert transfer.exit_code == 0, transfer.output[-3000:]
    out = tmp_path / "transfer" / "arithmetic"
    records = json.loads((out / "metrics.json").read_text())
    assert [r["eval"]["accuracy"]["n"] for r in records] == [2, 2]
    assert _usage_total(out / "usage.json")["calls"] == len(world.chats) - chats


def test_mafl_sweep_runs_one_hosted_loop_per_grid_point(tmp_path, mafl):
    world = OpenAIWorld()
    with serve(world) as (url, _):
        done = mafl(
            "sweep",
            *("--run-dir", str(tmp_path), "--grid", "agents=2,3", "--model", "openai:gpt-4o-mini"),
            *("--n-train", "4", "--n-test", "2", "--concurrency", "2", "--poll-interval", "0.01"),
            url=url,
        )
    assert done.exit_code == 0, done.output[-3000:]
    for agents in (2, 3):
        manifest = json.loads((tmp_path / f"agents={agents}" / "manifest.json").read_text())
        assert manifest["settings"]["agents"] == agents
    assert (tmp_path / "sweep.md").read_text().count("agents=") == 2
    assert len(world.jobs) == 2 * 2 + 3 * 2  # each point tunes every agent's two roles


def test_mafl_compare_runs_hosted_baselines_each_with_its_usage(tmp_path, mafl):
    world = OpenAIWorld()
    with serve(world) as (url, _):
        done = mafl(
            "compare",
            "--run-dir",
            str(tmp_path),
            "--methods",
            "majority-vote,single,no-summarizer",
            "--iterations",
            "1",
            "--model",
            "openai:gpt-4o-mini",
            "--base",
            "gpt-4o-mini-2024-07-18",
            "--n-train",
            "6",
            "--n-test",
            "4",
            "--poll-interval",
            "0.01",
            "--no-diversity",
            url=url,
        )
    assert done.exit_code == 0, done.output[-3000:]
    jobs = [(j["suffix"], j["model"]) for j in world.jobs]
    assert jobs[0] == ("agent0-generator", "gpt-4o-mini-2024-07-18")  # single, run first
    assert sorted(s for s, _ in jobs[1:]) == sorted(  # no-summarizer, jobs in parallel
        f"agent{a}-{role}" for a in range(3) for role in ("critic", "generator")
    )
    # The ablation's untuned debate is not evaluated: Table 1 compares the tuned societies.
    ablation = json.loads((tmp_path / "no-summarizer" / "metrics.json").read_text())
    assert [m["iteration"] for m in ablation if "eval" in m] == [1]
    methods = ("majority-vote", "single", "no-summarizer")
    calls = sum(_usage_total(tmp_path / m / "usage.json")["calls"] for m in methods)
    assert calls == len(world.chats)
    assert (tmp_path / "report.md").is_file()


@pytest.mark.parametrize(
    ("model", "needle"),
    [("google_genai:gemini-2.0-flash", "--project"), ("anthropic:claude", "local:smollm2")],
)
def test_mafl_loop_refuses_a_model_it_cannot_tune_before_any_call(tmp_path, mafl, model, needle):
    run_dir = tmp_path / "run"
    refused = mafl("loop", "--run-dir", str(run_dir), "--model", model, url="http://127.0.0.1:9")
    assert refused.exit_code == 2 and needle in refused.output
    assert not run_dir.exists()
