"""Fake chat models and a tiny task for unit tests of the graph logic (no model, no network)."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import PrivateAttr

from mafl_graph.grading import extract_boxed, is_equivalent
from mafl_graph.tasks.base import Problem

Reply = Callable[[list[BaseMessage]], str]
_dying = threading.Event()


class ScriptedModel(BaseChatModel):
    """Answers with ``reply(messages)``; records every call it completes.

    ``log_path`` appends one line per completed call (survives a killed process);
    ``die_at_call`` kills the whole process with SIGKILL when that call (1-based) starts.
    """

    label: str = "scripted"
    reply: Reply = lambda messages: "\\boxed{1}"  # noqa: E731
    delay: float = 0.0
    log_path: str | None = None
    die_at_call: int | None = None
    _calls: list[list[BaseMessage]] = PrivateAttr(default_factory=list)
    _started: int = PrivateAttr(default=0)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    @property
    def _llm_type(self) -> str:
        return "scripted"

    @property
    def model_name(self) -> str:
        return self.label

    @property
    def calls(self) -> list[list[BaseMessage]]:
        return self._calls

    def _generate(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any
    ) -> ChatResult:
        with self._lock:
            self._started += 1
            started = self._started
        if self.die_at_call is not None and started >= self.die_at_call:
            _dying.set()  # calls still in flight must not complete (and log) either
            time.sleep(0.5)  # let the checkpointer flush what finished before
            os.kill(os.getpid(), signal.SIGKILL)
        if self.delay:
            time.sleep(self.delay)
        text = self.reply(messages)
        while _dying.is_set():
            time.sleep(1)
        with self._lock:
            self._calls.append(messages)
            if self.log_path:
                with open(self.log_path, "a") as log:
                    log.write(f"{self.label}\t{messages[-1].text[:60]!r}\t{text!r}\n")
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=text))])


class EchoTask:
    """Questions are their own answers' references; answers come in \\boxed{}."""

    name = "echo"

    def __init__(self, answers: list[str] | None = None) -> None:
        self.answers = answers or ["1", "2", "3"]

    def load(self, split: str, n: int | None = None) -> list[Problem]:
        items = self.answers[:n]
        return [Problem(id=f"echo-{i}", question=f"q{i}", answer=a) for i, a in enumerate(items)]

    def question_prompt(self, problem: Problem) -> str:
        return f"Solve {problem.question}."

    def extract_answer(self, text: str) -> str | None:
        return extract_boxed(text)

    def is_equivalent(self, answer: str, reference: str) -> bool:
        return is_equivalent(answer, reference)


class SplitTask(EchoTask):
    """Distinct train and test questions; every answer is 7 (for loops that must not see a
    test question in training)."""

    name = "split-echo"

    def load(self, split: str, n: int | None = None) -> list[Problem]:
        return [
            Problem(id=f"{split}-{i}", question=f"{split} question {i}", answer="7")
            for i in range(n or 4)
        ]


class CallRecorder(BaseCallbackHandler):
    """Keeps the name, tags and metadata of every chat model run, like a local tracer."""

    def __init__(self) -> None:
        self.runs: list[dict[str, Any]] = []

    def on_chat_model_start(self, serialized: Any, messages: Any, **kwargs: Any) -> None:
        self.runs.append(
            {
                "name": kwargs.get("name"),
                "tags": kwargs.get("tags") or [],
                "metadata": kwargs.get("metadata") or {},
            }
        )
