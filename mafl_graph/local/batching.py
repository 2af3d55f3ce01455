"""A batching scheduler: concurrent generation requests share one forward pass per token.

A debate asks for many replies at once (every agent of every problem in flight), and on a CPU
one batched forward over 16 sequences costs little more than one over a single sequence. The
scheduler's thread takes every request waiting when it starts a batch, left-pads the prompts,
prefills them together and decodes step by step. Each row samples with its own parameters and
its own seeded ``torch.Generator``, and returns as soon as its sequence ends (EOS, a stop string
or its token budget), so short answers don't wait for long ones; finished rows leave the batch.
Rows may name different LoRA adapters: PEFT's mixed-adapter batches (``adapter_names``) run
them in the same forward pass.

Hand-written because ``model.generate`` applies one set of sampling parameters and one RNG to
the whole batch, and returns only when its longest sequence is done.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

BASE_ADAPTER = "__base__"  # PEFT's name for "no adapter" in a mixed batch


@dataclass
class Request:
    """One reply to produce; ``future`` receives ``(token ids, finish reason)``."""

    prompt_ids: list[int]
    max_new_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    stop: list[str]
    adapter: str = BASE_ADAPTER
    abandoned: bool = False
    """Set by a waiter that gave up (e.g. a cancelled task): the row leaves the batch."""
    future: Future[tuple[list[int], str]] = field(default_factory=Future)
    generated: list[int] = field(default_factory=list)
    generator: Any = None


class CancelledRequest(Exception):
    """The waiter abandoned this request before it finished."""


class BatchScheduler:
    """Merges concurrent requests into batched decoding on one model.

    ``forward(input_ids, attention_mask, position_ids, cache, adapters)`` runs the model and
    returns ``(last-position logits, cache)``; ``decode(ids)`` turns ids into text for stop
    strings; ``lock`` is held around every forward pass, so adapters can be loaded safely.
    """

    def __init__(
        self,
        forward: Callable[..., tuple[torch.Tensor, Any]],
        decode: Callable[[list[int]], str],
        *,
        eos_ids: set[int],
        pad_id: int,
        lock: threading.Lock,
        max_batch_size: int = 64,
        gather_seconds: float = 0.01,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1; got {max_batch_size}")
        self._forward = forward
        self._decode = decode
        self._eos_ids = eos_ids
        self._pad_id = pad_id
        self._lock = lock
        self.max_batch_size = max_batch_size
        self.gather_seconds = gather_seconds
        self._queue: queue.SimpleQueue[Request] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self.batch_sizes: list[int] = []  # what each batch held when it started, for benchmarks

    def submit(self, request: Request) -> Future[tuple[list[int], str]]:
        """Queue ``request``; set ``request.abandoned`` to drop it from its batch."""
        self._ensure_thread()
        self._queue.put(request)
        return request.future

    def _ensure_thread(self) -> None:
        with self._start_lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="mafl-batcher", daemon=True)
                self._thread.start()

    def _loop(self) -> None:
        while True:
            batch = [self._queue.get()]
            # Requests of one graph step arrive a few milliseconds apart (each is tokenized
            # first): wait until none came for a moment, so they start as one batch.
            while len(batch) < self.max_batch_size:
                try:
                    batch.append(self._queue.get(timeout=self.gather_seconds))
                except queue.Empty:
                    break
            batch = [
                r for r in batch if not r.abandoned and r.future.set_running_or_notify_cancel()
            ]
            if not batch:
                continue
            self.batch_sizes.append(len(batch))
            try:
                self._run(batch)
            except BaseException as exc:  # a broken batch fails its own requests, not the thread
                for request in batch:
                    if not request.future.done():
                        request.future.set_exception(exc)

    def _run(self, batch: list[Request]) -> None:
        import torch

        for request in batch:
            if request.seed is not None and request.temperature > 0:
                request.generator = torch.Generator().manual_seed(request.seed)
        width = max(len(r.prompt_ids) for r in batch)
        ids = torch.tensor(
            [[self._pad_id] * (width - len(r.prompt_ids)) + r.prompt_ids for r in batch]
        )
        mask = torch.tensor(
            [[0] * (width - len(r.prompt_ids)) + [1] * len(r.prompt_ids) for r in batch]
        )
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        active, cache = list(batch), None
        with torch.inference_mode():
            while active:
                with self._lock:
                    logits, cache = self._forward(
                        ids, mask, positions, cache, [r.adapter for r in active]
                    )
                tokens = self._sample(active, logits)
                keep = []
                for i, (request, token) in enumerate(zip(active, tokens, strict=True)):
                    request.generated.append(token)
                    reason = self._finished(request, token)
                    if reason is not None:
                        request.future.set_result((request.generated, reason))
                    elif request.abandoned:
                        request.future.set_exception(CancelledRequest())
                    else:
                        keep.append(i)
                if len(keep) < len(active):
                    if not keep:
                        break
                    index = torch.tensor(keep)
                    cache.batch_select_indices(index)
                    mask, positions, tokens = (
                        mask[index],
                        positions[index],
                        [tokens[i] for i in keep],
                    )
                    active = [active[i] for i in keep]
                ids = torch.tensor(tokens).unsqueeze(-1)
                mask = torch.cat([mask, torch.ones(len(active), 1, dtype=mask.dtype)], dim=-1)
                positions = positions[:, -1:] + 1

    @staticmethod
    def _sample(active: list[Request], logits: torch.Tensor) -> list[int]:
        """One token per row: greedy rows take the argmax, the others sample with top-p.

        Vectorised over the batch; each sampled row draws its one uniform number from its own
        generator (inverse-CDF sampling), which keeps seeded rows independent of the batch.
        """
        import torch

        tokens = logits.argmax(-1)
        sampled = [i for i, r in enumerate(active) if r.temperature > 0]
        if sampled:
            rows = torch.tensor(sampled)
            temperature = torch.tensor([active[i].temperature for i in sampled])
            top_p = torch.tensor([active[i].top_p for i in sampled])
            probs = torch.softmax(logits[rows].float() / temperature[:, None], dim=-1)
            probs, order = probs.sort(dim=-1, descending=True)
            probs = probs.masked_fill(probs.cumsum(-1) - probs > top_p[:, None], 0.0)
            cdf = probs.cumsum(-1)
            draws = torch.cat([torch.rand(1, generator=active[i].generator) for i in sampled])
            pick = torch.searchsorted(cdf, (draws * cdf[:, -1])[:, None]).clamp(
                max=cdf.shape[-1] - 1
            )
            tokens[rows] = order.gather(-1, pick).squeeze(-1)
        return tokens.tolist()

    def _finished(self, request: Request, token: int) -> str | None:
        if token in self._eos_ids:
            request.generated.pop()
            return "stop"
        if request.stop and any(s in self._decode(request.generated) for s in request.stop):
            return "stop"
        if len(request.generated) >= request.max_new_tokens:
            return "length"
        return None
