"""Experiment tracking: follow a run in Weights & Biases, MLflow or TensorBoard.

``MultiagentFinetuning(..., report_to=["wandb"])`` (``mafl loop --report-to wandb``) logs
each iteration's metrics, diversity, dataset sizes, the tuned models' loss curves, the
settings and the report's figures. None of the trackers' packages is needed to run the loop;
``pip install 'mafl-graph[tracking]'`` installs all three. A new tracker is one
:class:`Tracker` subclass plus one :func:`register_tracker` (docs/tracking.md).
"""

from __future__ import annotations

from mafl_graph.tracking.base import (
    ITERATION,
    TUNING_STEP,
    Tracker,
    flat_settings,
    flatten,
    step_metrics,
)
from mafl_graph.tracking.registry import (
    make_trackers,
    register_tracker,
    tracker_class,
    tracker_names,
    unregister_tracker,
)
from mafl_graph.tracking.run import RunTracking

__all__ = [
    "ITERATION",
    "TUNING_STEP",
    "RunTracking",
    "Tracker",
    "flat_settings",
    "flatten",
    "make_trackers",
    "register_tracker",
    "step_metrics",
    "tracker_class",
    "tracker_names",
    "unregister_tracker",
]
