"""OpenAI fine-tuning: upload, create a supervised job, poll with backoff, resume by job id.

The per-message ``weight`` of the exported JSONL is honoured by OpenAI, so critics learn only
their final reply. The API key stays inside the ``openai`` client (its Authorization header);
the ledger records only ids, statuses and settings.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

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
Auto = Literal["auto"]
DEFAULT_BASE = "gpt-4o-mini-2024-07-18"
DEFAULT_URL = "https://api.openai.com/v1"
_TERMINAL = ("succeeded", "failed", "cancelled")


@dataclass(frozen=True)
class OpenAITuneConfig:
    """Hyperparameters of one supervised job ("auto" lets OpenAI choose); written to the ledger."""

    epochs: int | Auto = "auto"
    learning_rate_multiplier: float | Auto = "auto"
    batch_size: int | Auto = "auto"
    seed: int | None = 0
    suffix: str | None = None
    """Part of the tuned model's name; default ``agent<i>-<role>``."""
    backoff: Backoff = field(default_factory=Backoff)


class OpenAITuner:
    """Tunes with ``fine_tuning.jobs``; ``client`` defaults to ``openai.OpenAI(**client_kwargs)``.

    ``retry=True`` replaces a job the ledger records as failed with a new one; without it a
    failed job raises :class:`TuningError` again, so nothing is paid for twice by accident.
    ``base``: the model a dataset with no previous tuned model starts from.
    """

    backend = "openai"
    dataset_suffix = ".openai.jsonl"
    default_base = DEFAULT_BASE

    def __init__(
        self,
        run_dir: str | Path,
        *,
        iteration: int = 1,
        config: OpenAITuneConfig | None = None,
        client: Any = None,
        retry: bool = False,
        base: str = DEFAULT_BASE,
        **client_kwargs: Any,
    ) -> None:
        if client is None:
            import openai

            client = openai.OpenAI(**client_kwargs)
        self.client = client
        self.run_dir = Path(run_dir)
        self.iteration = iteration
        self.config = config or OpenAITuneConfig()
        self.retry = retry
        self.default_base = base  # what the first iteration tunes (later ones: their model)

    def tune(
        self,
        agent: int,
        role: TrainedRole,
        dataset: Dataset,
        base: str | TunedModel,
        config: OpenAITuneConfig | None = None,
    ) -> TunedModel:
        """Upload ``dataset`` (OpenAI chat JSONL or records), tune ``base`` on it, wait."""
        cfg = config or self.config
        base_model = base_id(base)
        ledger, facts = open_job(self, agent, role, dataset, base_model)
        if ledger.get("status") != "succeeded":
            self._run(ledger, facts, dataset, cfg)
        return TunedModel(
            agent=agent,
            role=role,
            backend=self.backend,
            model=ledger.get("model"),
            base=base_model,
            iteration=self.iteration,
            job_id=ledger.get("job_id"),
            options=self._options(),
        )

    def _run(
        self, ledger: JobLedger, facts: dict[str, Any], dataset: Dataset, cfg: OpenAITuneConfig
    ) -> None:
        agent, role, base_model = facts["agent"], facts["role"], facts["base"]
        if not ledger.get("file_id"):
            name, content = _file(dataset, f"agent{agent}-{role}")
            uploaded = self.client.files.create(file=(name, content), purpose="fine-tune")
            ledger.update(
                **facts,
                file_id=uploaded.id,
                config=dataclasses.asdict(cfg),
            )
        if not ledger.get("job_id"):
            job = self.client.fine_tuning.jobs.create(
                model=base_model,
                training_file=ledger.get("file_id"),
                method={"type": "supervised", "supervised": {"hyperparameters": _hyper(cfg)}},
                suffix=cfg.suffix or f"agent{agent}-{role}",
                **({"seed": cfg.seed} if cfg.seed is not None else {}),
            )
            ledger.update(job_id=job.id, status=job.status)
        else:
            log.info("resuming %s: polling job %s", ledger.path.name, ledger.get("job_id"))
        job_id = ledger.get("job_id")
        job = poll(
            lambda: self.client.fine_tuning.jobs.retrieve(job_id),
            lambda j: j.status in _TERMINAL,
            cfg.backoff,
            on_update=lambda j: ledger.update(status=j.status),
        )
        if job.status != "succeeded":
            reason = _reason(job, self._last_events(job_id))
            ledger.update(status=job.status, error=reason)
            raise TuningError(
                f"OpenAI fine-tuning job {job_id} (agent {agent}, {role}) {job.status}: {reason}. "
                f"The ledger {ledger.path} keeps it; pass retry=True (CLI: --retry) to start anew."
            )
        if not job.fine_tuned_model:
            raise TuningError(f"OpenAI job {job_id} succeeded but names no fine_tuned_model.")
        ledger.update(status="succeeded", model=job.fine_tuned_model)

    def _last_events(self, job_id: str) -> list[str]:
        try:
            page = self.client.fine_tuning.jobs.list_events(job_id, limit=5)
            return [e.message for e in page.data]
        except Exception as exc:  # the reason we have matters more than the events we lack
            log.warning("could not read the events of job %s: %s", job_id, exc)
            return []

    def _options(self) -> dict[str, Any]:
        url = str(getattr(self.client, "base_url", DEFAULT_URL)).rstrip("/")
        return {} if url == DEFAULT_URL else {"base_url": url}


def _hyper(cfg: OpenAITuneConfig) -> dict[str, Any]:
    return {
        "n_epochs": cfg.epochs,
        "learning_rate_multiplier": cfg.learning_rate_multiplier,
        "batch_size": cfg.batch_size,
    }


def _file(dataset: Dataset, stem: str) -> tuple[str, bytes]:
    if isinstance(dataset, str | Path):
        path = Path(dataset)
        if not path.is_file():
            raise FileNotFoundError(
                f"No dataset at {path}; write it with `mafl datasets --format openai`."
            )
        return path.name, path.read_bytes()
    return f"{stem}.openai.jsonl", jsonl_bytes(dataset)


def _reason(job: Any, events: list[str]) -> str:
    error = getattr(job, "error", None)
    parts = []
    if error is not None and getattr(error, "message", None):
        code = getattr(error, "code", None)
        parts.append(f"{error.message}" + (f" (code {code})" if code else ""))
    if events:
        parts.append("last events: " + " | ".join(events))
    return "; ".join(parts) or "no reason given"
