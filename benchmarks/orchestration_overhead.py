"""P2: what the graph, the runner and SQLite checkpoints cost on top of the model calls.

A fake chat model answers every call after a fixed latency, serving at most C calls at once
(like a provider's concurrency limit); the runner keeps C debates in flight, as
``mafl ... --concurrency C`` does. The ideal wall time is calls × latency / C; the printed
ratio is measured wall time over that ideal, for each C, in one run (the median of
``--repeats`` runs, with their range: on a shared 2-core VM single runs vary by ±10%). The same
run with zero latency shows the floor: the graph's, LangChain's and SQLite's own CPU time for
these calls, which no amount of concurrency hides. Beside it, the same schedule in plain
asyncio (C debates in flight, each round's calls gathered, no graph, no checkpoints): what the
round barriers alone cost against the ideal, since a debate's calls of round 2 cannot start
before its round 1 ends and the last debates leave slots idle.

    python benchmarks/orchestration_overhead.py [--problems 100] [--latency 0.05]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import PrivateAttr

from mafl_graph import Arithmetic, Society, arun_debates, create_debate_graph


class FixedLatencyModel(BaseChatModel):
    latency: float
    slots: int
    _semaphore: asyncio.Semaphore | None = PrivateAttr(default=None)
    _calls: int = PrivateAttr(default=0)

    @property
    def _llm_type(self) -> str:
        return "fixed-latency"

    def _generate(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> ChatResult:
        raise NotImplementedError("async only")

    async def _agenerate(
        self, messages: list[BaseMessage], *args: Any, **kwargs: Any
    ) -> ChatResult:
        if self._semaphore is None:
            self._semaphore = asyncio.Semaphore(self.slots)
        async with self._semaphore:
            await asyncio.sleep(self.latency)
            self._calls += 1
        reply = AIMessage(content="The answer is \\boxed{7}.")
        return ChatResult(generations=[ChatGeneration(message=reply)])


async def measure(problems: int, latency: float, slots: int) -> tuple[int, float]:
    """Calls made and wall seconds for one SQLite-checkpointed run of ``problems`` debates."""
    model = FixedLatencyModel(latency=latency, slots=slots)
    task = Arithmetic()
    graph = create_debate_graph(Society.from_model(model, 3), task, rounds=2, summarize=False)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        await arun_debates(
            graph,
            task.load("test", problems),
            run_id="p2",
            db_path=Path(tmp) / "p2.sqlite",
            max_concurrency=slots,
            progress=False,
        )
        return model._calls, time.perf_counter() - start


async def plain_schedule(problems: int, latency: float, slots: int) -> float:
    """Wall seconds of the same calls, limits and round barriers with no graph at all."""
    calls, debates = asyncio.Semaphore(slots), asyncio.Semaphore(slots)

    async def call() -> None:
        async with calls:
            await asyncio.sleep(latency)

    async def debate() -> None:
        async with debates:
            for _ in range(2):  # rounds
                await asyncio.gather(*(call() for _ in range(3)))  # agents

    start = time.perf_counter()
    await asyncio.gather(*(debate() for _ in range(problems)))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problems", type=int, default=100)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--slots", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(
        f"\n{args.problems} problems x 3 agents x 2 rounds, {1000 * args.latency:.0f} ms a call, "
        "SQLite checkpoints\n"
    )
    asyncio.run(measure(args.problems, 0.0, max(args.slots)))  # warm-up: first-call imports
    _, floor = asyncio.run(measure(args.problems, 0.0, max(args.slots)))
    print(
        f"floor (zero latency): {floor:.2f} s, {1000 * floor / (6 * args.problems):.2f} ms a call\n"
    )
    print(
        "| concurrent calls | calls | ideal s | measured s | measured ÷ ideal (range) "
        "| plain asyncio ÷ ideal |"
    )
    print("|---|---|---|---|---|---|")
    for slots in args.slots:
        runs = [
            asyncio.run(measure(args.problems, args.latency, slots)) for _ in range(args.repeats)
        ]
        calls = runs[0][0]
        seconds = statistics.median(s for _, s in runs)
        ideal = calls * args.latency / slots
        low, high = min(s for _, s in runs) / ideal, max(s for _, s in runs) / ideal
        plain = asyncio.run(plain_schedule(args.problems, args.latency, slots))
        print(
            f"| {slots} | {calls} | {ideal:.2f} | {seconds:.2f} | "
            f"{seconds / ideal:.2f}x ({low:.2f}-{high:.2f}) | {plain / ideal:.2f}x |"
        )


if __name__ == "__main__":
    main()
