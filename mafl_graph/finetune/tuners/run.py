"""Tune every agent and role of a run directory, and turn the results into a tuned Society.

Reads the files ``mafl datasets`` wrote (``<run_dir>/datasets/agent<i>-<role>.<format>``),
tunes each with one tuner (hosted jobs side by side in threads, since they wait on remote
machines; local training one at a time, since it is the machine), and writes the mapping
(agent, role) -> TunedModel to ``<run_dir>/tuning/iter<k>/tuned.json`` and
``<run_dir>/tuned.json`` (the latest iteration).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from mafl_graph.finetune.datasets import TrainedRole
from mafl_graph.finetune.tuners.base import TunedModel, Tuner
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
) -> list[TuneOutcome]:
    """Tune each dataset of ``run_dir``; (agent, role) found in ``previous`` continue from it.

    ``base``: where the others start (default: the tuner's ``default_base``). One failure does
    not stop the others; every outcome is returned (and passed to ``on_outcome`` as it ends).
    """
    run_dir = Path(run_dir)
    suffix = str(getattr(tuner, "dataset_suffix", ".openai.jsonl"))
    datasets = find_datasets(run_dir / "datasets", suffix)
    if not datasets:
        raise FileNotFoundError(
            f"No agent*-*{suffix} files in {run_dir / 'datasets'}; run `mafl datasets` first."
        )
    start = base or str(getattr(tuner, "default_base", ""))
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

    workers = 1 if getattr(tuner, "backend", "") == "local" else len(datasets)
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
    path = Path(run_dir) / "tuning" / f"iter{iteration}" / "tuned.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    (Path(run_dir) / "tuned.json").write_text(text)
    return path


def load_tuned(path: str | Path) -> dict[Key, TunedModel]:
    """The (agent, role) -> TunedModel mapping of a ``tuned.json``."""
    record: dict[str, Any] = json.loads(Path(path).read_text())
    models = (TunedModel.from_dict(m) for m in record.get("models", []))
    return {(m.agent, m.role): m for m in models}


def tuned_society(society: Society, tuned: Mapping[Key, TunedModel], **chat_kwargs: Any) -> Society:
    """``society`` with each tuned (agent, role) replaced by its tuned chat model."""
    generators = {a: m.chat_model(**chat_kwargs) for (a, r), m in tuned.items() if r == "generator"}
    critics = {a: m.chat_model(**chat_kwargs) for (a, r), m in tuned.items() if r == "critic"}
    return society.replace(generators=generators, critics=critics)
