"""The Vertex AI tuner against the real google-genai SDK (and langchain-google-genai) pointed at
a loopback server that speaks the tuningJobs, Cloud Storage upload and generateContent APIs.
Credentials are a static OAuth token, so nothing reaches Google.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

pytest.importorskip("google.genai")

from fake_http import Call, serve  # noqa: E402
from google.oauth2.credentials import Credentials  # noqa: E402

from mafl_graph.finetune.tuners import (  # noqa: E402
    Backoff,
    TunedModel,
    TuningError,
    VertexTuneConfig,
    VertexTuner,
)

# Loopback only: `allow_hosts` alone lets 127.0.0.1 through and blocks every other host
# (adding `enable_socket` would lift the block for all hosts).
pytestmark = pytest.mark.allow_hosts(["127.0.0.1"])

TOKEN = "ya29.test-token"
PARENT = "projects/proj/locations/us-central1"
JOB = f"{PARENT}/tuningJobs/42"
ENDPOINT = f"{PARENT}/endpoints/777"
MODEL = f"{PARENT}/models/555@1"
FAST = VertexTuneConfig(epochs=3, backoff=Backoff(initial=0.01, maximum=0.02))
RECORDS = [
    {
        "contents": [
            {"role": "user", "parts": [{"text": f"{i}+1?"}]},
            {"role": "model", "parts": [{"text": str(i + 1)}]},
        ]
    }
    for i in range(16)
]
SUCCEEDED = {"state": "JOB_STATE_SUCCEEDED", "tunedModel": {"model": MODEL, "endpoint": ENDPOINT}}


class FakeVertex:
    """tuningJobs create/get with scripted states, a GCS media upload, and generateContent."""

    def __init__(self, states: list[dict[str, Any]]) -> None:
        self.states = states
        self.uploads: dict[str, bytes] = {}
        self.listed: list[dict[str, Any]] = []

    def __call__(self, call: Call) -> tuple[int, Any]:
        if call.method == "POST" and call.path == "/token":  # OAuth refresh (ADC in the CLI)
            return 200, {"access_token": TOKEN, "expires_in": 3600, "token_type": "Bearer"}
        if call.headers.get("authorization") != f"Bearer {TOKEN}":
            return 401, {"error": {"code": 401, "message": "no token", "status": "UNAUTHENTICATED"}}
        path = call.path.split("?")[0]
        if call.method == "POST" and path.startswith("/upload/storage/v1/b/bucket/o"):
            name = call.path.split("name=")[1].replace("%2F", "/")
            self.uploads[name] = call.body
            return 200, {"name": name, "bucket": "bucket"}
        if call.method == "POST" and path == f"/v1beta1/{PARENT}/tuningJobs":
            return 200, {"name": JOB, "state": "JOB_STATE_PENDING", **call.json()}
        if call.method == "GET" and path == f"/v1beta1/{PARENT}/tuningJobs":
            # Every job, whatever the filter asks: a client must check the label itself.
            return 200, {"tuningJobs": self.listed}
        if call.method == "GET" and path == f"/v1beta1/{JOB}":
            state = self.states.pop(0) if len(self.states) > 1 else self.states[0]
            return 200, {"name": JOB, **state}
        if call.method == "POST" and path == f"/v1beta1/{ENDPOINT}:generateContent":
            return 200, {
                "candidates": [
                    {
                        "content": {"role": "model", "parts": [{"text": "tuned hello"}]},
                        "finishReason": "STOP",
                    }
                ]
            }
        return 404, {
            "error": {
                "code": 404,
                "message": f"no route {call.method} {path}",
                "status": "NOT_FOUND",
            }
        }


def _tuner(url: str, run_dir, **kwargs: Any) -> VertexTuner:
    return VertexTuner(
        run_dir,
        project="proj",
        location="us-central1",
        credentials=Credentials(token=TOKEN),
        base_url=url,
        storage_url=url,
        config=kwargs.pop("config", FAST),
        **kwargs,
    )


def _count(calls: list[Call], method: str, suffix: str) -> int:
    return sum(c.method == method and c.path.split("?")[0].endswith(suffix) for c in calls)


def test_uploads_to_the_bucket_tunes_and_serves_the_endpoint(tmp_path):
    dataset = tmp_path / "agent0-generator.vertex.jsonl"
    dataset.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    fake = FakeVertex([{"state": "JOB_STATE_RUNNING"}, SUCCEEDED])
    with serve(fake) as (url, calls):
        tuned = _tuner(url, tmp_path, bucket="gs://bucket").tune(
            0, "generator", dataset, "gemini-2.0-flash-001"
        )
        chat = tuned.chat_model(credentials=Credentials(token=TOKEN))
        reply = chat.invoke("hi")
    assert (tuned.model, tuned.source, tuned.job_id) == (ENDPOINT, MODEL, JOB)
    assert type(chat).__name__ == "ChatGoogleGenerativeAI" and reply.text == "tuned hello"
    [(name, body)] = fake.uploads.items()
    assert body == dataset.read_bytes()
    create = next(c for c in calls if c.path.endswith("/tuningJobs")).json()
    assert create["baseModel"] == "gemini-2.0-flash-001"
    assert create["supervisedTuningSpec"]["trainingDatasetUri"] == f"gs://bucket/{name}"
    assert create["supervisedTuningSpec"]["hyperParameters"]["epochCount"] == 3
    ledger = (tmp_path / "tuning/iter1/agent0-generator.json").read_text()
    assert json.loads(ledger)["status"] == "succeeded" and TOKEN not in ledger


def test_a_gs_uri_is_used_as_given_and_an_interrupted_run_resumes(tmp_path):
    fake = FakeVertex([{"state": "JOB_STATE_RUNNING"}])
    uri = "gs://theirs/data.jsonl"
    with serve(fake) as (url, calls):
        stop = VertexTuneConfig(backoff=Backoff(initial=0.01, timeout=0.03))
        with pytest.raises(TimeoutError):
            _tuner(url, tmp_path, config=stop).tune(1, "critic", uri, "gemini-2.0-flash-001")
        fake.states = [SUCCEEDED]
        tuned = _tuner(url, tmp_path).tune(1, "critic", uri, "gemini-2.0-flash-001")
    assert tuned.model == ENDPOINT and not fake.uploads
    assert _count(calls, "POST", "/tuningJobs") == 1 and _count(calls, "GET", JOB) >= 2


def test_a_job_created_but_not_recorded_is_found_by_its_label_not_created_again(tmp_path):
    """The ledger holds the tag a create carried as a label, but not the job's name (the
    process died after Vertex AI answered): the job is found among the listed ones by it."""
    uri = "gs://theirs/data.jsonl"
    with serve(FakeVertex([SUCCEEDED])) as (url, calls):
        _tuner(url, tmp_path).tune(1, "critic", uri, "gemini-2.0-flash-001")
    create = next(c for c in calls if c.path.endswith("/tuningJobs")).json()
    ledger = tmp_path / "tuning" / "iter1" / "agent1-critic.json"
    record = json.loads(ledger.read_text())
    assert create["labels"] == {"mafl_job": record["tag"]}
    for field in ("job_id", "status", "model", "source"):
        del record[field]
    ledger.write_text(json.dumps(record))
    fake = FakeVertex([SUCCEEDED])
    fake.listed = [
        {"name": f"{PARENT}/tuningJobs/7", "labels": {"mafl_job": "another"}},
        {"name": JOB, "labels": create["labels"]},
        {"name": f"{PARENT}/tuningJobs/9"},
    ]
    with serve(fake) as (url, calls):
        tuned = _tuner(url, tmp_path).tune(1, "critic", uri, "gemini-2.0-flash-001")
    assert (tuned.job_id, tuned.model) == (JOB, ENDPOINT)
    assert _count(calls, "POST", "/tuningJobs") == 0
    listing = next(c for c in calls if c.path.split("?")[0].endswith("/tuningJobs"))
    assert "filter=labels.mafl_job" in listing.path.replace("%3D", "=").replace("%2E", ".")


def test_storage_emulator_host_may_omit_the_scheme(tmp_path, monkeypatch):
    for given, used in (
        ("127.0.0.1:9023", "http://127.0.0.1:9023"),
        ("https://gcs.x/", "https://gcs.x"),
    ):
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", given)
        tuner = VertexTuner(
            tmp_path, project="p", credentials=Credentials(token=TOKEN), client=object()
        )
        assert tuner.storage_url == used


def test_iteration_two_continues_from_the_tuned_model(tmp_path):
    first = TunedModel(0, "generator", "vertex", ENDPOINT, "gemini-2.0-flash-001", source=MODEL)
    with serve(FakeVertex([SUCCEEDED])) as (url, calls):
        _tuner(url, tmp_path, iteration=2).tune(0, "generator", "gs://b/d.jsonl", first)
    create = next(c for c in calls if c.path.endswith("/tuningJobs")).json()
    # google-genai sends the proto field name (tuned_model_name); proto JSON accepts both spellings
    assert list(create["preTunedModel"].values()) == [MODEL] and "baseModel" not in create


def test_a_failed_job_is_reported_with_its_reason(tmp_path):
    failed = {
        "state": "JOB_STATE_FAILED",
        "error": {"code": 3, "message": "Dataset row 7 has no model turn"},
    }
    with serve(FakeVertex([{"state": "JOB_STATE_RUNNING"}, failed])) as (url, calls):
        with pytest.raises(TuningError, match="row 7 has no model turn"):
            _tuner(url, tmp_path).tune(0, "generator", "gs://b/d.jsonl", "gemini-2.0-flash-001")
        with pytest.raises(TuningError, match="retry=True"):
            _tuner(url, tmp_path).tune(0, "generator", "gs://b/d.jsonl", "gemini-2.0-flash-001")
    assert _count(calls, "POST", "/tuningJobs") == 1


def test_a_local_file_without_a_bucket_is_refused_before_any_request(tmp_path):
    with pytest.raises(ValueError, match="bucket"):
        VertexTuner(
            tmp_path,
            project="p",
            credentials=Credentials(token=TOKEN),
            base_url="http://127.0.0.1:9",
        ).tune(0, "generator", RECORDS, "gemini")


def test_the_cli_uses_application_default_credentials_and_resumes(tmp_path, monkeypatch):
    """`mafl tune --backend vertex` as a user runs it: ADC from a credentials file (its token
    endpoint is the loopback server), the endpoints from the SDKs' own environment variables."""
    from typer.testing import CliRunner

    from mafl_graph.cli import app
    from mafl_graph.finetune.tuners import load_tuned

    (tmp_path / "run" / "datasets").mkdir(parents=True)
    for name in ("agent0-generator", "agent0-critic"):
        path = tmp_path / "run" / "datasets" / f"{name}.vertex.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    args = [
        "tune",
        "--run-dir",
        str(tmp_path / "run"),
        "--backend",
        "vertex",
        "--project",
        "proj",
        "--bucket",
        "gs://bucket",
        "--poll-interval",
        "0.01",
        "--epochs",
        "2",
    ]
    fake = FakeVertex([{"state": "JOB_STATE_RUNNING"}, SUCCEEDED])
    with serve(fake) as (url, calls):
        adc = tmp_path / "adc.json"
        # (an "authorized_user" file always refreshes at Google; this type honours token_url)
        adc.write_text(
            json.dumps(
                {
                    "type": "external_account_authorized_user",
                    "audience": "//iam.googleapis.com/x",
                    "client_id": "c",
                    "client_secret": "s",
                    "refresh_token": "r",
                    "token_url": f"{url}/token",
                }
            )
        )
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(adc))
        monkeypatch.setenv("GOOGLE_VERTEX_BASE_URL", url)
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", url)
        first = CliRunner().invoke(app, args)
        again = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    assert again.exit_code == 0, again.output
    assert len(fake.uploads) == 2 and _count(calls, "POST", "/tuningJobs") == 2  # not 4
    tuned = load_tuned(tmp_path / "run" / "tuned.json")
    assert {m.model for m in tuned.values()} == {ENDPOINT}
    assert all(m.options["project"] == "proj" for m in tuned.values())
    ledgers = (tmp_path / "run" / "tuning" / "iter1").glob("agent*.json")
    assert not any(TOKEN in p.read_text() or '"r"' in p.read_text() for p in ledgers)
