"""The settings of the two clustering methods: typed, with defaults and help, checked when
made. The CLI reads its options from these (so library and command line share defaults);
this module imports nothing heavy, so ``mafl --help`` stays fast."""

from __future__ import annotations

import math
from dataclasses import dataclass

from mafl_graph.finetune.tuners.options import option

PICKS = ("reply", "likelihood")


@dataclass(frozen=True)
class MCEMConfig:
    """Every setting of one Monte Carlo EM run (written to its manifest)."""

    k: int = option(3, "piles: LoRA experts on the one base")
    epochs: int = option(1, "mc-em: passes over the corpus")
    learning_rate: float = option(1e-3, "mc-em: AdamW learning rate of each expert's steps")
    temperature: float = option(
        1.0,
        "mc-em: of the draw, P(e) ∝ (ppl_e/min ppl)^(-1/T): 1 is ∝ 1/perplexity, towards 0 "
        "the argmin, large uniform",
    )
    docs_per_step: int = option(
        1, "mc-em: documents scored together; each expert then steps once on those it drew"
    )
    seed: int = option(0, "seed of the document order, the draws and the LoRA init")
    lora_r: int = option(8, "mc-em: LoRA rank of each expert")
    lora_alpha: int = option(16, "mc-em: LoRA alpha")
    checkpoint_every: int = option(32, "mc-em: documents between checkpoints (resume points)")
    model: str = option("smollm2", "mc-em: the base model (smollm2, a GGUF or HF directory)")
    dtype: str = option("float32", "mc-em: weights in memory")

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"k must be at least 1; got k={self.k}")
        for name in ("epochs", "docs_per_step", "checkpoint_every", "lora_r"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1; got {getattr(self, name)}")
        if not self.temperature > 0 or math.isinf(self.temperature):
            raise ValueError(f"temperature must be positive and finite; got {self.temperature}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive; got {self.learning_rate}")


@dataclass(frozen=True)
class UnionFindConfig:
    """Every setting of one LLM-guided union-find run (written to its manifest)."""

    k: int = option(3, "piles: union-find stops when this many clusters are left")
    candidates: int = option(
        5, "union-find: candidates offered per question (bounds each call's cost)"
    )
    summary_documents: int = option(
        3, "union-find: documents shown to summarise a cluster (those nearest its centroid)"
    )
    excerpt_chars: int = option(
        240, "union-find: each shown document is cut to this many characters"
    )
    max_rounds: int = option(30, "union-find: at most this many rounds (one call per cluster)")
    patience: int = option(
        3, "union-find: rounds in a row that unite nothing before the run stops with an error"
    )
    concurrency: int = option(8, "union-find: questions sent at once (and journalled together)")
    seed: int = option(0, "seed of the order in which unions are applied")
    pick: str = option(
        "reply",
        "union-find: reply (read the model's answer; any chat model) or likelihood (the "
        "candidate number the model finds most likely as its answer; local models)",
    )

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"k must be at least 1; got k={self.k}")
        if self.pick not in PICKS:
            raise ValueError(f"pick must be one of {', '.join(PICKS)}; got {self.pick!r}")
        names = ("candidates", "summary_documents", "excerpt_chars", "max_rounds", "patience")
        for name in (*names, "concurrency"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1; got {getattr(self, name)}")
