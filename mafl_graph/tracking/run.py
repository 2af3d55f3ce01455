"""The loop's side of tracking: what it hands each tracker, read from the run directory.

A resumed run starts new tracker runs and replays into them every step the interrupted run
finished (read back from ``metrics.json``), so each tracker run holds the whole history of
the run directory, never half of it. A tracker that fails at :meth:`RunTracking.start` stops
the run before any work (it was asked for); one that fails later is logged and dropped, and
the loop carries on: a tracker is never needed to finish a run.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mafl_graph.redact import check_no_secrets
from mafl_graph.rundir import RunLayout
from mafl_graph.tracking.base import Tracker

log = logging.getLogger(__name__)
_ADAPTER = re.compile(r"^agent(\d+)-(generator|critic)$")
_IMAGE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")  # a markdown image's file


class RunTracking:
    """Hands one run's steps, loss curves, settings and figures to its trackers."""

    def __init__(self, trackers: Sequence[Tracker], run_dir: str | Path) -> None:
        self.trackers = list(trackers)
        self.layout = RunLayout(run_dir)

    def start(self, settings: Mapping[str, Any]) -> None:
        """Start every tracker; one that cannot start ends the ones already started, and raises."""
        check_no_secrets(settings, "settings")
        started: list[Tracker] = []
        try:
            for tracker in self.trackers:
                tracker.start(self.layout.root, settings)
                started.append(tracker)
        except BaseException:
            for tracker in started:
                tracker.finish(failed=True)
            raise

    def log_step(self, iteration: int, step: str, record: Mapping[str, Any]) -> None:
        """One finished step of ``iteration``; after ``tuning``, the tuned models' losses too."""
        if not self.trackers:
            return
        logged = dict(record)
        curves: dict[str, tuple[list[float], int]] = {}
        if step == "datasets":
            sizes = record.get("datasets") or {}
            logged["examples"] = sum(d.get("examples", 0) for d in sizes.values())
        if step == "tuning":
            for name in record.get("tuned", []):
                metrics = self._adapter_metrics(iteration, name)
                if metrics is None:
                    continue
                losses = metrics.pop("losses", None)
                logged[name] = {k: v for k, v in metrics.items() if k != "base"}
                if isinstance(losses, list) and losses:
                    curves[f"loss/{name}"] = (losses, self._steps_before(iteration, name) + 1)
        self._each("log_step", lambda t: t.log_step(iteration, step, logged))
        for curve, (values, first) in curves.items():
            self._each("log_curve", lambda t, c=curve, v=values, f=first: t.log_curve(c, v, f))

    def finish(self, *, failed: bool = False) -> None:
        """Log the report's figures (a finished run) and end every tracker."""
        if not self.trackers:
            return
        figures = [] if failed else self._figures()
        self._each("finish", lambda t: t.finish(figures, failed=failed))

    # Reading the run directory ------------------------------------------------------------

    def _adapter_metrics(self, iteration: int, name: str) -> dict[str, Any] | None:
        """What a tuner saved beside an adapter it trained here (the local tuner's losses)."""
        from mafl_graph.finetune.tuners.local import ADAPTER_METRICS

        match = _ADAPTER.match(name)
        if not match:
            return None
        path = self.layout.adapter(iteration, int(match[1]), match[2]) / ADAPTER_METRICS
        try:
            found = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        return found if isinstance(found, dict) else None

    def _steps_before(self, iteration: int, name: str) -> int:
        """Optimizer steps the same agent's model took in earlier iterations."""
        total = 0
        for k in range(1, iteration):
            losses = (self._adapter_metrics(k, name) or {}).get("losses")
            total += len(losses) if isinstance(losses, list) else 0
        return total

    def _figures(self) -> list[Path]:
        """The report's figures: written now when matplotlib is there, else those on disk.

        They are the images the report embeds, so a figure the report gains is logged too.
        """
        if importlib.util.find_spec("matplotlib") is not None:
            from mafl_graph.report import write_report

            try:
                write_report(self.layout.root)
            except Exception as exc:  # the figures are a courtesy; the run has finished
                log.warning("tracking: the report's figures could not be made: %s", exc)
        try:
            names = _IMAGE.findall(self.layout.report.read_text())
        except OSError:  # no report: the figures' usual names
            names = [self.layout.figure(n).name for n in ("accuracy", "diversity")]
        root = self.layout.root.resolve()
        found = [(root / n).resolve() for n in dict.fromkeys(names)]
        return [p for p in found if p.is_file() and p.is_relative_to(root)]

    def _each(self, what: str, call: Any) -> None:
        for tracker in list(self.trackers):
            try:
                call(tracker)
            except Exception as exc:
                log.warning(
                    "tracking: %s failed in %s (%s: %s); the run goes on without it",
                    tracker.name or type(tracker).__name__,
                    what,
                    type(exc).__name__,
                    exc,
                )
                self.trackers.remove(tracker)
                if what != "finish":
                    try:
                        tracker.close(failed=True)
                    except Exception:
                        log.debug("tracking: closing %r failed too", tracker, exc_info=True)
