"""Weights & Biases: one W&B run per loop run, named after the run directory.

``wandb.init`` reads the user's own configuration (``WANDB_MODE``, ``WANDB_PROJECT``,
``WANDB_DIR``, ``WANDB_ENTITY``, the login); the project defaults to ``mafl-graph``. Each
metric is plotted against its own axis (``define_metric``): per-iteration numbers against
``iteration``, loss curves against ``tuning_step``; W&B's own step only counts log calls.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mafl_graph.tracking.base import Tracker

PROJECT = "mafl-graph"


class WandbTracker(Tracker):
    """Logs to Weights & Biases (``report_to="wandb"``)."""

    name = "wandb"
    requires = "wandb"

    def __init__(self, project: str | None = None, **init: Any) -> None:
        """``project`` (default ``$WANDB_PROJECT`` or ``mafl-graph``) and other keywords of
        ``wandb.init`` (``entity``, ``group``, ``tags``, ``mode``, ``dir``)."""
        self.project, self.init = project, init
        self.run: Any = None
        self._axes: set[str] = set()

    def open(self, run_dir: Path, settings: Mapping[str, Any]) -> None:
        import wandb

        self._axes = set()
        self.run = wandb.init(
            **{
                "project": self.project or os.environ.get("WANDB_PROJECT") or PROJECT,
                "name": run_dir.name,
                "config": {**settings, "run_dir": str(run_dir)},
                # A run of the caller's own stays open and untouched beside this one.
                "reinit": "create_new",
                **self.init,
            }
        )

    def log_metrics(self, metrics: Mapping[str, float], *, step: int, axis: str) -> None:
        for name in metrics:
            if name not in self._axes:
                self.run.define_metric(name, step_metric=axis)
                self._axes.add(name)
        self.run.log({**metrics, axis: step})

    def log_files(self, paths: Sequence[Path]) -> None:
        import wandb

        self.run.log({f"figures/{p.stem}": wandb.Image(str(p)) for p in paths})

    def close(self, *, failed: bool = False) -> None:
        if self.run is not None:
            self.run.finish(exit_code=1 if failed else 0)
            self.run = None
