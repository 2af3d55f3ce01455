"""The OpenAI tuner against the real `openai` SDK pointed at a loopback server that speaks the
fine-tuning API (files, jobs, job retrieval, events), with scripted job states.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest

pytest.importorskip("openai")
pytest.importorskip("langchain_openai")

import openai  # noqa: E402
from fake_http import Call, serve  # noqa: E402

from mafl_graph.finetune.tuners import (  # noqa: E402
    Backoff,
    OpenAITuneConfig,
    OpenAITuner,
    TunedModel,
    TuningError,
    poll,
)

# Loopback only: `allow_hosts` alone lets 127.0.0.1 through and blocks every other host
# (adding `enable_socket` would lift the block for all hosts).
pytestmark = pytest.mark.allow_hosts(["127.0.0.1"])

KEY = "sk-test-secret-123"
FAST = Backoff(initial=0.01, factor=1.5, maximum=0.02)
TUNED = "ft:gpt-4o-mini-2024-07-18:org:agent0-generator:abc123"
RECORDS = [
    {
        "messages": [
            {"role": "user", "content": f"What is {i}+1?"},
            {"role": "assistant", "content": f"\\boxed{{{i + 1}}}", "weight": 1},
        ]
    }
    for i in range(10)
]


class FakeOpenAI:
    """Files, fine-tuning jobs and chat completions, with job states read from a script."""

    def __init__(self, states: list[dict[str, Any]]) -> None:
        self.states = states
        self.listed: list[dict[str, Any]] = []
        self.jobs = 0
        self.lock = threading.Lock()  # the server answers each request in its own thread

    def __call__(self, call: Call) -> tuple[int, Any]:
        if call.headers.get("authorization") != f"Bearer {KEY}":
            return 401, {"error": {"message": "bad key"}}
        path = call.path.split("?")[0]
        if call.method == "POST" and path == "/v1/files":
            assert b'name="purpose"' in call.body and b"fine-tune" in call.body
            return 200, {
                "id": "file-1",
                "object": "file",
                "bytes": len(call.body),
                "created_at": 0,
                "filename": "x.jsonl",
                "purpose": "fine-tune",
            }
        if call.method == "POST" and path == "/v1/fine_tuning/jobs":
            with self.lock:
                self.jobs += 1
                return 200, self._job(f"ftjob-{self.jobs}", {"status": "validating_files"})
        if call.method == "GET" and path == "/v1/fine_tuning/jobs":
            # Every job, whatever the metadata filter asks: a client must check the tag itself.
            return 200, {"object": "list", "data": self.listed, "has_more": False}
        if call.method == "GET" and path.endswith("/events"):
            return 200, {
                "object": "list",
                "has_more": False,
                "data": [
                    {
                        "id": "ev-1",
                        "object": "fine_tuning.job.event",
                        "created_at": 0,
                        "level": "error",
                        "message": "Training file has 3 invalid lines",
                    }
                ],
            }
        if call.method == "GET" and path.startswith("/v1/fine_tuning/jobs/"):
            with self.lock:
                state = self.states.pop(0) if len(self.states) > 1 else self.states[0]
            return 200, self._job(path.rsplit("/", 1)[1], state)
        if call.method == "POST" and path == "/v1/chat/completions":
            model = call.json()["model"]
            return 200, {
                "id": "c",
                "object": "chat.completion",
                "created": 0,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "stop",
                        "message": {"role": "assistant", "content": f"hello from {model}"},
                    }
                ],
            }
        return 404, {"error": {"message": f"no route {call.method} {path}"}}

    @staticmethod
    def _job(job_id: str, state: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": job_id,
            "object": "fine_tuning.job",
            "created_at": 0,
            "model": "gpt-4o-mini-2024-07-18",
            "training_file": "file-1",
            "organization_id": "org",
            "result_files": [],
            "seed": 0,
            "hyperparameters": {"n_epochs": "auto"},
            "fine_tuned_model": None,
            "error": None,
            "finished_at": None,
            "trained_tokens": None,
            "validation_file": None,
            **state,
        }


def _count(calls: list[Call], method: str, path: str) -> int:
    return sum(c.method == method and c.path.split("?")[0] == path for c in calls)


def _tuner(url: str, run_dir, **kwargs: Any) -> OpenAITuner:
    client = openai.OpenAI(api_key=KEY, base_url=url + "/v1", max_retries=0)
    config = kwargs.pop("config", OpenAITuneConfig(epochs=2, backoff=FAST))
    return OpenAITuner(run_dir, client=client, config=config, **kwargs)


SUCCESS = [
    {"status": "validating_files"},
    {"status": "running"},
    {"status": "succeeded", "fine_tuned_model": TUNED},
]


def test_happy_path_returns_a_chat_model_on_the_tuned_model(tmp_path):
    dataset = tmp_path / "agent0-generator.openai.jsonl"
    dataset.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    with serve(FakeOpenAI(list(SUCCESS))) as (url, calls):
        tuned = _tuner(url, tmp_path).tune(0, "generator", dataset, "gpt-4o-mini-2024-07-18")
        chat = tuned.chat_model(api_key=KEY)
        reply = chat.invoke("hi")
    assert isinstance(tuned, TunedModel)
    assert (tuned.model, tuned.job_id, tuned.backend) == (TUNED, "ftjob-1", "openai")
    assert type(chat).__name__ == "ChatOpenAI" and chat.model_name == TUNED
    assert reply.content == f"hello from {TUNED}"  # the chat model calls the tuned model
    upload = next(c for c in calls if c.path == "/v1/files")
    assert dataset.read_bytes() in upload.body  # the exported file, byte for byte
    create = next(c for c in calls if c.path == "/v1/fine_tuning/jobs").json()
    assert create["method"] == {
        "type": "supervised",
        "supervised": {
            "hyperparameters": {
                "n_epochs": 2,
                "learning_rate_multiplier": "auto",
                "batch_size": "auto",
            }
        },
    }
    assert create["training_file"] == "file-1" and create["suffix"] == "agent0-generator"
    assert _count(calls, "GET", "/v1/fine_tuning/jobs/ftjob-1") == 3
    ledger = tmp_path / "tuning" / "iter1" / "agent0-generator.json"
    record = json.loads(ledger.read_text())
    assert record["job_id"] == "ftjob-1" and record["status"] == "succeeded"
    assert KEY not in ledger.read_text()  # the key goes in the Authorization header only
    assert all(c.headers["authorization"] == f"Bearer {KEY}" for c in calls)
    assert not any(KEY.encode() in c.body or KEY in c.path for c in calls)
    assert TunedModel.from_dict(tuned.as_dict()) == tuned


def test_an_interrupted_run_resumes_polling_without_paying_twice(tmp_path):
    running = FakeOpenAI([{"status": "running"}])
    with serve(running) as (url, calls):
        stopping = OpenAITuneConfig(backoff=Backoff(initial=0.01, timeout=0.03))
        with pytest.raises(TimeoutError, match="run the same command again"):
            _tuner(url, tmp_path, config=stopping).tune(1, "critic", RECORDS, "gpt-4o-mini")
        running.states = [{"status": "running"}, {"status": "succeeded", "fine_tuned_model": TUNED}]
        tuned = _tuner(url, tmp_path).tune(1, "critic", RECORDS, "gpt-4o-mini")
        again = _tuner(url, tmp_path).tune(1, "critic", RECORDS, "gpt-4o-mini")
    assert tuned.model == TUNED and again == tuned
    assert _count(calls, "POST", "/v1/files") == 1
    assert _count(calls, "POST", "/v1/fine_tuning/jobs") == 1
    polls = _count(calls, "GET", "/v1/fine_tuning/jobs/ftjob-1")
    assert polls >= 3  # before and after the interruption; none once it succeeded
    tuned.chat_model(api_key=KEY)


def test_a_failed_job_is_reported_and_only_retried_when_asked(tmp_path):
    failed = {
        "status": "failed",
        "error": {
            "code": "invalid_training_file",
            "message": "line 3 is not JSON",
            "param": "training_file",
        },
    }
    fake = FakeOpenAI([{"status": "running"}, failed])
    with serve(fake) as (url, calls):
        with pytest.raises(TuningError) as error:
            _tuner(url, tmp_path).tune(0, "generator", RECORDS, "gpt-4o-mini")
        message = str(error.value)
        assert "ftjob-1" in message and "line 3 is not JSON" in message
        assert "invalid_training_file" in message and "3 invalid lines" in message
        before = len(calls)
        with pytest.raises(TuningError, match="retry=True"):
            _tuner(url, tmp_path).tune(0, "generator", RECORDS, "gpt-4o-mini")
        assert len(calls) == before  # a recorded failure costs no request at all
        fake.states = [{"status": "succeeded", "fine_tuned_model": TUNED}]
        tuned = _tuner(url, tmp_path, retry=True).tune(0, "generator", RECORDS, "gpt-4o-mini")
    assert tuned.job_id == "ftjob-2"
    assert _count(calls, "POST", "/v1/files") == 1  # the uploaded file is reused
    record = json.loads((tmp_path / "tuning/iter1/agent0-generator.json").read_text())
    assert record["failed_jobs"][0]["job_id"] == "ftjob-1"


def test_a_job_created_but_not_recorded_is_found_by_its_tag_not_created_again(tmp_path):
    """The ledger holds the tag a create carried, but not the job id (the process died after
    the provider answered): the job is found among the listed ones by that tag alone."""
    ledger = tmp_path / "tuning" / "iter1" / "agent0-generator.json"
    with serve(FakeOpenAI([{"status": "succeeded", "fine_tuned_model": TUNED}])) as (url, calls):
        _tuner(url, tmp_path).tune(0, "generator", RECORDS, "gpt-4o-mini")
    record = json.loads(ledger.read_text())
    tag = next(c for c in calls if c.path == "/v1/fine_tuning/jobs").json()["metadata"]
    assert tag == {"mafl_job": record["tag"]}  # the tag the ledger holds is the one sent
    # As a process killed right after the create's answer leaves it: the tag, no job.
    for field in ("job_id", "status", "model"):
        del record[field]
    ledger.write_text(json.dumps(record))
    fake = FakeOpenAI([{"status": "succeeded", "fine_tuned_model": TUNED}])
    fake.listed = [
        FakeOpenAI._job(f"ftjob-{i}", {"metadata": metadata})
        for i, metadata in ((7, {"mafl_job": "another"}), (8, tag), (9, None))
    ]
    with serve(fake) as (url, calls):
        tuned = _tuner(url, tmp_path).tune(0, "generator", RECORDS, "gpt-4o-mini")
    assert tuned.job_id == "ftjob-8" and tuned.model == TUNED
    assert _count(calls, "POST", "/v1/fine_tuning/jobs") == 0
    assert _count(calls, "POST", "/v1/files") == 0  # the file id was recorded
    listing = next(c for c in calls if c.path.startswith("/v1/fine_tuning/jobs?"))
    assert f"metadata%5Bmafl_job%5D={record['tag']}" in listing.path


def test_cancelled_jobs_fail_clearly(tmp_path):
    with (
        serve(FakeOpenAI([{"status": "cancelled"}])) as (url, _),
        pytest.raises(TuningError, match="cancelled"),
    ):
        _tuner(url, tmp_path).tune(2, "generator", RECORDS, "gpt-4o-mini")


def test_the_ledger_refuses_a_job_for_different_data(tmp_path):
    with serve(FakeOpenAI([{"status": "succeeded", "fine_tuned_model": TUNED}])) as (url, _):
        _tuner(url, tmp_path).tune(0, "generator", RECORDS, "gpt-4o-mini")
        with pytest.raises(TuningError, match="different dataset_sha256"):
            _tuner(url, tmp_path).tune(0, "generator", RECORDS[:5], "gpt-4o-mini")


def test_iteration_two_tunes_the_tuned_model(tmp_path):
    first = TunedModel(0, "generator", "openai", TUNED, "gpt-4o-mini", job_id="ftjob-0")
    with serve(FakeOpenAI([{"status": "succeeded", "fine_tuned_model": TUNED + "2"}])) as (
        url,
        calls,
    ):
        second = _tuner(url, tmp_path, iteration=2).tune(0, "generator", RECORDS, first)
    create = next(c for c in calls if c.path == "/v1/fine_tuning/jobs").json()
    assert create["model"] == TUNED and second.base == TUNED and second.iteration == 2
    assert (tmp_path / "tuning/iter2/agent0-generator.json").is_file()


def test_poll_backs_off_up_to_the_cap_and_times_out():
    waits: list[float] = []
    states = iter(["a", "b", "c", "d", "e", "done"])
    result = poll(
        lambda: next(states),
        lambda s: s == "done",
        Backoff(initial=1, factor=2, maximum=5),
        sleep=waits.append,
    )
    assert result == "done" and waits == [1, 2, 4, 5, 5]
    with pytest.raises(TimeoutError):
        poll(lambda: "x", lambda s: False, Backoff(initial=1, timeout=2.5), sleep=waits.append)


def _write_datasets(run_dir, names: list[str]) -> None:
    (run_dir / "datasets").mkdir(parents=True)
    for name in names:
        path = run_dir / "datasets" / f"{name}.openai.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))


def test_the_cli_tunes_every_dataset_once_and_writes_tuned_json(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from mafl_graph.cli import app
    from mafl_graph.finetune.tuners import load_tuned

    names = ["agent0-generator", "agent0-critic", "agent1-generator", "agent1-critic"]
    _write_datasets(tmp_path, names)
    args = ["tune", "--run-dir", str(tmp_path), "--backend", "openai", "--poll-interval", "0.01"]
    with serve(FakeOpenAI([{"status": "succeeded", "fine_tuned_model": TUNED}])) as (url, calls):
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        monkeypatch.setenv("OPENAI_BASE_URL", url + "/v1")
        first = CliRunner().invoke(app, args)
        again = CliRunner().invoke(app, args)
        assert _count(calls, "POST", "/v1/files") == 4
        assert _count(calls, "POST", "/v1/fine_tuning/jobs") == 4  # the rerun paid for nothing
        second = CliRunner().invoke(app, [*args, "--iteration", "2"])
    assert first.exit_code == 0, first.output
    assert again.exit_code == 0 and second.exit_code == 0, second.output
    tuned = load_tuned(tmp_path / "tuned.json")
    assert sorted(tuned) == [(0, "critic"), (0, "generator"), (1, "critic"), (1, "generator")]
    assert all(m.iteration == 2 and m.base == TUNED for m in tuned.values())  # continued
    assert len(load_tuned(tmp_path / "tuning/iter1/tuned.json")) == 4
    config = json.loads((tmp_path / "tuning/iter1/openai-config.json").read_text())
    assert config["epochs"] == "auto" and KEY not in json.dumps(config)


def test_the_cli_exits_1_and_names_the_failed_job(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from mafl_graph.cli import app

    _write_datasets(tmp_path, ["agent0-generator"])
    failed = {"status": "failed", "error": {"code": "x", "message": "quota exceeded"}}
    with serve(FakeOpenAI([failed])) as (url, _):
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        monkeypatch.setenv("OPENAI_BASE_URL", url + "/v1")
        result = CliRunner().invoke(
            app,
            ["tune", "--run-dir", str(tmp_path), "--backend", "openai", "--poll-interval", "0"],
        )
    assert result.exit_code == 1
    assert "quota exceeded" in result.output and "--retry" in result.output


def test_tuned_agents_keep_their_seed_rate_limiter_retries_and_timeout():
    from mafl_graph import Society
    from mafl_graph.finetune.tuners import tuned_society

    society = Society.from_model(
        "openai:gpt-4o-mini", 2, api_key=KEY, seed=5, requests_per_second=3, max_retries=1
    )
    tuned = {(1, "critic"): TunedModel(1, "critic", "openai", TUNED, "gpt-4o-mini", 1, "ftjob-1")}
    new = tuned_society(society, tuned, api_key=KEY).agents[1].critic
    old = society.agents[1].critic
    assert new.model_name == TUNED
    # Tuning changes the weights only: the provider's shared limiter (one budget for all
    # agents), retries, timeout and agent 1's own seed carry over.
    assert new.rate_limiter is old.rate_limiter is society.agents[0].generator.rate_limiter
    assert (new.max_retries, new.request_timeout, new.seed) == (1, old.request_timeout, 6)
