"""How many sandboxed executions per second: HumanEval's 164 canonical solutions run against
their own tests, one sandbox each, sequentially and on 2 threads.

    python benchmarks/sandbox_throughput.py [--repeats 3] [--threads 2]

Each execution is what grading one HumanEval answer costs when it is not cached: a fresh
interpreter with its limits and audit hook, the problem's prompt, the solution and the
rewritten ``check`` run in it, the outcome read back and the directory removed. An empty
program (``pass``) on one thread is the floor: the cost of the sandbox itself. Printed: the
machine, the date, the commit and the command, then executions per second (median of the
repeats) and how many of the 164 passed every test (all should).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mafl_graph.sandbox import run_python
from mafl_graph.tasks import humaneval


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def commit() -> str:
    root = Path(__file__).resolve().parents[1]
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        return "unknown"


def rate(
    jobs: list[Callable[[], object]], threads: int, repeats: int
) -> tuple[float, list[object]]:
    """Median executions per second of running ``jobs`` on ``threads`` threads, and the
    results of the last run."""
    seconds, results = [], []
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(repeats):
            started = time.perf_counter()
            results = list(pool.map(lambda job: job(), jobs))
            seconds.append(time.perf_counter() - started)
    return len(jobs) / statistics.median(seconds), results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    numbers = sorted(humaneval._records())
    records = humaneval._records()
    limits = {"timeout": 10.0, "cpu_seconds": 5, "memory_mb": 512}

    def solution(number: int) -> Callable[[], str]:
        code = records[number]["prompt"] + records[number]["canonical_solution"]
        return lambda: humaneval._run_tests(number, code, **limits)  # uncached on purpose

    jobs = [solution(n) for n in numbers]
    empty = [lambda: run_python("pass").ok for _ in numbers]
    jobs[0]()  # warm: the data read, the tests rewritten, the interpreter's files in the cache
    for number in numbers:
        humaneval._recording_test(number)
    print(
        f"{cpu_model()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}, "
        f"Python {sys.version.split()[0]}, {datetime.date.today()}, commit {commit()}"
    )
    print(
        f"command: python benchmarks/sandbox_throughput.py --repeats {args.repeats} "
        f"--threads {args.threads}; median of {args.repeats} runs"
    )
    print(f"{'':<34}{'executions/s':>14}{'all tests pass':>16}")
    floor, _ = rate(empty, 1, args.repeats)
    print(f"{'empty program, 1 thread':<34}{floor:>14.1f}")
    for threads in sorted({1, args.threads}):
        measured, outcomes = rate(jobs, threads, args.repeats)
        passed = sum(bool(o) and set(str(o)) == {"P"} for o in outcomes)
        name = f"164 solutions + tests, {threads} thread{'s' if threads > 1 else ''}"
        print(f"{name:<34}{measured:>14.1f}{passed:>12}/{len(jobs)}")


if __name__ == "__main__":
    main()
