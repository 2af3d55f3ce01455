"""Peak RSS of ``mafl demo``, step by step: debate, tune six adapters, evaluate with them.

The demo runs in a subprocess; a probe samples the resident memory of its process tree every
0.2 s and files each sample under the loop step the demo last announced ("iteration 1:
tuning", ...). The peak of each step and of the whole run are printed, with the kernel's own
``ru_maxrss`` of the child as a cross-check. ``--compare-to`` an earlier demo run directory
checks that the tuned adapters came out the same (weights bit for bit, and the losses).
Nothing is asserted; the target (peak ≤ 4 GB) and the figures are in docs/benchmarks.md.

    python benchmarks/demo_memory.py [--run-dir DIR] [--compare-to EARLIER_RUN_DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

STEP = re.compile(r"iteration (\d+): (\w+)")


def tree_rss(process: psutil.Process) -> int:
    """Resident bytes of ``process`` and its children (a vanished one counts as 0)."""
    total = 0
    for p in [process, *process.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


def run_demo(run_dir: Path, log: Path) -> tuple[dict[str, float], dict[str, float], float]:
    """Run the demo; (peak GB per step, seconds per step, the child's ru_maxrss in GB)."""
    command = [sys.executable, "-m", "mafl_graph.cli", "demo", "--run-dir", str(run_dir)]
    step = ["start"]
    peaks: dict[str, float] = {}
    started: dict[str, float] = {"start": time.perf_counter()}
    with log.open("w") as out:
        # Unbuffered: each step's announcement must arrive when it is printed, not later.
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        probe = psutil.Process(child.pid)

        def read() -> None:
            assert child.stdout is not None
            for raw in iter(lambda: child.stdout.readline(), b""):  # type: ignore[union-attr]
                line = raw.decode(errors="replace")
                out.write(line)
                out.flush()
                if match := STEP.search(line):
                    name = f"iteration {match[1]}: {match[2]}"
                    if name != step[0]:
                        step[0] = name
                        started[name] = time.perf_counter()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        while child.poll() is None:
            gb = tree_rss(probe) / 2**30
            peaks[step[0]] = max(peaks.get(step[0], 0.0), gb)
            time.sleep(0.2)
        reader.join()
    if child.returncode != 0:
        sys.exit(f"mafl demo failed ({child.returncode}); see {log}")
    ends = [*list(started.values())[1:], time.perf_counter()]
    seconds = {name: end - t for (name, t), end in zip(started.items(), ends, strict=True)}
    maxrss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # KB on Linux
    return peaks, seconds, maxrss


def compare_adapters(run_dir: Path, earlier: Path) -> None:
    """Each adapter of ``run_dir`` against ``earlier``'s: weights bit for bit, and losses."""
    import torch
    from safetensors.torch import load_file

    for ours in sorted(run_dir.glob("adapters/*/*/adapter_model.safetensors")):
        name = ours.parent.relative_to(run_dir)
        theirs = earlier / name / "adapter_model.safetensors"
        if not theirs.is_file():
            print(f"{name}: not in {earlier}")
            continue
        a, b = load_file(ours), load_file(theirs)
        same = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        loss_a = json.loads((ours.parent / "metrics.json").read_text())["losses"]
        loss_b = json.loads((theirs.parent / "metrics.json").read_text())["losses"]
        diff = max(abs(x - y) / abs(y) for x, y in zip(loss_a, loss_b, strict=True))
        print(f"{name}: weights {'identical' if same else 'DIFFER'}, losses within {diff:.1e}")
    ours, theirs = (
        _untimed(json.loads((d / "metrics.json").read_text())) for d in (run_dir, earlier)
    )
    print(f"metrics.json the same but for times: {ours == theirs}")


def _untimed(value: object) -> object:
    """``value`` without its "seconds" (and other timing) entries, at any depth."""
    if isinstance(value, dict):
        return {
            k: _untimed(v) for k, v in value.items() if "second" not in k and k != "peak_rss_mb"
        }
    if isinstance(value, list):
        return [_untimed(v) for v in value]
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", type=Path, default=None, help="default: a temporary one")
    parser.add_argument("--compare-to", type=Path, default=None)
    args = parser.parse_args()
    run_dir = args.run_dir or Path(tempfile.mkdtemp(prefix="mafl-demo-memory-"))
    log = run_dir.with_name(run_dir.name + ".log")
    peaks, seconds, maxrss = run_demo(run_dir, log)
    print(f"mafl demo --run-dir {run_dir} (output in {log})")
    print(f"{'step':<28}{'peak RSS':>10}{'seconds':>10}")
    for name, gb in peaks.items():
        print(f"{name:<28}{gb:>8.2f} GB{seconds.get(name, 0.0):>10.0f}")
    print(f"{'whole run':<28}{max(peaks.values()):>8.2f} GB{sum(seconds.values()):>10.0f}")
    print(f"ru_maxrss of the demo process: {maxrss:.2f} GB")
    if args.compare_to:
        compare_adapters(run_dir, args.compare_to)


if __name__ == "__main__":
    main()
