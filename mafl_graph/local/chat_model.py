"""LocalChatModel: the embedded model as a LangChain chat model, so a Society can use it
exactly like Gemini or OpenAI (swapping them changes a string, not the graph).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LangSmithParams
from langchain_core.messages import AIMessage, BaseMessage, ChatMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import PrivateAttr, field_validator

from mafl_graph.continuation import CONTINUED_KEY
from mafl_graph.local.engine import Generation, LocalEngine, load_local_model
from mafl_graph.local.loading import SMOLLM2_ALIAS, check_dtype

_ROLES = {"system": "system", "human": "user", "ai": "assistant"}
_CALL_OPTIONS = ("temperature", "top_p", "max_new_tokens", "seed")


class LocalChatModel(BaseChatModel):
    """A chat model running in this process on a local model (SmolLM2-135M by default).

    Construction is cheap: the weights are loaded on the first call and shared through
    :func:`load_local_model`, so every agent, copy (``model_copy(update={"seed": 1})``) and
    thread asking for the same ``model_path`` and ``dtype`` uses one base in memory.
    ``temperature``, ``top_p``, ``max_new_tokens`` and ``seed`` can be overridden per call
    (``model.invoke(messages, seed=3)`` or ``model.bind(temperature=0)``).
    """

    model_path: str = SMOLLM2_ALIAS
    """``"smollm2"``, a ``.gguf`` file or a local Hugging Face model directory."""
    temperature: float = 0.7
    """0 means greedy decoding; above 0, sampling."""
    top_p: float = 0.95
    max_new_tokens: int = 256
    seed: int | None = 0
    """Seeds each sampled call, so a run can be replayed; None for fresh randomness."""
    dtype: str = "float32"
    """Weights in memory: float32 (fastest for one stream on CPU) or bfloat16/float16."""
    adapter: str | None = None
    """A PEFT LoRA adapter directory or an SVF expert directory (:mod:`mafl_graph.svf`)
    applied on top of the shared base (e.g. a tuned agent)."""
    _engine: LocalEngine | None = PrivateAttr(default=None)

    @field_validator("dtype")
    @classmethod
    def _known_dtype(cls, dtype: str) -> str:
        return check_dtype(dtype)

    @field_validator("adapter")
    @classmethod
    def _adapter_exists(cls, adapter: str | None) -> str | None:
        # Fail when the society is built, not hours later at the first call of that agent.
        if adapter is None:
            return adapter
        directory = Path(adapter).expanduser()
        if not any((directory / f).is_file() for f in ("adapter_config.json", "svf_config.json")):
            raise ValueError(
                f"No LoRA adapter at {adapter!r} (expected adapter_config.json there, or "
                "svf_config.json for an SVF expert); pass a directory written by PEFT's "
                "save_pretrained or by SVFExpert.save."
            )
        return adapter

    def with_adapter(self, adapter: str | Path | None) -> LocalChatModel:
        """The same model with ``adapter`` on top (sharing the loaded base), e.g. a tuned agent."""
        return type(self).model_validate(
            {**self.model_dump(), "adapter": None if adapter is None else str(adapter)}
        )

    @property
    def _llm_type(self) -> str:
        return "mafl-local"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model_path": self.model_path,
            "dtype": self.dtype,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_new_tokens": self.max_new_tokens,
            "seed": self.seed,
            "adapter": self.adapter,
        }

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(
            ls_provider="mafl-local",
            ls_model_name=self.model_path,
            ls_model_type="chat",
            ls_temperature=kwargs.get("temperature", self.temperature),
            ls_max_tokens=kwargs.get("max_new_tokens", self.max_new_tokens),
        )
        if stop:
            params["ls_stop"] = stop
        return params

    @property
    def engine(self) -> LocalEngine:
        """The shared engine (loading, and on first ever use converting, the model)."""
        if self._engine is None:
            self._engine = load_local_model(self.model_path, self.dtype)
        return self._engine

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        options = self._options(stop, kwargs, run_manager)
        result = self.engine.generate(to_chatml(messages), **options)
        return chat_result(result, self.model_path)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        # Native async: awaiting the batch costs no thread, so hundreds of concurrent graph
        # calls can wait in one batch (the default path would cap them at the executor's size).
        # The first call loads the weights (file reads for seconds) in a thread: async servers
        # refuse blocking calls on their event loop (`langgraph dev` raises BlockingError).
        if self._engine is None:
            await asyncio.to_thread(lambda: self.engine)
        options = self._options(stop, kwargs, run_manager)
        result = await self.engine.agenerate(to_chatml(messages), **options)
        return chat_result(result, self.model_path)

    def _options(
        self,
        stop: list[str] | None,
        kwargs: dict[str, Any],
        run_manager: CallbackManagerForLLMRun | AsyncCallbackManagerForLLMRun | None,
    ) -> dict[str, Any]:
        unknown = set(kwargs) - set(_CALL_OPTIONS)
        if unknown:
            raise TypeError(
                f"LocalChatModel got unsupported call options {sorted(unknown)}; "
                f"it accepts {', '.join(_CALL_OPTIONS)} and stop."
            )
        options = {name: kwargs.get(name, getattr(self, name)) for name in _CALL_OPTIONS}
        metadata = run_manager.metadata if run_manager is not None else {}
        keep = bool(metadata.get(CONTINUED_KEY, False))
        return {**options, "stop": stop, "adapter": self.adapter, "keep": keep}


def chat_result(result: Generation, model_name: str, **metadata: Any) -> ChatResult:
    """A generation as LangChain's result: usage, model name and finish reason (and
    ``metadata``, added to the response metadata)."""
    message = AIMessage(
        content=result.text,
        usage_metadata={
            "input_tokens": result.input_tokens,
            "output_tokens": result.output_tokens,
            "total_tokens": result.input_tokens + result.output_tokens,
        },
        response_metadata={
            "model_name": model_name,
            "finish_reason": result.finish_reason,
            **metadata,
        },
    )
    return ChatResult(generations=[ChatGeneration(message=message)])


def to_chatml(messages: Sequence[BaseMessage]) -> list[dict[str, str]]:
    """LangChain messages as ChatML ``{"role", "content"}`` dicts (system, user, assistant).

    Tool calls and other roles have no place in the small model's chat template, so they are
    refused rather than silently dropped.
    """
    chatml = []
    for message in messages:
        role = message.role if isinstance(message, ChatMessage) else _ROLES.get(message.type)
        if role not in ("system", "user", "assistant"):
            raise ValueError(
                f"LocalChatModel cannot send a {message.type!r} message "
                f"(role {role!r}); use system, human or AI messages."
            )
        chatml.append({"role": role, "content": message.text})
    return chatml
