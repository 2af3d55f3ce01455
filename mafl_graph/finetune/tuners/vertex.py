"""Vertex AI Gemini tuning through google-genai: ``tunings.tune``, poll, resume by job name.

The dataset is a ``gs://`` URI the user gives, or the exported Vertex JSONL uploaded to a
bucket they name (one plain Cloud Storage media upload, so google-cloud-storage is not
needed). Gemini tuning exists on Vertex AI only (not the Gemini Developer API), so a project
and a location are required. The tuned model is served on an endpoint; the next iteration
tunes the tuned model resource further (google-genai's "pre-tuned model").
"""

from __future__ import annotations

import dataclasses
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from mafl_graph.finetune.datasets import TrainedRole
from mafl_graph.finetune.tuners.base import (
    Backoff,
    Dataset,
    JobLedger,
    TunedModel,
    TuningError,
    base_id,
    jsonl_bytes,
    open_job,
    poll,
)

log = logging.getLogger(__name__)
DEFAULT_BASE = "gemini-2.0-flash-001"
STORAGE_URL = "https://storage.googleapis.com"
_SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
_TERMINAL = {"succeeded", "failed", "cancelled", "expired", "partially_succeeded"}


@dataclass(frozen=True)
class VertexTuneConfig:
    """Supervised tuning settings (None: Vertex's default); written to the ledger."""

    epochs: int | None = None
    learning_rate_multiplier: float | None = None
    adapter_size: str | None = None
    """e.g. "ADAPTER_SIZE_FOUR"."""
    batch_size: int | None = None
    display_name: str | None = None
    """The tuned model's name in the console; default ``mafl-agent<i>-<role>-iter<k>``."""
    backoff: Backoff = field(default_factory=lambda: Backoff(initial=30, maximum=600))


class VertexTuner:
    """Tunes Gemini on Vertex AI. ``client`` defaults to ``genai.Client(vertexai=True, …)``.

    ``bucket``: where a local dataset file is uploaded (``gs://`` URIs are used as given).
    ``credentials``: google-auth credentials (default: application default credentials).
    ``base_url``/``storage_url``: other endpoints (a proxy, or a test server); by default
    google-genai's (``GOOGLE_VERTEX_BASE_URL`` overrides it) and Cloud Storage's
    (``STORAGE_EMULATOR_HOST`` overrides it). ``base``: the model a dataset with no previous
    tuned model starts from.
    """

    backend = "vertex"
    dataset_suffix = ".vertex.jsonl"
    default_base = DEFAULT_BASE

    def __init__(
        self,
        run_dir: str | Path,
        *,
        project: str,
        location: str = "us-central1",
        iteration: int = 1,
        config: VertexTuneConfig | None = None,
        client: Any = None,
        credentials: Any = None,
        bucket: str | None = None,
        base_url: str | None = None,
        storage_url: str | None = None,
        retry: bool = False,
        base: str = DEFAULT_BASE,
    ) -> None:
        if not project:
            raise ValueError("Vertex AI tuning needs a Google Cloud project (--project).")
        if client is None:
            from google import genai
            from google.genai import types

            options = types.HttpOptions(base_url=base_url) if base_url else None
            client = genai.Client(
                vertexai=True,
                project=project,
                location=location,
                credentials=credentials,
                http_options=options,
            )
        self.client = client
        self.run_dir = Path(run_dir)
        self.project, self.location = project, location
        self.iteration = iteration
        self.config = config or VertexTuneConfig()
        self.credentials = credentials
        self.bucket = bucket.removeprefix("gs://").strip("/") if bucket else None
        self.base_url = base_url
        # STORAGE_EMULATOR_HOST is where google-cloud-storage looks for an emulator, too.
        storage = storage_url or os.environ.get("STORAGE_EMULATOR_HOST") or STORAGE_URL
        self.storage_url = storage.rstrip("/")
        self.retry = retry
        self.default_base = base  # what the first iteration tunes (later ones: their model)

    def tune(
        self,
        agent: int,
        role: TrainedRole,
        dataset: Dataset,
        base: str | TunedModel,
        config: VertexTuneConfig | None = None,
    ) -> TunedModel:
        """Tune ``base`` on ``dataset`` (Vertex Gemini JSONL, a ``gs://`` URI, or records)."""
        cfg = config or self.config
        base_model = base_id(base)
        ledger, facts = open_job(self, agent, role, dataset, base_model)
        if ledger.get("status") != "succeeded":
            self._run(ledger, facts, dataset, cfg)
        options: dict[str, Any] = {"project": self.project, "location": self.location}
        if self.base_url:
            options["base_url"] = self.base_url
        return TunedModel(
            agent=agent,
            role=role,
            backend=self.backend,
            model=ledger.get("model"),
            base=base_model,
            iteration=self.iteration,
            job_id=ledger.get("job_id"),
            source=ledger.get("source"),
            options=options,
        )

    def _run(
        self, ledger: JobLedger, facts: dict[str, Any], dataset: Dataset, cfg: VertexTuneConfig
    ) -> None:
        agent, role, base_model = facts["agent"], facts["role"], facts["base"]
        if not ledger.get("dataset_uri"):
            uri = self._dataset_uri(dataset, f"agent{agent}-{role}", facts["dataset_sha256"])
            ledger.update(
                **facts,
                project=self.project,
                location=self.location,
                dataset_uri=uri,
                config=dataclasses.asdict(cfg),
            )
        if not ledger.get("job_id"):
            with warnings.catch_warnings():  # "tuning is experimental" on every call
                warnings.filterwarnings("ignore", message=".*tuning implementation is experimental")
                job = self._create(base_model, ledger.get("dataset_uri"), cfg, agent, role)
            if not job.name:
                raise TuningError(f"Vertex AI created a tuning job without a name: {job!r}")
            ledger.update(job_id=job.name, status=_status(job))
        else:
            log.info("resuming %s: polling job %s", ledger.path.name, ledger.get("job_id"))
        name = ledger.get("job_id")
        job = poll(
            lambda: self.client.tunings.get(name=name),
            lambda j: _status(j) in _TERMINAL,
            cfg.backoff,
            on_update=lambda j: ledger.update(status=_status(j)),
        )
        status = _status(job)
        tuned = job.tuned_model
        if status != "succeeded" or tuned is None or not tuned.endpoint:
            error = getattr(job, "error", None)
            reason = (getattr(error, "message", None) if error else None) or "no reason given"
            ledger.update(status="failed" if status == "succeeded" else status, error=reason)
            raise TuningError(
                f"Vertex AI tuning job {name} (agent {agent}, {role}) {status}: {reason}. The "
                f"ledger {ledger.path} keeps it; pass retry=True (CLI: --retry) to start anew."
            )
        ledger.update(status="succeeded", model=tuned.endpoint, source=tuned.model)

    def _create(
        self, base_model: str, uri: str, cfg: VertexTuneConfig, agent: int, role: str
    ) -> Any:
        from google.genai import types

        return self.client.tunings.tune(
            base_model=base_model,  # "projects/…/models/…" continues a tuned model
            training_dataset=types.TuningDataset(gcs_uri=uri),
            config=types.CreateTuningJobConfig(
                epoch_count=cfg.epochs,
                learning_rate_multiplier=cfg.learning_rate_multiplier,
                adapter_size=types.AdapterSize(cfg.adapter_size) if cfg.adapter_size else None,
                batch_size=cfg.batch_size,
                tuned_model_display_name=cfg.display_name
                or f"mafl-agent{agent}-{role}-iter{self.iteration}",
            ),
        )

    def _dataset_uri(self, dataset: Dataset, stem: str, digest: str) -> str:
        if isinstance(dataset, str) and dataset.startswith("gs://"):
            return dataset
        if isinstance(dataset, str | Path):
            path = Path(dataset)
            if not path.is_file():
                raise FileNotFoundError(
                    f"No dataset at {path}; write it with `mafl datasets --format vertex`."
                )
            content = path.read_bytes()
        else:
            content = jsonl_bytes(dataset)
        if not self.bucket:
            raise ValueError(
                f"Vertex AI reads tuning data from Cloud Storage: pass a gs:// URI as the "
                f"dataset, or bucket=… (CLI: --bucket) to upload {stem} there."
            )
        name = f"mafl/{self.run_dir.name}/iter{self.iteration}/{stem}-{digest[:12]}.jsonl"
        self._upload(name, content)
        return f"gs://{self.bucket}/{name}"

    def _upload(self, name: str, content: bytes) -> None:
        """One Cloud Storage media upload (JSON API), authorised by the same credentials."""
        import httpx

        url = (
            f"{self.storage_url}/upload/storage/v1/b/{quote(self.bucket or '', safe='')}/o"
            f"?uploadType=media&name={quote(name, safe='')}"
        )
        headers = {"Authorization": f"Bearer {self._token()}", "Content-Type": "application/jsonl"}
        response = httpx.post(url, content=content, headers=headers, timeout=300)
        if response.status_code >= 400:
            raise TuningError(
                f"Uploading the dataset to gs://{self.bucket}/{name} failed "
                f"({response.status_code}): {response.text[:500]}"
            )

    def _token(self) -> str:
        credentials = self.credentials
        if credentials is None:
            import google.auth

            credentials, _ = google.auth.default(scopes=_SCOPES)
            self.credentials = credentials
        if not credentials.valid:
            from google.auth.transport.requests import Request

            credentials.refresh(Request())
        return str(credentials.token)


def _status(job: Any) -> str:
    """``JOB_STATE_SUCCEEDED`` -> ``succeeded`` (ledger statuses match OpenAI's words)."""
    state = getattr(job.state, "value", job.state) or "JOB_STATE_UNSPECIFIED"
    status = str(state).removeprefix("JOB_STATE_").lower()
    return "cancelled" if status == "cancelling" else status
