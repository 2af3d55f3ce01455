"""The run directory: the unit of reproducibility.

It holds the settings that made a run (``manifest.json``), the checkpoints, and the results.
Re-running into the same directory resumes; re-running with other settings is refused rather
than silently mixing two experiments' threads.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mafl_graph.redact import check_no_secrets

if TYPE_CHECKING:
    from mafl_graph.debate.run import DebateResult

_PACKAGES = ("mafl-graph", "langgraph", "langchain-core", "transformers", "torch")


@dataclass(frozen=True)
class RunLayout:
    """Every path of a run directory; nothing else in the package spells one.

    ``mafl debate`` writes a single debate run (``debates``, ``results``, ``summary``);
    ``mafl datasets`` and ``mafl tune`` add ``datasets_dir()`` and ``tuning_dir(k)``;
    the loop writes one ``iteration(k)`` folder per iteration; ``mafl compare`` one
    sub-run per method (``method(name)``).
    """

    root: Path

    def __init__(self, root: str | Path) -> None:
        object.__setattr__(self, "root", Path(root))

    # One run -----------------------------------------------------------------------------
    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def usage(self) -> Path:
        return self.root / "usage.json"

    @property
    def tuned(self) -> Path:
        """The latest iteration's tuned models."""
        return self.root / "tuned.json"

    @property
    def debates(self) -> Path:
        """The checkpoints of ``mafl debate``."""
        return self.root / "debates.sqlite"

    @property
    def results(self) -> Path:
        return self.root / "results.jsonl"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def report(self) -> Path:
        return self.root / "report.md"

    @property
    def sweep_table(self) -> Path:
        """``mafl sweep``'s table of every grid point."""
        return self.root / "sweep.md"

    def figure(self, name: str) -> Path:
        return self.root / f"{name}.png"

    # Iterations of the loop --------------------------------------------------------------
    def iteration(self, k: int) -> Path:
        return self.root / f"iter{k}"

    def eval_db(self, k: int) -> Path:
        """The society of iteration ``k`` (0: untuned) debating the test split."""
        return self.iteration(k) / "eval.sqlite"

    def train_db(self, k: int) -> Path:
        return self.iteration(k) / "train.sqlite"

    def datasets_dir(self, k: int | None = None) -> Path:
        """Per-agent datasets: the loop's iteration ``k``, or ``mafl datasets``' (None)."""
        return (self.root if k is None else self.iteration(k)) / "datasets"

    def dataset_stats(self, k: int | None = None) -> Path:
        return self.datasets_dir(k) / "stats.json"

    # Tuning ------------------------------------------------------------------------------
    def tuning_dir(self, k: int) -> Path:
        return self.root / "tuning" / f"iter{k}"

    def tuned_at(self, k: int) -> Path:
        """Iteration ``k``'s tuned models."""
        return self.tuning_dir(k) / "tuned.json"

    def ledger(self, k: int, agent: int, role: str) -> Path:
        return self.tuning_dir(k) / f"agent{agent}-{role}.json"

    def tune_config(self, k: int, backend: str) -> Path:
        return self.tuning_dir(k) / f"{backend}-config.json"

    def adapter(self, k: int, agent: int, role: str) -> Path:
        """Where a local tuner writes agent ``agent``'s ``role`` model of iteration ``k``."""
        return self.root / "adapters" / f"iter{k}" / f"agent{agent}-{role}"

    # Sub-runs ----------------------------------------------------------------------------
    def method(self, name: str) -> RunLayout:
        """A method's run inside a ``mafl compare`` directory (or a sweep's grid point)."""
        return RunLayout(self.root / name)

    def transfer(self, task: str) -> RunLayout:
        """``mafl eval``'s evaluation of the base and tuned society on another task."""
        return RunLayout(self.root / "transfer" / task)

    def transfer_db(self, society: str) -> Path:
        """In a transfer layout: the debates of the ``base`` or ``tuned`` society."""
        return self.root / f"{society}.sqlite"


def prepare_run_dir(run_dir: Path, settings: Mapping[str, Any]) -> None:
    """Create ``run_dir`` with its manifest, or check that it was made with ``settings``.

    Settings that look like credentials are refused: the manifest is meant to be shared.
    """
    check_no_secrets(settings, "settings")
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"the run directory {run_dir} is a file; choose a directory.")
    run_dir.mkdir(parents=True, exist_ok=True)
    manifest = RunLayout(run_dir).manifest
    settings = json.loads(json.dumps(settings))  # the form it takes on disk
    if manifest.exists():
        try:
            saved = read_settings(manifest)
        except ValueError as exc:
            raise ValueError(f"{exc}; move the directory aside or use another.") from exc
        changed = {k: (saved.get(k), v) for k, v in settings.items() if saved.get(k) != v}
        if changed:
            diff = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items())
            raise ValueError(
                f"{run_dir} holds a run made with other settings ({diff}); "
                "resume it with its own settings or choose a new run directory."
            )
        return
    write_json(manifest, {"settings": settings, "versions": _versions()})


def read_settings(manifest: Path) -> dict[str, Any]:
    """The ``settings`` object of a manifest, or a ValueError saying what is wrong with it."""
    try:
        saved = json.loads(manifest.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{manifest} is unreadable ({exc})") from exc
    settings = saved.get("settings") if isinstance(saved, dict) else None
    if not isinstance(settings, dict):
        raise ValueError(f"{manifest} is unreadable (no 'settings' object in it)")
    return settings


def write_results(run_dir: Path, results: Sequence[DebateResult], summary: Any) -> None:
    """Results per problem (JSONL) and the summary (JSON), rewritten atomically."""
    lines = "".join(json.dumps(asdict(r)) + "\n" for r in results)
    layout = RunLayout(run_dir)
    _write_text(layout.results, lines)
    write_json(layout.summary, summary)


def _versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def write_json(path: Path, value: Any, *, default: Any = None) -> None:
    """``value`` as indented JSON (``default``: as json.dumps), written atomically."""
    _write_text(path, json.dumps(value, indent=2, default=default) + "\n")


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
