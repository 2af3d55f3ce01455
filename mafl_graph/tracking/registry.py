"""The trackers by name: a new tracker is one module plus one :func:`register_tracker`.

Built-in trackers are registered by import path, so that naming one imports nothing until
the run starts; a tracker whose package is missing is refused when the loop is built, with
the extra that installs it.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Sequence

from mafl_graph.tracking.base import Tracker

_REGISTRY: dict[str, type[Tracker] | str] = {
    "wandb": "mafl_graph.tracking.wandb:WandbTracker",
    "mlflow": "mafl_graph.tracking.mlflow:MlflowTracker",
    "tensorboard": "mafl_graph.tracking.tensorboard:TensorBoardTracker",
}


def register_tracker(name: str, tracker: type[Tracker] | str) -> None:
    """Make ``tracker`` (a :class:`Tracker` class, or ``"module:Class"``) known as ``name``."""
    _REGISTRY[name] = tracker


def unregister_tracker(name: str) -> None:
    """Forget the tracker ``name`` (tests register and remove their own)."""
    _REGISTRY.pop(name, None)


def tracker_names() -> tuple[str, ...]:
    """Every registered tracker's name."""
    return tuple(_REGISTRY)


def tracker_class(name: str) -> type[Tracker]:
    """The tracker class registered as ``name`` (its module imported on first use)."""
    try:
        entry = _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"Unknown tracker {name!r}; report_to takes {', '.join(_REGISTRY)} "
            "(or 'all', 'none', or a Tracker object)."
        ) from None
    if isinstance(entry, str):
        module, _, attribute = entry.partition(":")
        entry = _REGISTRY[name] = getattr(importlib.import_module(module), attribute)
    return entry


def make_trackers(report_to: str | Tracker | Iterable[str | Tracker] | None) -> list[Tracker]:
    """The trackers ``report_to`` asks for, each checked to be installed.

    ``report_to``: names (``"wandb"``, a comma-separated ``"wandb,mlflow"``, ``"all"``: every
    registered tracker whose package is installed, ``"none"``) or :class:`Tracker` objects.
    """
    if report_to is None:
        return []
    items: Sequence[str | Tracker] = (
        [report_to] if isinstance(report_to, str | Tracker) else list(report_to)
    )
    names: list[str] = []
    trackers: list[Tracker] = []
    for item in items:
        if isinstance(item, Tracker):
            trackers.append(item)
            continue
        if not isinstance(item, str):
            raise TypeError(f"report_to takes tracker names or Tracker objects; got {item!r}.")
        names += [n.strip() for n in item.split(",") if n.strip()]
    if "all" in names:
        names = [n for n in names if n != "all"] + [n for n in _REGISTRY if _installed(n)]
    for name in dict.fromkeys(n for n in names if n != "none"):
        cls = tracker_class(name)
        cls.check_installed()
        trackers.append(cls())
    return trackers


def _installed(name: str) -> bool:
    try:
        tracker_class(name).check_installed()
    except ImportError:
        return False
    return True
