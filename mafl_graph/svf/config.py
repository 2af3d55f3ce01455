"""The settings of SVF training runs, importable without torch or the graders (the CLI reads
its options from here)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class ReinforceConfig:
    """Every setting of one REINFORCE run; written to ``reinforce_config.json`` in its
    directory, and a resumed run must have the same."""

    learning_rate: float = field(default=2e-3, metadata={"help": "Adam's (the reference's)."})
    max_grad_norm: float = field(
        default=1e-3, metadata={"help": "The gradient norm over all z is clipped to this."}
    )
    batch_size: int = field(default=8, metadata={"help": "Training problems per step."})
    rollouts: int = field(default=1, metadata={"help": "Replies per problem per step."})
    temperature: float = field(
        default=0.0, metadata={"help": "0: greedy rollouts (the reference); else sampled."}
    )
    max_new_tokens: int = field(default=256, metadata={"help": "Longest reply generated."})
    kl_coefficient: float = field(
        default=0.0, metadata={"help": "β on KL(expert ‖ base) over the generated tokens."}
    )
    steps: int = field(default=100, metadata={"help": "Optimiser steps at most."})
    validate_every: int = field(default=10, metadata={"help": "Steps between validations."})
    patience: int | None = field(
        default=None,
        metadata={"help": "Stop after this many validations without improvement; None: never."},
    )
    dtype: str = field(default="float32", metadata={"help": "The base's dtype (z stays fp32)."})
    targets: tuple[str, ...] = field(
        default=("gate_proj", "up_proj", "down_proj"),
        metadata={"help": "Linear modules that get a z vector (the reference: the MLP's)."},
    )
    layers: tuple[int, ...] | None = field(
        default=None, metadata={"help": "Layer indices with z vectors (negative from the end)."}
    )
    seed: int = field(default=0, metadata={"help": "Seeds z, the batches and the sampling."})

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}; got {self.dtype!r}")
        for name in ("batch_size", "rollouts", "max_new_tokens", "steps", "validate_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1; got {getattr(self, name)!r}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience must be at least 1 or None; got {self.patience!r}")
        for name in ("learning_rate", "max_grad_norm"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive; got {getattr(self, name)!r}")
        if self.temperature < 0 or self.kl_coefficient < 0:
            raise ValueError(
                f"temperature and kl_coefficient must be >= 0; got {self.temperature!r} "
                f"and {self.kl_coefficient!r}"
            )
        if self.rollouts > 1 and self.temperature == 0:
            raise ValueError(
                f"rollouts={self.rollouts} greedy replies to one problem are all the same: "
                "set temperature > 0 to sample them, or rollouts=1"
            )

    def to_json(self) -> dict[str, Any]:
        """The settings as JSON values (tuples as lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


@dataclass(frozen=True)
class CEMConfig:
    """Settings of one few-shot search (the defaults are Transformer²'s)."""

    population: int = field(default=32, metadata={"help": "Candidates per generation."})
    elites: int = field(default=6, metadata={"help": "Best candidates the next one is fit to."})
    generations: int = field(default=50, metadata={"help": "Generations at most."})
    examples: int = field(default=10, metadata={"help": "Few-shot examples scored."})
    init_std: float = field(default=0.5, metadata={"help": "The first deviation of each α."})
    min_std: float = field(default=1e-3, metadata={"help": "Deviations never fall below."})
    max_new_tokens: int = field(default=256, metadata={"help": "Longest reply scored."})
    seed: int = field(default=0, metadata={"help": "Seeds the samples."})

    def __post_init__(self) -> None:
        for name in ("population", "elites", "generations", "examples", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"CEM {name} must be at least 1; got {getattr(self, name)}")
        if self.elites > self.population:
            raise ValueError(
                f"CEM elites ({self.elites}) cannot exceed the population ({self.population})"
            )
        if not self.init_std > 0 or not self.min_std > 0:
            raise ValueError("CEM init_std and min_std must be positive")
