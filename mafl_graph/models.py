"""Turn "provider:model" strings into LangChain chat models.

A Society is data: swapping Gemini for OpenAI or for the embedded model changes a string.
Instances of BaseChatModel pass through untouched, so any LangChain model works.
"""

from __future__ import annotations

from typing import Any

from langchain_core.language_models import BaseChatModel

PROVIDERS = ("local", "openai", "google_genai")


# Each provider's name for "at most this many new tokens".
_MAX_TOKENS_FIELD = {
    "local": "max_new_tokens",
    "openai": "max_tokens",
    "google_genai": "max_output_tokens",
}


def resolve_model(
    model: str | BaseChatModel, *, max_tokens: int | None = None, **kwargs: Any
) -> BaseChatModel:
    """Return ``model`` itself, or build the chat model a ``"provider:model"`` string names.

    ``max_tokens`` is translated to the provider's own field; other ``kwargs`` (temperature,
    seed, …) go to the model's constructor as they are.
    """
    if isinstance(model, BaseChatModel):
        return model
    if not isinstance(model, str) or ":" not in model:
        raise ValueError(
            f"Model {model!r} is neither a BaseChatModel nor a 'provider:model' string; "
            f"use one of {', '.join(p + ':…' for p in PROVIDERS)}, e.g. 'local:smollm2'."
        )
    provider, name = model.split(":", 1)
    if not name:
        raise ValueError(f"Model {model!r} names no model after '{provider}:'.")
    if max_tokens is not None and provider in _MAX_TOKENS_FIELD:
        kwargs[_MAX_TOKENS_FIELD[provider]] = max_tokens
    if provider == "local":
        from mafl_graph.local import LocalChatModel

        return LocalChatModel(model_path=name, **kwargs)
    if provider == "openai":
        chat_openai = _import("langchain_openai", "ChatOpenAI", extra="openai")
        return chat_openai(model=name, **kwargs)
    if provider == "google_genai":
        chat_google = _import("langchain_google_genai", "ChatGoogleGenerativeAI", extra="google")
        return chat_google(model=name, **kwargs)
    raise ValueError(
        f"Unknown model provider {provider!r} in {model!r}; known providers: "
        f"{', '.join(PROVIDERS)}. Pass a BaseChatModel instance for anything else."
    )


def model_label(model: BaseChatModel) -> str:
    """A short human-readable name for a model, for manifests and logs."""
    for attr in ("model_name", "model", "model_path"):
        value = getattr(model, attr, None)
        if isinstance(value, str) and value:
            return value
    return type(model).__name__


def _import(module: str, name: str, *, extra: str) -> Any:
    try:
        return getattr(__import__(module, fromlist=[name]), name)
    except ImportError as exc:
        raise ImportError(
            f"{module} is not installed; install it with `pip install 'mafl-graph[{extra}]'`."
        ) from exc
