"""Tuners: one protocol, ``tune(agent, role, dataset, base, config) -> TunedModel``.

``local`` (LoRA or full fine-tuning of the embedded model), ``openai`` (fine_tuning.jobs) and
``vertex`` (Gemini tuning through google-genai). A :class:`TunedModel` turns into the chat
model of the next debate with ``.chat_model()``; iteration k+1 passes iteration k's TunedModel
as ``base`` and so continues tuning it, as the paper does.
"""

from __future__ import annotations

from typing import Any

from mafl_graph.finetune.tuners.base import (
    BACKENDS,
    Backend,
    Backoff,
    Dataset,
    JobLedger,
    TunedModel,
    Tuner,
    TuningError,
    poll,
)
from mafl_graph.finetune.tuners.local import LocalTuneConfig, LocalTuner
from mafl_graph.finetune.tuners.openai import OpenAITuneConfig, OpenAITuner
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
    "JobLedger",
    "LocalTuneConfig",
    "LocalTuner",
    "OpenAITuneConfig",
    "OpenAITuner",
    "TuneOutcome",
    "TunedModel",
    "Tuner",
    "TuningError",
    "VertexTuneConfig",
    "VertexTuner",
    "find_datasets",
    "get_tuner",
    "load_tuned",
    "poll",
    "save_tuned",
    "tune_run",
    "tuned_society",
]


def get_tuner(name: str, run_dir: Any, **options: Any) -> Tuner:
    """The tuner called ``name`` ("local", "openai" or "vertex"), writing under ``run_dir``."""
    if name == "local":
        return LocalTuner(run_dir, **options)
    if name == "openai":
        return OpenAITuner(run_dir, **options)
    if name == "vertex":
        return VertexTuner(run_dir, **options)
    raise ValueError(f"Unknown tuning backend {name!r}; choose one of {', '.join(BACKENDS)}.")
