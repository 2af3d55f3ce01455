"""What every clustering method returns, and where it is kept in a run directory.

A method maps the corpus to k piles (one label per document, in the corpus's order) and says
what that cost. Results are written atomically as ``clusters/<method>/result.json``; a method
whose result exists is not run again.
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mafl_graph.rundir import write_json

METHODS = ("mc-em", "llm-union-find", "kmeans", "random", "oracle", "single")
"""Clustering methods and baselines; ``single`` is the one-pile baseline (one model on all)."""


@dataclass(frozen=True)
class Cost:
    """What a clustering run spent: model calls and their tokens, training steps, seconds."""

    model_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    forward_passes: int = 0
    training_steps: int = 0
    seconds: float = 0.0


@dataclass(frozen=True)
class ClusterResult:
    """``labels[i]``: the pile (0..k-1) of document ``i`` of the corpus."""

    method: str
    k: int
    labels: tuple[int, ...]
    ids: tuple[str, ...]
    cost: Cost = field(default_factory=Cost)
    details: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.labels) != len(self.ids):
            raise ValueError(f"{len(self.labels)} labels for {len(self.ids)} documents")
        if bad := sorted({x for x in self.labels if not 0 <= x < self.k}):
            raise ValueError(f"labels must lie in 0..{self.k - 1}; got {bad[:5]}")

    @property
    def sizes(self) -> list[int]:
        return [self.labels.count(p) for p in range(self.k)]

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "labels": list(self.labels), "ids": list(self.ids)}

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> ClusterResult:
        return cls(
            method=record["method"],
            k=int(record["k"]),
            labels=tuple(int(x) for x in record["labels"]),
            ids=tuple(record["ids"]),
            cost=Cost(**record.get("cost", {})),
            details=dict(record.get("details", {})),
        )


def relabel(labels: Iterable[Hashable]) -> tuple[int, ...]:
    """Labels renumbered 0, 1, … in order of first appearance (any hashable labels in)."""
    seen: dict[Hashable, int] = {}
    return tuple(seen.setdefault(x, len(seen)) for x in labels)


def write_result(path: str | Path, result: ClusterResult) -> None:
    write_json(Path(path), result.as_dict())


def read_result(path: str | Path) -> ClusterResult:
    path = Path(path)
    try:
        return ClusterResult.from_dict(json.loads(path.read_text()))
    except FileNotFoundError:
        raise FileNotFoundError(
            f"no clustering at {path}; run `mafl experts cluster` with that method first"
        ) from None
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"{path} is unreadable ({exc}); delete it and cluster again") from exc
