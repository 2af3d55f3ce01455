"""Where the society's models are served, as options: one set of defaults for library and CLI.

:class:`~mafl_graph.config.LoopConfig` holds a :class:`ServingOptions`; ``mafl loop`` reads its
``--serving*`` options from here. Nothing in it is recorded in a manifest: a resumed run may
reach its server at another address, and the API key is only ever read from the environment.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from mafl_graph.finetune.tuners.options import option

if TYPE_CHECKING:
    from mafl_graph.serving.base import ServingBackend

DEFAULT_SERVING = "in-process"


@dataclass(frozen=True)
class ServingOptions:
    """Which serving backend serves the society, and how to reach it."""

    serving: str = option(
        DEFAULT_SERVING,
        "serving: in-process (the embedded engine), vllm or sglang (one OpenAI-compatible "
        "server holds every agent's adapter on one base), or a registered backend",
    )
    serving_url: str | None = option(
        None, "serving, vllm/sglang: the server's base URL, e.g. http://gpu-box:8000/v1"
    )
    serving_base: str | None = option(
        None,
        "serving, vllm/sglang: the base model's name on the server (default: the tuned base, "
        "smollm2 as HuggingFaceTB/SmolLM2-135M-Instruct)",
    )
    serving_api_key_env: str | None = option(
        None,
        "serving, vllm/sglang: the environment variable holding the server's API key "
        "(default VLLM_API_KEY / SGLANG_API_KEY; unset: no key)",
    )
    serving_path_map: str | None = option(
        None,
        "serving, vllm/sglang: LOCAL=REMOTE[,LOCAL=REMOTE]: where the server sees the run "
        "directory's adapters, when it mounts them elsewhere",
    )
    serving_max_lora_rank: int | None = option(
        None, "serving, vllm/sglang: the server's --max-lora-rank, checked before registering"
    )
    serving_timeout: float = option(
        60.0, "serving, vllm/sglang: seconds for a registration request (chats use --timeout)"
    )

    def build(self, *, model: str, base: str | None = None) -> ServingBackend:
        """The serving backend these options name, for a society of ``model`` ("provider:name")
        whose tuner starts from ``base`` (default: the model's name)."""
        from mafl_graph.serving.registry import serving_class

        return serving_class(self.serving).from_options(self, model=model, base=base)
