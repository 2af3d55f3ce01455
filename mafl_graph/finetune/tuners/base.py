"""What every tuner shares: the TunedModel record, the Tuner protocol, the job ledger, polling.

The ledger is why a hosted run can be interrupted safely: the uploaded file id and the job id are
written to ``<run_dir>/tuning/iter<k>/agent<i>-<role>.json`` *before* any waiting, so a restart
polls the job it already paid for instead of creating a second one; what an upload or a job
creation carries is written before it is sent, so a restart after a crash between the
provider's answer and that record finds them at the provider (``hosted.py``). Secrets never
enter it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar, runtime_checkable

from mafl_graph.finetune.datasets import TrainedRole

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel

Backend = Literal["local", "openai", "vertex"]
BACKENDS: tuple[str, ...] = ("local", "openai", "vertex")
Dataset = str | Path | Sequence[Mapping[str, Any]]
"""A dataset file (JSONL in the backend's format; Vertex also takes a ``gs://`` URI) or records."""


class TuningError(RuntimeError):
    """A tuning job failed or was cancelled; the ledger keeps the job id and the reason."""


@dataclass(frozen=True)
class TunedModel:
    """One agent's tuned model for one role: enough to serve it and to keep tuning it.

    ``model`` is what serves it (an OpenAI model name, a Vertex endpoint resource, a local
    adapter or model directory); ``source`` is what the next iteration tunes further (OpenAI:
    the same name; Vertex: the tuned model resource; local: the adapter directory).
    ``options`` holds the non-secret settings the chat model needs (base URL, project, local
    base model path).
    """

    agent: int
    role: TrainedRole
    backend: str
    model: str
    base: str
    iteration: int = 1
    job_id: str | None = None
    source: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"agent{self.agent}-{self.role}"

    def continue_from(self) -> str:
        """The id the next iteration starts from (the paper keeps tuning the tuned model)."""
        return self.source or self.model

    def chat_model(self, **kwargs: Any) -> BaseChatModel:
        """The tuned model as a LangChain chat model for the next debate (``kwargs`` win)."""
        if self.backend == "local":
            from mafl_graph.local import LocalChatModel

            if self.options.get("full"):
                return LocalChatModel(**{"model_path": self.model, **kwargs})
            settings = {"model_path": self.options.get("model_path", "smollm2")}
            return LocalChatModel(**{**settings, "adapter": self.model, **kwargs})
        if self.backend == "openai":
            from mafl_graph.models import _import

            chat_openai = _import("langchain_openai", "ChatOpenAI", extra="openai")
            settings = {k: self.options[k] for k in ("base_url",) if self.options.get(k)}
            return chat_openai(**{"model": self.model, **settings, **kwargs})  # type: ignore[no-any-return]
        if self.backend == "vertex":
            from mafl_graph.models import _import

            chat_google = _import(
                "langchain_google_genai", "ChatGoogleGenerativeAI", extra="google"
            )
            settings = {
                "vertexai": True,
                **{
                    k: self.options[k]
                    for k in ("project", "location", "base_url")
                    if self.options.get(k)
                },
            }
            return chat_google(**{"model": self.model, **settings, **kwargs})  # type: ignore[no-any-return]
        raise ValueError(f"Unknown tuning backend {self.backend!r}; known: {', '.join(BACKENDS)}.")

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> TunedModel:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in record.items() if k in names})


@runtime_checkable
class Tuner(Protocol):
    """Tunes one agent's model for one role on its dataset, starting from ``base``.

    ``base`` is a model id (the first iteration) or the previous iteration's
    :class:`TunedModel` (later ones: tuning continues from it). ``config`` overrides the
    tuner's own typed config for this call.
    """

    backend: str
    iteration: int

    def tune(
        self,
        agent: int,
        role: TrainedRole,
        dataset: Dataset,
        base: str | TunedModel,
        config: Any = None,
    ) -> TunedModel: ...


def base_id(base: str | TunedModel) -> str:
    """The model id to tune from: a string as is, a TunedModel's :meth:`continue_from`."""
    return base.continue_from() if isinstance(base, TunedModel) else str(base)


# The ledger -------------------------------------------------------------------------------

_SECRET_WORDS = ("api_key", "apikey", "token", "secret", "password", "authorization")


class JobLedger:
    """A small JSON file recording one tuning job's progress, rewritten atomically."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.record: dict[str, Any] = {}
        if self.path.is_file():
            try:
                self.record = json.loads(self.path.read_text())
            except json.JSONDecodeError as exc:
                raise ValueError(
                    f"The tuning ledger {self.path} is unreadable ({exc}); fix or delete it "
                    "(deleting it forgets any job it recorded, which may then be paid twice)."
                ) from exc

    @classmethod
    def for_job(cls, run_dir: str | Path, iteration: int, agent: int, role: str) -> JobLedger:
        return cls(Path(run_dir) / "tuning" / f"iter{iteration}" / f"agent{agent}-{role}.json")

    def get(self, key: str, default: Any = None) -> Any:
        return self.record.get(key, default)

    def update(self, **fields: Any) -> None:
        """Merge ``fields`` and write the file (to a temporary name, then renamed into place)."""
        if leaked := [k for k in fields if any(word in k.lower() for word in _SECRET_WORDS)]:
            raise ValueError(f"Refusing to write secret-looking fields {leaked} to the ledger.")
        self.record.update(fields, updated=time.time())
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.record, indent=2, default=str) + "\n")
        os.replace(tmp, self.path)

    def clear_job(self) -> None:
        """Forget a failed job (an explicit retry) while keeping the history of its failure."""
        failed = [*self.record.get("failed_jobs", []), {k: self.record.get(k) for k in _JOB_KEYS}]
        self.record = {k: v for k, v in self.record.items() if k not in _JOB_KEYS}
        self.update(failed_jobs=failed)


# A retry sends a new tag, so that the search for the new job cannot find the failed one.
_JOB_KEYS = ("job_id", "tag", "status", "error", "model", "source")


def dataset_digest(dataset: Dataset) -> str:
    """SHA-256 of the dataset file (or records), so a ledger never resumes a job for other data."""
    if isinstance(dataset, str | Path):
        if str(dataset).startswith("gs://"):
            return hashlib.sha256(str(dataset).encode()).hexdigest()
        with Path(dataset).open("rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    return hashlib.sha256(jsonl_bytes(dataset)).hexdigest()


def jsonl_bytes(records: Sequence[Mapping[str, Any]]) -> bytes:
    return "".join(json.dumps(dict(r), ensure_ascii=False) + "\n" for r in records).encode()


def check_resumable(ledger: JobLedger, digest: str, base: str, retry: bool) -> None:
    """Refuse to resume a job for other data or another base, or a failed one (unless retry)."""
    if not ledger.record:
        return
    if ledger.get("status") in FAILED_STATES:
        if not retry:
            raise TuningError(
                f"The job {ledger.get('job_id')} recorded in {ledger.path} {ledger.get('status')}: "
                f"{ledger.get('error') or 'no reason given'}. Fix the cause and run again with "
                "retry=True (CLI: --retry) to start a new, separately billed job."
            )
        ledger.clear_job()
        return
    for key, value in (("dataset_sha256", digest), ("base", base)):
        if ledger.get(key) not in (None, value):
            raise TuningError(
                f"{ledger.path} records a job for a different {key} ({ledger.get(key)!r}, now "
                f"{value!r}). Use a new run directory or iteration, or delete the ledger if that "
                "job is no longer wanted."
            )


FAILED_STATES = ("failed", "cancelled", "expired", "partially_succeeded")


# Polling ---------------------------------------------------------------------------------

T = TypeVar("T")


@dataclass(frozen=True)
class Backoff:
    """Waits between polls: ``initial`` seconds, times ``factor`` each poll, up to ``maximum``."""

    initial: float = 10.0
    factor: float = 1.5
    maximum: float = 300.0
    timeout: float | None = None
    """Give up (the job keeps running and can be resumed) after this many seconds."""


def poll(
    fetch: Callable[[], T],
    done: Callable[[T], bool],
    backoff: Backoff,
    *,
    on_update: Callable[[T], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call ``fetch`` until ``done``, sleeping with exponential backoff in between."""
    started = time.monotonic()
    wait = backoff.initial
    while True:
        value = fetch()
        if on_update is not None:
            on_update(value)
        if done(value):
            return value
        if backoff.timeout is not None and time.monotonic() - started + wait > backoff.timeout:
            raise TimeoutError(
                f"Still not finished after {backoff.timeout:.0f} s; the job keeps running: "
                "run the same command again to resume polling it."
            )
        sleep(wait)
        wait = min(wait * backoff.factor, backoff.maximum)


def open_job(
    tuner: Any, agent: int, role: str, dataset: Dataset, base: str
) -> tuple[JobLedger, dict[str, Any]]:
    """This job's ledger, checked to belong to ``dataset`` and ``base`` (else refused), and the
    facts that identify the job, for the ledger's first entry."""
    ledger = JobLedger.for_job(tuner.run_dir, tuner.iteration, agent, role)
    digest = dataset_digest(dataset)
    check_resumable(ledger, digest, base, tuner.retry)
    facts = {
        "backend": tuner.backend,
        "agent": agent,
        "role": role,
        "iteration": tuner.iteration,
        "base": base,
        "dataset": str(dataset) if isinstance(dataset, str | Path) else "<records>",
        "dataset_sha256": digest,
    }
    return ledger, facts
