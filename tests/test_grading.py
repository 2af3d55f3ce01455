"""Answer extraction, equivalence (from any thread, bounded in time) and the majority vote."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction

import pytest

from mafl_graph.grading import (
    Vote,
    extract_boxed,
    extract_number,
    is_equivalent,
    last_number,
    majority_vote,
    to_number,
)
from mafl_graph.tasks import Arithmetic

# Pure-Python sympy work that runs for minutes unless interrupted.
SLOW = r"\sum_{k=1}^{9999} k^{k}"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"so \boxed{\frac{1}{2}}.", r"\frac{1}{2}"),
        (r"first \boxed{1}, then \boxed{2} wins", "2"),
        (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),
        (r"\boxed{ \left( 3, \frac{\pi}{2} \right) }", r"\left( 3, \frac{\pi}{2} \right)"),
        (r"\fbox{7}", "7"),
        (r"\boxed {5}", "5"),
        (r"\boxed{1} and then \boxed{\frac{1}{2}", None),  # the last one is unbalanced
        (r"\boxed{}", None),
        ("no box here, 42", None),
    ],
)
def test_extract_boxed(text: str, expected: str | None) -> None:
    assert extract_boxed(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The answer is 5.", "5"),
        ("she makes 1,234 dollars", "1234"),
        ("1,234,567.89", "1234567.89"),
        ("x = -5", "-5"),
        ("$-2.5$", "-2.5"),
        ("3-5", "5"),
        ("12 apples and 7 pears", "7"),
        ("no digits", None),
    ],
)
def test_last_number(text: str, expected: str | None) -> None:
    assert last_number(text) == expected


def test_to_number_is_exact() -> None:
    assert to_number("$1,234$.") == 1234
    assert to_number("0.1") == Fraction(1, 10)
    assert to_number("3/4") == Fraction(3, 4)
    assert to_number("x") is None


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (r"\frac{1}{2}", "0.5"),
        ("1/2", "0.5"),
        (r"\dfrac{14}{3}", r"\frac{14}{3}"),
        ("$18$.", "18"),
        ("1,234", "1234"),
        (r"\text{(C)}", "(C)"),
        (r"\{1,2,3\}", r"\{3,2,1\}"),
        (r"\left( 3, \frac{\pi}{2} \right)", r"(3, \pi/2)"),
        (r"3\sqrt{2}", r"\sqrt{18}"),
        ("p - q", "-q + p"),
    ],
)
def test_equivalent(a: str, b: str) -> None:
    assert is_equivalent(a, b)
    assert is_equivalent(b, a)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("2", "3"),
        (r"\{1,2\}", r"\{1,3\}"),
        ("garbage !!", "3"),
        (")(}{", "3"),
        ("", ""),
        ("10^{10^{10^{10}}}", "3"),  # refused before sympy builds the number
        ("(10^{9})!", "5"),
    ],
)
def test_not_equivalent(a: str, b: str) -> None:
    assert not is_equivalent(a, b)


def test_garbage_types_give_false() -> None:
    assert not is_equivalent(None, "3")  # type: ignore[arg-type]
    assert not is_equivalent("3", 3)  # type: ignore[arg-type]


def test_equivalence_works_in_worker_threads_and_respects_the_timeout() -> None:
    # math-verify's own timeout uses signal.alarm and raises off the main thread.
    def timed(pair: tuple[str, str, float]) -> tuple[bool, float]:
        start = time.monotonic()
        result = is_equivalent(pair[0], pair[1], timeout=pair[2])
        return result, time.monotonic() - start

    pairs = [(r"\frac{1}{2}", "0.5", 30.0), (r"\sqrt{8}", r"2\sqrt{2}", 30.0), (SLOW, "3", 0.5)]
    with ThreadPoolExecutor(3) as pool:
        (half, _), (root, _), (slow, seconds) = pool.map(timed, pairs)
    assert half and root
    assert not slow
    assert seconds < 5
    assert is_equivalent(r"\frac{2}{4}", "0.5")  # sympy is still usable after the interrupt


def test_timeout_in_the_main_thread_too() -> None:
    start = time.monotonic()
    assert not is_equivalent(SLOW, "3", timeout=0.3)
    assert time.monotonic() - start < 5


def test_vote_clusters_by_equivalence() -> None:
    vote = majority_vote([r"\frac{1}{2}", "0.5", "3"])
    assert (vote.answer, vote.clusters) == (r"\frac{1}{2}", [[0, 1], [2]])
    assert vote.fraction == pytest.approx(2 / 3)


def test_vote_counts_none_as_wrong_and_in_the_denominator() -> None:
    vote = majority_vote([None, "4", None, "4.0"])
    assert vote.answer == "4"
    assert vote.fraction == 0.5
    assert vote.clusters == [[1, 3]]
    assert majority_vote([None, None]) == Vote(None, 0.0, [])
    assert majority_vote([]) == Vote(None, 0.0, [])


def test_vote_uses_the_given_equivalence() -> None:
    vote = majority_vote(["a", "A", "b"], equivalent=lambda x, y: x.lower() == y.lower())
    assert (vote.answer, vote.clusters) == ("a", [[0, 1], [2]])


def test_vote_ties_are_seeded_not_by_string_order() -> None:
    answers = ["7", "3", None, "3.0", "7.00"]
    winners = {seed: majority_vote(answers, seed=seed).answer for seed in range(32)}
    assert set(winners.values()) == {"7", "3"}
    for seed, winner in winners.items():
        assert majority_vote(answers, seed=seed).answer == winner
    assert majority_vote(answers, seed="problem-17") == majority_vote(answers, seed="problem-17")
    assert majority_vote(answers).fraction == 0.4


def test_a_box_without_a_number_falls_back_to_the_last_number() -> None:
    assert extract_number("so \\boxed{answer} is the result of 18 and 19") == "19"
    assert extract_number("The sum is 12, so \\boxed{13}") == "13"
    assert extract_number("\\boxed{answer}") is None
    assert Arithmetic(terms=2).extract_answer("use \\boxed{answer}: it is 7") == "7"
