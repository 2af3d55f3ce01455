"""Tuners: one interface, ``tune(agent, role, dataset, base) -> TunedModel``, and a registry.

``local`` (LoRA or full fine-tuning of the embedded model), ``openai`` (fine_tuning.jobs) and
``vertex`` (Gemini tuning through google-genai) are :class:`TunerBackend` subclasses registered
by name; a new backend is one module plus one :func:`register_tuner`. A :class:`TunedModel`
turns into the chat model of the next debate with ``.chat_model()`` (its backend's ``serve``);
iteration k+1 passes iteration k's TunedModel as ``base`` and so continues tuning it, as the
paper does.
"""

from __future__ import annotations

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
from mafl_graph.finetune.tuners.vertex import VertexTuneConfig, VertexTuner

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
