"""Durable runs: SQLite threads, skipping finished debates, resuming a killed process."""

from __future__ import annotations

import ast
import collections
import contextlib
import gc
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from fakes import EchoTask, ScriptedModel

from mafl_graph import Society, create_debate_graph, run_debates, summarize_debates

HERE = Path(__file__).parent
CALLS_PER_PROBLEM = 3 + 3 + 3  # generators, summaries, critics


def worker(
    tmp_path: Path, n: int, die_at: int | None = None, *more: str
) -> subprocess.CompletedProcess:
    args = [
        sys.executable,
        str(HERE / "debate_worker.py"),
        str(tmp_path / "d.sqlite"),
        str(tmp_path / "calls.log"),
        str(n),
    ] + ([str(die_at or 0), *more] if die_at or more else [])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parent)])}
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=120)


def logged_calls(tmp_path: Path) -> int:
    log = tmp_path / "calls.log"
    return len(log.read_text().splitlines()) if log.exists() else 0


def test_second_run_skips_finished_debates(tmp_path: Path) -> None:
    model = ScriptedModel(reply=lambda m: "\\boxed{1}")
    task = EchoTask(["1", "2", "1"])
    graph = create_debate_graph(Society.from_model(model), task)
    db = tmp_path / "runs.sqlite"
    first = run_debates(graph, task.load("test"), run_id="r", db_path=db, progress=False)
    assert len(model.calls) == 3 * CALLS_PER_PROBLEM
    assert [r.correct for r in first] == [True, False, True]
    second = run_debates(graph, task.load("test"), run_id="r", db_path=db, progress=False)
    assert len(model.calls) == 3 * CALLS_PER_PROBLEM  # nothing asked twice
    assert second == first
    summary = summarize_debates(second, task)
    assert (summary.accuracy.correct, summary.accuracy.n) == (2, 3)
    assert summary.consensus == 1.0
    # a new run id is a new set of threads in the same file
    run_debates(graph, task.load("test", 1), run_id="other", db_path=db, progress=False)
    assert len(model.calls) == 4 * CALLS_PER_PROBLEM


def test_a_different_question_under_a_known_id_is_refused(tmp_path: Path) -> None:
    graph = create_debate_graph(Society.from_model(ScriptedModel()), EchoTask())
    db = tmp_path / "runs.sqlite"
    run_debates(graph, EchoTask().load("test", 1), run_id="r", db_path=db, progress=False)
    changed = [EchoTask().load("test", 1)[0].__class__("echo-0", "another question", "1")]
    with pytest.raises(ValueError, match="different question under problem id 'echo-0'"):
        run_debates(graph, changed, run_id="r", db_path=db, progress=False)


def test_a_failing_problem_is_reported_and_the_others_finish(tmp_path: Path) -> None:
    def reply(messages) -> str:
        if "q1" in messages[0].text:
            raise ValueError("this problem always breaks the model")
        return "\\boxed{1}"

    task = EchoTask(["1", "1", "1"])
    graph = create_debate_graph(Society.from_model(ScriptedModel(reply=reply)), task)
    results = run_debates(
        graph, task.load("test"), run_id="f", db_path=tmp_path / "f.sqlite", progress=False
    )
    assert [r.ok for r in results] == [True, False, True]
    assert "always breaks the model" in (results[1].error or "")
    assert results[1].correct is None
    assert summarize_debates(results, task).accuracy.correct == 2


@pytest.mark.parametrize("die_at", [2, 13, 30])
def test_killed_run_resumes_without_repeating_a_finished_call(tmp_path: Path, die_at: int) -> None:
    n = 4
    killed = worker(tmp_path, n, die_at)
    assert killed.returncode == -9, killed.stderr
    assert logged_calls(tmp_path) < n * CALLS_PER_PROBLEM
    resumed = worker(tmp_path, n)
    assert resumed.returncode == 0, resumed.stderr
    assert logged_calls(tmp_path) == n * CALLS_PER_PROBLEM

    reference_dir = tmp_path / "uninterrupted"
    reference_dir.mkdir()
    uninterrupted = worker(reference_dir, n)
    assert resumed.stdout == uninterrupted.stdout
    assert worker(tmp_path, n).stdout == resumed.stdout
    assert logged_calls(tmp_path) == n * CALLS_PER_PROBLEM  # a finished run asks nothing


def test_a_run_hides_loaded_objects_from_the_collector_only_while_it_runs(tmp_path: Path) -> None:
    """The run freezes what was loaded before it and hands it back; an app's own freeze stays."""
    frozen_during: list[int] = []

    def reply(messages) -> str:
        frozen_during.append(gc.get_freeze_count())
        return "\\boxed{1}"

    task = EchoTask(["1"])
    graph = create_debate_graph(Society.from_model(ScriptedModel(reply=reply)), task)
    assert gc.get_freeze_count() == 0
    run_debates(graph, task.load("test"), run_id="a", db_path=tmp_path / "g.sqlite", progress=False)
    assert min(frozen_during) > 0
    assert gc.get_freeze_count() == 0

    gc.freeze()  # the application's own, e.g. before forking workers
    try:
        kept = gc.get_freeze_count()
        run_debates(
            graph, task.load("test"), run_id="b", db_path=tmp_path / "g.sqlite", progress=False
        )
        # neither unfrozen nor frozen anew (a frozen object freed meanwhile lowers the count)
        assert 0.9 * kept < gc.get_freeze_count() <= kept
    finally:
        gc.unfreeze()


def test_a_debate_killed_right_after_its_input_was_saved_resumes(tmp_path: Path) -> None:
    """The first checkpoint holds only the input: no question yet, and no mismatch either."""
    model = ScriptedModel(reply=lambda m: "\\boxed{1}")
    task = EchoTask(["1"])
    graph = create_debate_graph(Society.from_model(model), task)
    db = tmp_path / "k.sqlite"
    first = run_debates(graph, task.load("test"), run_id="k", db_path=db, progress=False)
    conn = sqlite3.connect(db)  # what a kill after the first write leaves
    conn.execute("DELETE FROM checkpoints WHERE rowid > (SELECT min(rowid) FROM checkpoints)")
    conn.execute("DELETE FROM writes")
    conn.commit()
    conn.close()
    again = run_debates(graph, task.load("test"), run_id="k", db_path=db, progress=False)
    assert again == first
    assert len(model.calls) == 2 * CALLS_PER_PROBLEM


def test_debates_start_one_at_a_time(tmp_path: Path) -> None:
    """Each debate starts once the one before it has started its calls, not all in lockstep
    (which held back every first call until all debates had set up)."""
    db = tmp_path / "runs.sqlite"
    started_before_first_call: list[int] = []

    def reply(messages) -> str:
        if not started_before_first_call:
            with sqlite3.connect(db) as conn:
                query = "SELECT COUNT(DISTINCT thread_id) FROM checkpoints"
                started_before_first_call.append(conn.execute(query).fetchone()[0])
        return "\\boxed{1}"

    task = EchoTask(["1"] * 8)
    graph = create_debate_graph(Society.from_model(ScriptedModel(reply=reply)), task)
    results = run_debates(
        graph, task.load("test"), run_id="r", db_path=db, max_concurrency=8, progress=False
    )
    assert all(r.correct for r in results)
    assert started_before_first_call[0] <= 3


@pytest.mark.parametrize("journal", [True, False], ids=["journal", "no-journal"])
def test_an_answer_killed_before_its_checkpoint_write_is_not_asked_again(
    tmp_path: Path, journal: bool
) -> None:
    """The crash where it hurts most: the model has answered and the node has returned, and
    the process dies as LangGraph is about to save the answer. The reply journal already holds
    it, so the resumed run does not ask for it again; without the journal (the control) it
    does. Every answer the file held at the kill is asked for once in all; answers of other
    debates still on their way to the journal at the kill may be asked again (at-least-once).
    """
    for k in (1, 5):  # the first answer of a debate, and one of round 2
        run = tmp_path / f"kill-at-write-{k}"
        run.mkdir()
        mode = [] if journal else ["no-journal"]
        killed = worker(run, 2, None, str(k), *mode)
        assert killed.returncode == -9, killed.stderr
        dying = json.loads((run / "d.sqlite.dying").read_text())
        held = saved_bytes(run / "d.sqlite", run / "after-kill")
        resumed = worker(run, 2, None, "1000000", *mode)
        assert resumed.returncode == 0, resumed.stderr
        asked = collections.Counter(line.rsplit("\t", 1)[1] for line in logged_lines(run))
        assert len(asked) == 2 * CALLS_PER_PROBLEM  # every call answered, each reply distinct
        for text in dying:
            assert (text.encode() in held) is journal, (k, text)
            assert asked[repr(text)] == (1 if journal else 2), (k, text)
        for reply, times in asked.items():
            if ast.literal_eval(reply).encode() in held:
                assert times == 1, (k, reply)
        if journal:
            with sqlite3.connect(run / "d.sqlite") as conn:  # finished debates forget theirs
                assert conn.execute("SELECT count(*) FROM mafl_replies").fetchone() == (0,)


def logged_lines(tmp_path: Path) -> list[str]:
    return (tmp_path / "calls.log").read_text().splitlines()


def saved_bytes(db: Path, scratch: Path) -> bytes:
    """What the checkpoint file held when the process died: checkpoints, saved writes and
    journaled replies, read from a copy as SQLite recovers it."""
    scratch.mkdir()
    for name in (db.name, db.name + "-wal"):
        if (db.parent / name).exists():
            shutil.copy(db.parent / name, scratch / name)
    with contextlib.closing(sqlite3.connect(scratch / db.name)) as conn:
        rows = conn.execute(
            "SELECT checkpoint FROM checkpoints UNION ALL SELECT value FROM writes "
            "UNION ALL SELECT reply FROM mafl_replies"
        ).fetchall()
    return b"".join(bytes(row[0]) for row in rows if row[0] is not None)
