"""What serialised symbolic grading costs in throughput, and what unserialised grading gets wrong.

The 200 answer pairs of the tests (tests/grading_pairs.py: series, fractions, sets, intervals,
expressions, plain numbers; about half equivalent) are graded by ``grade`` on 1, 4 and 8
threads, as the debate's vote nodes are, with the grading lock (the library as it is) and with
the lock replaced by a no-op (sympy and mpmath shared unguarded between threads): one warm-up
run, then ``--repeats`` runs of each, alternating which goes first. Printed: pairs per second
(median), the ratio locked / unlocked, and the verdicts per run that came back undecided or
differ from the known answer. The same again for the pairs without an infinite series, where
unguarded grading happens to give the right verdicts, so the ratio there is the lock's own
cost. Last, a pool of spawned processes, one per core and started before the clock: what
grading on every core at once would buy instead.

    python benchmarks/grading_throughput.py [--repeats 3] [--timeout 5]
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import multiprocessing
import os
import statistics
import sys
import time
from collections.abc import Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from grading_pairs import stress_pairs  # noqa: E402

from mafl_graph import grading  # noqa: E402
from mafl_graph.grading import Verdict, grade  # noqa: E402

Pairs = list[tuple[str, str, bool]]


def run(pool: Executor, pairs: Pairs, timeout: float) -> tuple[float, int, int]:
    """Seconds, undecided verdicts and wrong verdicts of grading ``pairs`` once."""
    answers, references, same = zip(*pairs, strict=True)
    started = time.perf_counter()
    verdicts = list(pool.map(partial(grade, timeout=timeout), answers, references))
    seconds = time.perf_counter() - started
    undecided = verdicts.count(Verdict.UNDECIDED)
    expected = [Verdict.EQUIVALENT if s else Verdict.DIFFERENT for s in same]
    wrong = sum(v != e for v, e in zip(verdicts, expected, strict=True)) - undecided
    return seconds, undecided, wrong


@contextlib.contextmanager
def unlocked() -> Iterator[None]:
    lock = grading._SYMBOLIC
    grading._SYMBOLIC = contextlib.nullcontext()  # type: ignore[assignment]
    try:
        yield
    finally:
        grading._SYMBOLIC = lock


def compare(workers: int, pairs: Pairs, repeats: int, timeout: float) -> str:
    runs: dict[bool, list[tuple[float, int, int]]] = {True: [], False: []}
    with ThreadPoolExecutor(workers) as pool:
        run(pool, pairs, timeout)  # warm: threads started, first-use caches filled
        for i in range(repeats):
            for locked in (True, False) if i % 2 == 0 else (False, True):
                with contextlib.nullcontext() if locked else unlocked():
                    runs[locked].append(run(pool, pairs, timeout))
    rate = {k: len(pairs) / statistics.median(r[0] for r in v) for k, v in runs.items()}
    bad = {
        k: (sum(r[1] for r in v) / repeats, sum(r[2] for r in v) / repeats) for k, v in runs.items()
    }
    return (
        f"{rate[True]:>9.1f}{rate[False]:>9.1f}{rate[True] / rate[False]:>7.2f}"
        f"{bad[True][0]:>6.1f}/{bad[True][1]:<3.1f}{bad[False][0]:>6.1f}/{bad[False][1]:<3.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=5.0)
    args = parser.parse_args()
    logging.getLogger("mafl_graph.grading").setLevel(logging.ERROR)  # undecided is counted
    pairs = stress_pairs()
    finite = [p for p in pairs if r"\infty}" not in p[1]]
    grade(*pairs[0][:2])  # imports and first-use caches outside every measurement
    print(
        f"{len(pairs)} pairs ({len(finite)} without an infinite series), median of "
        f"{args.repeats} runs, budget {args.timeout} s, {os.cpu_count()} cores, "
        f"load average {os.getloadavg()[0]:.1f}, Python {sys.version.split()[0]}"
    )
    print(f"{'':<18}{'pairs/s':>18}{'':>7}{'undecided/wrong':>20}")
    print(f"{'graders':<18}{'lock':>9}{'no lock':>9}{'ratio':>7}{'lock':>10}{'no lock':>10}")
    for name, subset in (("all pairs", pairs), ("no infinite series", finite)):
        print(name)
        for workers in (1, 4, 8):
            measured = compare(workers, subset, args.repeats, args.timeout)
            print(f"{f'  {workers} threads':<18}{measured}")
    cores = os.cpu_count() or 1
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(cores, mp_context=spawn) as processes:
        list(processes.map(grade, ["1/2"] * cores, ["0.5"] * cores))  # started before the clock
        runs = [run(processes, pairs, args.timeout) for _ in range(args.repeats)]
    rate = len(pairs) / statistics.median(r[0] for r in runs)
    undecided, wrong = (sum(r[i] for r in runs) / args.repeats for i in (1, 2))
    print(f"all pairs, {cores} processes{rate:>9.1f}{'':>16}{undecided:>6.1f}/{wrong:<3.1f}")


if __name__ == "__main__":
    main()
