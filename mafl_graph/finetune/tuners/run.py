"""Tune every agent and role of a run directory, and turn the results into a tuned Society.

Reads the files ``mafl datasets`` wrote (``agent<i>-<role>`` plus the tuner's dataset suffix,
in :meth:`RunLayout.datasets_dir`), tunes each with one tuner (side by side in threads when its
jobs run elsewhere, one at a time when this machine trains), and writes the mapping
(agent, role) -> TunedModel to :meth:`RunLayout.tuned_at` of the iteration and to
:attr:`RunLayout.tuned` (the latest iteration).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from langchain_core.language_models import BaseChatModel

from mafl_graph.finetune.datasets import TrainedRole
from mafl_graph.finetune.tuners.base import TunedModel, Tuner
from mafl_graph.finetune.tuners.registry import tuner_class
from mafl_graph.rundir import RunLayout
from mafl_graph.society import Society

Key = tuple[int, str]
_NAME = re.compile(r"^agent(\d+)-(generator|critic)$")


@dataclass(frozen=True)
class TuneOutcome:
    """What happened to one dataset: its TunedModel, or the error that stopped it."""

    agent: int
    role: str
    dataset: Path
    base: str
    tuned: TunedModel | None = None
    error: str | None = None


def find_datasets(datasets_dir: str | Path, suffix: str) -> dict[Key, Path]:
    """``agent<i>-<role><suffix>`` files under ``datasets_dir``, keyed by (agent, role)."""
    found: dict[Key, Path] = {}
    for path in sorted(Path(datasets_dir).glob(f"agent*{suffix}")):
        match = _NAME.match(path.name.removesuffix(suffix))
        if match:
            found[(int(match[1]), match[2])] = path
    return dict(sorted(found.items()))


def tune_run(
    tuner: Tuner,
    run_dir: str | Path,
    *,
    base: str | None = None,
    previous: Mapping[Key, TunedModel] | None = None,
    on_outcome: Callable[[TuneOutcome], None] | None = None,
    datasets_dir: str | Path | None = None,
) -> list[TuneOutcome]:
    """Tune each dataset of ``run_dir``; (agent, role) found in ``previous`` continue from it.

    ``base``: where the others start (default: the tuner's ``default_base``). One failure does
    not stop the others; every outcome is returned (and passed to ``on_outcome`` as it ends).
    ``datasets_dir``: where the datasets are (default: the run's ``datasets_dir()``).
    """
    suffix = tuner.dataset_suffix
    where = Path(datasets_dir) if datasets_dir is not None else RunLayout(run_dir).datasets_dir()
    datasets = find_datasets(where, suffix)
    if not datasets:
        raise FileNotFoundError(f"No agent*-*{suffix} files in {where}; run `mafl datasets` first.")
    start = base or tuner.default_base
    previous = previous or {}

    def one(key: Key, path: Path) -> TuneOutcome:
        agent, role = key
        origin: str | TunedModel = previous.get(key, start)
        label = origin.continue_from() if isinstance(origin, TunedModel) else origin
        try:
            tuned = tuner.tune(agent, cast(TrainedRole, role), path, origin)
            outcome = TuneOutcome(agent, role, path, label, tuned=tuned)
        except (Exception, KeyboardInterrupt) as exc:
            if isinstance(exc, KeyboardInterrupt):
                raise
            outcome = TuneOutcome(agent, role, path, label, error=f"{type(exc).__name__}: {exc}")
        if on_outcome is not None:
            on_outcome(outcome)
        return outcome

    workers = len(datasets) if tuner.parallel_jobs else 1
    with ThreadPoolExecutor(max_workers=workers) as pool:
        outcomes = list(pool.map(lambda item: one(*item), datasets.items()))
    tuned = {(o.agent, o.role): o.tuned for o in outcomes if o.tuned is not None}
    save_tuned(run_dir, tuner.iteration, tuner.backend, {**previous, **tuned})
    return outcomes


def save_tuned(
    run_dir: str | Path, iteration: int, backend: str, tuned: Mapping[Key, TunedModel]
) -> Path:
    """Write the mapping for ``iteration`` and as the run's latest ``tuned.json``."""
    record = {
        "iteration": iteration,
        "backend": backend,
        "models": [tuned[key].as_dict() for key in sorted(tuned)],
    }
    text = json.dumps(record, indent=2) + "\n"
    layout = RunLayout(run_dir)
    path = layout.tuned_at(iteration)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    layout.tuned.write_text(text)
    return path


_TUNED_FIELDS = ("agent", "role", "backend", "model", "base")


def load_tuned(path: str | Path) -> dict[Key, TunedModel]:
    """The (agent, role) -> TunedModel mapping of a ``tuned.json``, checked before use.

    Each problem gets one error naming the file, the entry and what to do: a run that finds
    out hours later that agent 2's adapter is missing has wasted the hours.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; pass the tuned.json `mafl tune` wrote.")
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"{path} is not valid JSON ({exc}); restore it, or run `mafl tune` again "
            "(finished jobs are read back from the ledger, not paid again)."
        ) from exc
    entries = record.get("models") if isinstance(record, dict) else None
    if not isinstance(entries, list):
        raise ValueError(f"{path} has no 'models' list; is it a tuned.json written by mafl tune?")
    tuned: dict[Key, TunedModel] = {}
    for i, entry in enumerate(entries):
        missing = [f for f in _TUNED_FIELDS if not isinstance(entry, dict) or f not in entry]
        if missing:
            raise ValueError(f"{path}, models[{i}] lacks {missing}; every entry needs these.")
        model = TunedModel.from_dict(entry)
        try:
            tuner_class(model.backend).check_served(model)
        except (ValueError, FileNotFoundError) as exc:
            raise type(exc)(f"{path}, models[{i}] {exc}") from None
        tuned[(model.agent, model.role)] = model
    return tuned


# What a tuned model keeps of the model it replaces: its sampling and its client limits, so
# that tuning changes the weights and nothing else (agent i keeps its own seed, or tuned agents
# sample alike; a hosted agent keeps its provider's shared rate limiter, retries and timeout).
SAMPLING = (
    "temperature",
    "top_p",
    "max_new_tokens",
    "max_tokens",
    "seed",
    "dtype",
    "rate_limiter",
    "max_retries",
    "request_timeout",
    "timeout",
)


def tuned_society(society: Society, tuned: Mapping[Key, TunedModel], **chat_kwargs: Any) -> Society:
    """``society`` with each tuned (agent, role) replaced by its tuned chat model.

    Each tuned model takes the sampling settings of the model it replaces (``chat_kwargs``
    win), where both model classes have them.
    """
    generators: dict[int, BaseChatModel] = {}
    critics: dict[int, BaseChatModel] = {}
    for (agent, role), model in tuned.items():
        old = getattr(society.agents[agent], role)
        chat = model.chat_model(**{**sampling_of(old), **chat_kwargs})
        (generators if role == "generator" else critics)[agent] = chat
    return society.replace(generators=generators, critics=critics)


def sampling_of(model: Any) -> dict[str, Any]:
    """The sampling settings of a chat model that are pydantic fields and set (see SAMPLING)."""
    fields = getattr(type(model), "model_fields", {})
    return {k: getattr(model, k) for k in SAMPLING if k in fields and getattr(model, k) is not None}
