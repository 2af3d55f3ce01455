"""Tasks: where problems come from, how they are asked and how answers are graded.

A task is one module plus one :func:`register_task`. Built-in tasks are registered by import
path, so that listing them (``mafl --help``) imports neither ``datasets`` nor sympy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from mafl_graph._lazy import lazy_getattr

if TYPE_CHECKING:
    from mafl_graph.tasks.arithmetic import Arithmetic
    from mafl_graph.tasks.base import Problem, Task, task_for
    from mafl_graph.tasks.dm_math import DeepMindMath
    from mafl_graph.tasks.gsm8k import GSM8K
    from mafl_graph.tasks.humaneval import HumanEval
    from mafl_graph.tasks.math import MATH
    from mafl_graph.tasks.mixed import Mixed

__all__ = [
    "GSM8K",
    "MATH",
    "Arithmetic",
    "DeepMindMath",
    "HumanEval",
    "Mixed",
    "Problem",
    "Task",
    "get_task",
    "register_task",
    "task_class",
    "task_for",
    "task_names",
]

_TASKS: dict[str, type[Any] | str] = {
    "arithmetic": "mafl_graph.tasks.arithmetic:Arithmetic",
    "gsm8k": "mafl_graph.tasks.gsm8k:GSM8K",
    "math": "mafl_graph.tasks.math:MATH",
    "dm-math": "mafl_graph.tasks.dm_math:DeepMindMath",
    "humaneval": "mafl_graph.tasks.humaneval:HumanEval",
    "mixed": "mafl_graph.tasks.mixed:Mixed",
}
_EXPORTS = {
    "Arithmetic": "mafl_graph.tasks.arithmetic",
    "DeepMindMath": "mafl_graph.tasks.dm_math",
    "GSM8K": "mafl_graph.tasks.gsm8k",
    "HumanEval": "mafl_graph.tasks.humaneval",
    "MATH": "mafl_graph.tasks.math",
    "Mixed": "mafl_graph.tasks.mixed",
    "Problem": "mafl_graph.tasks.base",
    "Task": "mafl_graph.tasks.base",
    "task_for": "mafl_graph.tasks.base",
}


def register_task(name: str, cls: type[Any] | str) -> None:
    """Make ``cls`` (a Task class, or ``"module:Class"``) the task called ``name``."""
    _TASKS[name.lower()] = cls


def task_names() -> tuple[str, ...]:
    return tuple(_TASKS)


def task_class(name: str) -> type[Any]:
    """The class registered as ``name`` (case-insensitive), imported on first use."""
    entry = _TASKS.get(name.lower())
    if entry is None:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(sorted(_TASKS))}")
    if isinstance(entry, str):
        module, _, attribute = entry.partition(":")
        entry = _TASKS[name.lower()] = getattr(importlib.import_module(module), attribute)
    return entry


def get_task(name: str, **kwargs: Any) -> Task:
    """The task called ``name`` (case-insensitive), built with ``kwargs``: the CLI's way in."""
    task: Task = task_class(name)(**kwargs)
    return task


__getattr__ = lazy_getattr(__name__, _EXPORTS, globals())
