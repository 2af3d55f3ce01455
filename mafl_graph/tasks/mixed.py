"""A mixed corpus: one task whose problems come from several tasks, each keeping its domain.

This is the multi-domain data that clustering splits into experts and that self-adaptation
dispatches over. The agents never see a problem's domain: it is in ``Problem.metadata`` and
in the id's prefix (``"<domain>:<source id>"``), which the debate never shows them; every
problem is asked, read and graded by its own source task (:meth:`Mixed.for_problem`), so a
code problem gets the code prompt and is graded by its tests while a sum is graded by value.

Splits: ``train`` and ``test`` draw from every domain's own split of that name, in a seeded
order with each domain's share given by ``weights``; ``cross-domain`` draws from DeepMind
Mathematics' ``_composed`` modules, whose questions chain several domains in one problem.
"""

from __future__ import annotations

import inspect
import math
import random
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from mafl_graph.grading import Verdict
from mafl_graph.tasks.base import Problem, Task, grade_answer, task_for

DEFAULT_TASKS = "arithmetic,algebra=dm-math:algebra__linear_1d,humaneval"
"""Domains that load offline from a fresh clone (GSM8K and MATH need local files)."""
DEFAULT_N = 100
SPLITS = ("train", "test", "cross-domain")
_DOMAIN = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(frozen=True)
class Mixed:
    """Problems of several ``tasks`` (domain name -> task), drawn in proportion to ``weights``.

    ``tasks`` is a mapping of domain names to tasks (a Task, or a registered task's name), or
    the same as text: ``"arithmetic,algebra=dm-math:algebra__linear_1d,humaneval"``, each item
    ``[domain=]task[:module]`` (the domain defaults to the module, else the task's name).
    ``weights``: one positive number per domain, in order (a sequence, a mapping by domain, or
    ``"2,1,1"``); equal by default. ``seed`` orders the draw and seeds the generated tasks;
    ``data_dir`` goes to the tasks that read local files. ``cross_domain``: the DeepMind
    modules of the ``cross-domain`` split (default: every ``_composed`` module it accepts).
    """

    tasks: str | Mapping[str, Task | str] = DEFAULT_TASKS
    weights: str | Sequence[float] | Mapping[str, float] | None = None
    seed: int = 0
    data_dir: str | None = None
    cross_domain: Sequence[str] | None = None
    name: ClassVar[str] = "mixed"
    _domains: dict[str, Task] = field(init=False, repr=False, compare=False)
    _weights: list[float] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        domains = {
            domain: self._build(task) if isinstance(task, str) else task
            for domain, task in _parse_tasks(self.tasks).items()
        }
        object.__setattr__(self, "_domains", domains)
        object.__setattr__(self, "_weights", _parse_weights(self.weights, list(domains)))

    @property
    def domains(self) -> tuple[str, ...]:
        """The domain names, in the order their weights are given."""
        return tuple(self._domains)

    def load(self, split: str, n: int | None = None) -> list[Problem]:
        """The first ``n`` (default 100) problems of ``split``, the same ones on every call.

        Which domain each position draws from is fixed by the seed and the weights; each
        domain then gives its own first problems of that split, in its order.
        """
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; a mixed corpus has {SPLITS}")
        n = DEFAULT_N if n is None else n
        if n < 0:
            raise ValueError(f"n must not be negative; got {n}")
        if split == "cross-domain":
            sources = self._cross_domain_tasks()
            names, weights, source_split = list(sources), [1.0] * len(sources), "test"
        else:
            sources, names, weights = self._domains, list(self.domains), self._weights
            source_split = split
        rng = random.Random(f"mixed:{self.seed}:{split}")
        order = rng.choices(names, weights=weights, k=n)
        drawn = {}
        for domain, count in Counter(order).items():
            problems = sources[domain].load(source_split, count)
            if len(problems) < count:
                raise ValueError(
                    f"domain {domain!r} has {len(problems)} {source_split} problems, and "
                    f"{count} of the {n} drawn are its: ask for fewer or lower its weight"
                )
            drawn[domain] = iter(problems)
        return [_tagged(domain, next(drawn[domain])) for domain in order]

    def for_problem(self, problem: Problem) -> Task:
        """The source task of ``problem``, found from its id's domain prefix."""
        domain, sep, source_id = problem.id.partition(":")
        task = self._domains.get(domain) if sep else None
        if task is None and sep and domain in self._cross_domain_names():
            task = self._cross_domain_tasks()[domain]
        if task is None:
            raise ValueError(
                f"problem {problem.id!r} is not from this mixed corpus: its ids are "
                f"'<domain>:<source id>' with a domain among {', '.join(self.domains)}"
            )
        source = Problem(source_id, problem.question, problem.answer, problem.metadata)
        return DomainTask(domain, task_for(task, source))

    def domain_of(self, problem: Problem) -> str:
        """The hidden domain of one of this corpus's problems."""
        return problem.id.partition(":")[0]

    def question_prompt(self, problem: Problem) -> str:
        return self.for_problem(problem).question_prompt(problem)

    def extract_answer(self, text: str) -> str | None:
        raise TypeError(
            "a mixed corpus reads each answer as its problem's own task does: call "
            "task_for(task, problem).extract_answer(text)"
        )

    def is_equivalent(self, answer: str, reference: str) -> bool:
        raise TypeError(
            "a mixed corpus grades each answer as its problem's own task does: call "
            "grade_answer(task_for(task, problem), answer, reference)"
        )

    def _build(self, spec: str) -> Task:
        from mafl_graph.tasks import get_task, task_class

        spec, _, given = spec.partition("(")
        name, _, module = spec.strip().partition(":")
        takes = set(inspect.signature(task_class(name)).parameters)
        options: dict[str, Any] = _task_options(spec, given, takes)
        if module:
            if "module" not in takes:
                raise ValueError(f"{spec!r}: task {name!r} has no modules")
            options["module"] = module
        if "seed" in takes:
            options.setdefault("seed", self.seed)
        if "data_dir" in takes and self.data_dir is not None:
            options["data_dir"] = self.data_dir
        return get_task(name, **options)

    def _cross_domain_names(self) -> tuple[str, ...]:
        if self.cross_domain is not None:
            return tuple(self.cross_domain)
        from mafl_graph.tasks.dm_math import composed_modules

        return tuple(composed_modules())

    def _cross_domain_tasks(self) -> dict[str, Task]:
        from mafl_graph.tasks.dm_math import DeepMindMath

        return {m: DeepMindMath(module=m, seed=self.seed) for m in self._cross_domain_names()}


@dataclass(frozen=True)
class DomainTask:
    """One mixed problem's own task, given the problem as that task knows it (its own id)."""

    domain: str
    task: Task

    @property
    def name(self) -> str:
        return self.task.name

    @property
    def prompts(self) -> Any:
        return getattr(self.task, "prompts", None)

    def load(self, split: str, n: int | None = None) -> list[Problem]:
        return [_tagged(self.domain, p) for p in self.task.load(split, n)]

    def question_prompt(self, problem: Problem) -> str:
        return self.task.question_prompt(_untagged(problem))

    def extract_answer(self, text: str) -> str | None:
        return self.task.extract_answer(text)

    def is_equivalent(self, answer: str, reference: str) -> bool:
        return self.grade(answer, reference) is Verdict.EQUIVALENT

    def grade(self, answer: str, reference: str) -> Verdict:
        return grade_answer(self.task, answer, reference)


def _tagged(domain: str, problem: Problem) -> Problem:
    metadata = {**problem.metadata, "domain": domain, "source_id": problem.id}
    return Problem(f"{domain}:{problem.id}", problem.question, problem.answer, metadata)


def _untagged(problem: Problem) -> Problem:
    source_id = problem.id.partition(":")[2] or problem.id
    return Problem(source_id, problem.question, problem.answer, problem.metadata)


def _parse_tasks(tasks: str | Mapping[str, Task | str]) -> dict[str, Task | str]:
    if isinstance(tasks, str):
        parsed: dict[str, Task | str] = {}
        for item in (part.strip() for part in tasks.split(",")):
            if not item:
                continue
            head = item.partition("(")[0]  # options in parentheses may hold "=" too
            if "=" in head:
                domain, spec = item.split("=", 1)
            else:
                domain, spec = head.partition(":")[2] or head, item
            if domain.strip() in parsed:
                raise ValueError(f"domain {domain.strip()!r} is named twice in {tasks!r}")
            parsed[domain.strip()] = spec.strip()
        tasks = parsed
    if not tasks:
        raise ValueError("a mixed corpus needs at least one domain, e.g. 'arithmetic,humaneval'")
    for domain in tasks:
        if not _DOMAIN.match(domain):
            raise ValueError(
                f"domain name {domain!r} must be letters, digits, '_', '.' or '-' (it prefixes "
                "problem ids as '<domain>:<id>')"
            )
    return dict(tasks)


def _task_options(spec: str, given: str, takes: set[str]) -> dict[str, Any]:
    """``terms=2;high=50;operators=+`` (what followed the parenthesis) as constructor options:
    numbers where they parse as numbers, else text."""
    if not given:
        return {}
    if not given.rstrip().endswith(")"):
        raise ValueError(f"{spec}({given}: the options in parentheses are not closed")
    options: dict[str, Any] = {}
    for part in re.split(r"[;\s]+", given.rstrip()[:-1].strip()):
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep or key not in takes - {"module"}:
            raise ValueError(
                f"{spec}: option {part!r} is not key=value with a key the task takes "
                f"({', '.join(sorted(takes - {'module'}))})"
            )
        for kind in (int, float):
            try:
                options[key] = kind(value)
                break
            except ValueError:
                options[key] = value
    return options


def _parse_weights(
    weights: str | Sequence[float] | Mapping[str, float] | None, domains: list[str]
) -> list[float]:
    if weights is None:
        return [1.0] * len(domains)
    if isinstance(weights, Mapping):
        if unknown := set(weights) - set(domains):
            raise ValueError(f"weights name unknown domains {sorted(unknown)}; domains: {domains}")
        values: list[Any] = [weights.get(domain, 0.0) for domain in domains]
    elif isinstance(weights, str):
        values = [part.strip() for part in weights.split(",") if part.strip()]
    else:
        values = list(weights)
    try:
        parsed = [float(value) for value in values]
    except ValueError:
        raise ValueError(f"weights must be numbers, e.g. '2,1,1'; got {weights!r}") from None
    if len(parsed) != len(domains):
        raise ValueError(
            f"{len(parsed)} weight(s) for {len(domains)} domains {domains}; give one per domain"
        )
    if any(not 0 <= w < math.inf for w in parsed) or not any(w > 0 for w in parsed):
        raise ValueError(f"weights must be finite, non-negative, not all zero; got {weights!r}")
    return parsed
