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
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any

from mafl_graph.debate.run import DebateResult
from mafl_graph.redact import check_no_secrets

_PACKAGES = ("mafl-graph", "langgraph", "langchain-core", "transformers", "torch")


def prepare_run_dir(run_dir: Path, settings: Mapping[str, Any]) -> None:
    """Create ``run_dir`` with its manifest, or check that it was made with ``settings``.

    Settings that look like credentials are refused: the manifest is meant to be shared.
    """
    check_no_secrets(settings, "settings")
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"the run directory {run_dir} is a file; choose a directory.")
    run_dir.mkdir(parents=True, exist_ok=True)
    manifest = run_dir / "manifest.json"
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
    _write_text(run_dir / "results.jsonl", lines)
    write_json(run_dir / "summary.json", summary)


def _versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def write_json(path: Path, value: Any) -> None:
    _write_text(path, json.dumps(value, indent=2) + "\n")


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
