"""Turn "provider:model" strings into LangChain chat models, ready for a long run.

A Society is data: swapping Gemini for OpenAI or for the embedded model changes a string.
Instances of BaseChatModel pass through untouched, so any LangChain model works.

Hosted models get the settings a run of hours against a rate-limited API needs, all from
libraries that already do them well:

* the SDK's own retries (``max_retries``) for HTTP-level failures: they honour ``Retry-After``
  on a 429 and back off on 5xx, dropped connections and timeouts;
* a request ``timeout``, so a hung connection becomes a retry instead of a stuck debate;
* one ``InMemoryRateLimiter`` per provider and rate, shared by every agent, critic and the
  summarizer, so a society of n agents makes at most ``requests_per_second`` calls together.

What the SDK cannot retry (a reply cut short, garbage instead of JSON, an empty answer) is left
to the debate graph's per-node retry policy, which asks :func:`is_transient` what to retry.
"""

from __future__ import annotations

import json
import sys
import threading
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.rate_limiters import InMemoryRateLimiter

from mafl_graph.continuation import CONTINUED_KEY as CONTINUED_KEY  # re-exported
from mafl_graph.redact import redact, remember_secret

PROVIDERS = ("local", "openai", "google_genai")
HOSTED = ("openai", "google_genai")
DEFAULT_TIMEOUT = 180.0
"""Seconds a hosted call may take before it is abandoned and retried (the OpenAI SDK waits 600)."""

# Each provider's name for "at most this many new tokens".
_MAX_TOKENS_FIELD = {
    "local": "max_new_tokens",
    "openai": "max_tokens",
    "google_genai": "max_output_tokens",
}
# Each hosted provider's field for the per-request timeout (seconds).
_TIMEOUT_FIELD = {"openai": "timeout", "google_genai": "timeout"}
_KEY_FIELDS = ("api_key", "openai_api_key", "google_api_key")
# HTTP statuses worth another attempt: request timeout, conflict, too early, rate limited.
_RETRY_STATUS = frozenset({408, 409, 425, 429})


class EmptyReplyError(RuntimeError):
    """A model answered with no text at all: a provider hiccup, not an answer to grade."""

    is_retryable = True


def resolve_model(
    model: str | BaseChatModel,
    *,
    max_tokens: int | None = None,
    requests_per_second: float | None = None,
    max_retries: int | None = None,
    timeout: float | None = None,
    **kwargs: Any,
) -> BaseChatModel:
    """Return ``model`` itself, or build the chat model a ``"provider:model"`` string names.

    ``max_tokens`` is translated to the provider's own field. For hosted providers,
    ``max_retries`` is the SDK's retry count (default: the SDK's own), ``timeout`` the seconds
    per request (default :data:`DEFAULT_TIMEOUT`), and ``requests_per_second`` a rate shared by
    every model of that provider made with the same rate (default: no limit). Other ``kwargs``
    (temperature, seed, base_url, …) go to the model's constructor as they are; an ``api_key``
    among them is remembered so it can be redacted from anything the run records.
    """
    if isinstance(model, BaseChatModel):
        return model
    if not isinstance(model, str) or ":" not in model:
        raise ValueError(
            f"Model {model!r} is neither a BaseChatModel nor a 'provider:model' string; "
            f"use one of {', '.join(p + ':…' for p in PROVIDERS)}, e.g. 'local:smollm2'."
        )
    provider, name = model.split(":", 1)
    if provider not in PROVIDERS:
        raise ValueError(
            f"Unknown model provider {provider!r} in {model!r}; known providers: "
            f"{', '.join(PROVIDERS)}. Pass a BaseChatModel instance for anything else."
        )
    if not name:
        raise ValueError(f"Model {model!r} names no model after '{provider}:'.")
    _check_limits(max_tokens, requests_per_second, max_retries, timeout)
    for field in _KEY_FIELDS:
        remember_secret(kwargs.get(field))
    if max_tokens is not None:
        kwargs[_MAX_TOKENS_FIELD[provider]] = max_tokens
    if requests_per_second is not None:
        kwargs.setdefault("rate_limiter", provider_rate_limiter(provider, requests_per_second))
    if provider == "local":
        from mafl_graph.local.loading import require_local, resolve_source

        require_local()
        from mafl_graph.local import LocalChatModel

        resolve_source(name)  # a missing file fails here, not at the first of many calls
        return LocalChatModel(model_path=name, **kwargs)
    kwargs.setdefault(_TIMEOUT_FIELD[provider], timeout if timeout is not None else DEFAULT_TIMEOUT)
    if max_retries is not None:
        kwargs["max_retries"] = max_retries
    cls: type[BaseChatModel]
    if provider == "openai":
        from langchain_openai import ChatOpenAI

        cls = ChatOpenAI
    else:
        from langchain_google_genai import ChatGoogleGenerativeAI

        cls = ChatGoogleGenerativeAI
    try:
        chat: BaseChatModel = cls(model=name, **kwargs)
    except Exception as exc:  # e.g. no API key: say which model, keep any key out of it
        raise ValueError(
            f"Could not set up {model!r}: {redact(str(exc))} "
            "(hosted models read their key from OPENAI_API_KEY / GOOGLE_API_KEY)."
        ) from None
    return chat


def _check_limits(
    max_tokens: int | None,
    requests_per_second: float | None,
    max_retries: int | None,
    timeout: float | None,
) -> None:
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"max_tokens must be at least 1; got {max_tokens}.")
    if requests_per_second is not None and not requests_per_second > 0:
        raise ValueError(
            f"requests_per_second must be above 0; got {requests_per_second} "
            "(leave it unset for no limit)."
        )
    if max_retries is not None and max_retries < 0:
        raise ValueError(f"max_retries must be 0 or more; got {max_retries}.")
    if timeout is not None and not timeout > 0:
        raise ValueError(f"timeout must be above 0 seconds; got {timeout}.")


_limiters: dict[tuple[str, float], InMemoryRateLimiter] = {}
_limiters_lock = threading.Lock()


def provider_rate_limiter(provider: str, requests_per_second: float) -> InMemoryRateLimiter:
    """The process-wide limiter for ``provider`` at ``requests_per_second``.

    One bucket per provider and rate, so every model of a society (and models resolved later,
    e.g. the tuned ones of the next iteration) draws on the same budget. The bucket holds one
    request: calls are spaced evenly instead of bursting, which is what rate limits reward.
    """
    key = (provider, float(requests_per_second))
    with _limiters_lock:
        if key not in _limiters:
            _limiters[key] = InMemoryRateLimiter(
                requests_per_second=requests_per_second,
                check_every_n_seconds=min(0.1, 0.5 / requests_per_second),
                max_bucket_size=1,
            )
        return _limiters[key]


def is_transient(exc: BaseException) -> bool:
    """Whether another attempt at the same model call may succeed.

    Used as the debate graph's ``retry_on``. LangGraph's default retries every exception it
    does not recognise, which would retry a bad API key or an unknown model three times;
    this retries only what providers report as passing (rate limits, 5xx, timeouts, dropped
    connections) and replies that arrived broken (cut-off or non-JSON bodies, empty answers).
    """
    retryable = getattr(exc, "is_retryable", None)  # langchain-core's ModelError, and ours
    if isinstance(retryable, bool):
        return retryable
    if isinstance(exc, TimeoutError | ConnectionError):
        return True
    # The SDKs parse a 200's body outside their retry loop: a body cut short or mangled on the
    # way arrives here as a decoding error of the raw bytes, and the next attempt is a new body.
    if isinstance(exc, json.JSONDecodeError | UnicodeDecodeError):
        return True
    status = _http_status(exc)
    if status is not None:
        return status in _RETRY_STATUS or status >= 500
    return _is_transport_error(exc)


def _http_status(exc: BaseException) -> int | None:
    """The HTTP status an SDK error carries (openai: status_code, google-genai: code)."""
    for attr in ("status_code", "code"):
        value = getattr(exc, attr, None)
        if isinstance(value, int) and 100 <= value < 600:
            return value
    response = getattr(exc, "response", None)
    value = getattr(response, "status_code", None)
    return value if isinstance(value, int) else None


def _is_transport_error(exc: BaseException) -> bool:
    """Connection-level failures of HTTP clients and SDKs whose errors LangChain leaves as is.

    Looked up in ``sys.modules``: an exception can only come from a module already imported,
    and this way none is imported here (the OpenAI SDK uses httpx2, others httpx).
    """
    for module, name in (
        ("httpx", "TransportError"),
        ("httpx2", "TransportError"),
        ("openai", "APIConnectionError"),
    ):
        cls = getattr(sys.modules.get(module), name, None)
        if isinstance(cls, type) and isinstance(exc, cls):
            return True
    return False


def model_label(model: BaseChatModel) -> str:
    """A short human-readable name for a model, for manifests and logs.

    A local model with a LoRA adapter is named with it (``smollm2+runs/…/agent0-generator``):
    the base alone would hide which tuned agent answered.
    """
    adapter = getattr(model, "adapter", None)
    suffix = f"+{adapter}" if isinstance(adapter, str) and adapter else ""
    for attr in ("model_name", "model", "model_path"):
        value = getattr(model, attr, None)
        if isinstance(value, str) and value:
            return value + suffix
    return type(model).__name__ + suffix
