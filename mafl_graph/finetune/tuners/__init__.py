"""Tuners: one interface, ``tune(agent, role, dataset, base) -> TunedModel``, and a registry.

``local`` (LoRA or full fine-tuning of the embedded model), ``openai`` (fine_tuning.jobs) and
``vertex`` (Gemini tuning through google-genai) are :class:`TunerBackend` subclasses registered
by name; a new backend is one module plus one :func:`register_tuner`. A :class:`TunedModel`
turns into the chat model of the next debate with ``.chat_model()`` (its backend's ``serve``);
iteration k+1 passes iteration k's TunedModel as ``base`` and so continues tuning it, as the
paper does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mafl_graph._lazy import lazy_getattr

if TYPE_CHECKING:
    from mafl_graph.finetune.tuners.base import (
        BACKENDS,
        Backend,
        Backoff,
        Dataset,
        JobLedger,
        TunedModel,
        Tuner,
        TunerBackend,
        TuningError,
        poll,
    )
    from mafl_graph.finetune.tuners.hosted import HostedTuner
    from mafl_graph.finetune.tuners.local import LocalTuneConfig, LocalTuner
    from mafl_graph.finetune.tuners.openai import OpenAITuneConfig, OpenAITuner
    from mafl_graph.finetune.tuners.options import TuneOptions
    from mafl_graph.finetune.tuners.registry import (
        TunerFactory,
        get_tuner,
        register_tuner,
        tuner_class,
        tuner_for_provider,
        tuner_names,
    )
    from mafl_graph.finetune.tuners.run import (
        TuneOutcome,
        find_datasets,
        load_tuned,
        save_tuned,
        tune_run,
        tuned_society,
    )
    from mafl_graph.finetune.tuners.trl_tuner import TRLTuneConfig, TRLTuner
    from mafl_graph.finetune.tuners.vertex import VertexTuneConfig, VertexTuner

# Where each name lives: imported on first use, so that the options and the registry stay
# light (``mafl --help`` imports neither torch nor a provider's SDK).
_EXPORTS: dict[str, str] = {
    "BACKENDS": "mafl_graph.finetune.tuners.base",
    "Backend": "mafl_graph.finetune.tuners.base",
    "Backoff": "mafl_graph.finetune.tuners.base",
    "Dataset": "mafl_graph.finetune.tuners.base",
    "JobLedger": "mafl_graph.finetune.tuners.base",
    "TunedModel": "mafl_graph.finetune.tuners.base",
    "Tuner": "mafl_graph.finetune.tuners.base",
    "TunerBackend": "mafl_graph.finetune.tuners.base",
    "TuningError": "mafl_graph.finetune.tuners.base",
    "poll": "mafl_graph.finetune.tuners.base",
    "HostedTuner": "mafl_graph.finetune.tuners.hosted",
    "LocalTuneConfig": "mafl_graph.finetune.tuners.local",
    "LocalTuner": "mafl_graph.finetune.tuners.local",
    "OpenAITuneConfig": "mafl_graph.finetune.tuners.openai",
    "OpenAITuner": "mafl_graph.finetune.tuners.openai",
    "TuneOptions": "mafl_graph.finetune.tuners.options",
    "TunerFactory": "mafl_graph.finetune.tuners.registry",
    "get_tuner": "mafl_graph.finetune.tuners.registry",
    "register_tuner": "mafl_graph.finetune.tuners.registry",
    "tuner_class": "mafl_graph.finetune.tuners.registry",
    "tuner_for_provider": "mafl_graph.finetune.tuners.registry",
    "tuner_names": "mafl_graph.finetune.tuners.registry",
    "TuneOutcome": "mafl_graph.finetune.tuners.run",
    "find_datasets": "mafl_graph.finetune.tuners.run",
    "load_tuned": "mafl_graph.finetune.tuners.run",
    "save_tuned": "mafl_graph.finetune.tuners.run",
    "tune_run": "mafl_graph.finetune.tuners.run",
    "tuned_society": "mafl_graph.finetune.tuners.run",
    "TRLTuneConfig": "mafl_graph.finetune.tuners.trl_tuner",
    "TRLTuner": "mafl_graph.finetune.tuners.trl_tuner",
    "VertexTuneConfig": "mafl_graph.finetune.tuners.vertex",
    "VertexTuner": "mafl_graph.finetune.tuners.vertex",
}

__all__ = [
    "BACKENDS",
    "Backend",
    "Backoff",
    "Dataset",
    "HostedTuner",
    "JobLedger",
    "LocalTuneConfig",
    "LocalTuner",
    "OpenAITuneConfig",
    "OpenAITuner",
    "TRLTuneConfig",
    "TRLTuner",
    "TuneOptions",
    "TuneOutcome",
    "TunedModel",
    "Tuner",
    "TunerBackend",
    "TunerFactory",
    "TuningError",
    "VertexTuneConfig",
    "VertexTuner",
    "find_datasets",
    "get_tuner",
    "load_tuned",
    "poll",
    "register_tuner",
    "save_tuned",
    "tune_run",
    "tuned_society",
    "tuner_class",
    "tuner_for_provider",
    "tuner_names",
]


__getattr__ = lazy_getattr(__name__, _EXPORTS, globals())
