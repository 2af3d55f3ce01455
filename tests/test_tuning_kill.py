"""A hosted fine-tuning loop killed right after the provider answered an upload or a job
creation, before the ledger recorded the answer, then run again: nothing is paid twice.

The loopback providers (tests/openai_world.py, tests/vertex_world.py) create the file or job,
stop the client process (SIGSTOP) before it can read the answer, send the answer and then
kill it (SIGKILL): the file or job exists and is billed, and the run directory does not know
it. This is where a crash costs most: each duplicate is a separately billed job, and a
different model. Each kill point is one creation of iteration 1 in turn (six of each, all
started in parallel), and for Vertex AI also iteration 2. Checked after each resume: as many
jobs and uploads as an uninterrupted run, the uninterrupted run's scores and tuned models.
``pytest -s`` prints one line per kill point: files and jobs the kill left unrecorded, and
how many were created again (the duplicates).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("langchain_openai")

from fake_http import serve  # noqa: E402
from loop_worker import run_loop  # noqa: E402
from openai_world import OpenAIWorld  # noqa: E402
from vertex_world import VertexWorld  # noqa: E402

pytestmark = pytest.mark.allow_hosts(["127.0.0.1"])
HERE = Path(__file__).parent
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parent)])}


def _scores(metrics: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [
        (m["iteration"], m["eval"]["accuracy"]["mean"], m["eval"]["round_accuracy"][0]["mean"])
        for m in metrics
    ]


def _tuned(run_dir: Path, iteration: int) -> list[tuple[str, str]]:
    record = json.loads((run_dir / "tuning" / f"iter{iteration}" / "tuned.json").read_text())
    return [(f"agent{m['agent']}-{m['role']}", m["model"]) for m in record["models"]]


def _recorded(run_dir: Path, field: str) -> set[str]:
    """The ``field`` values (file or job ids) that the ledgers hold."""
    found = set()
    for ledger in (run_dir / "tuning").glob("iter*/agent*.json"):
        value = json.loads(ledger.read_text()).get(field)
        if value:
            found.add(value)
    return found


@pytest.fixture(scope="module")
def openai_reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    run_dir = tmp_path_factory.mktemp("reference")
    world = OpenAIWorld()
    with serve(world) as (url, _):
        metrics = run_loop(run_dir, url)
    return {
        "scores": _scores(metrics),
        "tuned": [_tuned(run_dir, k) for k in (1, 2)],
        "jobs": len(world.jobs),
        "uploads": world.uploads,
    }


# The first, a middle and the last job, and the last upload: every other k kills the same
# code at another index.
@pytest.mark.parametrize(("kind", "k"), [("job", 1), ("job", 4), ("job", 6), ("upload", 6)])
def test_openai_loop_killed_after_the_kth_creation_pays_for_nothing_twice(
    tmp_path: Path, openai_reference: dict[str, Any], kind: str, k: int
) -> None:
    world = OpenAIWorld(kill_after=(kind, k))
    args = [sys.executable, str(HERE / "loop_worker.py"), str(tmp_path), ""]
    with serve(world) as (url, _):
        args[-1] = url
        killed = subprocess.Popen(args, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        world.pid = killed.pid
        _, stderr = killed.communicate(timeout=300)
        assert killed.returncode == -signal.SIGKILL, stderr.decode()[-2000:]
        made = world.killed_after
        assert made is not None
        # The kill cut off the answer: the provider holds what the run directory does not.
        field = "job_id" if kind == "job" else "file_id"
        assert made["id"] not in _recorded(tmp_path, field)
        created = {j["id"] for j in world.jobs} if kind == "job" else {f["id"] for f in world.files}
        unrecorded = len(created - _recorded(tmp_path, field))
        jobs_before, uploads_before = len(world.jobs), world.uploads
        world.pid = None
        done = subprocess.run(args, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads(done.stdout.strip().splitlines()[-1])
    report = {
        "kill_after": f"{kind} {k}",
        "unrecorded_at_kill": unrecorded,
        "jobs": len(world.jobs),
        "uploads": world.uploads,
        "duplicate_jobs": len(world.jobs) - openai_reference["jobs"],
        "duplicate_uploads": world.uploads - openai_reference["uploads"],
        "created_before_kill": [jobs_before, uploads_before],
    }
    print("\nkill report:", json.dumps(report))
    assert (len(world.jobs), world.uploads) == (
        openai_reference["jobs"],
        openai_reference["uploads"],
    )
    assert _scores(metrics) == openai_reference["scores"]
    assert [_tuned(tmp_path, i) for i in (1, 2)] == openai_reference["tuned"]


# Vertex AI, as a user runs it: application default credentials (no GOOGLE_API_KEY anywhere:
# in the loop the base model is served by Vertex AI too), the endpoints from the SDKs'
# environment variables, STORAGE_EMULATOR_HOST as host:port, as emulators print it.
VERTEX = ["--project", "proj", "--location", "us-central1", "--bucket", "gs://bucket"]
VERTEX_LOOP = [
    "loop", "--model", "google_genai:gemini-2.0-flash-001", *VERTEX, "--iterations", "2",
    "--n-train", "6", "--n-test", "4", "--concurrency", "2", "--poll-interval", "0.01",
]  # fmt: skip
VERTEX_TUNE = ["tune", "--backend", "vertex", *VERTEX, "--poll-interval", "0.01"]
NAMES = [f"agent{a}-{r}" for a in range(3) for r in ("generator", "critic")]


def _mafl(world: VertexWorld, url: str, run_dir: Path, command: list[str]) -> dict[str, Any]:
    """How to run ``mafl <command>`` against ``world``: Popen's args and env."""
    env = {k: v for k, v in ENV.items() if k not in ("GOOGLE_API_KEY", "GEMINI_API_KEY")}
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    env.update(
        GOOGLE_APPLICATION_CREDENTIALS=str(world.adc_file(run_dir.parent / "adc.json", url)),
        GOOGLE_VERTEX_BASE_URL=url,
        STORAGE_EMULATOR_HOST=url.removeprefix("http://"),
        COLUMNS="200",
    )
    code = "from mafl_graph.cli import app; app()"
    return {
        "args": [sys.executable, "-c", code, *command, "--run-dir", str(run_dir)],
        "env": env,
    }


def _write_datasets(run_dir: Path) -> None:
    (run_dir / "datasets").mkdir(parents=True)
    for i, name in enumerate(NAMES):
        record = {
            "contents": [
                {"role": "user", "parts": [{"text": f"What is the result of {i}+1?"}]},
                {"role": "model", "parts": [{"text": f"\\boxed{{{i + 1}}}"}]},
            ]
        }
        (run_dir / "datasets" / f"{name}.vertex.jsonl").write_text(json.dumps(record) + "\n")


def _vertex_results(run_dir: Path, iterations: int) -> dict[str, Any]:
    results: dict[str, Any] = {"tuned": [_tuned(run_dir, k) for k in range(1, iterations + 1)]}
    if (run_dir / "metrics.json").is_file():
        results["scores"] = _scores(json.loads((run_dir / "metrics.json").read_text()))
    return results


@pytest.fixture(scope="module")
def vertex_reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """An uninterrupted `mafl loop` and `mafl tune` on Vertex AI."""
    runs: dict[str, Any] = {}
    for name, command, iterations in (("loop", VERTEX_LOOP, 2), ("tune", VERTEX_TUNE, 1)):
        run_dir = tmp_path_factory.mktemp("vertex") / "run"
        if name == "tune":
            _write_datasets(run_dir)
        world = VertexWorld()
        with serve(world) as (url, _):
            command_env = _mafl(world, url, run_dir, command)
            done = subprocess.run(**command_env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
        runs[name] = {
            **_vertex_results(run_dir, iterations),
            "jobs": len(world.jobs),
            "uploads": world.uploads,
        }
        if name == "loop":
            # One service serves every iteration: the base model and the tuned endpoints,
            # all on Vertex AI in the tuning project and location (the server refuses others).
            assert {m.split("/")[0] for m in world.chats} == {"publishers", "endpoints"}
            assert len(world.jobs) == 9
    return runs


@pytest.mark.parametrize(
    ("command", "kind", "k"),
    [("tune", "job", k) for k in (1, 6)] + [("tune", "upload", 6), ("loop", "job", 1)],
)
def test_vertex_tuning_killed_after_the_kth_creation_pays_for_nothing_twice(
    tmp_path: Path, vertex_reference: dict[str, Any], command: str, kind: str, k: int
) -> None:
    """`mafl tune` (six jobs in parallel) killed after its first and its last job and its
    last upload, and `mafl loop` killed after its first creation."""
    reference = vertex_reference[command]
    world = VertexWorld(kill_after=(kind, k))
    run_dir = tmp_path / "run"
    if command == "tune":
        _write_datasets(run_dir)
    args = VERTEX_TUNE if command == "tune" else VERTEX_LOOP
    with serve(world) as (url, _):
        popen = _mafl(world, url, run_dir, args)
        killed = subprocess.Popen(**popen, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        world.pid = killed.pid
        _, stderr = killed.communicate(timeout=300)
        assert killed.returncode == -signal.SIGKILL, stderr.decode()[-2000:]
        made = world.killed_after
        assert made is not None
        field = "job_id" if kind == "job" else "dataset_uri"
        key = made["name"] if kind == "job" else f"gs://bucket/{made['name']}"
        assert key not in _recorded(run_dir, field)
        created = (
            {j["name"] for j in world.jobs}
            if kind == "job"
            else {f"gs://bucket/{n}" for n in world.objects}
        )
        unrecorded = len(created - _recorded(run_dir, field))
        jobs_before, uploads_before = len(world.jobs), world.uploads
        world.pid = None
        done = subprocess.run(**popen, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    report = {
        "kill_after": f"vertex {command} {kind} {k}",
        "unrecorded_at_kill": unrecorded,
        "jobs": len(world.jobs),
        "uploads": world.uploads,
        "duplicate_jobs": len(world.jobs) - reference["jobs"],
        "duplicate_uploads": world.uploads - reference["uploads"],
        "created_before_kill": [jobs_before, uploads_before],
    }
    print("\nkill report:", json.dumps(report))
    assert (len(world.jobs), world.uploads) == (reference["jobs"], reference["uploads"])
    assert _vertex_results(run_dir, 2 if command == "loop" else 1) == {
        name: v for name, v in reference.items() if name not in ("jobs", "uploads")
    }
