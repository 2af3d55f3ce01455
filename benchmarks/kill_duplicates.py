"""What a `kill -9` of `mafl debate` costs in paid calls asked twice, idle and under CPU load.

The setting of ``tests/test_kill_resume.py`` (12 problems, 3 agents, 2 rounds, 108 calls, 15%
of requests answered 429, through the real CLI and the OpenAI SDK against the loopback server),
killed when the k-th request arrives for several k, then run again to the end. For each kill:
the paid calls asked twice, split into those answered after the kill (in flight: no client can
keep them) and those answered before it but not yet written, with how long before the kill
their answers left the server. ``--load`` busy processes share the 2 cores with the client.

    python benchmarks/kill_duplicates.py [--kills 8] [--load 0 4]
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from fault_server import Request, serve  # noqa: E402
from test_kill_resume import CALLS, Killer, mafl, server  # noqa: E402


def busy(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def one_kill(at: int) -> tuple[int, int, list[float]]:
    """(asked twice in flight, asked twice though answered before the kill, their lag in ms)."""
    killer = Killer(at)
    log = server()
    log.hook = killer
    with serve(log) as s, tempfile.TemporaryDirectory() as tmp:
        killed = mafl(Path(tmp), s.url)
        killer.process = killed
        killed.communicate(timeout=600)
        assert killed.returncode == -signal.SIGKILL, killed.returncode
        resumed = mafl(Path(tmp), s.url)
        _, err = resumed.communicate(timeout=600)
        assert resumed.returncode == 0, err
    answered: dict[str, list[Request]] = {}
    for r in log.requests:
        if r.ok:
            answered.setdefault(r.key, []).append(r)
    killed_at = killer.killed_at or 0.0
    twice = [rs[0] for rs in answered.values() if len(rs) > 1]
    in_flight = sum(1 for r in twice if (r.replied or 0) >= killed_at)
    lags = [1000 * (killed_at - (r.replied or 0)) for r in twice if (r.replied or 0) < killed_at]
    return in_flight, len(lags), lags


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=8)
    parser.add_argument("--load", type=int, nargs="+", default=[0, 4])
    args = parser.parse_args()
    points = random.Random(0).sample(range(10, CALLS - 10), args.kills)
    for load in args.load:
        hogs = [multiprocessing.Process(target=busy, args=(3600,)) for _ in range(load)]
        for hog in hogs:
            hog.start()
        try:
            outcomes = [one_kill(at) for at in points]
        finally:
            for hog in hogs:
                hog.terminate()
        totals = [a + b for a, b, _ in outcomes]
        lags = [lag for _, _, ls in outcomes for lag in ls]
        print(f"load {load} busy processes, {len(points)} kills at requests {sorted(points)}")
        median = statistics.median(totals)
        print(f"  paid calls asked twice per kill: {sorted(totals)} (median {median})")
        print(f"    answered after the kill (in flight): {[a for a, _, _ in outcomes]}")
        print(f"    answered before it, not yet written: {[b for _, b, _ in outcomes]}")
        if lags:
            span = f"{min(lags):.0f}-{max(lags):.0f} ms"
            print(f"    their answers left the server {span} before the kill")


if __name__ == "__main__":
    main()
