"""Reading final answers out of model replies, deciding whether two answers agree, and voting.

One copy of the answer parser for every task and every room (the research scripts kept four).
Equivalence is by value, not by spelling: ``\\frac{1}{2}``, ``1/2`` and ``0.5`` are one answer,
so a majority vote clusters answers by equivalence and an unparseable answer never counts as
right.

A grade is three-valued (:class:`Verdict`): symbolic work that runs out of its time budget is
*undecided*, which callers count apart from right and wrong. sympy and mpmath keep process-wide
state (mpmath's working precision above all, which sympy's ``evalf`` sets and resets around
every series and integral), so all symbolic grading in a process runs under one lock, and the
time budget is the CPU time of the work itself: other threads and other processes on the
machine slow a grade down without changing its verdict.
"""

from __future__ import annotations

import ctypes
import enum
import logging
import os
import random
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import mpmath
import sympy
from math_verify import parse, verify
from sympy.core.parameters import global_parameters

__all__ = [
    "Verdict",
    "Vote",
    "extract_boxed",
    "grade",
    "is_equivalent",
    "last_number",
    "majority_vote",
    "run_symbolic",
    "to_number",
]

log = logging.getLogger(__name__)

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
# A minus sign only when it is not a binary minus ("3-5" ends in 5, "x = -5" in -5).
_NUMBER = re.compile(r"(?:(?<![\w)])-)?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|(?<![\w.])-?\.\d+")
_PLAIN_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?")
_WRAPPERS = re.compile(r"\\(?:text|textbf|mathrm|mathbf)\{([^{}]*)\}")
_NOISE = re.compile(r"\\[!,;:> ]|\\left|\\right|\^\{?\\circ\}?|\\?%|\$|\s")
# Answers longer than this skip math-verify: its regexes and sympy are no place for essays.
_MAX_CHARS = 1000
# Values beyond 10**±_MAX_DIGITS are never built: a huge integer power is one C call that no
# timeout can interrupt, and it would hold the GIL (so every thread) until done.
_MAX_DIGITS = 10_000
_HUGE = sympy.Float(f"1e{_MAX_DIGITS}")
# A grade whose thread gets so little CPU that this many budgets of wall time pass is undecided
# too: the budget is CPU time, and a starved thread must still answer in bounded time.
_WALL_FACTOR = 10
# sympy's evalf sets mpmath's process-wide working precision around each series and integral;
# two threads interleaving those ``workprec`` blocks compute at each other's precision, so a
# convergence check (``hypsum`` doubles the precision until two results agree) may never pass.
# All symbolic work takes this lock.
_SYMBOLIC = threading.Lock()
# A child forked while another thread grades would inherit the lock held forever, and the
# shared state half changed: a fork waits for the grade in progress (as ``logging`` does for
# its locks).
if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_SYMBOLIC.acquire,
        after_in_parent=_SYMBOLIC.release,
        after_in_child=_SYMBOLIC.release,
    )


class Verdict(enum.Enum):
    """The outcome of grading one answer against another.

    ``UNDECIDED`` means the symbolic work ran out of its time budget: the answer is neither
    right nor wrong, and callers count it apart (see :func:`grade`).
    """

    EQUIVALENT = "equivalent"
    DIFFERENT = "different"
    UNDECIDED = "undecided"


def extract_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), nested braces included.

    The last one counts because models restate and correct themselves; an unbalanced or empty
    box states no answer, so it gives None rather than a guess.
    """
    starts = list(_BOXED.finditer(text))
    if not starts:
        return None
    start = starts[-1].end()
    depth, i = 1, start
    while i < len(text):
        char = text[i]
        if char == "\\":  # \{ and \} are literal braces (sets), not grouping
            i += 2
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[start:i].strip() or None
        i += 1
    return None


def last_number(text: str) -> str | None:
    """The last number in ``text`` with thousands separators removed ("1,234" -> "1234").

    The fallback parser for replies that never box their answer, as the paper's GSM scripts did.
    """
    numbers = _NUMBER.findall(text)
    return numbers[-1].replace(",", "") if numbers else None


def extract_number(text: str) -> str | None:
    """The boxed answer if it is a number, else the last number in ``text``.

    Small models often copy the prompt's ``\\boxed{answer}`` literally; a box without a number
    in it states no numeric answer, so the last-number fallback decides instead.
    """
    boxed = extract_boxed(text)
    if boxed is not None and to_number(boxed) is not None:
        return boxed
    return last_number(text)


def to_number(text: str) -> Fraction | None:
    """``text`` as an exact number if it is a plain decimal or ``a/b`` fraction, else None.

    Exact fractions (not floats) so that ``0.1 + 0.2`` style rounding never decides a grade.
    """
    cleaned = _normalize(text)
    if not _PLAIN_NUMBER.fullmatch(cleaned):
        return None
    try:
        return Fraction(cleaned.replace(",", ""))
    except (ValueError, ZeroDivisionError):
        return None


def grade(a: str, b: str, *, timeout: float = 5.0) -> Verdict:
    """Whether answer ``a`` denotes the same value as reference ``b``, or UNDECIDED.

    Cheap checks first (normalized spelling, then exact numbers), then math-verify for
    expressions, sets, intervals and the like. Never raises. The symbolic part runs under a
    process-wide lock (sympy and mpmath share mutable global state) and may spend ``timeout``
    seconds of CPU time, from any thread: math-verify's own timeout uses ``signal.alarm``, which
    raises ValueError off the main thread (LangGraph runs nodes in thread pools), so it is
    switched off and :func:`_within` bounds the work instead. Work that runs out of its budget
    gives UNDECIDED; time spent waiting for the lock does not count against it.
    """
    try:
        if not isinstance(a, str) or not isinstance(b, str):
            return Verdict.DIFFERENT
        na, nb = _normalize(a), _normalize(b)
        if not na or not nb:
            return Verdict.DIFFERENT
        if na == nb:
            return Verdict.EQUIVALENT
        x, y = to_number(a), to_number(b)
        if x is not None and y is not None:
            return Verdict.EQUIVALENT if x == y else Verdict.DIFFERENT
        if len(a) > _MAX_CHARS or len(b) > _MAX_CHARS:
            return Verdict.DIFFERENT
        return _symbolic(timeout, a, b)
    except Exception:  # garbage in, "not equivalent" out
        return Verdict.DIFFERENT


def is_equivalent(a: str, b: str, *, timeout: float = 5.0) -> bool:
    """Whether :func:`grade` finds ``a`` and ``b`` equivalent.

    An UNDECIDED grade gives False here; callers that store or count grades use :func:`grade`
    so that running out of time is not mistaken for a wrong answer.
    """
    return grade(a, b, timeout=timeout) is Verdict.EQUIVALENT


@dataclass(frozen=True)
class Vote:
    """The outcome of a majority vote.

    ``answer`` is the winning cluster's first member, ``fraction`` its share of *all* answers
    (unparseable ones included), ``clusters`` the indices of equivalent answers in
    first-appearance order. ``undecided`` counts the comparisons that ran out of time: each
    kept an answer out of a cluster it may belong to, so a nonzero count says the clusters
    (and so the winner) are uncertain.
    """

    answer: str | None
    fraction: float
    clusters: list[list[int]]
    undecided: int = 0


def majority_vote(
    answers: Sequence[str | None],
    *,
    equivalent: Callable[[str, str], bool | Verdict] = grade,
    seed: int | str = 0,
) -> Vote:
    """The most common answer, counting equivalent spellings as one.

    None (no parseable answer) never wins: it joins no cluster but stays in the denominator.
    ``equivalent`` returns a bool or a :class:`Verdict`; an UNDECIDED comparison joins nothing
    (the answer tries the next cluster, else starts its own) and is counted in
    ``Vote.undecided``. Ties are broken by ``random.Random(seed)``, so they are reproducible yet
    not biased towards any spelling (the research scripts broke them by string order).
    """
    clusters: list[list[int]] = []
    undecided = 0
    for i, answer in enumerate(answers):
        if answer is None:
            continue
        for cluster in clusters:
            representative = answers[cluster[0]]
            if representative is None:
                continue
            verdict = equivalent(answer, representative)
            if verdict is Verdict.UNDECIDED:
                undecided += 1
            elif verdict is True or verdict is Verdict.EQUIVALENT:
                cluster.append(i)
                break
        else:
            clusters.append([i])
    if not clusters:
        return Vote(None, 0.0, [], undecided)
    top = max(len(cluster) for cluster in clusters)
    winner = random.Random(seed).choice([c for c in clusters if len(c) == top])
    return Vote(answers[winner[0]], top / len(answers), clusters, undecided)


def _normalize(text: str) -> str:
    """A canonical spelling: no spaces, ``$``, ``\\text{}`` wrappers, spacing macros, units of
    degrees or percent, and no trailing full stop."""
    text = _WRAPPERS.sub(r"\1", text)
    text = _NOISE.sub("", text).replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    return text.rstrip(".")


def run_symbolic(fn: Callable[..., Verdict], *args: Any, timeout: float = 5.0) -> Verdict:
    """``fn(*args)`` as every symbolic grade runs: under the process-wide lock, within
    ``timeout`` s of its own CPU time (UNDECIDED beyond), with sympy's and mpmath's global state
    restored afterwards. For tasks that compare answers with sympy in their own way."""
    with _SYMBOLIC:
        # An interrupt can land between a ``workprec`` (or ``evaluate``) block's change and its
        # restore; the next grade must not inherit the half-restored state.
        saved = _global_state()
        try:
            outcome = _within(timeout, fn, *args)
        finally:
            _restore(saved)
    if outcome is _OUT_OF_TIME:
        log.warning("grading %.60r ran out of its %.1f s budget: undecided", args[:2], timeout)
        return Verdict.UNDECIDED
    verdict: Verdict = outcome
    return verdict


def _symbolic(timeout: float, a: str, b: str) -> Verdict:
    """math-verify on ``a`` and ``b`` under the symbolic lock, within ``timeout`` s of CPU."""
    return run_symbolic(_verified, a, b, timeout=timeout)


def _verified(a: str, b: str) -> Verdict:
    return Verdict.EQUIVALENT if _math_verify(a, b) else Verdict.DIFFERENT


def _global_state() -> tuple[int, dict[str, Any]]:
    return mpmath.mp.prec, dict(vars(global_parameters))


def _restore(state: tuple[int, dict[str, Any]]) -> None:
    mpmath.mp.prec = state[0]
    for name, value in state[1].items():
        setattr(global_parameters, name, value)


def _math_verify(a: str, b: str) -> bool:
    """math-verify with its signal-based timeouts off (the caller bounds the time)."""
    gold = parse(f"${_strip(b)}$", parsing_timeout=None)  # type: ignore[arg-type]
    target = parse(f"${_strip(a)}$", parsing_timeout=None)  # type: ignore[arg-type]
    if not gold or not target or _too_big(gold) or _too_big(target):
        return False
    return bool(verify(gold, target, timeout_seconds=None))


def _strip(text: str) -> str:
    return text.strip().strip("$").strip().rstrip(".")


def _too_big(parsed: list[Any]) -> bool:
    """Whether some numeric part of ``parsed`` lies beyond 10**±_MAX_DIGITS.

    Children are checked before their parents, so no node is evaluated (even as a float) once
    one of its parts is already huge: 10^{10^{10^{10}}} is refused at 10^{10^{10}}.
    """
    for expr in parsed:
        if not isinstance(expr, sympy.Basic):
            continue
        for node in sympy.postorder_traversal(expr):
            if node.is_Atom or not node.is_number:
                continue
            size = abs(node.evalf(5))
            if size.is_Number and size != 0 and (size > _HUGE or size < 1 / _HUGE):
                return True
    return False


class _Timeout(BaseException):
    """Raised inside the bounded work; a BaseException so that the ``except Exception`` blocks
    in math-verify let it through instead of carrying on."""


# What :func:`_within` returns when the work ran out of time (None is a possible result).
_OUT_OF_TIME = object()


def _within(timeout: float, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``, or ``_OUT_OF_TIME`` once it has used ``timeout`` s of CPU; any thread.

    Hand-written because math-verify's timeout is ``signal.alarm`` (main thread only) and sympy
    has none. The budget is the calling thread's own CPU time, so other threads and other
    processes slow the work down without changing its outcome; a thread starved for
    ``_WALL_FACTOR`` budgets of wall time is stopped all the same. A watchdog thread raises
    :class:`_Timeout` in the calling thread once the budget is spent, and again every 50 ms
    until ``fn`` gives up, because sympy has bare ``except:`` blocks that swallow a single
    exception. Work inside a single C call cannot be interrupted; :func:`_too_big` keeps the
    known case, huge integer powers, out.
    """
    ident = threading.get_ident()
    caller = ctypes.c_ulong(ident)
    cpu = _cpu_clock(ident)
    started, wall_limit = cpu(), time.monotonic() + _WALL_FACTOR * timeout
    done = threading.Event()

    def watchdog() -> None:
        while True:
            left = timeout - (cpu() - started)
            wall_left = wall_limit - time.monotonic()
            if left <= 0 or wall_left <= 0:
                break
            # CPU time never runs faster than the wall clock, so waiting ``left`` (at least
            # 10 ms, to bound the wake-ups of a starved thread) never overshoots the budget.
            if done.wait(min(max(left, 0.01), wall_left)):
                return
        while not done.is_set():
            ctypes.pythonapi.PyThreadState_SetAsyncExc(caller, ctypes.py_object(_Timeout))
            done.wait(0.05)

    watcher = threading.Thread(target=watchdog, name="mafl-grading-timeout", daemon=True)
    result: Any = _OUT_OF_TIME
    error: Exception | None = None
    watcher.start()
    try:
        try:
            result = fn(*args)
        except Exception as exc:  # re-raised once no interrupt can arrive any more
            error = exc
        finally:
            done.set()
    except _Timeout:
        result, error = _OUT_OF_TIME, None
    # An exception sent just before ``done`` was set may still arrive: stop the watchdog (again,
    # in case the first ``set`` was itself interrupted), then take back what it left pending.
    while True:
        try:
            done.set()
            watcher.join()
            ctypes.pythonapi.PyThreadState_SetAsyncExc(caller, None)
            break
        except _Timeout:
            result, error = _OUT_OF_TIME, None
    if error is not None:
        raise error
    return result


def _cpu_clock(ident: int) -> Callable[[], float]:
    """Seconds of CPU used by thread ``ident``, readable from another thread; the wall clock
    where the platform has no per-thread CPU clock."""
    try:
        clock = time.pthread_getcpuclockid(ident)
        time.clock_gettime(clock)
    except (AttributeError, OSError):
        return time.monotonic
    return lambda: time.clock_gettime(clock)


class _QuietTimeoutNotice(logging.Filter):
    """math-verify warns once that its timeout is off; here it is replaced, so the warning would
    only mislead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Timeout is disabled" not in record.getMessage()


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_QuietTimeoutNotice())
