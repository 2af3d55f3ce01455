"""The fine-tuning loop end to end: real OpenAI SDK and LangChain client against a loopback
OpenAI that chats and fine-tunes (tests/openai_world.py), SQLite checkpoints, real datasets.
"""

from __future__ import annotations

import json
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
