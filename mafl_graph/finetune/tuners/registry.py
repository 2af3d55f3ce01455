"""The tuner backends by name: a new backend is one module plus one :func:`register_tuner`.

A backend is a class with the attributes and methods of
:class:`~mafl_graph.finetune.tuners.base.TunerBackend`. Built-in backends are registered by
import path, so that naming them imports neither torch nor a provider's SDK.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

    from mafl_graph.finetune.tuners.base import TunerBackend

_REGISTRY: dict[str, type[TunerBackend] | str] = {
    "local": "mafl_graph.finetune.tuners.local:LocalTuner",
    "openai": "mafl_graph.finetune.tuners.openai:OpenAITuner",
    "vertex": "mafl_graph.finetune.tuners.vertex:VertexTuner",
}
# Which backend tunes the models of each provider (the prefix of a "provider:model" string);
# built-ins are listed here so that resolving one imports nothing.
_PROVIDERS: dict[str, str] = {"local": "local", "openai": "openai", "google_genai": "vertex"}


def register_tuner(name: str, backend: type[TunerBackend] | str) -> None:
    """Make ``backend`` (a class, or ``"module:Class"``) the tuner called ``name``.

    Its ``provider`` attribute (if set) says which ``provider:model`` strings it tunes.
    """
    _REGISTRY[name] = backend
    if not isinstance(backend, str) and getattr(backend, "provider", None):
        _PROVIDERS[backend.provider] = name


def tuner_names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def tuner_class(name: str) -> type[TunerBackend]:
    """The backend class registered as ``name`` (imported on first use)."""
    try:
        entry = _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"Unknown tuning backend {name!r}; choose one of {', '.join(_REGISTRY)}."
        ) from None
    if isinstance(entry, str):
        module, _, attribute = entry.partition(":")
        entry = _REGISTRY[name] = getattr(importlib.import_module(module), attribute)
    return entry


def tuner_for_provider(provider: str) -> str:
    """The backend that tunes models of ``provider`` (e.g. "google_genai" -> "vertex")."""
    try:
        return _PROVIDERS[provider]
    except KeyError:
        raise ValueError(
            f"No tuning backend tunes {provider!r} models; tunable providers: "
            f"{', '.join(_PROVIDERS)} (e.g. local:smollm2, openai:gpt-4o-mini-2024-07-18, "
            "google_genai:gemini-2.0-flash)."
        ) from None


def get_tuner(name: str, run_dir: str | Path, **options: Any) -> TunerBackend:
    """The tuner called ``name``, writing under ``run_dir`` (``options``: its constructor's)."""
    return tuner_class(name)(run_dir, **options)


class TunerFactory:
    """Makes each iteration's tuner: ``factory(run_dir, iteration=k)``.

    It knows its backend class without building a tuner, so the loop can ask which dataset
    format to export before any client is made.
    """

    def __init__(self, backend: str, **options: Any) -> None:
        tuner_class(backend)  # an unknown name fails here, not iterations later
        self.backend = backend
        self.options = options

    @property
    def backend_class(self) -> type[TunerBackend]:
        return tuner_class(self.backend)

    @property
    def dataset_format(self) -> str:
        return self.backend_class.dataset_format

    def __call__(self, run_dir: str | Path, iteration: int = 1) -> TunerBackend:
        return get_tuner(self.backend, run_dir, **{**self.options, "iteration": iteration})

    def __repr__(self) -> str:
        return f"TunerFactory({self.backend!r})"
