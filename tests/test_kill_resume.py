"""`mafl debate` killed with SIGKILL at a random call (several seeds), then run again.

The real CLI runs in its own process and talks to the fault server through the OpenAI SDK
(``OPENAI_BASE_URL``), with 15% of requests answered 429. The server kills the process
when the k-th request arrives, so the kill lands while calls are in flight. Checked: the resumed
run's results equal an uninterrupted run's, and the server's log shows which successful calls
were paid for twice, and why.

At-least-once, measured: a call whose answer left the server but was not yet checkpointed when
the process died is asked again on resume (it was paid for, and the answer is lost with the
process). The test reads the checkpoint as the kill left it and checks, call by call, that an
answer it holds is never asked for again and one it does not hold is asked for exactly once.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("langchain_openai")

from fault_server import FaultServer, Request, arithmetic_answer, serve  # noqa: E402

pytestmark = pytest.mark.allow_hosts(["127.0.0.1"])

KEY = "sk-mafl-kill-0123456789abcdef"
N = 12
CALLS = N * 9
ARGS = [
    "debate", "--model", "openai:fault-model", "--n", str(N), "--agents", "3", "--rounds", "2",
    "--concurrency", "4", "--max-retries", "2", "--timeout", "10", "--seed", "0",
    "--terms", "3", "--high", "50", "--operators", "+*",
]  # fmt: skip


def server() -> FaultServer:
    # 429s only: the SDK waits what Retry-After says (50 ms), where 5xx would cost 0.5-1 s
    # of its backoff each (tests/test_faults.py covers those).
    return FaultServer(answer=arithmetic_answer, rate=0.15, kinds=("429",), seed=5, delay=0.02)


def mafl(run_dir: Path, url: str) -> subprocess.Popen[str]:
    """``mafl debate`` in a new process, keyed and pointed at the loopback server by env."""
    env = {**os.environ, "OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": url, "COLUMNS": "200"}
    code = "from mafl_graph.cli import app; app()"
    command = [sys.executable, "-c", code, *ARGS, "--run-dir", str(run_dir)]
    pipe = subprocess.PIPE
    return subprocess.Popen(command, env=env, stdout=pipe, stderr=pipe, text=True)


def results(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    with serve(server()) as s:
        done = mafl(run_dir, s.url)
        out, err = done.communicate(timeout=300)
    assert done.returncode == 0, err
    return results(run_dir)


@dataclass
class Killer:
    """Kills the client when request number ``at`` arrives (and drops that request)."""

    at: int
    process: subprocess.Popen[str] | None = None
    killed_at: float | None = None
    in_flight: list[Request] = field(default_factory=list)

    def __call__(self, request: Request) -> None:
        if self.process is None or self.killed_at is not None or request.seq + 1 < self.at:
            return
        self.killed_at = time.monotonic()
        os.kill(self.process.pid, signal.SIGKILL)
        raise ConnectionAbortedError("the client was killed")


@pytest.mark.parametrize("seed", [1, 3])
def test_a_killed_debate_resumes_to_the_same_results(
    tmp_path: Path, seed: int, uninterrupted: list[dict[str, Any]]
) -> None:
    at = random.Random(seed).randint(10, CALLS - 10)
    killer = Killer(at)
    log = server()
    log.hook = killer
    with serve(log) as s:
        killed = mafl(tmp_path, s.url)
        killer.process = killed
        killed.communicate(timeout=300)
        assert killed.returncode == -signal.SIGKILL
        assert killer.killed_at is not None
        assert not (tmp_path / "results.jsonl").exists()  # it died before the end
        saved = checkpoint_contents(tmp_path, tmp_path / "after-kill")
        resumed_at = time.monotonic()
        resumed = mafl(tmp_path, s.url)
        out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err

    assert results(tmp_path) == uninterrupted

    # Successful answers per call: each key once, except calls lost to the kill.
    answered: dict[str, list[Request]] = {}
    for r in log.requests:
        if r.ok:
            answered.setdefault(r.key, []).append(r)
    assert len(answered) == CALLS
    repeated = {k: rs for k, rs in answered.items() if len(rs) > 1}
    assert len(repeated) <= 4 * 3  # at most one step's calls per problem: 4 problems x 3 agents
    before_kill = {k: rs for k, rs in answered.items() if rs[0].arrived < resumed_at}
    assert 0 < len(before_kill) < CALLS
    for key, rs in before_kill.items():
        held = (rs[0].text or "").encode() in saved
        # An answer the checkpoint held is never asked for again; one it did not hold is asked
        # again exactly once, by the resumed run.
        assert len(rs) == (1 if held else 2), (key, held, len(rs))
        if len(rs) == 2:
            assert rs[1].arrived >= resumed_at
    assert all(len(rs) == 1 for k, rs in answered.items() if k not in before_kill)
    killed_at = killer.killed_at
    lost_in_flight = [rs[0] for rs in repeated.values() if (rs[0].replied or 0) >= killed_at]
    lost_unsaved = [rs[0] for rs in repeated.values() if (rs[0].replied or 0) < killed_at]
    report = {
        "seed": seed,
        "killed_at_request": at,
        "requests": len(log.requests),
        "faults_injected": sum(log.faults().values()),
        "duplicated_paid_calls": len(repeated),
        "answered_after_the_kill": len(lost_in_flight),
        "answered_before_the_kill_not_yet_saved": len(lost_unsaved),
        "their_lag_ms": [round(1000 * (killed_at - (r.replied or 0)), 1) for r in lost_unsaved],
    }
    print("\nkill report:", json.dumps(report))


def checkpoint_contents(run_dir: Path, scratch: Path) -> bytes:
    """Every checkpoint, saved write and journaled reply of the run, as SQLite recovers them
    after the kill.

    Read from a copy (database and write-ahead log), so the run directory stays as the kill
    left it; SQLite's recovery drops a transaction that was not committed when the process
    died, which a search of the raw files would count as saved.
    """
    scratch.mkdir()
    for name in ("debates.sqlite", "debates.sqlite-wal"):
        if (run_dir / name).exists():
            shutil.copy(run_dir / name, scratch / name)
    conn = sqlite3.connect(scratch / "debates.sqlite")
    try:
        rows = conn.execute(
            "SELECT checkpoint FROM checkpoints UNION ALL SELECT value FROM writes "
            "UNION ALL SELECT reply FROM mafl_replies"
        ).fetchall()
    finally:
        conn.close()
    return b"".join(bytes(row[0]) for row in rows if row[0] is not None)
