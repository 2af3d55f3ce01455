"""The kinds of answer DeepMind Mathematics modules give, and how each kind is graded.

Every module has a row in :data:`MODULE_KINDS`: the forms its answers take, in the order they
are recognised. A reference answer's kind is the first of its module's forms that recognises
it, and the reply is graded by that kind's equivalence. A module without a row, or a reference
that none of its forms recognises, is an error, never a string comparison by luck.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Callable, Iterator
from fractions import Fraction
from typing import Any

import sympy

from mafl_graph.grading import Verdict, run_symbolic, to_number

__all__ = ["MODULE_KINDS", "Kind", "check_reference", "grade_as", "kind_of", "kinds_of"]


class Kind(enum.Enum):
    """One form of answer, with the equivalence it is graded by."""

    NUMBER = "number"
    """An exact rational ("-3", "0.25", "-1/5"): the reply must be a number too ("0.5", "1/2",
    ``\\frac{1}{2}``, ``5 \\times 10^{-1}``, "x = 0.5"), of equal value; "2 + 3" for 5 is no
    answer, since the question may have been "What is 2 + 3?"."""
    EXPRESSION = "expression"
    """A sympy-syntax expression ("3*x**2 + 2", "-30*n"): mathematically equal; the reply may
    be written in sympy syntax or LaTeX ("3x^{2} + 2")."""
    FACTORED = "factored"
    """The answer to "Factor p" ("-2*(u - 2)*(u + 1)/9"): equal, and a product of as many
    non-constant factors (with multiplicity) as the reference, so that p itself, or a partial
    factorisation, is wrong."""
    SIMPLIFIED = "simplified"
    """The answer to "Expand", "Collect" or "Simplify" ("121 - 48*sqrt(3)", "m**(-139/6)"):
    equal, and a sum of at most as many terms as the reference, each a rational times powers
    of distinct variables and square roots of distinct square-free integers, so that the
    question's own expression is wrong."""
    BOOLEAN = "boolean"
    """"True" or "False": "true"/"yes" and "false"/"no" in any case are accepted."""
    NAME = "name"
    """An option letter or variable name ("b"): the same letter; "(b)" is "b"."""
    DIGITS = "digits"
    """A number written in some base ("-28a91"): the same digits, any letter case, leading zeros
    and a subscript base (``_{16}``) ignored; no conversion, since the base is the question's."""
    CLOCK = "clock"
    """A time of day ("6:40 AM"): the same minute of the day; "06:40am" and 24-hour "6:40" are
    accepted, a time without AM/PM is read as 24-hour."""
    ORDERED = "ordered"
    """A comma-separated list whose order is the answer (a sort): equal element by element."""
    MULTISET = "multiset"
    """A comma-separated collection (roots, prime factors): the same elements, any order, each
    as often as in the reference."""


_NUM = (Kind.NUMBER,)
_EXPR = (Kind.EXPRESSION,)
_BOOL = (Kind.BOOLEAN,)
_PICK = (Kind.NUMBER, Kind.NAME)
MODULE_KINDS: dict[str, tuple[Kind, ...]] = {
    "algebra__linear_1d": _NUM,
    "algebra__linear_1d_composed": _NUM,
    "algebra__linear_2d": _NUM,
    "algebra__linear_2d_composed": _NUM,
    # "Solve ..." gives the distinct roots; "Factor ..." gives an expression.
    "algebra__polynomial_roots": (Kind.MULTISET, Kind.FACTORED),
    "algebra__polynomial_roots_composed": (Kind.MULTISET, Kind.FACTORED),
    "algebra__sequence_next_term": _NUM,
    "algebra__sequence_nth_term": _EXPR,
    "arithmetic__add_or_sub": _NUM,
    "arithmetic__add_or_sub_in_base": (Kind.DIGITS,),
    "arithmetic__add_sub_multiple": _NUM,
    "arithmetic__div": _NUM,
    "arithmetic__mixed": _NUM,
    "arithmetic__mul": _NUM,
    "arithmetic__mul_div_multiple": _NUM,
    "arithmetic__nearest_integer_root": _NUM,
    "arithmetic__simplify_surd": (Kind.SIMPLIFIED,),
    "calculus__differentiate": _EXPR,
    "calculus__differentiate_composed": _EXPR,
    # A value, or the letter of a multiple-choice option, or the variable that holds it.
    "comparison__closest": _PICK,
    "comparison__closest_composed": _PICK,
    "comparison__kth_biggest": _PICK,
    "comparison__kth_biggest_composed": _PICK,
    # "Is a < b?" is a boolean; "Which is bigger: a or b?" a value or a variable.
    "comparison__pair": (Kind.BOOLEAN, Kind.NUMBER, Kind.NAME),
    "comparison__pair_composed": (Kind.BOOLEAN, Kind.NUMBER, Kind.NAME),
    "comparison__sort": (Kind.ORDERED,),
    "comparison__sort_composed": (Kind.ORDERED,),
    "measurement__conversion": _NUM,
    # "What is 7 minutes after 6:33 AM?" is a time; "How many minutes between ..." a number.
    "measurement__time": (Kind.CLOCK, Kind.NUMBER),
    # To base 10 or from it: digits either way.
    "numbers__base_conversion": (Kind.DIGITS,),
    "numbers__div_remainder": _NUM,
    "numbers__div_remainder_composed": _NUM,
    "numbers__gcd": _NUM,
    "numbers__gcd_composed": _NUM,
    "numbers__is_factor": _BOOL,
    "numbers__is_factor_composed": _BOOL,
    "numbers__is_prime": _BOOL,
    "numbers__is_prime_composed": _BOOL,
    "numbers__lcm": _NUM,
    "numbers__lcm_composed": _NUM,
    "numbers__list_prime_factors": (Kind.MULTISET,),
    "numbers__list_prime_factors_composed": (Kind.MULTISET,),
    "numbers__place_value": _NUM,
    "numbers__place_value_composed": _NUM,
    "numbers__round_number": _NUM,
    "numbers__round_number_composed": _NUM,
    "polynomials__add": _EXPR,
    "polynomials__coefficient_named": _NUM,
    "polynomials__collect": (Kind.SIMPLIFIED,),
    "polynomials__compose": _EXPR,
    "polynomials__evaluate": _NUM,
    "polynomials__evaluate_composed": _NUM,
    "polynomials__expand": (Kind.SIMPLIFIED,),
    "polynomials__simplify_power": (Kind.SIMPLIFIED,),
    "probability__swr_p_level_set": _NUM,
    "probability__swr_p_sequence": _NUM,
}

_WRAPPERS = re.compile(r"\\(?:text|textbf|textrm|mathrm|mathbf|mathit)\s*\{([^{}]*)\}")
_TRUE, _FALSE = {"true", "yes"}, {"false", "no"}
_NAME = re.compile(r"[a-z]")
_DIGITS = re.compile(r"-?[0-9a-z]+")
_CLOCK = re.compile(r"(\d{1,2}):(\d{2}) (AM|PM)")
_REPLY_CLOCK = re.compile(r"(\d{1,2}):(\d{2})(am|pm)?")
_SUBSCRIPT_BASE = re.compile(r"_\{?\d+\}?$")
_EXPRESSION = re.compile(r"[\w\s+\-*/().]+")
_ASSIGNED = re.compile(r"^[a-z]\s*=\s*")
_PLAIN_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:/\d+)?")
_FRAC = re.compile(r"(-)?\\[dt]?frac(?:\{(-?\d+)\}\{(-?\d+)\}|(\d)(\d))")
_SCIENTIFIC = re.compile(r"(-?\d+(?:\.\d+)?)(?:\\times|\\cdot|\*)10\^\{?(-?\d+)\}?")
_MAX_EXPONENT = 100  # 10**b beyond this is no answer to a school question, and costly to build
_MAX_RADICAND = 10**12  # factorint stays quick below this
_MAX_CHARS = 1000  # as grading: no symbolic reading of essays
_TIMEOUT = 5.0  # seconds of CPU for one reading, as grading's default
_BRACKETS = (("\\{", "\\}"), ("{", "}"), ("[", "]"), ("(", ")"))
_TOKEN = re.compile(r"\d+(?:\.\d+)?|sqrt|[a-z]|\*\*|[-+*/()]")
_LATEX_CALL = re.compile(r"\\[dt]?(frac|sqrt)(?=\{)")
_LATEX_ROOT = re.compile(r"\\sqrt\[(\d+)\]\{")
_LATEX = (
    ("\\left", ""),
    ("\\right", ""),
    ("\\cdot", "*"),
    ("\\times", "*"),
    ("\u2212", "-"),
    ("\u00b7", "*"),
    ("\u00d7", "*"),
    ("^", "**"),
    ("{", "("),
    ("}", ")"),
)
_MAX_POWER_DIGITS = 10_000  # as grading: no number of more digits is ever built


def kinds_of(module: str) -> tuple[Kind, ...]:
    """The forms ``module``'s answers take, in the order they are recognised."""
    kinds = MODULE_KINDS.get(module)
    if kinds is None:
        raise ValueError(
            f"dm-math module {module!r} has no answer kind, so its answers cannot be graded; "
            "pick a module of working_modules()"
        )
    return kinds


def kind_of(module: str, reference: str) -> Kind | None:
    """The kind of ``reference`` as ``module`` gives it, or None if none of its forms fits."""
    for kind in kinds_of(module):
        if _RECOGNISE[kind](reference):
            return kind
    return None


def check_reference(module: str, reference: str) -> Kind:
    """The kind of ``reference``; an error if ``module`` is not known to give it."""
    kind = kind_of(module, reference)
    if kind is None:
        forms = ", ".join(k.value for k in kinds_of(module))
        raise ValueError(
            f"dm-math module {module!r} gave the answer {reference!r}, which is none of its "
            f"kinds ({forms}); it cannot be graded, so the module needs a new kind"
        )
    return kind


def grade_as(module: str, answer: str, reference: str) -> Verdict:
    """``answer`` against ``reference`` by the equivalence of the reference's kind.

    A ``reference`` in none of the module's forms is another reply: the majority vote (and a
    consensus target) compares two replies, and they are one answer when some kind of the
    module reads both as the same value. The forms a right answer must take (factored,
    simplified) do not apply between two replies: only their values do.
    """
    kind = kind_of(module, reference)
    if kind is not None:
        return _GRADE[kind](answer, reference)
    if answer.strip() == reference.strip():
        return Verdict.EQUIVALENT
    verdicts = [_SAME_REPLY[kind](answer, reference) for kind in kinds_of(module)]
    if Verdict.EQUIVALENT in verdicts:
        return Verdict.EQUIVALENT
    return Verdict.UNDECIDED if Verdict.UNDECIDED in verdicts else Verdict.DIFFERENT


def _is_boolean(reference: str) -> bool:
    return reference in ("True", "False")


def _is_number(reference: str) -> bool:
    return _PLAIN_NUMBER.fullmatch(reference) is not None


def _is_name(reference: str) -> bool:
    return _NAME.fullmatch(reference) is not None


def _is_digits(reference: str) -> bool:
    return _DIGITS.fullmatch(reference) is not None


def _is_clock(reference: str) -> bool:
    return _CLOCK.fullmatch(reference) is not None


def _is_expression(reference: str) -> bool:
    return _EXPRESSION.fullmatch(reference) is not None and _parse(reference) is not None


def _is_list(reference: str) -> bool:
    return all(_is_number(item) or _is_name(item) for item in reference.split(", "))


def _plain(text: str) -> str:
    """``text`` without ``$``, ``\\text{}``-like wrappers, spaces and a closing full stop."""
    text = _WRAPPERS.sub(r"\1", text).replace("$", "")
    return re.sub(r"\s+", "", text).rstrip(".")


def _grade_number(answer: str, reference: str) -> Verdict:
    said = _number(answer)
    return _verdict(said is not None and said == _number(reference))


def _number(text: str) -> Fraction | None:
    """``text`` as a number literal (decimal, ``a/b``, ``\\frac{a}{b}``, ``a \\times 10^{b}``,
    optionally after "x ="), else None: an expression is no number."""
    plain = _ASSIGNED.sub("", _plain(text))
    value = to_number(plain)
    if value is not None:
        return value
    if match := _FRAC.fullmatch(plain):
        sign = -1 if match[1] else 1
        numerator, denominator = int(match[2] or match[4]), int(match[3] or match[5])
        return None if denominator == 0 else sign * Fraction(numerator, denominator)
    if (match := _SCIENTIFIC.fullmatch(plain)) and abs(int(match[2])) <= _MAX_EXPONENT:
        return Fraction(match[1]) * Fraction(10) ** int(match[2])
    return None


def _grade_expression(answer: str, reference: str) -> Verdict:
    return _grade_form(answer, reference, None, None)


def _grade_factored(answer: str, reference: str) -> Verdict:
    return _grade_form(answer, reference, _factor_count, lambda said, wanted: said == wanted)


def _grade_simplified(answer: str, reference: str) -> Verdict:
    return _grade_form(answer, reference, _simple_terms, lambda said, wanted: said <= wanted)


def _grade_form(
    answer: str,
    reference: str,
    measure: Callable[[sympy.Basic], int | None] | None,
    fits: Callable[[int, int], bool] | None,
) -> Verdict:
    """Equal as expressions, and, where ``measure`` is given, of the form asked: ``measure`` of
    the reply as written ``fits`` that of the reference.

    Both sides are read by :func:`_parse` (not math-verify, which reads "8c" as 8 and
    "9072 - sqrt(7)" as 9072) and compared by sympy, all of it as
    :func:`mafl_graph.grading.grade` does its symbolic work: under the process-wide lock,
    within a CPU-time budget (UNDECIDED when it runs out).
    """
    return run_symbolic(_compare, answer, reference, measure, fits, timeout=_TIMEOUT)


def _compare(
    answer: str,
    reference: str,
    measure: Callable[[sympy.Basic], int | None] | None,
    fits: Callable[[int, int], bool] | None,
) -> Verdict:
    said, wanted = _parse(answer), _parse(reference)
    if said is None or wanted is None:
        return Verdict.DIFFERENT
    if measure is not None and fits is not None:
        said_size, wanted_size = measure(said[1]), measure(wanted[1])
        if said_size is None or wanted_size is None or not fits(said_size, wanted_size):
            return Verdict.DIFFERENT
    difference = sympy.expand(said[0] - wanted[0])
    return _verdict(difference == 0 or sympy.cancel(difference) == 0)


def _parse(text: str) -> tuple[sympy.Expr, sympy.Basic] | None:
    """An expression in sympy or LaTeX syntax ("3*x**2 + 2", "3x^{2}+2",
    ``121 - 48\\sqrt{3}``, ``\\frac{2}{9}(u-2)(u+1)``) as sympy reads it (evaluated) and as it
    is written (unevaluated), or None where it is no such expression.

    A small parser of its own rather than ``sympify`` (which runs ``eval`` on its input):
    single-letter variables, numbers, + - * / and powers, brackets, ``sqrt`` and implicit
    products; a power of a number with more than ``_MAX_POWER_DIGITS`` digits is refused.
    """
    if len(text) > _MAX_CHARS:
        return None
    plain = _ASSIGNED.sub("", _plain(text))
    plain = _LATEX_CALL.sub(lambda match: f"{match[1]}\\", plain)
    plain = _LATEX_ROOT.sub(lambda match: f"root\\({match[1]}){{", plain)
    for latex, written in _LATEX:
        plain = plain.replace(latex, written)
    converted = _latex_calls(plain)
    if converted is None:
        return None
    tokens = _TOKEN.findall(converted)
    if not tokens or "".join(tokens) != converted:
        return None
    try:
        value = _Parser(tokens, evaluate=True).parse()
        written = _Parser(tokens, evaluate=False).parse()
    except (ValueError, ZeroDivisionError, IndexError):
        return None
    if value.has(sympy.zoo, sympy.nan, sympy.oo, -sympy.oo):
        return None
    return value, written


def _latex_calls(text: str) -> str | None:
    """``frac\\(a)(b)`` (``\\frac{a}{b}`` once braces are brackets) as ``((a)/(b))``,
    ``root\\(n)(a)`` (``\\sqrt[n]{a}``) as ``((a)**(1/(n)))`` and ``sqrt\\(a)`` as
    ``sqrt(a)``; None where a bracket is unbalanced or another command is left."""
    while (mark := text.find("\\")) >= 0:
        name = text[mark - 4 : mark]
        if mark < 4 or name not in ("frac", "root", "sqrt"):
            return None
        groups, end = [], mark + 1
        for _ in range(1 if name == "sqrt" else 2):
            close = _closing(text, end)
            if close is None:
                return None
            groups.append(text[end : close + 1])
            end = close + 1
        if name == "frac":
            replacement = f"({groups[0]}/{groups[1]})"
        elif name == "root":
            replacement = f"({groups[1]}**(1/{groups[0]}))"
        else:
            replacement = f"sqrt{groups[0]}"
        text = text[: mark - 4] + replacement + text[end:]
    return text


def _closing(text: str, start: int) -> int | None:
    """The index of the bracket closing the one at ``start``."""
    if start >= len(text) or text[start] != "(":
        return None
    depth = 0
    for i in range(start, len(text)):
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        if depth == 0:
            return i
    return None


class _Parser:
    """Recursive descent over the tokens of :func:`_parse`, building sympy objects."""

    def __init__(self, tokens: list[str], *, evaluate: bool) -> None:
        self.tokens, self.at, self.evaluate = tokens, 0, evaluate

    def parse(self) -> sympy.Expr:
        expr = self.sum()
        if self.at != len(self.tokens):
            raise ValueError(f"unexpected {self.tokens[self.at]!r}")
        return expr

    def peek(self) -> str | None:
        return self.tokens[self.at] if self.at < len(self.tokens) else None

    def take(self) -> str:
        token = self.tokens[self.at]
        self.at += 1
        return token

    def sum(self) -> sympy.Expr:
        terms = [self.product()]
        while self.peek() in ("+", "-"):
            sign = self.take()
            term = self.product()
            terms.append(term if sign == "+" else self.negative(term))
        return terms[0] if len(terms) == 1 else sympy.Add(*terms, evaluate=self.evaluate)

    def product(self) -> sympy.Expr:
        factors = [self.unary()]
        while (token := self.peek()) is not None and token not in ("+", "-", ")", "**"):
            if token in ("*", "/"):
                self.take()
                factor = self.unary()
                if token == "/":
                    if factor == 0:
                        raise ZeroDivisionError("division by zero")
                    factor = sympy.Pow(factor, -1, evaluate=self.evaluate)
            else:  # an implicit product: "2x", "3(x + 1)", "2sqrt(3)"
                factor = self.power()
            factors.append(factor)
        return factors[0] if len(factors) == 1 else sympy.Mul(*factors, evaluate=self.evaluate)

    def unary(self) -> sympy.Expr:
        if self.peek() == "-":
            self.take()
            return self.negative(self.unary())
        if self.peek() == "+":
            self.take()
            return self.unary()
        return self.power()

    def power(self) -> sympy.Expr:
        base = self.atom()
        if self.peek() != "**":
            return base
        self.take()
        # An exponent is read as its value: "m**(-139/6)" is m to a rational power as written.
        written, self.evaluate = self.evaluate, True
        exponent = self.unary()
        self.evaluate = written
        if base.is_number and exponent.is_number and _too_big(base, exponent):
            raise ValueError("too large a power")
        return sympy.Pow(base, exponent, evaluate=self.evaluate)

    def atom(self) -> sympy.Expr:
        token = self.take()
        if token in ("(", "sqrt"):
            if token == "sqrt" and self.take() != "(":
                raise ValueError("sqrt without brackets")
            inner = self.sum()
            if self.take() != ")":
                raise ValueError("unbalanced brackets")
            if token == "sqrt":
                return sympy.Pow(inner, sympy.Rational(1, 2), evaluate=self.evaluate)
            return inner
        if token[0].isdigit():
            return sympy.Rational(token) if "." in token else sympy.Integer(token)
        if token.isalpha():
            return sympy.Symbol(token, positive=True)
        raise ValueError(f"unexpected {token!r}")

    def negative(self, expr: sympy.Expr) -> sympy.Expr:
        return sympy.Mul(sympy.Integer(-1), expr, evaluate=self.evaluate)


def _too_big(base: sympy.Expr, exponent: sympy.Expr) -> bool:
    """Whether ``base ** exponent`` has more than ``_MAX_POWER_DIGITS`` digits (building it is
    one C call that no time budget can interrupt)."""
    try:
        digits = abs(float(exponent)) * math.log10(abs(float(base)) + 2)
    except (TypeError, ValueError, OverflowError):
        return True
    return digits > _MAX_POWER_DIGITS


def _factor_count(expr: sympy.Basic) -> int | None:
    """Non-constant factors of a product as written, with multiplicity (a sum is one); None
    where ``expr`` is no product of polynomials (a division by one, say)."""
    if expr.is_number:
        return 0
    if isinstance(expr, sympy.Mul):
        counts = [_factor_count(arg) for arg in expr.args]
        return None if None in counts else sum(c for c in counts if c is not None)
    if isinstance(expr, sympy.Pow):
        exponent = expr.exp
        if not (exponent.is_Integer and exponent > 0):
            return None
        inner = _factor_count(expr.base)
        return None if inner is None else inner * int(exponent)
    if isinstance(expr, (sympy.Add, sympy.Symbol)):
        return 1
    return None


def _simple_terms(expr: sympy.Basic) -> int | None:
    """How many terms ``expr`` is a sum of as written, each a rational times powers of distinct
    variables and square roots of distinct square-free integers; None where it is not such a
    sum."""
    terms = list(_flattened(expr, sympy.Add))
    return len(terms) if all(_simple_term(term) for term in terms) else None


def _simple_term(term: sympy.Basic) -> bool:
    seen: set[Any] = set()
    for factor in _flattened(term, sympy.Mul):
        key = _simple_factor(factor)
        if key is None or key in seen:
            return False
        if key != ():
            seen.add(key)
    return True


def _simple_factor(factor: sympy.Basic) -> Any:
    """``()`` for a rational constant, the variable (or radicand) a power of it stands for, or
    None for anything else."""
    if factor.is_Rational or factor.is_Float:
        return ()
    if isinstance(factor, sympy.Symbol):
        return factor
    if not isinstance(factor, sympy.Pow):
        return None
    base, exponent = factor.base, factor.exp
    if base.is_Rational and exponent.is_Integer:
        return ()  # 1/64 as written: 64**(-1)
    if isinstance(base, sympy.Symbol) and exponent.is_Rational:
        return base
    if exponent == -1 and isinstance(base, sympy.Pow) and isinstance(base.base, sympy.Symbol):
        return base.base if base.exp.is_Rational else None  # 1/m**r
    if exponent == sympy.Rational(1, 2) and base.is_Integer and 1 < base < _MAX_RADICAND:
        return ("sqrt", int(base)) if _square_free(int(base)) else None
    return None


def _square_free(n: int) -> bool:
    return all(power == 1 for power in sympy.factorint(n).values())


def _flattened(expr: sympy.Basic, kind: type[sympy.Basic]) -> Iterator[sympy.Basic]:
    """The arguments of nested ``kind`` nodes, as a written ``a*(b*c)`` nests them."""
    if isinstance(expr, kind):
        for arg in expr.args:
            yield from _flattened(arg, kind)
    else:
        yield expr


def _grade_boolean(answer: str, reference: str) -> Verdict:
    said = _plain(answer).lower()
    value = True if said in _TRUE else False if said in _FALSE else None
    return _verdict(value is not None and value == (reference == "True"))


def _grade_name(answer: str, reference: str) -> Verdict:
    said = _plain(answer).lower()
    if said.startswith("(") and said.endswith(")"):
        said = said[1:-1]
    return _verdict(said == reference.lower())


def _grade_digits(answer: str, reference: str) -> Verdict:
    return _verdict(_digits(answer) == _digits(reference))


def _digits(text: str) -> str:
    said = _SUBSCRIPT_BASE.sub("", _plain(text).lower()).lstrip("+")
    sign = "-" if said.startswith("-") else ""
    return sign + (said.lstrip("-").lstrip("0") or "0")


def _grade_clock(answer: str, reference: str) -> Verdict:
    said = _minute_of_day(_plain(answer).lower().replace(".", ""))
    wanted = _minute_of_day(reference.lower().replace(" ", ""))
    return _verdict(said is not None and said == wanted)


def _minute_of_day(text: str) -> int | None:
    match = _REPLY_CLOCK.fullmatch(text)
    if match is None:
        return None
    hour, minute, half = int(match[1]), int(match[2]), match[3]
    if minute > 59:
        return None
    if half is None:
        return hour * 60 + minute if hour < 24 else None
    if not 1 <= hour <= 12:
        return None
    return (hour % 12 + (12 if half == "pm" else 0)) * 60 + minute


def _grade_ordered(answer: str, reference: str) -> Verdict:
    said, wanted = _items(answer), reference.split(", ")
    if len(said) != len(wanted):
        return Verdict.DIFFERENT
    return _all_of([_grade_item(a, r) for a, r in zip(said, wanted, strict=True)])


def _grade_multiset(answer: str, reference: str) -> Verdict:
    said, wanted = _items(answer), reference.split(", ")
    if len(said) != len(wanted):
        return Verdict.DIFFERENT
    unused = list(range(len(said)))
    for item in wanted:
        match = next((i for i in unused if _grade_item(said[i], item) is Verdict.EQUIVALENT), None)
        if match is None:
            return Verdict.DIFFERENT
        unused.remove(match)
    return Verdict.EQUIVALENT


def _items(answer: str) -> list[str]:
    """A reply's list: commas split it; enclosing brackets and "x = " prefixes go."""
    text = answer.strip().rstrip(".").strip()
    for left, right in _BRACKETS:
        if text.startswith(left) and text.endswith(right) and "," in text:
            text = text[len(left) : -len(right)]
            break
    return [_ASSIGNED.sub("", item.strip()) for item in text.split(",")]


def _grade_item(answer: str, reference: str) -> Verdict:
    if _is_number(reference):
        return _grade_number(answer, reference)
    return _grade_name(answer, reference)


def _all_of(verdicts: list[Verdict]) -> Verdict:
    if Verdict.DIFFERENT in verdicts:
        return Verdict.DIFFERENT
    if Verdict.UNDECIDED in verdicts:
        return Verdict.UNDECIDED
    return Verdict.EQUIVALENT


def _verdict(same: bool) -> Verdict:
    return Verdict.EQUIVALENT if same else Verdict.DIFFERENT


_RECOGNISE: dict[Kind, Callable[[str], bool]] = {
    Kind.NUMBER: _is_number,
    Kind.EXPRESSION: _is_expression,
    Kind.FACTORED: _is_expression,
    Kind.SIMPLIFIED: _is_expression,
    Kind.BOOLEAN: _is_boolean,
    Kind.NAME: _is_name,
    Kind.DIGITS: _is_digits,
    Kind.CLOCK: _is_clock,
    Kind.ORDERED: _is_list,
    Kind.MULTISET: _is_list,
}


def _same_number(a: str, b: str) -> Verdict:
    x, y = _number(a), _number(b)
    return _verdict(x is not None and x == y)


def _same_boolean(a: str, b: str) -> Verdict:
    x, y = _plain(a).lower(), _plain(b).lower()
    return _verdict(x in _TRUE | _FALSE and (x in _TRUE) == (y in _TRUE) and y in _TRUE | _FALSE)


def _same_name(a: str, b: str) -> Verdict:
    x, y = (_plain(t).lower().removeprefix("(").removesuffix(")") for t in (a, b))
    return _verdict(bool(x) and _NAME.fullmatch(x) is not None and x == y)


def _same_digits(a: str, b: str) -> Verdict:
    x = _digits(a)
    return _verdict(_DIGITS.fullmatch(x) is not None and x == _digits(b))


def _same_clock(a: str, b: str) -> Verdict:
    x, y = (_minute_of_day(_plain(t).lower().replace(".", "")) for t in (a, b))
    return _verdict(x is not None and x == y)


def _same_item(a: str, b: str) -> Verdict:
    return _same_number(a, b) if _number(a) is not None else _same_name(a, b)


def _same_ordered(a: str, b: str) -> Verdict:
    said, other = _items(a), _items(b)
    if len(said) != len(other):
        return Verdict.DIFFERENT
    return _all_of([_same_item(x, y) for x, y in zip(said, other, strict=True)])


def _same_multiset(a: str, b: str) -> Verdict:
    said, other = _items(a), _items(b)
    if len(said) != len(other):
        return Verdict.DIFFERENT
    unused = list(range(len(other)))
    for item in said:
        match = next((i for i in unused if _same_item(item, other[i]) is Verdict.EQUIVALENT), None)
        if match is None:
            return Verdict.DIFFERENT
        unused.remove(match)
    return Verdict.EQUIVALENT


# Two replies compared by one kind: both read as that kind, of equal value.
_SAME_REPLY: dict[Kind, Callable[[str, str], Verdict]] = {
    Kind.NUMBER: _same_number,
    Kind.EXPRESSION: _grade_expression,
    Kind.FACTORED: _grade_expression,
    Kind.SIMPLIFIED: _grade_expression,
    Kind.BOOLEAN: _same_boolean,
    Kind.NAME: _same_name,
    Kind.DIGITS: _same_digits,
    Kind.CLOCK: _same_clock,
    Kind.ORDERED: _same_ordered,
    Kind.MULTISET: _same_multiset,
}

_GRADE: dict[Kind, Callable[[str, str], Verdict]] = {
    Kind.NUMBER: _grade_number,
    Kind.EXPRESSION: _grade_expression,
    Kind.FACTORED: _grade_factored,
    Kind.SIMPLIFIED: _grade_simplified,
    Kind.BOOLEAN: _grade_boolean,
    Kind.NAME: _grade_name,
    Kind.DIGITS: _grade_digits,
    Kind.CLOCK: _grade_clock,
    Kind.ORDERED: _grade_ordered,
    Kind.MULTISET: _grade_multiset,
}
