"""What the hosted tuners (OpenAI, Vertex AI) share: upload once, create once, poll, record.

Each paid request (an upload, a job creation) is made at most once per ledger, even when the
process dies between the provider's answer and the ledger's record of it. Before the request,
the ledger records what the request carries that the provider can be searched by: the upload's
name, which holds the file's SHA-256, and the job's tag, a random label sent as the job's
metadata (OpenAI) or labels (Vertex AI). A run that finds such an intent without its result asks
the provider for it before asking for it again; without an intent recorded, nothing was sent.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
from abc import abstractmethod
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from mafl_graph.finetune.tuners.base import (
    Backoff,
    Dataset,
    JobLedger,
    TunerBackend,
    TuningError,
    jsonl_bytes,
    poll,
)
from mafl_graph.finetune.tuners.options import TuneOptions

if TYPE_CHECKING:
    from mafl_graph.finetune.tuners.registry import TunerFactory

log = logging.getLogger(__name__)

TAG = "mafl_job"
"""The metadata (OpenAI) or label (Vertex AI) key under which each job carries its ledger's tag;
lowercase letters, digits and underscores, which both providers accept."""


def new_tag() -> str:
    """A tag no other job has: 16 lowercase hex digits (a valid Vertex AI label value)."""
    return secrets.token_hex(8)


def once(
    ledger: JobLedger,
    field: str,
    intent: Mapping[str, Any],
    find: Callable[[], str | None],
    make: Callable[[], str],
) -> str:
    """``ledger[field]``, obtained by at most one paid request across crashes.

    ``intent`` (what the request carries that ``find`` searches by) is written to the ledger
    before ``make`` sends it. If the ledger already holds this intent but no ``field``, an
    earlier run may have died after the provider answered, so ``find`` asks the provider first.
    """
    done = ledger.get(field)
    if done:
        return str(done)
    if all(ledger.get(k) == v for k, v in intent.items()):
        found = find()
        if found:
            log.info("%s: found %s %s at the provider; not sent again", ledger.path, field, found)
            ledger.update(**{field: found})
            return found
    else:
        ledger.update(**intent)
    made = make()
    ledger.update(**{field: made})
    return made


def polling(options: TuneOptions) -> Backoff:
    """Polls from ``options.poll_interval`` seconds apart, growing up to 5 minutes."""
    return Backoff(initial=options.poll_interval, maximum=max(options.poll_interval, 300.0))


class HostedTuner(TunerBackend):
    """The flow of one hosted tuning job; a provider's tuner fills in the requests.

    Subclasses set the class attributes of :class:`TunerBackend`, ``label`` (how messages name
    the service) and ``terminal`` (the statuses that end polling), and implement the hooks
    below: the upload, the job's creation and search, and what a job's status and result are.
    """

    parallel_jobs = True
    label: ClassVar[str]
    terminal: ClassVar[frozenset[str]]

    @classmethod
    def settings(cls, factory: TunerFactory) -> dict[str, Any]:
        """The typed config, and ``tune_base``: the model iteration 1 tunes."""
        options = factory.tune_options or TuneOptions()
        base = options.base or factory.build["model"] or cls.default_base
        return {**super().settings(factory), "tune_base": base}

    def _run(self, ledger: JobLedger, facts: dict[str, Any], dataset: Dataset, cfg: Any) -> None:
        if not ledger.get("dataset_sha256"):
            ledger.update(**facts, config=dataclasses.asdict(cfg))
        stem = f"agent{facts['agent']}-{facts['role']}"
        data = self._training_data(ledger, dataset, stem, facts["dataset_sha256"])
        if ledger.get("job_id"):
            log.info("resuming %s: polling job %s", ledger.path.name, ledger.get("job_id"))
        tag = ledger.get("tag") or new_tag()
        job_id = once(
            ledger,
            "job_id",
            {"tag": tag},
            lambda: self._find_job(tag),
            lambda: self._create(facts, data, cfg, tag),
        )
        job = poll(
            lambda: self._get(job_id),
            lambda j: self._status(j) in self.terminal,
            cfg.backoff,
            on_update=lambda j: ledger.update(status=self._status(j)),
        )
        self._finish(ledger, job_id, job, facts)

    def _finish(self, ledger: JobLedger, job_id: str, job: Any, facts: Mapping[str, Any]) -> None:
        """Record the tuned model of a finished job, or raise TuningError with the reason."""
        status = self._status(job)
        tuned = self._tuned(job) if status == "succeeded" else None
        if tuned is None:
            reason = self._reason(job) if status != "succeeded" else "it names no tuned model"
            ledger.update(status="failed" if status == "succeeded" else status, error=reason)
            raise TuningError(
                f"{self.label} job {job_id} (agent {facts['agent']}, {facts['role']}) "
                f"{status}: {reason}. The ledger {ledger.path} keeps it; pass retry=True "
                "(CLI: --retry) to start anew."
            )
        model, source = tuned
        ledger.update(status="succeeded", model=model, **({"source": source} if source else {}))

    def dataset_bytes(self, dataset: Dataset) -> bytes:
        """The bytes of a dataset file, or of records as JSONL."""
        if isinstance(dataset, str | Path):
            path = Path(dataset)
            if not path.is_file():
                raise FileNotFoundError(
                    f"No dataset at {path}; write it with "
                    f"`mafl datasets --format {self.dataset_format}`."
                )
            return path.read_bytes()
        return jsonl_bytes(dataset)

    # Hooks -------------------------------------------------------------------------------

    @abstractmethod
    def _training_data(self, ledger: JobLedger, dataset: Dataset, stem: str, digest: str) -> str:
        """The id or URI the job trains on, uploaded (through :func:`once`) if need be."""

    @abstractmethod
    def _create(self, facts: Mapping[str, Any], data: str, cfg: Any, tag: str) -> str:
        """Create the job, carrying ``tag`` where :meth:`_find_job` searches; its id."""

    @abstractmethod
    def _find_job(self, tag: str) -> str | None:
        """The id of the job carrying ``tag``, if the provider has one."""

    @abstractmethod
    def _get(self, job_id: str) -> Any:
        """The job as the provider reports it now."""

    @abstractmethod
    def _status(self, job: Any) -> str:
        """The job's status in the ledger's words (OpenAI's: ``succeeded``, ``failed``…)."""

    @abstractmethod
    def _tuned(self, job: Any) -> tuple[str, str | None] | None:
        """A succeeded job's (model that serves it, model the next iteration tunes), or None
        when it names none."""

    @abstractmethod
    def _reason(self, job: Any) -> str:
        """Why a job did not succeed, as the provider tells it."""
