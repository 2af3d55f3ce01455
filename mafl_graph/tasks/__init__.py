"""Tasks: where problems come from, how they are asked and how answers are graded."""

from __future__ import annotations

from typing import Any

from mafl_graph.tasks.arithmetic import Arithmetic
from mafl_graph.tasks.base import Problem, Task
from mafl_graph.tasks.gsm8k import GSM8K
from mafl_graph.tasks.math import MATH

__all__ = ["GSM8K", "MATH", "Arithmetic", "Problem", "Task", "get_task"]

_TASKS: dict[str, type[Any]] = {cls.name: cls for cls in (Arithmetic, GSM8K, MATH)}


def get_task(name: str, **kwargs: Any) -> Task:
    """The task called ``name`` (case-insensitive), built with ``kwargs``: the CLI's way in."""
    cls = _TASKS.get(name.lower())
    if cls is None:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(sorted(_TASKS))}")
    task: Task = cls(**kwargs)
    return task
