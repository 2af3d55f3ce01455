"""Fine-tuning: per-agent datasets from debate traces, and their provider formats.

Names are imported on first use, so that importing a light submodule (the tuning options, the
tuner registry) does not import the dataset and export code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mafl_graph._lazy import lazy_getattr

_EXPORTS: dict[str, str] = {
    **dict.fromkeys(
        (
            "AgentDataset",
            "DatasetStats",
            "Example",
            "TrainingMessage",
            "build_datasets",
            "estimate_tokens",
            "mix_counts",
        ),
        "mafl_graph.finetune.datasets",
    ),
    **dict.fromkeys(
        (
            "ExportResult",
            "InvalidDatasetError",
            "ValidationIssue",
            "export_datasets",
            "to_hf_dataset",
            "to_openai_jsonl",
            "to_vertex_jsonl",
            "validate_openai",
            "validate_vertex",
        ),
        "mafl_graph.finetune.export",
    ),
}

__all__ = [
    "AgentDataset",
    "DatasetStats",
    "Example",
    "ExportResult",
    "InvalidDatasetError",
    "TrainingMessage",
    "ValidationIssue",
    "build_datasets",
    "estimate_tokens",
    "export_datasets",
    "mix_counts",
    "to_hf_dataset",
    "to_openai_jsonl",
    "to_vertex_jsonl",
    "validate_openai",
    "validate_vertex",
]

if TYPE_CHECKING:
    from mafl_graph.finetune.datasets import (
        AgentDataset,
        DatasetStats,
        Example,
        TrainingMessage,
        build_datasets,
        estimate_tokens,
        mix_counts,
    )
    from mafl_graph.finetune.export import (
        ExportResult,
        InvalidDatasetError,
        ValidationIssue,
        export_datasets,
        to_hf_dataset,
        to_openai_jsonl,
        to_vertex_jsonl,
        validate_openai,
        validate_vertex,
    )


__getattr__ = lazy_getattr(__name__, _EXPORTS, globals())
