"""A batching scheduler: concurrent generation requests share one forward pass per token.

A debate asks for many replies at once (every agent of every problem in flight), and on a CPU
one batched forward over 16 sequences costs little more than one over a single sequence. The
scheduler's thread takes every request waiting when it starts a batch, left-pads the prompts,
prefills them together and decodes step by step. Each row samples with its own parameters and
its own seeded ``torch.Generator``, and returns as soon as its sequence ends (EOS, a stop string
or its token budget), so short answers don't wait for long ones; finished rows leave the batch.
Rows may name different adapters, LoRA or SVF: the engine runs them all in the same forward
pass (``mixed_lora``, ``mixed_svf``).

Hand-written because ``model.generate`` applies one set of sampling parameters and one RNG to
the whole batch, and returns only when its longest sequence is done.
"""

from __future__ import annotations

import atexit
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mafl_graph.local.prefix_cache import (
    MIN_REUSE_TOKENS,
    Entry,
    PrefixCache,
    batch_cache,
    common_prefix,
    row_layers,
)
from mafl_graph.progress import count_tokens

if TYPE_CHECKING:
    import torch

BASE_ADAPTER = "__base__"  # PEFT's name for "no adapter" in a mixed batch
_NUCLEUS_CANDIDATES = 256


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
    keep: bool = False
    """Keep this sequence's keys and values once it ends: its caller will continue it."""
    abandoned: bool = False
    """Set by a waiter that gave up (e.g. a cancelled task): the row leaves the batch."""
    future: Future[tuple[list[int], str]] = field(default_factory=Future)
    generated: list[int] = field(default_factory=list)
    generator: Any = None


@dataclass
class _Rows:
    """The rows decoding together: their requests, KV cache, attention mask, last positions."""

    requests: list[Request]
    cache: Any
    mask: torch.Tensor
    positions: torch.Tensor

    @property
    def adapters(self) -> list[str]:
        return [r.adapter for r in self.requests]

    def fed(self, row: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Copies of the keys and values of every token ``row`` fed the model, in order."""
        return row_layers(self.cache, row, self.mask[row].nonzero().squeeze(-1))

    @property
    def next_ids(self) -> torch.Tensor:
        import torch

        return torch.tensor([[r.generated[-1]] for r in self.requests])

    def select(self, keep: list[int]) -> None:
        """Keep only the rows ``keep``, and drop the history columns none of them uses.

        The last rows move into the places of the rows that left (see ``compaction``), so the
        rows' order changes. Without the trim a batch that never empties (rows keep joining
        as others finish) would carry the longest history it ever held: every decode step would
        attend over, and the cache would copy, ever more padding.
        """
        import torch

        order, holes, movers = compaction(keep, len(self.requests))
        for layer in self.cache.layers:  # GrowingLayer: batch, heads, tokens, dim
            layer.move_rows(holes, movers, len(order))
        index = torch.tensor(order, dtype=torch.long)
        self.requests = [self.requests[i] for i in order]
        self.mask, self.positions = self.mask[index], self.positions[index]
        if not keep:
            return
        # Rows are left-padded, so the columns no row uses are a block on the left.
        unused = int(self.mask.any(0).to(torch.int8).argmax())
        if unused:
            self.mask = self.mask[:, unused:]
            for layer in self.cache.layers:
                layer.drop_left(unused)

    def merge(self, other: _Rows, capacity: int) -> _Rows:
        """Both row sets in one batch: the shorter history is left-padded (and masked).

        ``other``'s rows are written below these in the same buffers, which make room for
        ``capacity`` rows when they have to grow.
        """
        import torch

        if not other.requests:
            return self
        if not self.requests:
            return other
        width = max(self.mask.shape[1], other.mask.shape[1])
        # The mask has one column more than the cache: the token the next step feeds.
        for layer, joining in zip(self.cache.layers, other.cache.layers, strict=True):
            layer.append_rows(joining, width - 1, capacity)  # GrowingLayer
        masks = [
            torch.nn.functional.pad(rows.mask, (width - rows.mask.shape[1], 0))
            for rows in (self, other)
        ]
        return _Rows(
            self.requests + other.requests,
            self.cache,
            torch.cat(masks),
            torch.cat([self.positions, other.positions]),
        )


def compaction(keep: list[int], rows: int) -> tuple[list[int], list[int], list[int]]:
    """How ``rows`` rows shrink to the rows ``keep`` by moving as few as possible.

    The kept rows among the last ones move into the places that rows which left free among the
    first ``len(keep)``; the rest stay where they are. Returns ``order`` (the old row of each
    new row), ``holes`` (the places filled) and ``movers`` (the rows moved there).
    """
    kept = set(keep)
    order = list(range(len(keep)))
    holes = [i for i in order if i not in kept]
    movers = [i for i in keep if i >= len(keep)]
    for hole, mover in zip(holes, movers, strict=True):
        order[hole] = mover
    return order, holes, movers


def _followers(
    batch: list[Request], hits: list[tuple[int, Entry | None]]
) -> dict[int, tuple[int, int]]:
    """The requests better served by an earlier prompt of the batch than by the prefix cache.

    Maps each such request to ``(leader, shared tokens)``: the earlier request (itself no
    follower) whose prompt shares the longest beginning with it, at least ``MIN_REUSE_TOKENS``
    more than the cache gives, and always leaving the prompt's last token to run.
    """
    followers: dict[int, tuple[int, int]] = {}
    for i, request in enumerate(batch):
        best, leader = hits[i][0] + MIN_REUSE_TOKENS - 1, None
        for j in range(i):
            if j in followers or batch[j].adapter != request.adapter:
                continue
            limit = len(request.prompt_ids) - 1
            shared = common_prefix(batch[j].prompt_ids, request.prompt_ids, limit)
            if shared > best:
                best, leader = shared, j
        if leader is not None:
            followers[i] = (leader, best)
    return followers


class CancelledRequest(Exception):
    """The waiter abandoned this request before it finished."""


class BatchScheduler:
    """Merges concurrent requests into batched decoding on one model.

    ``forward(input_ids, attention_mask, position_ids, cache, adapters)`` runs the model and
    returns ``(last-position logits, cache)``; ``decode(ids)`` turns ids into text for stop
    strings; ``lock`` is held around every forward pass, so adapters can be loaded safely.
    ``prefixes``: where finished ``keep`` requests leave their keys and values for prompts
    that continue them (the caches ``forward`` returns must then be ``GrowingCache``s).
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
        prefixes: PrefixCache | None = None,
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
        self.prefixes = prefixes
        self._queue: queue.SimpleQueue[Request | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._stopping = False
        self._stop_at_exit = False
        # For benchmarks: the size of each group taken from the queue, and how many requests
        # joined a batch that was already decoding.
        self.batch_sizes: list[int] = []
        self.joined = 0
        self.decode_steps = 0
        self.decode_rows = 0  # rows summed over decode steps: / decode_steps = mean batch
        self.shared_prompts = 0  # prompts that started from an earlier prompt of their batch
        self.shared_tokens = 0  # and the prompt tokens they skipped beyond the prefix cache's

    def submit(self, request: Request) -> Future[tuple[list[int], str]]:
        """Queue ``request``; set ``request.abandoned`` to drop it from its batch."""
        self._ensure_thread()
        self._queue.put(request)
        return request.future

    def _ensure_thread(self) -> None:
        with self._start_lock:
            if self._thread is None or not self._thread.is_alive():
                self._stopping = False
                self._thread = threading.Thread(target=self._loop, name="mafl-batcher", daemon=True)
                self._thread.start()
                if not self._stop_at_exit:
                    atexit.register(self.stop)
                    self._stop_at_exit = True

    def stop(self, timeout: float = 30.0) -> None:
        """Let the scheduler's thread finish its current step and end; requests left fail.

        Runs at interpreter exit: Python ends daemon threads abruptly there, and one caught
        inside a torch operation aborts the whole process (exit code 134, "terminate called
        without an active exception") after work that had succeeded.
        """
        thread = self._thread
        if thread is None or not thread.is_alive():
            return
        self._stopping = True
        self._queue.put(None)  # wakes a thread that waits for work
        thread.join(timeout)

    def _loop(self) -> None:
        while not self._stopping:
            batch = self._take(self.max_batch_size, wait=True)
            if not batch:
                continue
            try:
                self._run(batch)
            except BaseException as exc:  # a broken batch fails its own requests, not the thread
                for request in batch:
                    if not request.future.done():
                        request.future.set_exception(exc)

    def _take(self, room: int, *, wait: bool) -> list[Request]:
        """Up to ``room`` queued requests; with ``wait``, block for the first one."""
        batch: list[Request | None] = []  # None: stop() woke the thread
        if wait:
            batch.append(self._queue.get())
        # Requests of one graph step arrive a few milliseconds apart (each is tokenized
        # first): keep taking until none came for a moment, so they start together.
        while len(batch) < room:
            try:
                batch.append(self._queue.get(timeout=self.gather_seconds if batch else 0))
            except queue.Empty:
                break
        taken = [
            r
            for r in batch
            if r is not None and not r.abandoned and r.future.set_running_or_notify_cancel()
        ]
        if taken:
            self.batch_sizes.append(len(taken))
        return taken

    def _run(self, batch: list[Request]) -> None:
        """Decode ``batch`` to the end, admitting newly queued requests between steps."""
        import torch

        with torch.inference_mode():
            rows = self._prefill(batch)
            while rows.requests and not self._stopping:
                if len(rows.requests) < self.max_batch_size:
                    joining = self._take(self.max_batch_size - len(rows.requests), wait=False)
                    if joining:
                        self.joined += len(joining)
                        rows = rows.merge(self._prefill(joining), self.max_batch_size)
                self.decode_steps += 1
                self.decode_rows += len(rows.requests)
                with self._lock:
                    logits, rows.cache = self._forward(
                        rows.next_ids, rows.mask, rows.positions, rows.cache, rows.adapters
                    )
                self._advance(rows, logits)
        for request in rows.requests:  # stopped
            request.future.set_exception(CancelledRequest())

    def _prefill(self, batch: list[Request]) -> _Rows:
        """Run the prompts of ``batch`` (left-padded) and sample each row's first token.

        A prompt that continues a kept sequence starts from its keys and values and runs only
        its remaining tokens (see ``prefix_cache``). A prompt that shares a longer beginning
        with an earlier prompt of the batch (the agents of a debate are asked the same
        question; the summaries of one problem start alike) waits for that prompt's forward
        pass and then runs only what differs: a second, shorter pass instead of the same
        tokens computed again.
        """
        import torch

        for request in batch:
            if request.seed is not None and request.temperature > 0:
                request.generator = torch.Generator().manual_seed(request.seed)
        hits = [
            self.prefixes.lookup(r.adapter, r.prompt_ids)
            if self.prefixes is not None
            else (0, None)
            for r in batch
        ]
        # Keys and values are handed on as prefix-cache entries: GrowingCaches only.
        followers = _followers(batch, hits) if self.prefixes is not None else {}
        first = [i for i in range(len(batch)) if i not in followers]
        rows, logits = self._run_prompts([batch[i] for i in first], [hits[i] for i in first])
        if not followers:
            self._advance(rows, logits)
            return rows
        entries = {
            leader: Entry(batch[leader].prompt_ids, rows.fed(first.index(leader)))
            for leader in {leader for leader, _ in followers.values()}
        }
        self.shared_prompts += len(followers)
        self.shared_tokens += sum(shared - hits[i][0] for i, (_, shared) in followers.items())
        late, late_logits = self._run_prompts(
            [batch[i] for i in followers],
            [(shared, entries[leader]) for leader, shared in followers.values()],
        )
        self._advance(rows, logits)
        self._advance(late, late_logits)
        return rows.merge(late, self.max_batch_size)

    def _run_prompts(
        self, batch: list[Request], hits: list[tuple[int, Entry | None]]
    ) -> tuple[_Rows, torch.Tensor]:
        """One forward pass over the prompts, each after its reused prefix (``hits``)."""
        import torch

        rest = [r.prompt_ids[h:] for r, (h, _) in zip(batch, hits, strict=True)]
        width = max(len(ids) for ids in rest)
        pads = [width - len(ids) for ids in rest]
        ids = torch.tensor([[self._pad_id] * p + r for p, r in zip(pads, rest, strict=True)])
        mask = torch.tensor([[0] * p + [1] * (width - p) for p in pads])
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = None
        if any(h for h, _ in hits):
            cache, reused_mask = batch_cache(hits)
            mask = torch.cat([reused_mask, mask], -1)
            positions = positions + torch.tensor([[h] for h, _ in hits])
        adapters = [r.adapter for r in batch]
        with self._lock:
            logits, cache = self._forward(ids, mask, positions, cache, adapters)
        return _Rows(list(batch), cache, mask, positions[:, -1:]), logits

    def _advance(self, rows: _Rows, logits: torch.Tensor) -> None:
        """Sample one token per row, resolve the rows that ended and drop them."""
        import torch

        tokens = self._sample(rows.requests, logits)
        count_tokens(len(tokens))  # the debate bar shows tokens between finished calls
        keep = []
        for i, (request, token) in enumerate(zip(rows.requests, tokens, strict=True)):
            request.generated.append(token)
            reason = self._finished(request, token)
            if reason is not None:
                if request.keep and self.prefixes is not None:
                    self._keep(rows, i)
                request.future.set_result((request.generated, reason))
            elif request.abandoned:
                request.future.set_exception(CancelledRequest())
            else:
                keep.append(i)
        if len(keep) < len(rows.requests):
            rows.select(keep)
        # The sampled tokens are the next step's input, one position further on.
        rows.mask = torch.cat([rows.mask, torch.ones(len(keep), 1, dtype=rows.mask.dtype)], -1)
        rows.positions = rows.positions + 1

    def _keep(self, rows: _Rows, row: int) -> None:
        """Store a finished row's keys and values: every token it fed (the last sampled
        token, or the EOS, never went through the model)."""
        assert self.prefixes is not None
        request = rows.requests[row]
        layers = rows.fed(row)
        fed = (request.prompt_ids + request.generated)[: layers[0][0].shape[1]]
        self.prefixes.store(request.adapter, fed, layers)

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
            # The nucleus almost always lies within the top few hundred tokens: take those
            # (sorted) and sort the whole vocabulary only when they hold less than top_p. Exact
            # either way, and a quarter of a decode step cheaper at batch 50 than a full sort.
            probs, order = probs.topk(min(_NUCLEUS_CANDIDATES, probs.shape[-1]), dim=-1)
            if bool((probs.sum(-1) < top_p).any()):
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
