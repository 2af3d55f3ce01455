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
    from mafl_graph.tasks.base import Problem, Task
    from mafl_graph.tasks.gsm8k import GSM8K
    from mafl_graph.tasks.math import MATH

__all__ = [
    "GSM8K",
    "MATH",
    "Arithmetic",
    "Problem",
    "Task",
    "get_task",
    "register_task",
    "task_names",
]

_TASKS: dict[str, type[Any] | str] = {
    "arithmetic": "mafl_graph.tasks.arithmetic:Arithmetic",
    "gsm8k": "mafl_graph.tasks.gsm8k:GSM8K",
    "math": "mafl_graph.tasks.math:MATH",
}
_EXPORTS = {
    "Arithmetic": "mafl_graph.tasks.arithmetic",
    "GSM8K": "mafl_graph.tasks.gsm8k",
    "MATH": "mafl_graph.tasks.math",
    "Problem": "mafl_graph.tasks.base",
    "Task": "mafl_graph.tasks.base",
}


def register_task(name: str, cls: type[Any] | str) -> None:
    """Make ``cls`` (a Task class, or ``"module:Class"``) the task called ``name``."""
    _TASKS[name.lower()] = cls


def task_names() -> tuple[str, ...]:
    return tuple(_TASKS)


def get_task(name: str, **kwargs: Any) -> Task:
    """The task called ``name`` (case-insensitive), built with ``kwargs``: the CLI's way in."""
    entry = _TASKS.get(name.lower())
    if entry is None:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(sorted(_TASKS))}")
    if isinstance(entry, str):
        module, _, attribute = entry.partition(":")
        entry = _TASKS[name.lower()] = getattr(importlib.import_module(module), attribute)
    task: Task = entry(**kwargs)
    return task


__getattr__ = lazy_getattr(__name__, _EXPORTS, globals())
