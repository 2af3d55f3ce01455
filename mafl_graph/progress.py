"""Progress of a debate run counted in model calls, so that the bar moves with every answer.

Debates run many at once and finish together (a batching engine answers their calls side by
side), so a bar over debates sits at zero for most of a run and then jumps; a bar over the
run's model calls moves as answers arrive and its rate and ETA mean something. Where one
batch's calls all end together (the embedded engine, replies cut at the same length), the
bar also shows the tokens decoded so far, which an engine reports through
:func:`count_tokens` as it decodes.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from tqdm.auto import tqdm


class TokenMeter:
    """Tokens decoded in this process so far, added to by whoever decodes them."""

    def __init__(self) -> None:
        self._n = 0
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        with self._lock:
            self._n += n

    @property
    def total(self) -> int:
        return self._n


DECODED = TokenMeter()


def count_tokens(n: int) -> None:
    """Report ``n`` newly decoded tokens (an engine's decoding step: one per row of its batch).

    Cheap enough for every step; the bars of the runs in progress show them within a second.
    """
    DECODED.add(n)


def calls_per_debate(agents: int, rounds: int, summarize: bool) -> int:
    """The model calls of one debate: every agent answers every round, and with ``summarize``
    the summarizer condenses the others' answers for each agent in every round after the first.
    """
    return agents * rounds + (agents * (rounds - 1) if summarize else 0)


def phase_name(run_id: str, metadata: Mapping[str, Any] | None = None) -> str:
    """What a run is, for its bar: "debate train iter 1", "eval iter 0", or the run id."""
    metadata = metadata or {}
    split = metadata.get("split")
    name = {"train": "debate train", "test": "eval"}.get(split, split) if split else run_id
    if "iteration" in metadata:
        name += f" iter {metadata['iteration']}"
    return str(name)


class CallProgress:
    """A tqdm bar over a run's model calls, with the debates finished as its postfix.

    ``saved``: calls each debate (by key) already holds from an earlier run, where the bar
    starts. :meth:`call_done` counts a finished call (one that failed after its retries too);
    :meth:`debate_done` counts the debate and, when the size of a debate is known, its calls
    that were never made (those after a failure) or never reported, so the bar ends at its
    total. ``per_debate`` None: the total is unknown and the bar counts calls only.
    """

    def __init__(
        self,
        debates: Sequence[str],
        *,
        per_debate: int | None,
        saved: Mapping[str, int] | None = None,
        desc: str = "debates",
        disable: bool = False,
    ) -> None:
        self.per_debate = per_debate
        self._counted = {key: 0 for key in debates}
        self._counted.update(saved or {})
        self._debates = len(debates)
        self._finished = 0
        self._failed = 0
        self._tokens_from = DECODED.total
        self._tokens_shown = 0
        self.bar = tqdm(
            total=per_debate * len(debates) if per_debate is not None else None,
            initial=sum(self._counted.values()),
            desc=desc,
            unit="call",
            disable=disable,
            # The run's average rate, not a moving one: calls of a batch finish in bursts,
            # and tqdm credits a burst to its first draw, which comes seconds after the last.
            smoothing=0,
            dynamic_ncols=True,
        )
        self._show_postfix()

    def call_done(self, debate: str) -> None:
        """One model call of ``debate`` finished."""
        if self.per_debate is not None and self._counted[debate] >= self.per_debate:
            return
        self._counted[debate] += 1
        self.bar.update()

    def debate_done(self, debate: str, *, failed: bool = False) -> None:
        """``debate`` finished (or failed): its remaining calls are done too."""
        self._finished += 1
        self._failed += failed
        if self.per_debate is not None:
            rest = self.per_debate - self._counted[debate]
            if rest > 0:
                self._counted[debate] = self.per_debate
                self.bar.update(rest)
        self._show_postfix()

    async def keep_fresh(self, every: float = 1.0, idle: float = 5.0) -> None:
        """Redraw the bar every ``every`` seconds if a count is not shown yet, and at least
        every ``idle`` seconds, until cancelled.

        tqdm draws on ``update`` at most every 0.1 s, so of a batch's calls finishing together
        only the first is drawn until the next update, which may be the next round's; and
        between rounds the elapsed time would stand still, as if the run were stuck.
        """
        bar = self.bar
        if bar.disable:
            return
        drawn_n, drawn_t = bar.n, time.time()
        while True:
            await asyncio.sleep(every)
            # tqdm's own record of its last drawing, read only: what ``update`` drew counts
            # in its rate, so it is not to be moved from here.
            drawn_t = max(drawn_t, bar.last_print_t)
            decoded = self._show_postfix()
            stale = bar.n not in (bar.last_print_n, drawn_n)
            if stale or decoded or time.time() - drawn_t >= idle:
                bar.refresh()
                drawn_n, drawn_t = bar.n, time.time()

    def close(self) -> None:
        self.bar.close()

    def _show_postfix(self) -> bool:
        """Show the debates finished and the tokens decoded; whether tokens were decoded
        since they were last shown."""
        if self.bar.disable:
            return False
        failed = f", {self._failed} failed" if self._failed else ""
        tokens = DECODED.total - self._tokens_from
        elapsed = max(time.time() - self.bar.start_t, 1e-9)
        decoded = f", {tokens:,} tokens at {tokens / elapsed:.1f}/s" if tokens else ""
        self.bar.set_postfix_str(
            f"debates {self._finished}/{self._debates}{failed}{decoded}", refresh=False
        )
        new, self._tokens_shown = tokens != self._tokens_shown, tokens
        return new
