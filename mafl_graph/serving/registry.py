"""The serving backends by name: a new backend is one module plus one :func:`register_serving`.

Built-in backends are registered by import path, so that naming one imports nothing heavy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mafl_graph.serving.base import ServingBackend

_REGISTRY: dict[str, type[ServingBackend] | str] = {
    "in-process": "mafl_graph.serving.inprocess:InProcessServing",
    "vllm": "mafl_graph.serving.vllm:VLLMServing",
    "sglang": "mafl_graph.serving.vllm:SGLangServing",
}


def register_serving(name: str, backend: type[ServingBackend] | str) -> None:
    """Make ``backend`` (a class, or ``"module:Class"``) the serving backend called ``name``."""
    _REGISTRY[name] = backend


def serving_names() -> tuple[str, ...]:
    """Every registered serving backend's name."""
    return tuple(_REGISTRY)


def serving_class(name: str) -> type[ServingBackend]:
    """The backend class registered as ``name`` (imported on first use)."""
    try:
        entry = _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"Unknown serving backend {name!r}; choose one of {', '.join(_REGISTRY)}."
        ) from None
    if isinstance(entry, str):
        module, _, attribute = entry.partition(":")
        entry = _REGISTRY[name] = getattr(importlib.import_module(module), attribute)
    return entry
