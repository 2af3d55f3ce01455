"""Progress of a run in model calls: the bar's total, its count, where a resumed run starts it;
log lines beside the bars."""

from __future__ import annotations

import importlib
import io
import logging
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fakes import EchoTask, ScriptedModel
from langchain_core.messages import AIMessage, BaseMessage
from tqdm.auto import tqdm

from mafl_graph import Society, create_debate_graph, run_debates
from mafl_graph.debate import run as run_module
from mafl_graph.progress import CallProgress, calls_per_debate, count_tokens, phase_name


@pytest.fixture
def bars(monkeypatch: pytest.MonkeyPatch) -> list[CallProgress]:
    """Every progress bar a run makes, kept for inspection after it is closed."""
    made: list[CallProgress] = []

    class Kept(CallProgress):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(run_module, "CallProgress", Kept)
    return made


def _critiques(messages: list[BaseMessage]) -> bool:
    """A critic's call carries the agent's own earlier answer."""
    return any(isinstance(m, AIMessage) for m in messages)


@pytest.mark.parametrize(
    ("rounds", "summarize", "per_debate"),
    [(2, True, 9), (2, False, 6), (3, True, 15), (1, True, 3)],
)
def test_the_bar_counts_every_model_call_of_the_run(
    tmp_path: Path, bars: list[CallProgress], rounds: int, summarize: bool, per_debate: int
) -> None:
    model = ScriptedModel()
    task = EchoTask(["1", "2", "3", "1"])
    graph = create_debate_graph(Society.from_model(model), task, rounds=rounds, summarize=summarize)
    run_debates(graph, task.load("test"), run_id="r", db_path=tmp_path / "d.sqlite")
    (bar,) = bars
    assert calls_per_debate(3, rounds, summarize) == per_debate
    assert bar.bar.total == 4 * per_debate == len(model.calls)
    assert bar.bar.n == bar.bar.total
    assert bar.bar.postfix == "debates 4/4"


def test_the_bar_moves_as_each_call_finishes_not_as_its_step_or_debate_does(
    tmp_path: Path, bars: list[CallProgress]
) -> None:
    """Of calls made side by side, the first to finish is counted while the others still run."""
    order = iter(range(1000))
    lock = threading.Lock()
    seen: dict[str, int] = {}

    def reply(messages: list[BaseMessage]) -> str:
        with lock:
            k = next(order)
        if k == 1:  # the second call of the first step waits for the first to be counted
            deadline = time.monotonic() + 5
            while bars[0].bar.n < 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            seen["while the step runs"] = bars[0].bar.n
        if _critiques(messages) and "before critiques" not in seen:
            seen["before critiques"] = bars[0].bar.n
            seen["debates then"] = bars[0]._finished
        return "\\boxed{1}"

    task = EchoTask(["1"])
    graph = create_debate_graph(Society.from_model(ScriptedModel(reply=reply)), task)
    run_debates(graph, task.load("test"), run_id="r", db_path=tmp_path / "d.sqlite")
    assert seen["while the step runs"] >= 1
    assert seen["before critiques"] >= 6  # three answers and three summaries
    assert seen["debates then"] == 0


def test_failed_calls_and_the_calls_a_failure_leaves_unmade_count_as_done(
    tmp_path: Path, bars: list[CallProgress]
) -> None:
    def reply(messages: list[BaseMessage]) -> str:
        if "q1" in messages[0].text and _critiques(messages):
            raise ValueError("the critic of this problem always fails")
        return "\\boxed{1}"

    task = EchoTask(["1", "1", "1"])
    graph = create_debate_graph(Society.from_model(ScriptedModel(reply=reply)), task)
    results = run_debates(graph, task.load("test"), run_id="r", db_path=tmp_path / "d.sqlite")
    assert [r.ok for r in results] == [True, False, True]
    (bar,) = bars
    assert bar.bar.n == bar.bar.total == 3 * 9
    assert bar.bar.postfix == "debates 3/3, 1 failed"


def test_a_resumed_run_starts_the_bar_at_the_calls_already_saved(
    tmp_path: Path, bars: list[CallProgress]
) -> None:
    """Saved replies and summaries count from the start, and so does a finished call of a step
    that failed as a whole (its write is saved, though the step is not)."""
    task = EchoTask(["1", "2"])
    db = tmp_path / "d.sqlite"
    good = ScriptedModel()

    def broken(messages: list[BaseMessage]) -> str:
        time.sleep(0.2)  # agent 0's critique is saved first
        raise ValueError("this critic is broken")

    failing = Society.from_model(good).replace(
        critics={1: ScriptedModel(reply=broken), 2: ScriptedModel(reply=broken)}
    )
    first = run_debates(
        create_debate_graph(failing, task), task.load("test"), run_id="r", db_path=db
    )
    assert not any(r.ok for r in first)
    made = len(good.calls)
    assert made == 2 * (3 + 3 + 1)

    healed = ScriptedModel()
    again = run_debates(
        create_debate_graph(Society.from_model(good).replace(critics={1: healed, 2: healed}), task),
        task.load("test"),
        run_id="r",
        db_path=db,
    )
    assert all(r.ok for r in again)
    assert len(healed.calls) == 2 * 2 and len(good.calls) == made  # nothing asked twice
    resumed = bars[1]
    assert resumed.bar.total == 2 * 9
    assert resumed.bar.initial == made
    assert resumed.bar.n == resumed.bar.total

    run_debates(create_debate_graph(failing, task), task.load("test"), run_id="r", db_path=db)
    finished = bars[2]
    assert finished.bar.initial == finished.bar.n == 2 * 9


def test_the_bar_shows_the_tokens_an_engine_reports_as_it_decodes(
    tmp_path: Path, bars: list[CallProgress]
) -> None:
    def reply(messages: list[BaseMessage]) -> str:
        count_tokens(10)  # as the embedded engine does at each decoding step
        return "\\boxed{1}"

    task = EchoTask(["1"])
    graph = create_debate_graph(Society.from_model(ScriptedModel(reply=reply)), task)
    run_debates(graph, task.load("test"), run_id="r", db_path=tmp_path / "d.sqlite")
    (bar,) = bars
    assert re.fullmatch(r"debates 1/1, 90 tokens at [0-9.]+/s", bar.bar.postfix)


def test_the_bar_is_named_after_the_run() -> None:
    assert phase_name("train", {"iteration": 1, "split": "train"}) == "debate train iter 1"
    assert phase_name("eval", {"iteration": 0, "split": "test"}) == "eval iter 0"
    assert phase_name("debate") == "debate"


@pytest.fixture
def restored_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    levels = {
        name: logging.getLogger(name).level for name in ("mafl_graph.loop", "mafl_graph.compare")
    }
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        for name, kept in levels.items():
            logging.getLogger(name).setLevel(kept)


@pytest.mark.usefixtures("restored_logging")
def test_a_log_line_has_one_level_and_does_not_run_into_a_bar(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from rich.console import Console

    # The module, not the Typer app that mafl_graph.cli exports under the same name.
    app = importlib.import_module("mafl_graph.cli.app")
    out = io.StringIO()
    monkeypatch.setattr(app, "console", Console(file=out, width=120))
    app.show_progress_logs()
    with tqdm(total=4, desc="eval iter 0", file=out, mininterval=0) as bar:
        bar.update()
        logging.getLogger("mafl_graph.loop").info("iteration 0: tuning")
        bar.update()
    logging.getLogger("mafl_graph.debate").info("not shown: only the loop's steps are")
    (line,) = [line for line in out.getvalue().splitlines() if "iteration 0: tuning" in line]
    line = line.rsplit("\r", 1)[-1]  # what is left on the terminal's line
    assert re.search(r"\] INFO +iteration 0: tuning", line), line
    assert "mafl_graph.loop" not in line and line.count("INFO") == 1
    assert "eval iter 0" not in line
    assert "not shown" not in out.getvalue()
