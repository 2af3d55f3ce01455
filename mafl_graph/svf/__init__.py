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

Measured (SmolLM2-135M-Instruct, float32, targets = the 90 MLP matrices of its 30 layers;
2 CPU cores, 2026-12-03, commit {commit}; ``python benchmarks/svf_size.py``):

{figures}
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
            "svf_linear",
            "weights_fingerprint",
        ),
        "mafl_graph.svf.decomposition",
    ),
    **dict.fromkeys(("SVFExpert",), "mafl_graph.svf.expert"),
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
    "DEFAULT_TARGETS",
    "Decomposition",
    "SVFExpert",
    "corrected_linear",
    "decompose",
    "layer_count",
    "merged_weight",
    "merged_weights",
    "mixed_experts",
    "normalize_layers",
    "row_singular_values",
    "select_targets",
    "svf_linear",
    "target_modules",
    "use_expert",
    "weights_fingerprint",
]

__getattr__ = lazy_getattr(__name__, _EXPORTS, globals())

if TYPE_CHECKING:
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
