"""200 answer pairs with known verdicts, for the grading tests and benchmarks/grading_throughput.py.

Series, fractions, decimals, finite sums, sets, intervals, polynomials, plain numbers and roots,
about half of them equivalent, built from a seed so that every run grades the same pairs.
"""

from __future__ import annotations

import random
from fractions import Fraction

BASEL = [r"\sum_{n=1}^{\infty} 1/n^2", r"\sum_{n=1}^{\infty} \frac{1}{n^2}"]


def stress_pairs(n: int = 200, seed: int = 15) -> list[tuple[str, str, bool]]:
    """``n`` (answer, reference, equivalent) pairs: series, fractions, decimals, finite sums,
    sets, intervals, polynomials, plain numbers and roots, about half of them equivalent."""
    rng = random.Random(seed)
    pairs = [
        (r"\frac{\pi^2}{6}", BASEL[0], True),
        (r"\frac{\pi^2}{6}", BASEL[1], True),
        ("2", r"\sum_{n=0}^{\infty} \frac{1}{2^n}", True),
        (r"\frac{\pi^2}{3}", BASEL[1], False),
        (r"\{1, 2, 3\}", r"\{3, 2, 1\}", True),
        (r"\{1, 2\}", r"\{1, 2, 3\}", False),
        ("[1, 3]", "[1, 3)", False),
        (r"(0, \infty)", r"(0,\infty)", True),
        (r"(-\infty, 2]", r"(-\infty, 2)", False),
        ("x^2 + 2x + 1", "(x+1)^2", True),
        ("x^2 + 1", "(x+1)^2", False),
        (r"\sqrt{8}", r"2\sqrt{2}", True),
        ("p - q", "-q + p", True),
        (r"\frac{x}{2}", "0.5x", True),
    ]
    flip = {"[": "(", "(": "[", "]": ")", ")": "]"}
    kinds = ("fraction", "decimal", "sum", "set", "interval", "expression", "number", "root")
    i = 0
    while len(pairs) < n:
        kind, same, i = kinds[i % len(kinds)], rng.random() < 0.5, i + 1
        if kind == "fraction":
            a, b, k = rng.randint(1, 40), rng.randint(2, 40), rng.randint(2, 5)
            top = a * k if same else a * k + 1
            pairs.append((rf"\frac{{{a}}}{{{b}}}", rf"\frac{{{top}}}{{{b * k}}}", same))
        elif kind == "decimal":
            b = rng.choice([2, 4, 5, 8, 10, 20, 25])
            a = rng.randint(1, 3 * b)
            value = Fraction(a, b) + (0 if same else Fraction(1, 100))
            pairs.append((rf"\frac{{{a}}}{{{b}}}", f"{float(value):g}", same))
        elif kind == "sum":
            m = rng.randint(3, 30)
            total = m * (m + 1) // 2 + (0 if same else 1)
            pairs.append((str(total), rf"\sum_{{k=1}}^{{{m}}} k", same))
        elif kind == "set":
            items = rng.sample(range(-9, 20), rng.randint(2, 5))
            other = rng.sample(items, len(items))
            other[0] += 0 if same else 100
            spell = lambda xs: r"\{" + ", ".join(map(str, xs)) + r"\}"  # noqa: E731
            pairs.append((spell(items), spell(other), same))
        elif kind == "interval":
            lo, left, right = rng.randint(-9, 5), rng.choice("[("), rng.choice("])")
            hi = lo + rng.randint(1, 9)
            pairs.append(
                (
                    f"{left}{lo}, {hi}{right}",
                    f"{left}{lo},{hi}{right if same else flip[right]}",
                    same,
                )
            )
        elif kind == "expression":
            a, b = rng.randint(1, 9), rng.randint(1, 9)
            c = b if same else b + 1
            pairs.append((f"x^2 + {a + c}x + {a * c}", f"(x+{a})(x+{b})", same))
        elif kind == "number":
            v = rng.randint(-500, 5000)
            w = v if same else v + rng.choice([-1, 1, 10])
            pairs.append((f"{v:,}", f"{w}.0" if rng.random() < 0.5 else str(w), same))
        else:
            k, m = rng.randint(2, 6), rng.choice([2, 3, 5, 7])
            kk = k if same else k + 1
            pairs.append((rf"{k}\sqrt{{{m}}}", rf"\sqrt{{{kk * kk * m}}}", same))
    return pairs
