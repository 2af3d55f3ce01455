"""What every tuner shares: the TunedModel record, the TunerBackend base, the job ledger, polling.

The ledger is why a hosted run can be interrupted safely: the uploaded file id and the job id are
written to the run directory's ledger of the job (:meth:`RunLayout.ledger`) *before* any
waiting, so a restart polls the job it already paid for instead of creating a second one; what
an upload or a job creation carries is written before it is sent, so a restart after a crash
between the provider's answer and that record finds them at the provider (``hosted.py``).
Secrets never enter it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar, cast, runtime_checkable

from mafl_graph.finetune.datasets import TrainedRole
from mafl_graph.finetune.tuners.options import TuneOptions
from mafl_graph.finetune.tuners.registry import BACKENDS, tuner_class
from mafl_graph.rundir import RunLayout

if TYPE_CHECKING:
    from typing import Self

    from langchain_core.language_models import BaseChatModel

    from mafl_graph.finetune.tuners.registry import TunerFactory

__all__ = [
    "BACKENDS",
    "Backend",
    "Backoff",
    "Dataset",
    "JobLedger",
    "TunedModel",
    "Tuner",
    "TunerBackend",
    "TuningError",
    "poll",
]

Backend = Literal["local", "openai", "vertex"]
"""The built-in backends' names; :data:`BACKENDS` lists every registered one."""
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
    base model path). ``backend`` names the registered tuner that made it and serves it.
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
        return tuner_class(self.backend).serve(self, **kwargs)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> TunedModel:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in record.items() if k in names})


@runtime_checkable
class Tuner(Protocol):
    """What :func:`~mafl_graph.finetune.tuners.tune_run` needs of a tuner: every
    :class:`TunerBackend` is one, and so is any object with these attributes.

    ``tune(agent, role, dataset, base, config=None) -> TunedModel`` as
    :meth:`TunerBackend.tune` describes it.
    """

    backend: str
    iteration: int
    dataset_suffix: str
    default_base: str
    parallel_jobs: bool

    @property
    def tune(self) -> Callable[..., TunedModel]: ...


class TunerBackend(ABC):
    """A tuning backend: tunes one agent's model for one role, and serves what it tuned.

    A new backend subclasses this, sets the class attributes, implements :meth:`_run`,
    :meth:`serve` and :meth:`_config_from_options`, and is registered with
    :func:`~mafl_graph.finetune.tuners.register_tuner`. :meth:`tune` is the same for all: it
    opens the job's ledger (refusing other data or another base), runs the job unless the
    ledger says it finished, and returns the :class:`TunedModel`.
    """

    backend: str
    """The name the backend is registered under, recorded in every TunedModel it makes."""
    provider: str
    """The prefix of the ``provider:model`` strings whose models this backend tunes."""
    provider_note: str = ""
    """Why this backend tunes only its provider's models, for the error that refuses others."""
    dataset_format: Literal["openai", "vertex"] = "openai"
    """The format of :func:`~mafl_graph.finetune.export.export_datasets` it trains on."""
    dataset_suffix: str = ".openai.jsonl"
    """The dataset files' suffix, set from :attr:`dataset_format` for every subclass."""
    parallel_jobs: bool = False
    """True when jobs run elsewhere and wait side by side in threads; False when this process
    is the machine that trains (one job at a time)."""
    config_type: type[Any]
    """The dataclass of the typed config; ``dataclasses.asdict`` of it is JSON."""
    default_base: str
    """What iteration 1 tunes (a class default; an instance may name another)."""
    detail_column: str = "job"
    """The heading of :meth:`detail` in a table of tuned models."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.dataset_suffix = f".{cls.dataset_format}.jsonl"

    def __init__(
        self,
        run_dir: str | Path,
        *,
        iteration: int = 1,
        config: Any = None,
        retry: bool = False,
        base: str | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.layout = RunLayout(self.run_dir)
        self.iteration = iteration
        self.config = config if config is not None else self.config_type()
        self.retry = retry
        if base:
            self.default_base = base

    # Building one from the generic options ------------------------------------------------

    @classmethod
    def from_options(
        cls,
        run_dir: str | Path,
        options: TuneOptions,
        *,
        model: str,
        iteration: int = 1,
        retry: bool = False,
        seed: int = 0,
        record: Mapping[str, Any] | None = None,
        **extra: Any,
    ) -> Self:
        """This backend for ``options``, tuning ``model`` (the name after the provider prefix).

        ``record``: a config a manifest recorded (``dataclasses.asdict`` of :meth:`config_from`),
        used instead of the options' tuning settings. ``extra`` goes to the constructor as is
        (a client, credentials, endpoints).
        """
        cls.check_options(options)
        config = cls.config_from(options, seed=seed, record=record)
        settings = cls._settings_from(options, model=model)
        return cls(run_dir, iteration=iteration, retry=retry, config=config, **settings, **extra)

    @classmethod
    def factory(
        cls,
        options: TuneOptions,
        *,
        model: str,
        seed: int = 0,
        retry: bool = False,
        record: Mapping[str, Any] | None = None,
        **extra: Any,
    ) -> TunerFactory:
        """What makes each iteration's tuner with :meth:`from_options` (for the loop); options
        the backend cannot use are refused here, before any iteration runs."""
        from mafl_graph.finetune.tuners.registry import TunerFactory

        cls.check_options(options)

        return TunerFactory(
            cls.backend, options, model=model, seed=seed, retry=retry, record=record, **extra
        )

    @classmethod
    def check_options(cls, options: TuneOptions) -> None:
        """Raise ValueError, naming the option, if ``options`` lack what this backend needs."""
        return None

    @classmethod
    def settings(cls, factory: TunerFactory) -> dict[str, Any]:
        """What a loop's manifest pins of how it tunes: ``tune``, the typed config as JSON
        (what :meth:`from_options` takes back as ``record``)."""
        return {"tune": dataclasses.asdict(factory.config)}

    @classmethod
    def serving(cls, options: TuneOptions) -> dict[str, Any]:
        """Chat-model settings for the untuned society, so that it is served where the tuned
        models will be (one service, one set of credentials); none by default."""
        return {}

    @classmethod
    def config_from(
        cls, options: TuneOptions, *, seed: int = 0, record: Mapping[str, Any] | None = None
    ) -> Any:
        """The typed config ``options`` (or a recorded ``record``) give; None: the defaults."""
        if record is not None:
            return config_from_record(cls.config_type, record)
        return cls._config_from_options(options, seed)

    @classmethod
    @abstractmethod
    def _config_from_options(cls, options: TuneOptions, seed: int) -> Any:
        """The typed config of ``options``; an option left None takes the config's default."""

    @classmethod
    def _settings_from(cls, options: TuneOptions, *, model: str) -> dict[str, Any]:
        """The constructor's other keywords for ``options``: by default, iteration 1 tunes
        ``options.base`` or else ``model``."""
        return {"base": options.base or model or None}

    # Serving what it tuned ----------------------------------------------------------------

    @classmethod
    @abstractmethod
    def serve(cls, tuned: TunedModel, **kwargs: Any) -> BaseChatModel:
        """``tuned`` as a LangChain chat model (``kwargs`` win over its recorded options)."""

    @classmethod
    def check_served(cls, tuned: TunedModel) -> None:
        """Raise FileNotFoundError (saying what to do) if ``tuned`` cannot be served from here;
        a hosted model is checked by its provider at the first call."""
        return None

    @classmethod
    def detail(cls, tuned: TunedModel) -> str:
        """One line on how tuning went, for a table (:attr:`detail_column`): the job id."""
        return str(tuned.job_id or "")

    # Tuning -------------------------------------------------------------------------------

    def tune(
        self,
        agent: int,
        role: TrainedRole,
        dataset: Dataset,
        base: str | TunedModel,
        config: Any = None,
    ) -> TunedModel:
        """Tune ``base`` on ``dataset`` (a file in :attr:`dataset_format`, or records); wait.

        ``base`` is a model id (the first iteration) or the previous iteration's
        :class:`TunedModel` (later ones: tuning continues from it). ``config`` overrides the
        tuner's own typed config for this call.
        """
        cfg = config or self.config
        start = base_id(base)
        ledger, facts = open_job(self, agent, role, dataset, start)
        if not self._finished(ledger, agent, role):
            self._run(ledger, facts, dataset, cfg)
        return TunedModel(
            agent=agent,
            role=role,
            backend=self.backend,
            model=self._model(ledger, agent, role),
            base=start,
            iteration=self.iteration,
            job_id=ledger.get("job_id"),
            source=ledger.get("source"),
            options=self._options(start, cfg),
        )

    @abstractmethod
    def _run(self, ledger: JobLedger, facts: dict[str, Any], dataset: Dataset, cfg: Any) -> None:
        """Run the job ``facts`` describe and record its tuned model in ``ledger``, or raise."""

    def _finished(self, ledger: JobLedger, agent: int, role: str) -> bool:
        # A poll records "succeeded" before the tuned model is recorded: both mean finished.
        return ledger.get("status") == "succeeded" and bool(ledger.get("model"))

    def _model(self, ledger: JobLedger, agent: int, role: str) -> str:
        return str(ledger.get("model"))

    def _options(self, start: str, cfg: Any) -> dict[str, Any]:
        """Non-secret settings the tuned model's chat model needs (a base URL, a project)."""
        return {}


def config_from_record(config_type: type[Any], record: Mapping[str, Any]) -> Any:
    """``config_type`` rebuilt from its ``dataclasses.asdict`` as JSON: nested dataclasses (a
    Backoff) from their mappings, tuples from lists."""
    values = dict(record)
    for f in dataclasses.fields(config_type):
        value = values.get(f.name)
        if isinstance(value, Mapping) and f.default_factory is not dataclasses.MISSING:
            nested = f.default_factory()
            if dataclasses.is_dataclass(nested):
                values[f.name] = cast(Any, type(nested))(**value)
        elif isinstance(value, list):
            values[f.name] = tuple(value)
    return config_type(**values)


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
        return cls(RunLayout(run_dir).ledger(iteration, agent, role))

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
    tuner: TunerBackend, agent: int, role: str, dataset: Dataset, base: str
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
