"""Token usage and cost per agent and role, recorded into the run directory.

Hosted debates cost money per call, and the paper's method multiplies calls (agents × rounds
plus summaries), so a run directory says what each agent and role consumed: ``usage.json``.

Why a handler of our own: LangChain's ``UsageMetadataCallbackHandler`` sums usage per model
name only, and every agent of a society shares one base model until it is tuned. The debate
nodes put ``agent``, ``role`` and ``round`` into every model call's metadata (for LangSmith);
this handler reads them at ``on_chat_model_start`` and adds the ``usage_metadata`` the chat
model reports (OpenAI, Gemini and the embedded model all report it) at ``on_llm_end``.

Costs use list prices per million tokens (``PRICES``); a model without a known price is
counted in tokens and listed under ``unpriced_models`` rather than guessed at. Nothing secret
is recorded: model names, counts and prices only.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.outputs import ChatGeneration, LLMResult

# USD per million (input, output) tokens: the providers' list prices for text (checked 2025).
# Fine-tuned OpenAI models are billed at their own rate; a tuned Gemini on Vertex AI is billed
# like its base model but is named by its endpoint, so it counts as unpriced. Pass
# ``prices=`` to UsageRecorder for other models or for negotiated rates.
PRICES: dict[str, tuple[float, float]] = {
    "gemini-2.0-flash": (0.10, 0.40),
    "gemini-2.0-flash-lite": (0.075, 0.30),
    "gemini-2.5-flash": (0.30, 2.50),
    "gemini-2.5-flash-lite": (0.10, 0.40),
    "gemini-2.5-pro": (1.25, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-3.5-turbo": (0.50, 1.50),
    "ft:gpt-4o-mini": (0.30, 1.20),
    "ft:gpt-4o": (3.75, 15.00),
    "ft:gpt-4.1": (3.00, 12.00),
    "ft:gpt-4.1-mini": (0.80, 3.20),
    "ft:gpt-4.1-nano": (0.20, 0.80),
    "ft:gpt-3.5-turbo": (3.00, 6.00),
}
FREE_PROVIDERS = ("mafl-local",)
"""Providers (LangChain's ``ls_provider``) that run on this machine: no per-token price."""


@dataclass
class Usage:
    """What one group of calls consumed."""

    calls: int = 0
    errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = 0.0
    """None once any call of the group had no known price."""

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def add(self, input_tokens: int, output_tokens: int, cost: float | None) -> None:
        self.calls += 1
        self.input_tokens += input_tokens
        self.output_tokens += output_tokens
        self.cost_usd = None if cost is None or self.cost_usd is None else self.cost_usd + cost

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total_tokens": self.total_tokens}

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> Usage:
        return cls(
            calls=int(record.get("calls", 0)),
            errors=int(record.get("errors", 0)),
            input_tokens=int(record.get("input_tokens", 0)),
            output_tokens=int(record.get("output_tokens", 0)),
            cost_usd=record.get("cost_usd", 0.0),
        )


def price_of(
    model: str, prices: Mapping[str, tuple[float, float]] = PRICES
) -> tuple[float, float] | None:
    """(input, output) USD per million tokens for ``model``, or None when unknown.

    Dated snapshots and fine-tuned names resolve to their family: ``gpt-4o-mini-2024-07-18``
    to ``gpt-4o-mini``, ``ft:gpt-4o-mini-2024-07-18:org::id`` to ``ft:gpt-4o-mini``,
    ``models/gemini-2.0-flash-001`` to ``gemini-2.0-flash``; the longest matching name wins.
    """
    name = model.removeprefix("models/")
    if name in prices:
        return prices[name]
    if name.startswith("ft:"):
        name = "ft:" + name[3:].split(":", 1)[0]
    matches = [k for k in prices if name == k or name.startswith(k + "-")]
    return prices[max(matches, key=len)] if matches else None


class UsageRecorder(BaseCallbackHandler):
    """A callback handler that sums tokens and cost per agent, role and model.

    Pass it in ``callbacks=[...]`` to :func:`mafl_graph.run_debates` (or any LangChain call).
    With ``path``, it continues the totals already in that file (a resumed run adds to what
    the interrupted one recorded) and rewrites it at most every ``flush_every`` seconds while
    calls finish, so a killed run loses at most that much; call :meth:`save` at the end.
    """

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        prices: Mapping[str, tuple[float, float]] | None = None,
        flush_every: float = 2.0,
    ) -> None:
        self.path = Path(path) if path is not None else None
        self.prices = {**PRICES, **(prices or {})}
        self.flush_every = flush_every
        self._lock = threading.Lock()
        self._pending: dict[UUID, tuple[str, str, str | None]] = {}
        self._groups: dict[str, Usage] = {}
        self._models: dict[str, Usage] = {}
        self._unpriced: set[str] = set()
        self._last_flush = time.monotonic()
        if self.path is not None and self.path.is_file():
            self._load(self.path)

    # Callback events ---------------------------------------------------------------------

    def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[Any]],
        *,
        run_id: UUID,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self._start(run_id, metadata or {})

    def on_llm_start(
        self,
        serialized: dict[str, Any],
        prompts: list[str],
        *,
        run_id: UUID,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self._start(run_id, metadata or {})

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        with self._lock:
            group, model, provider = self._pending.pop(run_id, ("other", "unknown", None))
        input_tokens, output_tokens, reported = _usage(response)
        model = reported or model
        cost = self._cost(model, provider, input_tokens, output_tokens)
        with self._lock:
            self._groups.setdefault(group, Usage()).add(input_tokens, output_tokens, cost)
            self._models.setdefault(model, Usage()).add(input_tokens, output_tokens, cost)
            due = time.monotonic() - self._last_flush >= self.flush_every
        if due and self.path is not None:
            self.save()

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        with self._lock:
            group, model, _ = self._pending.pop(run_id, ("other", "unknown", None))
            self._groups.setdefault(group, Usage()).errors += 1
            self._models.setdefault(model, Usage()).errors += 1

    # Results -----------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        """Usage per agent and role, for the summarizer, per model and in total."""
        with self._lock:
            groups = {k: Usage(**asdict(v)) for k, v in self._groups.items()}
            models = {k: Usage(**asdict(v)) for k, v in self._models.items()}
            unpriced = sorted(self._unpriced)
        by_agent: dict[str, dict[str, Any]] = {}
        other: dict[str, Any] = {}
        for key, usage in sorted(groups.items()):
            agent, _, role = key.partition("/")
            if role:
                by_agent.setdefault(agent, {})[role] = usage.as_dict()
            else:
                other[key] = usage.as_dict()
        total = Usage()
        for usage in groups.values():
            total.calls += usage.calls
            total.errors += usage.errors
            total.input_tokens += usage.input_tokens
            total.output_tokens += usage.output_tokens
            if usage.cost_usd is None or total.cost_usd is None:
                total.cost_usd = None
            else:
                total.cost_usd += usage.cost_usd
        used = {m: list(p) for m in models if (p := price_of(m, self.prices)) is not None}
        return {
            "by_agent": by_agent,
            **other,
            "by_model": {m: u.as_dict() for m, u in sorted(models.items())},
            "total": total.as_dict(),
            "prices_usd_per_million_tokens": used,
            "unpriced_models": unpriced,
        }

    def save(self, path: str | Path | None = None) -> Path:
        """Write :meth:`summary` as JSON (atomically) to ``path`` or the recorder's own path."""
        target = Path(path) if path is not None else self.path
        if target is None:
            raise ValueError("UsageRecorder has no path; pass save(path) or UsageRecorder(path).")
        target.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.summary(), indent=2) + "\n"
        tmp = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(text)
        os.replace(tmp, target)
        with self._lock:
            self._last_flush = time.monotonic()
        return target

    def describe(self) -> str:
        """One line for a terminal: calls, tokens in/out and cost."""
        total = self.summary()["total"]
        cost = total["cost_usd"]
        money = "cost unknown (unpriced model)" if cost is None else f"${cost:.4f}"
        return (
            f"{total['calls']} model calls, {total['input_tokens']:,} tokens in, "
            f"{total['output_tokens']:,} out, {money}"
        )

    # Internals ---------------------------------------------------------------------------

    def _start(self, run_id: UUID, metadata: Mapping[str, Any]) -> None:
        role, agent = metadata.get("role"), metadata.get("agent")
        if role == "summarizer":
            group = "summarizer"
        elif role is not None and agent is not None:
            group = f"agent{agent}/{role}"
        else:
            group = "other"
        model = str(metadata.get("ls_model_name") or "unknown")
        provider = metadata.get("ls_provider")
        with self._lock:
            self._pending[run_id] = (group, model, str(provider) if provider else None)

    def _cost(
        self, model: str, provider: str | None, input_tokens: int, output_tokens: int
    ) -> float | None:
        if provider in FREE_PROVIDERS:
            return 0.0
        price = price_of(model, self.prices)
        if price is None:
            with self._lock:
                self._unpriced.add(model)
            return None
        return (input_tokens * price[0] + output_tokens * price[1]) / 1_000_000

    def _load(self, path: Path) -> None:
        try:
            saved = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"{path} is not valid JSON ({exc}); move it aside to start the count afresh."
            ) from exc
        for agent, roles in saved.get("by_agent", {}).items():
            for role, record in roles.items():
                self._groups[f"{agent}/{role}"] = Usage.from_dict(record)
        for key in ("summarizer", "other"):
            if key in saved:
                self._groups[key] = Usage.from_dict(saved[key])
        for model, record in saved.get("by_model", {}).items():
            self._models[model] = Usage.from_dict(record)
        self._unpriced.update(saved.get("unpriced_models", []))


def _usage(response: LLMResult) -> tuple[int, int, str | None]:
    """(input tokens, output tokens, the model name the provider reported) of one call."""
    input_tokens = output_tokens = 0
    reported: str | None = None
    for generations in response.generations:
        for generation in generations:
            if not isinstance(generation, ChatGeneration):
                continue
            message = generation.message
            usage = getattr(message, "usage_metadata", None) or {}
            input_tokens += int(usage.get("input_tokens", 0))
            output_tokens += int(usage.get("output_tokens", 0))
            meta = message.response_metadata or {}
            name = meta.get("model_name") or meta.get("model")
            reported = reported or (str(name) if name else None)
    if not input_tokens and not output_tokens:  # older integrations: llm_output's token_usage
        usage = (response.llm_output or {}).get("token_usage") or {}
        input_tokens = int(usage.get("prompt_tokens", 0))
        output_tokens = int(usage.get("completion_tokens", 0))
    return input_tokens, output_tokens, reported
