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
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from mafl_graph.finetune.datasets import TrainedRole
from mafl_graph.finetune.tuners.base import (
    Dataset,
    JobLedger,
    TunedModel,
    base_id,
    open_job,
    poll,
)

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


class HostedTuner:
    """The flow of one hosted tuning job; a provider's tuner fills in the requests.

    Subclasses set ``backend`` and ``terminal`` (the statuses that end polling), and implement
    the hooks below.
    """

    backend: str
    terminal: frozenset[str]
    run_dir: Path
    iteration: int
    retry: bool
    config: Any

    def tune(
        self,
        agent: int,
        role: TrainedRole,
        dataset: Dataset,
        base: str | TunedModel,
        config: Any = None,
    ) -> TunedModel:
        """Tune ``base`` on ``dataset`` (a file in the backend's format, or records); wait."""
        cfg = config or self.config
        base_model = base_id(base)
        ledger, facts = open_job(self, agent, role, dataset, base_model)
        # A poll records "succeeded" before the tuned model is recorded: both mean finished.
        if ledger.get("status") != "succeeded" or not ledger.get("model"):
            self._run(ledger, facts, dataset, cfg)
        return TunedModel(
            agent=agent,
            role=role,
            backend=self.backend,
            model=ledger.get("model"),
            base=base_model,
            iteration=self.iteration,
            job_id=ledger.get("job_id"),
            source=ledger.get("source"),
            options=self._options(),
        )

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
        self._finish(ledger, job, facts)

    # Hooks -------------------------------------------------------------------------------

    def _training_data(self, ledger: JobLedger, dataset: Dataset, stem: str, digest: str) -> str:
        """The id or URI the job trains on, uploaded (through :func:`once`) if need be."""
        raise NotImplementedError

    def _create(self, facts: Mapping[str, Any], data: str, cfg: Any, tag: str) -> str:
        """Create the job, carrying ``tag`` where :meth:`_find_job` searches; its id."""
        raise NotImplementedError

    def _find_job(self, tag: str) -> str | None:
        """The id of the job carrying ``tag``, if the provider has one."""
        raise NotImplementedError

    def _get(self, job_id: str) -> Any:
        raise NotImplementedError

    def _status(self, job: Any) -> str:
        raise NotImplementedError

    def _finish(self, ledger: JobLedger, job: Any, facts: Mapping[str, Any]) -> None:
        """Record the tuned model of a finished job, or raise TuningError with the reason."""
        raise NotImplementedError

    def _options(self) -> dict[str, Any]:
        """Non-secret settings the tuned model's chat model needs (a base URL, a project)."""
        return {}
