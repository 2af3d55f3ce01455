"""Reading final answers out of model replies, deciding whether two answers agree, and voting.

One copy of the answer parser for every task and every room (the research scripts kept four).
Equivalence is by value, not by spelling: ``\\frac{1}{2}``, ``1/2`` and ``0.5`` are one answer,
so a majority vote clusters answers by equivalence and an unparseable answer never counts as
right.
"""

from __future__ import annotations

import ctypes
import logging
import random
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import sympy
from math_verify import parse, verify

__all__ = ["Vote", "extract_boxed", "is_equivalent", "last_number", "majority_vote", "to_number"]

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


def is_equivalent(a: str, b: str, *, timeout: float = 5.0) -> bool:
    """Whether answer ``a`` denotes the same value as reference ``b``.

    Cheap checks first (normalized spelling, then exact numbers), then math-verify for
    expressions, sets, intervals and the like. Never raises and never runs much past
    ``timeout`` seconds, from any thread: math-verify's own timeout uses ``signal.alarm``, which
    raises ValueError off the main thread (LangGraph runs nodes in thread pools), so it is
    switched off and :func:`_within` bounds the work instead.
    """
    try:
        if not isinstance(a, str) or not isinstance(b, str):
            return False
        na, nb = _normalize(a), _normalize(b)
        if not na or not nb:
            return False
        if na == nb:
            return True
        x, y = to_number(a), to_number(b)
        if x is not None and y is not None:
            return x == y
        if len(a) > _MAX_CHARS or len(b) > _MAX_CHARS:
            return False
        return bool(_within(timeout, _math_verify, a, b))
    except Exception:  # garbage in, "not equivalent" out
        return False


@dataclass(frozen=True)
class Vote:
    """The outcome of a majority vote.

    ``answer`` is the winning cluster's first member, ``fraction`` its share of *all* answers
    (unparseable ones included), ``clusters`` the indices of equivalent answers in
    first-appearance order.
    """

    answer: str | None
    fraction: float
    clusters: list[list[int]]


def majority_vote(
    answers: Sequence[str | None],
    *,
    equivalent: Callable[[str, str], bool] = is_equivalent,
    seed: int | str = 0,
) -> Vote:
    """The most common answer, counting equivalent spellings as one.

    None (no parseable answer) never wins: it joins no cluster but stays in the denominator.
    Ties are broken by ``random.Random(seed)``, so they are reproducible yet not biased towards
    any spelling (the research scripts broke them by string order).
    """
    clusters: list[list[int]] = []
    for i, answer in enumerate(answers):
        if answer is None:
            continue
        for cluster in clusters:
            representative = answers[cluster[0]]
            if representative is not None and equivalent(answer, representative):
                cluster.append(i)
                break
        else:
            clusters.append([i])
    if not clusters:
        return Vote(None, 0.0, [])
    top = max(len(cluster) for cluster in clusters)
    winner = random.Random(seed).choice([c for c in clusters if len(c) == top])
    return Vote(answers[winner[0]], top / len(answers), clusters)


def _normalize(text: str) -> str:
    """A canonical spelling: no spaces, ``$``, ``\\text{}`` wrappers, spacing macros, units of
    degrees or percent, and no trailing full stop."""
    text = _WRAPPERS.sub(r"\1", text)
    text = _NOISE.sub("", text).replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    return text.rstrip(".")


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


def _within(timeout: float, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``, or None once ``timeout`` seconds have passed; works in any thread.

    Hand-written because math-verify's timeout is ``signal.alarm`` (main thread only) and sympy
    has none. A watchdog thread raises :class:`_Timeout` in the calling thread once the deadline
    passes, and again every 50 ms until ``fn`` gives up: sympy has bare ``except:`` blocks that
    swallow a single exception (which is how a trace-function timeout, switched off by Python
    after its first raise, once let a sum run for minutes). Work inside a single C call cannot
    be interrupted; :func:`_too_big` keeps the known case, huge integer powers, out.
    """
    caller = ctypes.c_ulong(threading.get_ident())
    done = threading.Event()

    def watchdog() -> None:
        if done.wait(timeout):
            return
        while not done.is_set():
            ctypes.pythonapi.PyThreadState_SetAsyncExc(caller, ctypes.py_object(_Timeout))
            done.wait(0.05)

    watcher = threading.Thread(target=watchdog, name="mafl-grading-timeout", daemon=True)
    result = None
    watcher.start()
    try:
        try:
            result = fn(*args)
        finally:
            done.set()
    except _Timeout:
        result = None
    # An exception sent just before ``done`` was set may still arrive: stop the watchdog (again,
    # in case the first ``set`` was itself interrupted), then take back what it left pending.
    while True:
        try:
            done.set()
            watcher.join()
            ctypes.pythonapi.PyThreadState_SetAsyncExc(caller, None)
            return result
        except _Timeout:
            result = None


class _QuietTimeoutNotice(logging.Filter):
    """math-verify warns once that its timeout is off; here it is replaced, so the warning would
    only mislead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Timeout is disabled" not in record.getMessage()


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_QuietTimeoutNotice())
