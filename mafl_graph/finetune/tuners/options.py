"""Every tuning option of every backend, with its default and help text, in one place.

``mafl tune``, ``mafl loop`` / ``compare`` / ``sweep`` and :class:`~mafl_graph.config.LoopConfig`
read their tuning options from :class:`TuneOptions`; each backend's ``from_options`` takes the
ones it understands and leaves ``None`` to its own config's defaults.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


def option(default: Any, help: str) -> Any:
    """A dataclass field that is also a command-line option (``help`` in its metadata)."""
    return dataclasses.field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class TuneOptions:
    """How each agent's model is tuned; ``None`` means the backend's own default."""

    tuner: str | None = option(
        None,
        "tuning: the backend (local, svf, trl, openai, vertex); default: the model's provider's",
    )
    epochs: float | None = option(None, "tuning: passes over each dataset")
    learning_rate: float | None = option(
        None, "tuning: local: learning rate; hosted: learning-rate multiplier"
    )
    batch_size: int | None = option(None, "tuning: examples per step")
    max_steps: int | None = option(None, "tuning, local: at most this many steps")
    lora_r: int = option(16, "tuning, local: LoRA rank")
    lora_alpha: int | None = option(None, "tuning, local: LoRA alpha (default: twice the rank)")
    full: bool = option(False, "tuning, local: full fine-tuning instead of LoRA")
    accelerate_config: str | None = option(
        None,
        "tuning, trl: accelerate config (multi_gpu, fsdp, deepspeed_zero3, or a file); "
        "default: this process",
    )
    num_processes: int | None = option(
        None, "tuning, trl: processes (GPUs) to launch; default: the config's"
    )
    base: str | None = option(
        None, "tuning: the model iteration 1 tunes (default: the society's model)"
    )
    suffix: str | None = option(None, "tuning, openai: tuned model name suffix")
    poll_interval: float = option(10.0, "tuning, hosted: first wait between polls (s)")
    project: str | None = option(None, "tuning, vertex: Google Cloud project")
    location: str = option("us-central1", "tuning, vertex: region")
    bucket: str | None = option(None, "tuning, vertex: gs:// bucket to upload datasets to")
