"""What a tracker is: four primitives a backend implements, and the hooks the loop calls.

The loop calls :meth:`Tracker.start` once, :meth:`Tracker.log_step` after each step of each
iteration, :meth:`Tracker.log_curve` for each tuned model's loss curve, and
:meth:`Tracker.finish` at the end. A backend implements :meth:`~Tracker.open`,
:meth:`~Tracker.log_metrics`, :meth:`~Tracker.log_files` and :meth:`~Tracker.close`; how a
record becomes named numbers is decided here, once, so every backend logs the same names.
"""

from __future__ import annotations

import importlib.util
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

ITERATION = "iteration"
"""The axis of every per-iteration metric."""
TUNING_STEP = "tuning_step"
"""The axis of the loss curves: optimizer steps of one agent's model, counted across
iterations (iteration k+1 keeps tuning iteration k's model)."""
EXTRA = "pip install 'mafl-graph[tracking]'"


class Tracker(ABC):
    """One experiment tracker (Weights & Biases, MLflow, TensorBoard, …) following one run.

    A tracker object follows one run at a time; :meth:`start` after :meth:`finish` follows
    the next (a comparison runs its methods one after another).
    """

    name: ClassVar[str] = ""
    """The name ``report_to`` knows it by."""
    requires: ClassVar[str] = ""
    """The module it imports; checked when the loop is built, imported at :meth:`start`."""

    # The hooks the loop calls ---------------------------------------------------------------

    def start(self, run_dir: Path, settings: Mapping[str, Any]) -> None:
        """Begin following the run in ``run_dir`` made with ``settings`` (the manifest's)."""
        self.open(run_dir, settings)

    def log_step(self, iteration: int, step: str, record: Mapping[str, Any]) -> None:
        """The record of one finished step (``train``, ``datasets``, ``tuning``, ``eval``,
        ``diversity``), as :func:`step_metrics` names its numbers, at ``iteration``."""
        metrics = step_metrics(step, record)
        if metrics:
            self.log_metrics(metrics, step=iteration, axis=ITERATION)

    def log_curve(self, name: str, values: Sequence[float], first_step: int) -> None:
        """A series (one tuned model's losses): ``values[i]`` at step ``first_step + i``."""
        for i, value in enumerate(values):
            if _number(value) is not None:
                self.log_metrics({name: float(value)}, step=first_step + i, axis=TUNING_STEP)

    def finish(self, figures: Sequence[Path] = (), *, failed: bool = False) -> None:
        """Log the report's ``figures`` (image files) and end the run (``failed``: it raised)."""
        try:
            if figures:
                self.log_files(figures)
        finally:
            self.close(failed=failed)

    # What a backend implements --------------------------------------------------------------

    @abstractmethod
    def open(self, run_dir: Path, settings: Mapping[str, Any]) -> None:
        """Create the tracker's run and record ``settings``."""

    @abstractmethod
    def log_metrics(self, metrics: Mapping[str, float], *, step: int, axis: str) -> None:
        """Numbers at ``step`` of ``axis`` (:data:`ITERATION` or :data:`TUNING_STEP`)."""

    @abstractmethod
    def log_files(self, paths: Sequence[Path]) -> None:
        """Image files (the report's figures)."""

    @abstractmethod
    def close(self, *, failed: bool = False) -> None:
        """End the run; everything logged is written out."""

    # Helpers -------------------------------------------------------------------------------

    @classmethod
    def check_installed(cls) -> None:
        """Raise the one-line ImportError naming the extra if :attr:`requires` is missing."""
        if cls.requires and importlib.util.find_spec(cls.requires) is None:
            raise ImportError(
                f"{cls.requires} is not installed; report_to={cls.name!r} needs the tracking "
                f"extra: {EXTRA}"
            )


def step_metrics(step: str, record: Mapping[str, Any]) -> dict[str, float]:
    """The numbers of a step's record, named ``<step>/<key>/<key>…``.

    Lists are numbered from 1 (``eval/round_accuracy/1/mean`` is round 1); a key that repeats
    its parent's name is not repeated (``datasets/agent0-generator/examples``); strings,
    booleans and missing values are left out.
    """
    return flatten(record, step)


def flatten(value: Any, prefix: str) -> dict[str, float]:
    """The numbers nested in ``value``, named by their path under ``prefix``."""
    found: dict[str, float] = {}
    if isinstance(value, Mapping):
        parent = prefix.rsplit("/", 1)[-1]
        for key, item in value.items():
            found |= flatten(item, prefix if str(key) == parent else f"{prefix}/{key}")
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value, start=1):
            found |= flatten(item, f"{prefix}/{i}")
    elif (number := _number(value)) is not None:
        found[prefix] = number
    return found


def flat_settings(settings: Mapping[str, Any]) -> dict[str, str]:
    """Settings as ``name: text`` pairs (nested names joined by "."), for trackers of strings."""
    out: dict[str, str] = {}
    for key, value in settings.items():
        if isinstance(value, Mapping) and value:
            out |= {f"{key}.{k}": v for k, v in flat_settings(value).items()}
        else:
            out[str(key)] = str(value)
    return out


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)  # NaN included: a diverged loss is worth seeing
