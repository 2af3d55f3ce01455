"""MLflow: one MLflow run per loop run, named after the run directory.

The tracking server or store is the user's own (``MLFLOW_TRACKING_URI``, or MLflow's
default, a ``mlflow.db`` in the working directory); the experiment is
``$MLFLOW_EXPERIMENT_NAME`` or ``mafl-graph``. The client API is used rather than
``mlflow.start_run``, so an MLflow run the caller has open is left alone.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mafl_graph.tracking.base import Tracker, flat_settings

EXPERIMENT = "mafl-graph"
_MAX_PARAM = 6000  # MLflow's limit on a parameter's value
_BATCH = 100  # MLflow's limit on parameters per log_batch call


class MlflowTracker(Tracker):
    """Logs to MLflow (``report_to="mlflow"``)."""

    name = "mlflow"
    requires = "mlflow"

    def __init__(self, experiment: str | None = None, tracking_uri: str | None = None) -> None:
        """``experiment``: default ``$MLFLOW_EXPERIMENT_NAME`` or ``mafl-graph``;
        ``tracking_uri``: default MLflow's own."""
        self.experiment, self.tracking_uri = experiment, tracking_uri
        self.client: Any = None
        self.run_id: str | None = None

    def open(self, run_dir: Path, settings: Mapping[str, Any]) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=self.tracking_uri)
        name = self.experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT
        found = self.client.get_experiment_by_name(name)
        experiment = found.experiment_id if found else self.client.create_experiment(name)
        run = self.client.create_run(
            experiment, run_name=run_dir.name, tags={"mafl_graph.run_dir": str(run_dir)}
        )
        self.run_id = run.info.run_id
        params = [Param(k, v[:_MAX_PARAM]) for k, v in flat_settings(settings).items()]
        for i in range(0, len(params), _BATCH):
            self.client.log_batch(self.run_id, params=params[i : i + _BATCH])

    def log_metrics(self, metrics: Mapping[str, float], *, step: int, axis: str) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._log([Metric(k, v, now, step) for k, v in metrics.items()])

    def log_curve(self, name: str, values: Sequence[float], first_step: int) -> None:
        # One request per curve rather than per point: a server may be far away.
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        points = [(first_step + i, v) for i, v in enumerate(values) if isinstance(v, int | float)]
        self._log([Metric(name, float(v), now, step) for step, v in points])

    def _log(self, metrics: list[Any]) -> None:
        for i in range(0, len(metrics), 1000):  # MLflow's limit on metrics per call
            self.client.log_batch(self.run_id, metrics=metrics[i : i + 1000])

    def log_files(self, paths: Sequence[Path]) -> None:
        for path in paths:
            self.client.log_artifact(self.run_id, str(path), "figures")

    def close(self, *, failed: bool = False) -> None:
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")
            self.run_id = None
