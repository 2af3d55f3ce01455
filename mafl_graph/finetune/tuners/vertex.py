"""Vertex AI Gemini tuning through google-genai: ``tunings.tune``, poll, resume by job name.

The dataset is a ``gs://`` URI the user gives, or the exported Vertex JSONL uploaded to a
bucket they name (one plain Cloud Storage media upload, so google-cloud-storage is not
needed). Gemini tuning exists on Vertex AI only (not the Gemini Developer API), so a project
and a location are required. The tuned model is served on an endpoint; the next iteration
tunes the tuned model resource further (google-genai's "pre-tuned model").
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from mafl_graph.finetune.tuners.base import Backoff, Dataset, JobLedger, TunedModel, TuningError
from mafl_graph.finetune.tuners.hosted import TAG, HostedTuner, once, polling
from mafl_graph.finetune.tuners.options import TuneOptions

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel

log = logging.getLogger(__name__)
DEFAULT_BASE = "gemini-2.0-flash-001"
STORAGE_URL = "https://storage.googleapis.com"
_SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
_TERMINAL = {"succeeded", "failed", "cancelled", "expired", "partially_succeeded"}
NO_PROJECT = (
    "Vertex AI tuning needs a Google Cloud project (--project, and --bucket to upload datasets)."
)


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


class VertexTuner(HostedTuner):
    """Tunes Gemini on Vertex AI. ``client`` defaults to ``genai.Client(vertexai=True, …)``.

    ``bucket``: where a local dataset file is uploaded (``gs://`` URIs are used as given).
    ``credentials``: google-auth credentials (default: application default credentials).
    ``base_url``/``storage_url``: other endpoints (a proxy, or a test server); by default
    google-genai's (``GOOGLE_VERTEX_BASE_URL`` overrides it) and Cloud Storage's
    (``STORAGE_EMULATOR_HOST`` overrides it). ``base``: the model a dataset with no previous
    tuned model starts from.
    """

    backend = "vertex"
    provider = "google_genai"
    dataset_format = "vertex"
    config_type = VertexTuneConfig
    default_base = DEFAULT_BASE
    label = "Vertex AI tuning"
    terminal = frozenset(_TERMINAL)

    def __init__(
        self,
        run_dir: str | Path,
        *,
        project: str | None,
        location: str = "us-central1",
        iteration: int = 1,
        config: VertexTuneConfig | None = None,
        client: Any = None,
        credentials: Any = None,
        bucket: str | None = None,
        base_url: str | None = None,
        storage_url: str | None = None,
        retry: bool = False,
        base: str | None = None,
    ) -> None:
        if not project:
            raise ValueError(NO_PROJECT)
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
        self.project, self.location = project, location
        self.credentials = credentials
        self.bucket = bucket.removeprefix("gs://").strip("/") if bucket else None
        self.base_url = base_url
        # STORAGE_EMULATOR_HOST is where google-cloud-storage looks for an emulator, too.
        emulator = os.environ.get("STORAGE_EMULATOR_HOST")
        storage = storage_url or (storage_endpoint(emulator) if emulator else STORAGE_URL)
        self.storage_url = storage.rstrip("/")
        super().__init__(run_dir, iteration=iteration, config=config, retry=retry, base=base)

    @classmethod
    def _config_from_options(cls, options: TuneOptions, seed: int) -> VertexTuneConfig:
        # Unset (or zero) settings are Vertex AI's to choose; it takes whole epochs and no seed.
        return VertexTuneConfig(
            epochs=int(options.epochs) if options.epochs else None,
            learning_rate_multiplier=options.learning_rate,
            batch_size=options.batch_size,
            backoff=polling(options),
        )

    @classmethod
    def check_options(cls, options: TuneOptions) -> None:
        if not options.project:
            raise ValueError(NO_PROJECT)

    @classmethod
    def _settings_from(cls, options: TuneOptions, *, model: str) -> dict[str, Any]:
        return {
            **super()._settings_from(options, model=model),
            "project": options.project,
            "location": options.location,
            "bucket": options.bucket,
        }

    @classmethod
    def serving(cls, options: TuneOptions) -> dict[str, Any]:
        """Vertex AI serves tuned Gemini, so the base model is served by it too, from the same
        project and location."""
        if not options.project:
            return {}
        return {"vertexai": True, "project": options.project, "location": options.location}

    @classmethod
    def serve(cls, tuned: TunedModel, **kwargs: Any) -> BaseChatModel:
        from langchain_google_genai import ChatGoogleGenerativeAI

        keys = ("project", "location", "base_url")
        settings = {"vertexai": True, **{k: tuned.options[k] for k in keys if tuned.options.get(k)}}
        return ChatGoogleGenerativeAI(**{"model": tuned.model, **settings, **kwargs})

    def _options(self, start: str, cfg: Any) -> dict[str, Any]:
        options: dict[str, Any] = {"project": self.project, "location": self.location}
        if self.base_url:
            options["base_url"] = self.base_url
        return options

    def _training_data(self, ledger: JobLedger, dataset: Dataset, stem: str, digest: str) -> str:
        if isinstance(dataset, str) and dataset.startswith("gs://"):
            if not ledger.get("dataset_uri"):
                ledger.update(dataset_uri=dataset)
            return dataset
        content = self.dataset_bytes(dataset)
        if not self.bucket:
            raise ValueError(
                f"Vertex AI reads tuning data from Cloud Storage: pass a gs:// URI as the "
                f"dataset, or bucket=… (CLI: --bucket) to upload {stem} there."
            )
        # The object's name carries the run, the iteration and the content's hash (so runs and
        # iterations never share an object); its MD5 confirms the bytes.
        folder = self.layout.tuning_dir(self.iteration).name
        name = f"mafl/{self.run_dir.name}/{folder}/{stem}-{digest[:12]}.jsonl"
        uri = f"gs://{self.bucket}/{name}"

        def upload() -> str:
            self._upload(name, content)
            return uri

        return once(
            ledger,
            "dataset_uri",
            {"upload": uri},
            lambda: uri if self._stored_md5(name) == _md5(content) else None,
            upload,
        )

    def _create(self, facts: Mapping[str, Any], data: str, cfg: VertexTuneConfig, tag: str) -> str:
        from google.genai import types

        agent, role = facts["agent"], facts["role"]
        with warnings.catch_warnings():  # "tuning is experimental" on every call
            warnings.filterwarnings("ignore", message=".*tuning implementation is experimental")
            job = self.client.tunings.tune(
                base_model=facts["base"],  # "projects/…/models/…" continues a tuned model
                training_dataset=types.TuningDataset(gcs_uri=data),
                config=types.CreateTuningJobConfig(
                    epoch_count=cfg.epochs,
                    learning_rate_multiplier=cfg.learning_rate_multiplier,
                    adapter_size=types.AdapterSize(cfg.adapter_size) if cfg.adapter_size else None,
                    batch_size=cfg.batch_size,
                    tuned_model_display_name=cfg.display_name
                    or f"mafl-agent{agent}-{role}-iter{self.iteration}",
                    labels={TAG: tag},
                ),
            )
        if not job.name:
            raise TuningError(f"Vertex AI created a tuning job without a name: {job!r}")
        return str(job.name)

    def _find_job(self, tag: str) -> str | None:
        # The filter is the API's; the check below keeps a server that ignores it harmless.
        jobs = self.client.tunings.list(config={"filter": f'labels.{TAG}="{tag}"'})
        for job in jobs:
            if (job.labels or {}).get(TAG) == tag and job.name:
                return str(job.name)
        return None

    def _get(self, job_id: str) -> Any:
        return self.client.tunings.get(name=job_id)

    def _status(self, job: Any) -> str:
        return _status(job)

    def _tuned(self, job: Any) -> tuple[str, str | None] | None:
        tuned = job.tuned_model
        return (str(tuned.endpoint), tuned.model) if tuned is not None and tuned.endpoint else None

    def _reason(self, job: Any) -> str:
        error = getattr(job, "error", None)
        return (getattr(error, "message", None) if error else None) or "no reason given"

    def _object_url(self, name: str) -> str:
        bucket = quote(self.bucket or "", safe="")
        return f"{self.storage_url}/storage/v1/b/{bucket}/o/{quote(name, safe='')}"

    def _stored_md5(self, name: str) -> str | None:
        """The base64 MD5 Cloud Storage reports for object ``name``; None if there is none."""
        import httpx

        headers = {"Authorization": f"Bearer {self._token()}"}
        response = httpx.get(self._object_url(name), headers=headers, timeout=60)
        if response.status_code == 404:
            return None
        if response.status_code >= 400:
            raise TuningError(
                f"Looking up gs://{self.bucket}/{name} failed ({response.status_code}): "
                f"{response.text[:500]}"
            )
        md5 = response.json().get("md5Hash")
        return str(md5) if md5 else None

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


def _md5(content: bytes) -> str:
    """MD5 in base64, as Cloud Storage reports an object's ``md5Hash``."""
    return base64.b64encode(hashlib.md5(content, usedforsecurity=False).digest()).decode()


def storage_endpoint(value: str) -> str:
    """``STORAGE_EMULATOR_HOST`` as a URL: ``host:port`` means ``http://host:port``, as the
    Cloud Storage client libraries read it."""
    value = value.strip().rstrip("/")
    return value if "://" in value else f"http://{value}"


def _status(job: Any) -> str:
    """``JOB_STATE_SUCCEEDED`` -> ``succeeded`` (ledger statuses match OpenAI's words)."""
    state = getattr(job.state, "value", job.state) or "JOB_STATE_UNSPECIFIED"
    status = str(state).removeprefix("JOB_STATE_").lower()
    return "cancelled" if status == "cancelling" else status
