"""How long a paid answer goes unsaved: from leaving the provider to being in the checkpoint.

A ``mafl debate`` killed in that window asks the call again on resume (at-least-once delivery),
so this lag is what a kill can cost. The real CLI runs in its own process against the loopback
OpenAI server of the tests (``tests/fault_server.py``, 15% of requests answered 429); each
successful answer's send time is taken from the server, and the client process logs, by the
same monotonic clock, when the debate node held the reply and when the checkpointer had
written it: with the reply journal (each reply written in the node, as ``mafl`` runs) and
without it (only LangGraph's own write after the node returns). Idle and under CPU load
(``--load`` busy processes beside the client on the same cores), in one run:

    python benchmarks/answer_save_lag.py [--problems 24] [--load 0 4]

Prints, per load and mode, the lag percentiles in milliseconds for "reply in the node" and
"first written to disk".
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from fault_server import FaultServer, arithmetic_answer, serve  # noqa: E402

# The client: the CLI, with two probes that log (monotonic time, reply text) as JSON lines.
CLIENT = r"""
import json, sys, time
from mafl_graph.debate import nodes, saver
log = open(sys.argv[1], "a", buffering=1)
response = nodes.DebateNodes._response
def probed_response(self, call, reply):
    log.write(json.dumps(["node", time.monotonic(), reply.text]) + "\n")
    return response(self, call, reply)
nodes.DebateNodes._response = probed_response
put_writes = saver.InlineSqliteSaver.put_writes
def probed_put_writes(self, config, writes, task_id, task_path=""):
    put_writes(self, config, writes, task_id, task_path)
    now = time.monotonic()
    for _, value in writes:
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, dict) and "text" in item:
                log.write(json.dumps(["saved", now, item["text"]]) + "\n")
saver.InlineSqliteSaver.put_writes = probed_put_writes
from mafl_graph.debate import journal
if sys.argv[2] == "journal":
    put = journal.ReplyJournal.put
    def probed_put(self, thread, call, reply):
        put(self, thread, call, reply)
        log.write(json.dumps(["saved", time.monotonic(), reply.text]) + "\n")
    journal.ReplyJournal.put = probed_put
else:  # as without the journal: only LangGraph's own writes save a reply
    nodes._Journaled.of = classmethod(lambda cls, *args: None)
from mafl_graph.cli import app
app(sys.argv[3:])
"""


def busy(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def measure(problems: int, load: int, mode: str) -> dict[str, list[float]]:
    server = FaultServer(answer=arithmetic_answer, rate=0.15, kinds=("429",), seed=5, delay=0.02)
    hogs = [multiprocessing.Process(target=busy, args=(600,)) for _ in range(load)]
    for hog in hogs:
        hog.start()
    try:
        with serve(server) as s, tempfile.TemporaryDirectory() as tmp:
            log = Path(tmp) / "probe.jsonl"
            args = [
                "debate", "--model", "openai:fault-model", "--n", str(problems),
                "--concurrency", "4", "--terms", "3", "--high", "50", "--operators", "+*",
                "--run-dir", str(Path(tmp) / "run"),
            ]  # fmt: skip
            env = {**os.environ, "OPENAI_API_KEY": "sk-bench-0123456789", "OPENAI_BASE_URL": s.url}
            subprocess.run(
                [sys.executable, "-c", CLIENT, str(log), mode, *args],
                env=env,
                check=True,
                capture_output=True,
            )
            events = [json.loads(line) for line in log.read_text().splitlines()]
    finally:
        for hog in hogs:
            hog.terminate()
    first: dict[tuple[str, str], float] = {}
    for kind, when, text in events:
        first.setdefault((kind, text), when)
    sent: dict[str, list[float]] = {}
    for request in server.requests:
        if request.ok and request.text is not None:
            sent.setdefault(request.text, []).append(request.replied or 0.0)
    lags: dict[str, list[float]] = {"node": [], "saved": []}
    for text, times in sent.items():
        if len(times) != 1:  # the same reply text twice cannot be told apart
            continue
        for kind in lags:
            if (kind, text) in first:
                lags[kind].append(1000 * (first[kind, text] - times[0]))
    return lags


def percentiles(values: list[float]) -> str:
    if not values:
        return "no data"
    q = statistics.quantiles(values, n=100) if len(values) > 1 else values * 99
    return f"p50 {q[49]:6.1f}  p90 {q[89]:6.1f}  p99 {q[98]:6.1f}  max {max(values):6.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problems", type=int, default=24)
    parser.add_argument("--load", type=int, nargs="+", default=[0, 4])
    args = parser.parse_args()
    print(f"cores: {os.cpu_count()}; lag after the server sent each answer, in ms")
    for load in args.load:
        for mode in ("journal", "graph-only"):
            lags = measure(args.problems, load, mode)
            print(f"load {load} busy processes, {mode}, {len(lags['saved'])} answers")
            print(f"  reply in the debate node: {percentiles(lags['node'])}")
            print(f"  first written to disk:    {percentiles(lags['saved'])}")


if __name__ == "__main__":
    main()
