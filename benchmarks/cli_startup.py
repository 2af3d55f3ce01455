"""How long ``mafl --help`` and ``import mafl_graph`` take, side by side with ``python -c pass``.

Each command runs ``--repeat`` times in fresh processes, interleaved, so that a busy machine
slows all three alike; the medians and their ratio to the bare interpreter are printed.
Nothing is asserted.

    python benchmarks/cli_startup.py [--repeat 7]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "import mafl_graph": [sys.executable, "-c", "import mafl_graph"],
    "mafl --help": [sys.executable, "-m", "mafl_graph.cli", "--help"],
    "mafl loop --help": [sys.executable, "-m", "mafl_graph.cli", "loop", "--help"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.repeat):
        for name, command in COMMANDS.items():
            started = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True)
            times[name].append(time.perf_counter() - started)
    bare = statistics.median(times["python -c pass"])
    print(f"{'command':<20} {'median s':>9} {'min s':>7} {'x python':>9}")
    for name, seconds in times.items():
        median = statistics.median(seconds)
        print(f"{name:<20} {median:>9.3f} {min(seconds):>7.3f} {median / bare:>9.1f}")


if __name__ == "__main__":
    main()
