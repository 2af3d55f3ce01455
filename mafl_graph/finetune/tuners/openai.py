"""OpenAI fine-tuning: upload, create a supervised job, poll with backoff, resume by job id.

The per-message ``weight`` of the exported JSONL is honoured by OpenAI, so critics learn only
their final reply. The API key stays inside the ``openai`` client (its Authorization header);
the ledger records only ids, statuses and settings.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from mafl_graph.finetune.tuners.base import Backoff, Dataset, JobLedger, TunedModel
from mafl_graph.finetune.tuners.hosted import TAG, HostedTuner, once, polling
from mafl_graph.finetune.tuners.options import TuneOptions

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel

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


class OpenAITuner(HostedTuner):
    """Tunes with ``fine_tuning.jobs``; ``client`` defaults to ``openai.OpenAI(**client_kwargs)``.

    ``retry=True`` replaces a job the ledger records as failed with a new one; without it a
    failed job raises :class:`TuningError` again, so nothing is paid for twice by accident.
    ``base``: the model a dataset with no previous tuned model starts from.
    """

    backend = "openai"
    provider = "openai"
    dataset_format = "openai"
    config_type = OpenAITuneConfig
    default_base = DEFAULT_BASE
    label = "OpenAI fine-tuning"
    terminal = frozenset(_TERMINAL)

    def __init__(
        self,
        run_dir: str | Path,
        *,
        iteration: int = 1,
        config: OpenAITuneConfig | None = None,
        client: Any = None,
        retry: bool = False,
        base: str | None = None,
        **client_kwargs: Any,
    ) -> None:
        if client is None:
            import openai

            client = openai.OpenAI(**client_kwargs)
        self.client = client
        super().__init__(run_dir, iteration=iteration, config=config, retry=retry, base=base)

    @classmethod
    def _config_from_options(cls, options: TuneOptions, seed: int) -> OpenAITuneConfig:
        # Unset (or zero) settings are OpenAI's to choose; it takes whole epochs.
        return OpenAITuneConfig(
            epochs=int(options.epochs) if options.epochs else "auto",
            learning_rate_multiplier=options.learning_rate or "auto",
            batch_size=options.batch_size or "auto",
            seed=seed,
            suffix=options.suffix,
            backoff=polling(options),
        )

    @classmethod
    def serve(cls, tuned: TunedModel, **kwargs: Any) -> BaseChatModel:
        from langchain_openai import ChatOpenAI

        settings = {k: tuned.options[k] for k in ("base_url",) if tuned.options.get(k)}
        return ChatOpenAI(**{"model": tuned.model, **settings, **kwargs})

    def _training_data(self, ledger: JobLedger, dataset: Dataset, stem: str, digest: str) -> str:
        content = self.dataset_bytes(dataset)
        # The name carries the content's hash: a file listed under it holds these very bytes.
        name = f"{stem}-{digest[:24]}{self.dataset_suffix}"
        return once(
            ledger,
            "file_id",
            {"upload": name},
            lambda: self._find_upload(name, len(content)),
            lambda: str(self.client.files.create(file=(name, content), purpose="fine-tune").id),
        )

    def _find_upload(self, name: str, size: int) -> str | None:
        for file in self.client.files.list(purpose="fine-tune"):
            if file.filename == name and file.bytes == size:
                return str(file.id)
        return None

    def _create(self, facts: Mapping[str, Any], data: str, cfg: OpenAITuneConfig, tag: str) -> str:
        job = self.client.fine_tuning.jobs.create(
            model=facts["base"],
            training_file=data,
            method={"type": "supervised", "supervised": {"hyperparameters": _hyper(cfg)}},
            suffix=cfg.suffix or f"agent{facts['agent']}-{facts['role']}",
            metadata={TAG: tag},
            **({"seed": cfg.seed} if cfg.seed is not None else {}),
        )
        return str(job.id)

    def _find_job(self, tag: str) -> str | None:
        # The filter is the API's; the check below keeps a server that ignores it harmless.
        for job in self.client.fine_tuning.jobs.list(metadata={TAG: tag}):
            if (job.metadata or {}).get(TAG) == tag:
                return str(job.id)
        return None

    def _get(self, job_id: str) -> Any:
        return self.client.fine_tuning.jobs.retrieve(job_id)

    def _status(self, job: Any) -> str:
        return str(job.status)

    def _tuned(self, job: Any) -> tuple[str, str | None] | None:
        return (str(job.fine_tuned_model), None) if job.fine_tuned_model else None

    def _reason(self, job: Any) -> str:
        return _reason(job, self._last_events(job.id))

    def _last_events(self, job_id: str) -> list[str]:
        try:
            page = self.client.fine_tuning.jobs.list_events(job_id, limit=5)
            return [e.message for e in page.data]
        except Exception as exc:  # the reason we have matters more than the events we lack
            log.warning("could not read the events of job %s: %s", job_id, exc)
            return []

    def _options(self, start: str, cfg: Any) -> dict[str, Any]:
        url = str(getattr(self.client, "base_url", DEFAULT_URL)).rstrip("/")
        return {} if url == DEFAULT_URL else {"base_url": url}


def _hyper(cfg: OpenAITuneConfig) -> dict[str, Any]:
    return {
        "n_epochs": cfg.epochs,
        "learning_rate_multiplier": cfg.learning_rate_multiplier,
        "batch_size": cfg.batch_size,
    }


def _reason(job: Any, events: list[str]) -> str:
    error = getattr(job, "error", None)
    parts = []
    if error is not None and getattr(error, "message", None):
        code = getattr(error, "code", None)
        parts.append(f"{error.message}" + (f" (code {code})" if code else ""))
    if events:
        parts.append("last events: " + " | ".join(events))
    return "; ".join(parts) or "no reason given"
