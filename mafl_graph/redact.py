"""Keep API keys out of everything a run writes: checkpoints, results, manifests, logs, traces.

Two lines of defence, because a key can arrive by two roads:

* values the library itself is handed (run metadata, manifest settings) are *refused* when a
  name or value looks like a credential (:func:`check_no_secrets`): nothing stored is better
  than something stored and scrubbed later;
* text the library does not control (a provider's error message, which some gateways fill with
  the key they were sent) is *redacted* before it is recorded (:func:`redact`,
  :func:`scrub_exception`).

What counts as a key: the value of any environment variable whose name says it holds one
(``OPENAI_API_KEY``, ``GOOGLE_API_KEY``, ``*_TOKEN``, …), keys passed to
:func:`mafl_graph.models.resolve_model`, and strings shaped like the common providers' keys.

Hand-written because nothing upstream covers these files: pydantic's ``SecretStr`` keeps a key
out of a model object's repr and LangChain's serializer out of a traced model's description,
and LangSmith's anonymizer scrubs what a tracer uploads, but a checkpoint, a results file or a
manifest is ours to keep clean.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

REDACTED = "[REDACTED]"

# Names of settings that hold credentials ("api_key", "hf-token"; not "max_tokens"), and of
# environment variables (those, plus any "*_KEY": AWS_SECRET_ACCESS_KEY, MISTRAL_API_KEY).
_SECRET_WORD = r"(api[_\-]?key|token|secret|password|passwd|credentials?|authorization)"
_SECRET_NAME = re.compile(rf"(^|[_\-]){_SECRET_WORD}([_\-]|$)", re.I)
_SECRET_ENV = re.compile(rf"((^|_){_SECRET_WORD}(_|$)|_KEY$)", re.I)
# The shapes of common keys: OpenAI (sk-…, sk-proj-…), Google (AIza…), LangSmith (lsv2_…),
# Hugging Face (hf_…), Anthropic (sk-ant-…), and bearer headers.
# Each starts a word ("task-arithmetic-test-00001" holds "sk-…" but is no key).
_KEY_SHAPES = re.compile(
    r"(?<![A-Za-z0-9_\-])"
    r"(sk-[A-Za-z0-9_\-]{16,}"
    r"|AIza[0-9A-Za-z_\-]{35}"
    r"|lsv2_[a-z]{2}_[0-9a-f]{32}_[0-9a-f]{10}"
    r"|hf_[A-Za-z0-9]{30,}"
    r"|(?i:bearer)\s+[A-Za-z0-9_\-.=]{16,})"
)
_MIN_SECRET = 8  # shorter values ("1", "true") are settings, not keys, and too common to scrub
_known: set[str] = set()


def remember_secret(value: Any) -> None:
    """Redact ``value`` (a str or pydantic SecretStr) from now on, wherever it appears."""
    if hasattr(value, "get_secret_value"):
        value = value.get_secret_value()
    if isinstance(value, str) and len(value) >= _MIN_SECRET:
        _known.add(value)


def known_secrets() -> set[str]:
    """The remembered keys plus every secret-named environment variable's value."""
    found = set(_known)
    for name, value in os.environ.items():
        if _SECRET_ENV.search(name) and len(value) >= _MIN_SECRET:
            found.add(value)
    return found


def looks_secret(name: str, value: Any = None) -> bool:
    """Whether a setting called ``name`` with ``value`` is (or holds) a credential."""
    if _SECRET_NAME.search(name) and value not in (None, "", False):
        return True
    return isinstance(value, str) and (
        _KEY_SHAPES.search(value) is not None or any(s in value for s in known_secrets())
    )


def redact(text: str) -> str:
    """``text`` with every known key and every key-shaped string replaced by [REDACTED]."""
    for secret in sorted(known_secrets(), key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, REDACTED)
    return _KEY_SHAPES.sub(REDACTED, text)


def scrub_exception(exc: BaseException) -> BaseException:
    """Redact keys from ``exc``'s message in place (type kept, so retry decisions still work).

    LangGraph stores a failed task's exception as ``repr(exc)`` in the checkpoint, ``repr`` is
    built from ``args``, and a tracer uploads ``traceback.format_exception(exc)``, which also
    prints the exceptions it was raised from and its notes: all of those are cleaned.
    """
    seen: set[int] = set()
    pending = [exc]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        _scrub_one(current)
        pending += [e for e in (current.__cause__, current.__context__) if e is not None]
    return exc


def redact_value(value: Any) -> Any:
    """``value`` with :func:`redact` applied to every string in it (dicts and lists copied)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {k: redact_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_value(v) for v in value]
    if isinstance(value, tuple):
        return tuple(redact_value(v) for v in value)
    return value


def _scrub_one(exc: BaseException) -> None:
    exc.args = tuple(redact(a) if isinstance(a, str) else a for a in exc.args)
    body = getattr(exc, "body", None)  # the provider's error body (openai's APIStatusError)
    if isinstance(body, str | Mapping | list):
        with contextlib.suppress(AttributeError):
            exc.body = redact_value(body)  # type: ignore[attr-defined]
    message = getattr(exc, "message", None)
    if isinstance(message, str):
        with contextlib.suppress(AttributeError):  # a read-only property stays as it is
            exc.message = redact(message)  # type: ignore[attr-defined]
    notes = getattr(exc, "__notes__", None)
    if isinstance(notes, list):
        notes[:] = [redact(n) if isinstance(n, str) else n for n in notes]


def check_no_secrets(values: Mapping[str, Any], where: str) -> None:
    """Refuse to store ``values`` if any name or value (nested too) looks like a credential."""
    for path, name, value in _walk(values, where):
        if looks_secret(name, value):
            raise ValueError(
                f"{path} looks like a credential and would be written to disk with the run; "
                "pass API keys through the provider's environment variable (e.g. "
                "OPENAI_API_KEY) or the model object, never through settings or metadata."
            )


def _walk(value: Any, path: str, name: str = "") -> Iterable[tuple[str, str, Any]]:
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield from _walk(item, f"{path}[{key!r}]", str(key))
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            yield from _walk(item, f"{path}[{i}]", name)
    else:
        yield path, name, value
