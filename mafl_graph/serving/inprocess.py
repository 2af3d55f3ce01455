"""The default serving backend: every model answers in this process, as its tuner serves it.

The embedded engine holds one base and switches adapters per request; a hosted tuner's model
(OpenAI, Vertex AI) is called where its provider serves it. Nothing is registered anywhere, so
:meth:`prepare` hands the tuned models back as they are.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from mafl_graph.finetune.tuners.base import TunedModel
from mafl_graph.serving.base import Key, ServingBackend

if TYPE_CHECKING:
    from typing import Self

    from mafl_graph.serving.options import ServingOptions


class InProcessServing(ServingBackend):
    """Each tuned model's chat model is its tuner's ``serve`` (``TunedModel.chat_model``)."""

    name = "in-process"

    @classmethod
    def from_options(cls, options: ServingOptions, *, model: str, base: str | None = None) -> Self:
        given = [
            f"--{name.replace('_', '-')}"
            for name in ("serving_url", "serving_path_map", "serving_max_lora_rank")
            if getattr(options, name) is not None
        ]
        if given:
            raise ValueError(
                f"{', '.join(given)} apply to a serving server; add --serving vllm or "
                "--serving sglang, or leave them out to serve in this process."
            )
        return cls()

    def prepare(self, tuned: Mapping[Key, TunedModel]) -> dict[Key, TunedModel]:
        return dict(tuned)
