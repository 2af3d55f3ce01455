"""Singular Value Fine-tuning (SVF; Transformer², Sun et al. 2025): experts that rescale the
singular values of a base model's weight matrices.

Names are imported on first use (the modules import torch).

    from mafl_graph.local.loading import prepare_model_dir, shared_base
    from mafl_graph.svf import SVFExpert, decompose, mixed_experts, use_expert

    model = shared_base(prepare_model_dir("smollm2"), "float32")  # a view of one's own
    decomposition = decompose(model)  # MLP projections of every layer; cached on disk
    expert = SVFExpert.init(decomposition, seed=0)
    with use_expert(model, decomposition, expert):
        ...  # the model is the expert
    with torch.no_grad(), mixed_experts(model, decomposition, [expert, None]):
        model(ids)  # row 0 through the expert, row 1 through the base

Measured with ``python benchmarks/svf_size.py`` (SmolLM2-135M-Instruct in float32; targets:
the 90 MLP matrices of its 30 layers; Intel Xeon, 2 cores shared with another process, 1 torch
thread; 2026-12-03, commit 5c22fd2):

- Decomposition: 9.4 s to compute (once per base), a 418 MiB cache file; from the cache
  0.24 s (0.2 s of it hashing the weights to find the file), 0.30 s with every page read.
- An expert: 51,840 parameters, 210 KiB on disk; a LoRA adapter of rank 16 on every linear
  layer: 4,884,480 parameters, 18.6 MiB in float32. Ratio 1/91 (parameters 1/94).
- 8 rows, each its own expert, against 8 base rows, through the 90 target layers:
  a decoding step (1 token a row) costs 1.26x with ``method="factors"`` (the default),
  2.28x with ``"correction"``, 3.61x with ``"merged"``; a 64-token prompt 1.43x, 2.59x and
  1.53x. With half the rows on the base: 1.76x / 2.29x / 2.61x and 1.24x / 2.20x / 1.34x.
  The whole model on 8 x 64 tokens: 1.17x, 1.63x, 1.25x. Opening :func:`mixed_experts` for 8
  experts takes 0.01 s, except ``"merged"``: 12 s (merging each expert's 90 matrices).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mafl_graph._lazy import lazy_getattr

_EXPORTS: dict[str, str] = {
    **dict.fromkeys(
        (
            "DEFAULT_TARGETS",
            "Decomposition",
            "decompose",
            "layer_count",
            "normalize_layers",
            "select_targets",
            "weights_fingerprint",
        ),
        "mafl_graph.svf.decomposition",
    ),
    **dict.fromkeys(("SVFExpert",), "mafl_graph.svf.expert"),
    **dict.fromkeys(("CEMConfig", "ReinforceConfig"), "mafl_graph.svf.config"),
    **dict.fromkeys(
        (
            "ClassifierDispatch",
            "DomainClassification",
            "ExpertLibrary",
            "FixedExpert",
            "PromptDispatch",
            "SelfAdaptiveChatModel",
        ),
        "mafl_graph.svf.adapt",
    ),
    **dict.fromkeys(("few_shot_cem", "mix_experts"), "mafl_graph.svf.cem"),
    **dict.fromkeys(("compare_tuning", "write_compare_report"), "mafl_graph.svf.compare"),
    **dict.fromkeys(("ReinforceResult", "train_reinforce"), "mafl_graph.svf.reinforce"),
    **dict.fromkeys(("Evaluations", "answer_flags", "train_expert"), "mafl_graph.svf.runs"),
    **dict.fromkeys(
        (
            "merged_weight",
            "merged_weights",
            "mixed_experts",
            "corrected_linear",
            "row_singular_values",
            "svf_linear",
            "target_modules",
            "use_expert",
        ),
        "mafl_graph.svf.apply",
    ),
}

__all__ = [
    "CEMConfig",
    "ClassifierDispatch",
    "DEFAULT_TARGETS",
    "Decomposition",
    "DomainClassification",
    "Evaluations",
    "ExpertLibrary",
    "FixedExpert",
    "PromptDispatch",
    "ReinforceConfig",
    "ReinforceResult",
    "SVFExpert",
    "SelfAdaptiveChatModel",
    "answer_flags",
    "compare_tuning",
    "corrected_linear",
    "decompose",
    "few_shot_cem",
    "layer_count",
    "merged_weight",
    "merged_weights",
    "mix_experts",
    "mixed_experts",
    "normalize_layers",
    "row_singular_values",
    "select_targets",
    "svf_linear",
    "target_modules",
    "train_expert",
    "train_reinforce",
    "use_expert",
    "weights_fingerprint",
    "write_compare_report",
]

__getattr__ = lazy_getattr(__name__, _EXPORTS, globals())

if TYPE_CHECKING:
    from mafl_graph.svf.adapt import (
        ClassifierDispatch,
        DomainClassification,
        ExpertLibrary,
        FixedExpert,
        PromptDispatch,
        SelfAdaptiveChatModel,
    )
    from mafl_graph.svf.apply import (
        corrected_linear,
        merged_weight,
        merged_weights,
        mixed_experts,
        row_singular_values,
        svf_linear,
        target_modules,
        use_expert,
    )
    from mafl_graph.svf.cem import few_shot_cem, mix_experts
    from mafl_graph.svf.compare import compare_tuning, write_compare_report
    from mafl_graph.svf.config import CEMConfig, ReinforceConfig
    from mafl_graph.svf.decomposition import (
        DEFAULT_TARGETS,
        Decomposition,
        decompose,
        layer_count,
        normalize_layers,
        select_targets,
        weights_fingerprint,
    )
    from mafl_graph.svf.expert import SVFExpert
    from mafl_graph.svf.reinforce import ReinforceResult, train_reinforce
    from mafl_graph.svf.runs import Evaluations, answer_flags, train_expert
