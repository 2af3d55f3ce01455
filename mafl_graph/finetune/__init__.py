"""Fine-tuning: per-agent datasets from debate traces, and their provider formats."""

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
