"""The tuner backends by name: a new backend is one module plus one :func:`register_tuner`.

A backend is a class with the attributes and methods of
:class:`~mafl_graph.finetune.tuners.base.TunerBackend`. Built-in backends are registered by
import path, so that naming them imports neither torch nor a provider's SDK.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, overload

if TYPE_CHECKING:
    from pathlib import Path

    from mafl_graph.finetune.tuners.base import TunerBackend
    from mafl_graph.finetune.tuners.options import TuneOptions

_REGISTRY: dict[str, type[TunerBackend] | str] = {
    "local": "mafl_graph.finetune.tuners.local:LocalTuner",
    "openai": "mafl_graph.finetune.tuners.openai:OpenAITuner",
    "vertex": "mafl_graph.finetune.tuners.vertex:VertexTuner",
    # SVF tunes local models too, but is registered by path, so "local:" stays LoRA's.
    "svf": "mafl_graph.finetune.tuners.svf:SVFTuner",
    "trl": "mafl_graph.finetune.tuners.trl_tuner:TRLTuner",
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


class _Names(Sequence[str]):
    """The registered backends' names, read when used (so later registrations count)."""

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[str]: ...
    def __getitem__(self, index: int | slice) -> str | Sequence[str]:
        return tuner_names()[index]

    def __len__(self) -> int:
        return len(_REGISTRY)

    def __repr__(self) -> str:
        return repr(tuner_names())


BACKENDS: Sequence[str] = _Names()
"""Every registered backend's name, as :func:`tuner_names` gives them when read."""


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
    format to export before any client is made. With ``options`` it builds each tuner with
    the backend's ``from_options`` (``model``, ``seed``, ``retry`` and ``record`` as there);
    without, with the constructor. Other keywords go to the constructor as they are.
    """

    def __init__(
        self,
        backend: str,
        options: TuneOptions | None = None,
        *,
        model: str | None = None,
        seed: int = 0,
        retry: bool = False,
        record: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        tuner_class(backend)  # an unknown name fails here, not iterations later
        self.backend = backend
        self.tune_options = options
        # What from_options gets besides the options, for every iteration's tuner.
        self.build: dict[str, Any] = {
            "model": model,
            "seed": seed,
            "retry": retry,
            "record": record,
        }
        self.options = kwargs

    @property
    def backend_class(self) -> type[TunerBackend]:
        return tuner_class(self.backend)

    @property
    def dataset_format(self) -> str:
        return self.backend_class.dataset_format

    @property
    def config(self) -> Any:
        """The typed config each tuner gets (for the manifest: ``dataclasses.asdict`` of it)."""
        if self.tune_options is None:
            config = self.options.get("config")
            return config if config is not None else self.backend_class.config_type()
        build = self.build
        return self.backend_class.config_from(
            self.tune_options, seed=build["seed"], record=build["record"]
        )

    def __call__(self, run_dir: str | Path, iteration: int = 1) -> TunerBackend:
        if self.tune_options is None:  # model and retry, if given, are the constructor's
            given = {k: v for k, v in self.build.items() if k in ("model", "retry") and v}
            return get_tuner(self.backend, run_dir, **given, **self.options, iteration=iteration)
        build = {**self.build, "model": self.build["model"] or ""}
        return self.backend_class.from_options(
            run_dir, self.tune_options, iteration=iteration, **build, **self.options
        )

    def __repr__(self) -> str:
        return f"TunerFactory({self.backend!r})"
