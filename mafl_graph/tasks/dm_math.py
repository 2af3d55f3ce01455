"""DeepMind Mathematics: problems from DeepMind's own generator, any module, any difficulty.

``mathematics-dataset`` (PyPI, 1.0.1) is the generator behind ``deepmind/math_dataset``: 56
modules (``algebra__linear_1d``, ``numbers__gcd``, ``comparison__pair``, the ``_composed``
ones that chain several domains in one question, ...), each at the package's entropy range cut
in thirds (``train-easy``, ``train-medium``, ``train-hard``) or at its test entropy
(``interpolate``), exactly as its ``generate.py`` builds them. Nothing is downloaded.

Generation is deterministic: draw ``k`` of a module is made from its own seed, with the
package's ``random`` and ``np.random`` replaced by private generators for the duration, so the
caller's global random state is neither used nor disturbed, and what was generated before (in
this process or another) changes nothing. The numpy 1 names the package still uses exist only
for it, only while it generates. Draws are cached on disk, so a second load is instant. A hash
of each question decides its split, so train and test never share a problem. Answers are
graded by their kind (:mod:`mafl_graph.tasks.dm_answers`).
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import hashlib
import importlib
import importlib.metadata
import json
import logging
import os
import random
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import numpy as np
import sympy
import sympy.ntheory.generate as _sympy_generate

from mafl_graph.cache import default_cache_dir
from mafl_graph.grading import Verdict, extract_boxed, last_number
from mafl_graph.tasks.base import Problem
from mafl_graph.tasks.dm_answers import Kind, check_reference, grade_as, kinds_of
from mafl_graph.tasks.math import math_prompt

__all__ = [
    "COMPOSED_MODULES",
    "DIFFICULTIES",
    "DeepMindMath",
    "composed_modules",
    "module_names",
    "refused_modules",
    "working_modules",
]

DIFFICULTIES = ("train-easy", "train-medium", "train-hard", "interpolate")
SPLITS = ("train", "test")
DEFAULT_N = 1000
_TEST_BUCKETS = 1  # of 5: a fifth of all questions belong to the test split
# The limits the package's generate.py drops longer questions and answers at.
_MAX_QUESTION_CHARS = 160
_MAX_ANSWER_CHARS = 30
_MAX_MISSES = 2_000  # draws in a row without a new problem of the split before giving up
_MAX_FAILURES = 50  # generations in a row that raise before the module counts as broken
_PACKAGE = "mathematics_dataset"
# The revision of how draws are made here; a change to it invalidates cached draws.
_GENERATION = "1"

log = logging.getLogger(__name__)

# Modules the task refuses, with the reason. Empty while every module generates and every
# answer has a kind; kept as the one place to refuse a module should that change.
_REFUSED: dict[str, str] = {}

# Generation swaps module globals of the package; one generation at a time.
_GENERATING = threading.Lock()


@dataclass(frozen=True)
class DeepMindMath:
    """Problems of one ``module`` of DeepMind's generator at one ``difficulty``.

    ``module`` is a dataset module name (:func:`module_names`); ``difficulty`` is
    ``train-easy``, ``train-medium``, ``train-hard`` (the package's entropy range in thirds) or
    ``interpolate`` (its test entropy). ``seed`` fixes the problems.
    """

    module: str = "arithmetic__add_or_sub"
    difficulty: str = "train-easy"
    seed: int = 0
    name: ClassVar[str] = "dm-math"

    def __post_init__(self) -> None:
        if self.difficulty not in DIFFICULTIES:
            raise ValueError(
                f"unknown difficulty {self.difficulty!r}; dm-math has {', '.join(DIFFICULTIES)}"
            )
        names = module_names()
        if self.module not in names:
            close = difflib.get_close_matches(self.module, names, n=3)
            hint = f"did you mean {', '.join(close)}? " if close else ""
            raise ValueError(
                f"unknown dm-math module {self.module!r}; {hint}module_names() lists all "
                f"{len(names)}, e.g. algebra__linear_1d, numbers__gcd, comparison__pair"
            )
        if self.module in _REFUSED:
            raise ValueError(
                f"dm-math module {self.module!r} is refused: {_REFUSED[self.module]}; "
                "working_modules() lists the ones that work"
            )

    @property
    def kinds(self) -> tuple[Kind, ...]:
        """The forms this module's answers take (see :mod:`mafl_graph.tasks.dm_answers`)."""
        return kinds_of(self.module)

    def load(self, split: str, n: int | None = None) -> list[Problem]:
        """The first ``n`` (default 1000) problems of ``split``, the same ones on every call."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; dm-math has {SPLITS}")
        n = DEFAULT_N if n is None else n
        if n < 0:
            raise ValueError(f"n must not be negative; got {n}")
        problems: list[Problem] = []
        seen: set[str] = set()
        misses = 0
        stream = _Stream(self.module, self.difficulty, self.seed)
        try:
            draws = iter(stream)
            while len(problems) < n:
                question, answer = next(draws)
                if question in seen or _split_of(question) != split:
                    misses += 1
                    if misses >= _MAX_MISSES:
                        raise ValueError(
                            f"{self!r} yields only {len(problems)} distinct {split} problems "
                            f"({misses} draws in a row gave none), {n} were asked for; ask for "
                            "fewer or pick a harder difficulty"
                        )
                    continue
                misses = 0
                seen.add(question)
                check_reference(self.module, answer)
                problem_id = f"dm-math-{self.module}-{split}-{len(problems):05d}"
                metadata = {"module": self.module, "difficulty": self.difficulty}
                problems.append(Problem(problem_id, question, answer, metadata))
        finally:
            stream.save()  # what was generated is kept, even when interrupted
        return problems

    def question_prompt(self, problem: Problem) -> str:
        """The question with MATH's request for a single boxed answer."""
        return math_prompt(problem.question)

    def extract_answer(self, text: str) -> str | None:
        """The boxed answer; for modules whose answers are all numbers, a box with no digit in
        it (a copied ``\\boxed{answer}``) or no box at all gives the last number instead."""
        boxed = extract_boxed(text)
        if self.kinds != (Kind.NUMBER,):
            return boxed
        if boxed is not None and any(char.isdigit() for char in boxed):
            return boxed
        return last_number(text)

    def is_equivalent(self, answer: str, reference: str) -> bool:
        """Whether ``answer`` is right, by the equivalence of the reference's kind."""
        return self.grade(answer, reference) is Verdict.EQUIVALENT

    def grade(self, answer: str, reference: str) -> Verdict:
        """As :meth:`is_equivalent`, or UNDECIDED where a symbolic check ran out of time."""
        return grade_as(self.module, answer, reference)


def module_names() -> tuple[str, ...]:
    """Every module of the package by its dataset name (``algebra__linear_1d``, ...), sorted."""
    return tuple(sorted(_modules("train-easy")))


def working_modules() -> tuple[str, ...]:
    """The modules :class:`DeepMindMath` accepts, sorted."""
    return tuple(name for name in module_names() if name not in _REFUSED)


def refused_modules() -> dict[str, str]:
    """The modules :class:`DeepMindMath` refuses, each with the reason."""
    return {name: _REFUSED[name] for name in module_names() if name in _REFUSED}


def composed_modules() -> tuple[str, ...]:
    """The working ``_composed`` modules: questions that chain several domains."""
    return tuple(name for name in working_modules() if name.endswith("_composed"))


def _split_of(question: str) -> str:
    """The split a question belongs to, fixed by its hash so splits can never overlap."""
    bucket = int(hashlib.sha1(question.encode()).hexdigest(), 16) % 5
    return "test" if bucket < _TEST_BUCKETS else "train"


class _Stream:
    """The kept (question, answer) draws of one module, difficulty and seed, in draw order.

    Draws already made are read from the on-disk cache and new ones are added to it by
    :meth:`save`, so a second load (of either split, in any process) generates only what the
    first did not. Over-long questions and answers are dropped as the package's
    ``generate.py`` drops them. A generation that raises gives nothing (no half-made problem);
    many in a row mean the module is broken, and that is an error naming it.
    """

    def __init__(self, module: str, difficulty: str, seed: int) -> None:
        self.module, self.difficulty, self.seed = module, difficulty, seed
        self.path = _cache_path(module, difficulty, seed)
        self.pairs, self.next_draw = _read_cache(self.path)
        self._saved = self.next_draw

    def __iter__(self) -> Iterator[tuple[str, str]]:
        i = 0
        while True:
            while i >= len(self.pairs):
                self._make_one()
            yield self.pairs[i]
            i += 1

    def save(self) -> None:
        """Write the draws to the cache if there are new ones; a cache that cannot be written
        is skipped with a warning (generation does not depend on it)."""
        if self.next_draw == self._saved:
            return
        log.info(
            "dm-math: %s (%s, seed %d): %d draws made, cached in %s",
            self.module,
            self.difficulty,
            self.seed,
            self.next_draw - self._saved,
            self.path,
        )
        temporary = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Written whole, then renamed: a reader never sees half a file.
            with tempfile.NamedTemporaryFile(
                "w", dir=self.path.parent, suffix=".tmp", delete=False, encoding="utf-8"
            ) as out:
                temporary = Path(out.name)
                json.dump({"next_draw": self.next_draw, "pairs": self.pairs}, out)
            os.replace(temporary, self.path)
            self._saved = self.next_draw
        except OSError as error:
            log.warning("dm-math: could not write the generation cache %s: %s", self.path, error)
            if temporary is not None:
                temporary.unlink(missing_ok=True)

    def _make_one(self) -> None:
        """Draw until one problem is kept."""
        generate = _modules(self.difficulty)[self.module]
        failures = too_long = 0
        while True:
            key = f"dm-math:{self.module}:{self.difficulty}:{self.seed}:{self.next_draw}"
            with _package_randomness(key):
                self.next_draw += 1
                try:
                    made = generate()
                    question, answer = str(made.question), str(made.answer)
                except Exception as exc:  # the package's own bugs: skip the draw, count them
                    failures += 1
                    if failures >= _MAX_FAILURES:
                        raise RuntimeError(
                            f"dm-math module {self.module!r} ({self.difficulty}) failed "
                            f"{failures} generations in a row, the last with {exc!r}; pick "
                            "another module (working_modules())"
                        ) from exc
                    continue
            if len(question) <= _MAX_QUESTION_CHARS and len(answer) <= _MAX_ANSWER_CHARS:
                self.pairs.append((question, answer))
                return
            too_long += 1
            if too_long >= _MAX_MISSES:
                raise ValueError(
                    f"dm-math module {self.module!r} ({self.difficulty}) made {too_long} "
                    "over-long problems in a row; pick another module or difficulty"
                )


def _cache_path(module: str, difficulty: str, seed: int) -> Path:
    """Where the draws of ``module`` are cached: under ``$MAFL_CACHE_DIR`` (else
    ``$XDG_CACHE_HOME/mafl_graph``, else ``~/.cache/mafl_graph``), keyed by everything that
    decides them, the versions of the generator, sympy and numpy included."""
    versions = ":".join(
        [_GENERATION, importlib.metadata.version("mathematics-dataset"), sympy.__version__]
        + [np.__version__]
    )
    tag = hashlib.sha1(versions.encode()).hexdigest()[:12]
    return default_cache_dir() / "dm_math" / f"{module}-{difficulty}-{seed}-{tag}.json"


def _read_cache(path: Path) -> tuple[list[tuple[str, str]], int]:
    """The cached pairs and the next draw's number; nothing where the file is missing or
    unreadable (it is then made again)."""
    if not path.is_file():
        return [], 0
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        pairs = [(str(q), str(a)) for q, a in data["pairs"]]
        return pairs, int(data["next_draw"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        log.warning("dm-math: ignoring the unreadable generation cache %s: %s", path, error)
        return [], 0


@functools.cache
def _package() -> ModuleType:
    """The package's ``modules`` module, importable with the sympy it runs with here.

    1.0.1 imports ``base_solution_linear`` from ``sympy.solvers.diophantine``, which sympy 1.6
    moved to ``sympy.solvers.diophantine.diophantine``; the name is put back where the package
    looks before it is imported (nothing else changes). ``generate.init_modules()`` is avoided:
    it reads absl flags.
    """
    importlib.import_module("sympy.solvers.diophantine")
    package = sys.modules["sympy.solvers.diophantine"]
    if not hasattr(package, "base_solution_linear"):
        solvers = importlib.import_module("sympy.solvers.diophantine.diophantine")
        package.base_solution_linear = solvers.base_solution_linear  # type: ignore[attr-defined]
    return importlib.import_module(f"{_PACKAGE}.modules.modules")


@functools.cache
def _modules(difficulty: str) -> dict[str, Callable[[], Any]]:
    """Every module's generating function at ``difficulty``, by dataset name."""
    modules = _package()
    if difficulty == "interpolate":
        tree = modules.test()
    else:
        level = DIFFICULTIES.index(difficulty)

        def entropy(range_: tuple[float, float]) -> tuple[float, float]:
            # generate.py's _make_entropy_fn(level, 3): the level's third of the range.
            low, high = range_
            return low + level / 3 * (high - low), low + (level + 1) / 3 * (high - low)

        tree = modules.train(entropy)
    flat: dict[str, Callable[[], Any]] = {}

    def add(node: dict[str, Any], prefix: str) -> None:
        for key, value in node.items():
            name = f"{prefix}__{key}" if prefix else key
            if isinstance(value, dict):
                add(value, name)
            else:
                flat[name] = value

    add(tree, "")
    return flat


class _PackageRandom(random.Random):
    """``random.Random`` taking integral floats as bounds, as Python 3.11 does with a warning
    and 3.12 no longer does: the package passes ``10**k / 2`` (``numbers__round_number``)."""

    def randrange(self, start: Any, stop: Any = None, step: Any = 1) -> int:
        return super().randrange(_integral(start), _integral(stop), _integral(step))


def _integral(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


class _ItemsetArray(np.ndarray):
    """An ndarray with numpy 1's ``itemset``, which the package's polynomial sampler calls."""

    def itemset(self, index: Any, value: Any) -> None:
        # A full index names one element: an object array stores ``value`` (even a list) as is.
        self[index] = value


class _PackageNumpy:
    """numpy as the package's modules see it while generating: ``random`` is a private
    ``RandomState``, and the numpy 1 names the package still uses (``np.object``, arrays with
    ``itemset``) exist. numpy itself is untouched."""

    object = object

    def __init__(self, state: np.random.RandomState) -> None:
        self.random = state

    def __getattr__(self, name: str) -> Any:
        return getattr(np, name)

    @staticmethod
    def zeros(*args: Any, **kwargs: Any) -> np.ndarray:
        return np.zeros(*args, **kwargs).view(_ItemsetArray)

    @staticmethod
    def empty(*args: Any, **kwargs: Any) -> np.ndarray:
        return np.empty(*args, **kwargs).view(_ItemsetArray)


@contextlib.contextmanager
def _package_randomness(key: str) -> Iterator[None]:
    """The package generating from generators seeded by ``key``, nothing else, while inside.

    Its modules' ``random`` and ``np`` globals are swapped for a seeded ``random.Random`` and a
    :class:`_PackageNumpy` over a seeded ``RandomState`` (the same streams as seeding the
    global ones); sympy's ``randprime`` (``numbers__is_prime``), which draws from sympy's own
    unseeded generator, draws from the same ``random.Random``; and the two places where the
    package's choices follow set order (string hashes, which differ per process, and object
    ids, which differ per allocation history) take them in a fixed order. Everything is put
    back on the way out, exception or not.
    """
    digest = hashlib.sha256(key.encode()).digest()
    rng = _PackageRandom(digest)
    numpy = _PackageNumpy(np.random.RandomState(int.from_bytes(digest[:4], "big")))
    composition = importlib.import_module(f"{_PACKAGE}.util.composition")
    swaps: list[tuple[Any, str, Any]] = []
    for module in _package_modules():
        for attribute, original, value in (("random", random, rng), ("np", np, numpy)):
            if getattr(module, attribute, None) is original:
                swaps.append((module, attribute, value))
    swaps += [
        (_sympy_generate, "randint", rng.randint),
        (composition.Context, "pop", _ordered_pop(composition, rng)),
        (composition, "expand_entities", _ordered_expand_entities(composition, rng)),
    ]
    with _GENERATING:
        saved: list[tuple[Any, str, Any]] = []
        try:
            for owner, attribute, value in swaps:
                saved.append((owner, attribute, getattr(owner, attribute)))
                setattr(owner, attribute, value)
            yield
        finally:
            for owner, attribute, value in reversed(saved):
                setattr(owner, attribute, value)


@functools.cache
def _package_modules() -> tuple[ModuleType, ...]:
    """The package's modules (all imported by :func:`_package`)."""
    _package()
    prefix = f"{_PACKAGE}."
    return tuple(
        module
        for name, module in sorted(sys.modules.items())
        if name.startswith(prefix) and isinstance(module, ModuleType)
    )


def _ordered_pop(composition: ModuleType, rng: random.Random) -> Callable[[Any], str]:
    """``Context.pop`` choosing among the unused symbols in sorted order, not hash order."""

    def pop(self: Any) -> str:
        allowed = (
            composition._ALLOWED_SYMBOLS.difference(self._relation_symbols)
            .difference(self._self_symbols)
            .difference(self._child_symbols)
        )
        if not allowed:
            raise ValueError("Ran out of symbols")
        symbol: str = rng.choice(sorted(allowed))
        self._self_symbols.add(symbol)
        return symbol

    return pop


def _ordered_expand_entities(
    composition: ModuleType, rng: random.Random
) -> Callable[..., tuple[str, dict[str, Any]]]:
    """``expand_entities`` shuffling the entities from the order they were made in, not from
    a set's order (object ids)."""

    def expand_entities(context: Any, **kwargs: Any) -> tuple[str, dict[str, Any]]:
        kwargs = kwargs.copy()
        entities = dict.fromkeys(context.child_entities)
        for key, maybe_entity in kwargs.items():
            if isinstance(maybe_entity, composition.Entity):
                entities[maybe_entity] = None
                kwargs[key] = maybe_entity.handle
        ordered = list(entities)
        rng.shuffle(ordered)
        descriptions = []
        for entity in ordered:
            descriptions.append(entity.child_description)
            if not entity.expression_used:
                descriptions.append(entity.description)
        return " ".join(s for s in descriptions if s), kwargs

    return expand_entities


COMPOSED_MODULES: tuple[str, ...] = composed_modules()
"""The working ``_composed`` modules (the mixed corpus's cross-domain split draws from them)."""
