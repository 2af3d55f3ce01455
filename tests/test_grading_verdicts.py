"""One verdict per pair however grading is scheduled, and grading out of time is undecided.

sympy's evalf sets mpmath's process-wide precision around every series: graded on two threads
at once without the grading lock, the two Basel sums compute at each other's precision and one
of them never converges.
"""

from __future__ import annotations

import multiprocessing
import re
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import mpmath
import pytest
from fakes import EchoTask, ScriptedModel
from grading_pairs import BASEL, stress_pairs
from test_debate_graph import boxed, debate, society_of

from mafl_graph import grading
from mafl_graph.cli.app import console
from mafl_graph.cli.render import summary_table
from mafl_graph.debate.run import DebateResult
from mafl_graph.debate.state import Response
from mafl_graph.evaluate import Accuracy, DebateSummary, summarize_debates
from mafl_graph.finetune import build_datasets
from mafl_graph.grading import Verdict, grade, is_equivalent, majority_vote
from mafl_graph.traces import DebateTrace

# Pure-Python sympy work that runs for minutes unless interrupted.
SLOW = r"\sum_{k=1}^{9999} k^{k}"


PAIRS = stress_pairs()
EXPECTED = [Verdict.EQUIVALENT if same else Verdict.DIFFERENT for _, _, same in PAIRS]


def test_the_basel_sums_on_two_threads_are_both_right_every_time() -> None:
    for _ in range(3):
        with ThreadPoolExecutor(2) as pool:
            verdicts = list(pool.map(lambda ref: is_equivalent(r"\frac{\pi^2}{6}", ref), BASEL))
        assert verdicts == [True, True]
    assert mpmath.mp.prec == 53  # no thread's working precision is left behind


@pytest.mark.parametrize("workers", [1, 4, 8])
def test_200_pairs_give_the_same_verdicts_on_any_number_of_threads(workers: int) -> None:
    assert len(PAIRS) == 200 and 0.4 < sum(same for *_, same in PAIRS) / 200 < 0.6
    with ThreadPoolExecutor(workers) as pool:
        verdicts = list(pool.map(lambda pair: grade(pair[0], pair[1]), PAIRS))
    wrong = [(p[:2], v) for p, v, e in zip(PAIRS, verdicts, EXPECTED, strict=True) if v != e]
    assert wrong == []


def test_200_pairs_give_the_same_verdicts_in_other_processes() -> None:
    spawn = multiprocessing.get_context("spawn")  # a fresh interpreter: no state shared at all
    with ProcessPoolExecutor(2, mp_context=spawn) as pool:
        answers, references, _ = zip(*PAIRS, strict=True)
        verdicts = list(pool.map(grade, answers, references, chunksize=25))
    assert verdicts == EXPECTED


def test_the_budget_is_the_works_own_cpu_time() -> None:
    grade(r"\frac{\pi^2}{6}", BASEL[1])  # warm: the first sum pays for imports and caches
    # Waiting for the lock does not count against the budget ...
    with grading._SYMBOLIC:
        waiting = ThreadPoolExecutor(1)
        pending = waiting.submit(grade, r"\frac{\pi^2}{6}", BASEL[1], timeout=2.0)
        time.sleep(2.5)
    assert pending.result() is Verdict.EQUIVALENT
    waiting.shutdown()
    # ... and neither do busy threads competing for the interpreter: the sum takes about 0.3 s
    # of CPU here, and between these threads several seconds of wall time.
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            pass

    spinners = [threading.Thread(target=spin) for _ in range(4)]
    for spinner in spinners:
        spinner.start()
    try:
        assert grade(r"\frac{\pi^2}{6}", BASEL[1], timeout=2.0) is Verdict.EQUIVALENT
    finally:
        stop.set()
        for spinner in spinners:
            spinner.join()


def test_a_fork_during_a_grade_gets_a_working_grader() -> None:
    fork = multiprocessing.get_context("fork")
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(grade, SLOW, "3", timeout=1.0)
        time.sleep(0.2)  # the slow grade holds the lock while the child is forked
        child = fork.Process(target=_grade_half)
        child.start()
        child.join(timeout=30)
    if child.is_alive():  # it waits for a lock that no thread of its own will release
        child.kill()
        child.join()
    assert child.exitcode == 0
    assert slow.result() is Verdict.UNDECIDED


def _grade_half() -> None:
    if grade(r"\frac{1}{2}", r"\frac{2}{4}") is not Verdict.EQUIVALENT:
        raise SystemExit(1)


def test_a_grade_out_of_time_is_undecided_not_wrong() -> None:
    start = time.monotonic()
    assert grade(SLOW, "3", timeout=0.3) is Verdict.UNDECIDED
    assert time.monotonic() - start < 5
    assert not is_equivalent(SLOW, "3", timeout=0.3)  # the bool API cannot say more
    assert grade(r"\frac{2}{4}", "0.5") is Verdict.EQUIVALENT  # sympy works after the interrupt
    assert mpmath.mp.prec == 53


def test_the_vote_counts_undecided_comparisons_and_joins_nothing_on_them() -> None:
    vote = majority_vote(["1", "2", "3"], equivalent=lambda a, b: Verdict.UNDECIDED)
    assert (vote.clusters, vote.undecided) == ([[0], [1], [2]], 3)
    mixed = majority_vote(
        ["a", "b", "A"],
        equivalent=lambda a, b: Verdict.UNDECIDED if "b" in (a, b) else a.lower() == b.lower(),
    )
    assert (mixed.answer, mixed.clusters, mixed.undecided) == ("a", [[0, 2], [1]], 1)


class SlowGradingTask(EchoTask):
    """EchoTask whose grading has a 0.3 s budget, so that ``SLOW`` runs out of it."""

    def grade(self, answer: str, reference: str) -> Verdict:
        return grade(answer, reference, timeout=0.3)


def test_a_debate_records_an_undecided_grade_and_the_summary_counts_it() -> None:
    task = SlowGradingTask(["3"])
    state = debate(
        society_of(*(ScriptedModel(reply=boxed(SLOW)) for _ in range(2))), task, rounds=1
    )
    assert state["consensus"] == SLOW
    assert (state["correct"], state["undecided"]) == (None, 1)  # neither right nor wrong
    result = DebateResult(
        problem_id="echo-0",
        question="q0",
        reference="3",
        consensus=state["consensus"],
        consensus_fraction=state["consensus_fraction"],
        correct=state["correct"],
        undecided=state["undecided"],
        responses=state["responses"],
    )
    summary = summarize_debates([result], task)
    assert (summary.accuracy.correct, summary.accuracy.n, summary.accuracy.undecided) == (0, 1, 1)
    assert [a.undecided for a in summary.round_accuracy] == [2]
    assert summary.undecided == 3  # the vote's one, then each agent's round-1 answer
    assert "1 undecided" in str(summary.accuracy)
    assert summary.as_dict()["undecided"] == 3


class UnsureTask(EchoTask):
    """Grading "?" always runs out of time."""

    def grade(self, answer: str, reference: str) -> Verdict:
        return Verdict.UNDECIDED if "?" in (answer, reference) else grade(answer, reference)


def test_datasets_leave_undecided_answers_out_and_count_them() -> None:
    def trace(i: int, first: str, final: str) -> DebateTrace:
        question = [{"role": "user", "content": "q"}]
        responses = [
            Response(agent=0, role="generator", round=1, messages=question, text=first,
                     answer=first, model="m"),
            Response(agent=0, role="critic", round=2, messages=question, text=final,
                     answer=final, model="m"),
        ]  # fmt: skip
        return DebateTrace("s", f"s/p{i}", f"p{i}", "q", "1", "1", 1.0, True, responses)

    traces = [trace(0, "1", "1"), trace(1, "?", "1"), trace(2, "2", "?"), trace(3, "2", "1")]
    sets = build_datasets(traces, UnsureTask(), w=0.5, target="reference")
    generator, critic = sets[(0, "generator")], sets[(0, "critic")]
    assert {e["problem_id"] for e in generator.examples} == {"p0"}
    assert generator.stats.undecided == 1  # p1's first answer; p2's and p3's are wrong
    assert {e["problem_id"] for e in critic.pools["D_C+"]} == {"p0"}
    assert {e["problem_id"] for e in critic.pools["D_C-"]} == {"p3"}  # p1: first undecided
    assert critic.stats.undecided == 2  # p1's first answer and p2's final one


def test_mafl_debate_prints_the_undecided_grades(tmp_path: Path) -> None:
    summary = DebateSummary(Accuracy(3, 5, undecided=1), [Accuracy(2, 5)], 0.8, 0, undecided=4)
    with console.capture() as captured:
        console.print(summary_table(summary, 1.0, f"math · m · {tmp_path}"))
    printed = captured.get()
    assert "(3/5, 1 undecided)" in printed
    assert re.search(r"undecided grades .*\b4\b", printed)
