"""Debates against a provider that fails: the real OpenAI SDK (through langchain-openai) talks to
a loopback server speaking the chat-completions API that injects 429s (with Retry-After),
500/503s, timeouts, dropped connections, empty, truncated and garbage bodies, answers without a
number and 100 kB answers (tests/fault_server.py).

What is counted: requests the server saw, faults it injected, retries (requests repeating an
earlier request's content; the SDK's and the graph's), problems lost, and successful answers
paid for more than once.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("langchain_openai")

import openai  # noqa: E402
from fault_server import (  # noqa: E402
    ANSWER_FAULTS,
    HUGE_BYTES,
    TRANSIENT,
    FaultServer,
    arithmetic_answer,
    serve,
)
from langchain_core.callbacks import BaseCallbackHandler  # noqa: E402
from langgraph.types import RetryPolicy  # noqa: E402

from mafl_graph import Arithmetic, Society, run_debates, summarize_debates  # noqa: E402
from mafl_graph.debate import create_debate_graph, transient_retry  # noqa: E402
from mafl_graph.debate.run import DebateResult  # noqa: E402
from mafl_graph.models import EmptyReplyError, is_transient, provider_rate_limiter  # noqa: E402
from mafl_graph.traces import read_traces_sqlite  # noqa: E402

pytestmark = pytest.mark.allow_hosts(["127.0.0.1"])

KEY = "sk-mafl-faults-0123456789abcdef"
MODEL = "openai:fault-model"
CALLS = 3 + 3 + 3  # per problem: 3 generators, 3 summaries, 3 critics
SDK_RETRIES = 2
TIMEOUT = 2.0  # long enough that a slow *successful* reply on a busy machine never times out
# The graph's policy with the default attempts but millisecond backoff, so tests stay fast.
FAST = transient_retry(initial_interval=0.01, max_interval=0.05)
TASK = Arithmetic(terms=3, low=0, high=50, operators="+*")


class Starts(BaseCallbackHandler):
    """Counts model invocations: each one is a node attempt (the SDK's retries are inside)."""

    def __init__(self) -> None:
        self.starts = 0

    def on_chat_model_start(self, *args: Any, **kwargs: Any) -> None:
        self.starts += 1


def society(server: FaultServer, **options: Any) -> Society:
    options = {"max_retries": SDK_RETRIES, "timeout": TIMEOUT, "seed": 0, **options}
    return Society.from_model(MODEL, 3, base_url=server.url, api_key=KEY, **options)


def debate(
    server: FaultServer,
    db: Path,
    n: int,
    *,
    callbacks: list[Any] | None = None,
    retry: RetryPolicy = FAST,
    concurrency: int = 50,
    **options: Any,
) -> list[DebateResult]:
    graph = create_debate_graph(society(server, **options), TASK, retry_policy=retry)
    return run_debates(
        graph,
        TASK.load("test", n),
        run_id="faults",
        db_path=db,
        max_concurrency=concurrency,
        progress=False,
        callbacks=callbacks,
    )


def test_200_debates_lose_nothing_to_20_percent_transient_faults(tmp_path: Path) -> None:
    n = 200
    faulty = FaultServer(answer=arithmetic_answer, rate=0.2, kinds=TRANSIENT, seed=1, hang=2.5)
    starts = Starts()
    with serve(faulty):
        started = time.perf_counter()
        results = debate(faulty, tmp_path / "faulty.sqlite", n, callbacks=[starts])
        seconds = time.perf_counter() - started

    faults = faulty.faults()
    requests = len(faulty.requests)
    report = {
        "problems": n,
        "calls": n * CALLS,
        "requests": requests,
        "faults_injected": sum(faults.values()),
        "faults_by_kind": dict(sorted(faults.items())),
        "retried_requests": faulty.retried_calls(),
        "retried_by_sdk": requests - starts.starts,
        "retried_by_graph": starts.starts - n * CALLS,
        "problems_lost": sum(not r.ok for r in results),
        "duplicated_paid_calls": sum(c - 1 for c in faulty.successes().values()),
        "seconds": round(seconds, 1),
    }
    print("\nfault report:", json.dumps(report))

    assert report["problems_lost"] == 0, [r.error for r in results if not r.ok][:3]
    assert all(len(r.responses) == 6 and len(r.summaries) == 3 for r in results)
    # About a fifth of all requests failed, and every kind of transient fault was met.
    assert 0.15 < report["faults_injected"] / requests < 0.25
    assert set(faults) == set(TRANSIENT)
    # Every fault was followed by a retry of the same call, by the SDK or by the graph ...
    assert report["retried_requests"] == report["faults_injected"]
    assert report["retried_by_sdk"] > 0 and report["retried_by_graph"] > 0
    # ... and the faults the SDK cannot see (2xx bodies) were all retried by the graph.
    body_faults = sum(faults[k] for k in ("empty", "truncated", "garbage"))
    assert report["retried_by_graph"] >= body_faults
    # Each of the 1800 calls was answered successfully exactly once: nothing paid twice.
    assert sum(faulty.successes().values()) == n * CALLS
    assert report["duplicated_paid_calls"] == 0
    # What the run recorded is exactly the server's successful answers, each once: no fault
    # left a trace in a debate (the server answers a request the same however often it comes,
    # so this is what a fault-free run records; tests/test_kill_resume.py compares two runs).
    recorded = [x["text"] for r in results for x in [*r.responses, *r.summaries]]
    assert sorted(recorded) == sorted(q.text for q in faulty.requests if q.ok)
    accuracy = summarize_debates(results, TASK).accuracy
    assert accuracy.n == n and 0 < accuracy.correct < n  # the debaters are right ~70% of the time


def test_a_problem_that_keeps_failing_is_recorded_and_resumes_once_fixed(tmp_path: Path) -> None:
    problems = TASK.load("test", 5)
    broken = problems[2].question

    def keeps_failing(body: dict[str, Any]) -> bool:
        return broken in json.dumps(body)

    db = tmp_path / "d.sqlite"
    server = FaultServer(answer=arithmetic_answer, always=keeps_failing)
    with serve(server):
        results = debate(server, db, 5, max_retries=1)  # the SDK's backoff takes 0.5 s a retry
    assert [r.ok for r in results] == [True, True, False, True, True]
    failed = results[2]
    assert failed.error is not None and "Error code: 500" in failed.error
    assert "InternalServerError" in failed.error or "OpenAIAPIError" in failed.error
    assert failed.correct is None and failed.consensus is None
    summary = summarize_debates(results, TASK)
    assert summary.failed == 1 and summary.accuracy.n == 5  # counted, and counted wrong
    assert summary.accuracy.correct == sum(bool(r.correct) for r in results[:2] + results[3:])
    # Its first failing call was tried 5 times by the graph, each time twice by the SDK; then
    # LangGraph cancelled the two sibling calls of that step, which were still retrying.
    attempts = Counter(r.key for r in server.requests if keeps_failing(r.body or {}))
    assert len(attempts) == 3
    assert max(attempts.values()) == FAST.max_attempts * 2
    # The run records it: the thread is unfinished, with the error.
    traces = read_traces_sqlite(db, "faults")
    assert len(traces) == 4
    [unfinished] = traces.unfinished
    assert unfinished.problem_id == failed.problem_id and "500" in (unfinished.error or "")

    # Once the provider recovers, running again finishes it and asks nothing already answered.
    recovered = FaultServer(answer=arithmetic_answer)
    with serve(recovered):
        again = debate(recovered, db, 5)
    assert [r.error for r in again] == [None] * 5
    assert again[:2] + again[3:] == results[:2] + results[3:]
    assert len(recovered.requests) == CALLS
    assert all(keeps_failing(r.body or {}) for r in recovered.requests[:3])


def test_errors_that_retrying_cannot_fix_fail_at_once(tmp_path: Path) -> None:
    server = FaultServer(answer=arithmetic_answer, api_key="sk-the-right-key-0000000000")
    with serve(server):
        results = debate(server, tmp_path / "d.sqlite", 2)
    assert not any(r.ok for r in results)
    assert all("401" in (r.error or "") for r in results)
    assert len(server.requests) == 2 * 3  # one request per first call: no retry at all


def test_answers_without_a_number_are_never_counted_correct(tmp_path: Path) -> None:
    n = 40
    server = FaultServer(answer=arithmetic_answer, rate=0.4, kinds=ANSWER_FAULTS, seed=3)
    with serve(server):
        results = debate(server, tmp_path / "d.sqlite", n)
    assert all(r.ok for r in results)
    responses = [x for r in results for x in r.responses]
    unanswered = [x for x in responses if x["answer"] is None]
    huge = [x for x in responses if len(x["text"]) > HUGE_BYTES]
    assert unanswered and huge
    assert all("I cannot tell" in x["text"] for x in unanswered)  # recorded, not retried
    assert all(x["answer"] is not None for x in huge)  # the answer after 100 kB is found
    retried = [r for r in server.requests if r.attempt > 1]
    assert not retried  # a well-formed answer is graded, never asked again
    references = {p.id: p.answer for p in TASK.load("test", n)}
    for r in results:
        final = [x["answer"] for x in r.responses if x["round"] == 2]
        if all(a is None for a in final):
            assert r.consensus is None and r.correct is False
        if r.correct:
            assert r.consensus is not None
            assert TASK.is_equivalent(r.consensus, references[r.problem_id] or "")
    assert any(all(x["answer"] is None for x in r.responses if x["round"] == 2) for r in results)
    summary = summarize_debates(results, TASK)
    assert summary.accuracy.correct == sum(r.correct is True for r in results)


def test_retry_after_is_honoured_and_the_rate_limit_spaces_calls() -> None:
    def first_attempt_429(key: str, attempt: int, body: dict[str, Any]) -> str | None:
        return "429" if attempt == 1 else None

    server = FaultServer(answer=arithmetic_answer, plan=first_attempt_429, retry_after_ms=400)
    with serve(server):
        model = society(server).agents[0].generator
        model.invoke("What is the result of 1+2?")
        first, retry = server.requests
        assert (first.fault, retry.fault) == ("429", None)
        assert retry.arrived - first.arrived >= 0.4  # the SDK waited as the server asked

    server = FaultServer(answer=arithmetic_answer)
    with serve(server):
        limited = society(server, requests_per_second=10)
        models = [a.generator for a in limited.agents] + [limited.summarizer]
        assert len({id(m.rate_limiter) for m in models}) == 1  # one budget for the society
        assert models[0].rate_limiter is provider_rate_limiter("openai", 10)

        async def burst(chats: list[Any]) -> float:
            started = time.perf_counter()
            prompts = [f"What is the result of {i}+1?" for i in range(12)]
            await asyncio.gather(*(chats[i % len(chats)].ainvoke(p) for i, p in enumerate(prompts)))
            return time.perf_counter() - started

        async def both() -> tuple[float, float]:  # one loop: the SDK's client is bound to it
            free = [a.generator for a in society(server).agents]
            return await burst(models), await burst(free)

        limited_seconds, free_seconds = asyncio.run(both())
        assert limited_seconds >= 1.0  # 12 calls at 10/s: at least 11 gaps of 0.1 s
        arrived = [r.arrived for r in server.requests[:12]]
        gaps = [b - a for a, b in zip(arrived, arrived[1:], strict=False)]
        assert min(gaps) > 0.05
        assert free_seconds < 1.0


def test_runs_one_after_another_in_one_process_keep_working(tmp_path: Path) -> None:
    """An iteration loop debates again and again in one process. langchain-openai caches its
    async HTTP client per base URL for the whole process (langchain-ai/langchain#35783), so
    with one event loop per run the second run met "Event loop is closed" (and would not retry
    it: it is no transient fault). run_debates now keeps one loop for all its runs."""
    server = FaultServer(answer=arithmetic_answer)
    with serve(server):
        graph = create_debate_graph(society(server), TASK, retry_policy=None)
        for i in range(3):
            problems = TASK.load("test", 4)
            results = run_debates(
                graph, problems, run_id=f"r{i}", db_path=tmp_path / "d.sqlite", progress=False
            )
            assert [r.error for r in results] == [None] * 4
    assert len(server.requests) == 3 * 4 * CALLS


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (lambda: openai.APITimeoutError(request=_request()), True),
        (lambda: openai.APIConnectionError(request=_request()), True),
        (lambda: _status_error(openai.RateLimitError, 429), True),
        (lambda: _status_error(openai.InternalServerError, 503), True),
        (lambda: _status_error(openai.AuthenticationError, 401), False),
        (lambda: _status_error(openai.BadRequestError, 400), False),
        (lambda: _status_error(openai.NotFoundError, 404), False),
        (lambda: json.JSONDecodeError("Unterminated string", '{"id": "x', 7), True),
        (lambda: b"\xff".decode(), True),
        (lambda: EmptyReplyError("empty"), True),
        (lambda: ValueError("a bug of ours"), False),
        (lambda: KeyError("messages"), False),
    ],
)
def test_only_transient_errors_are_retried(error: Callable[[], Any], transient: bool) -> None:
    try:
        exc = error()
    except UnicodeDecodeError as decoding:
        exc = decoding
    assert is_transient(exc) is transient


def _request() -> Any:
    import httpx2  # the OpenAI SDK's HTTP client

    return httpx2.Request("POST", "http://127.0.0.1/v1/chat/completions")


def _status_error(cls: type[openai.APIStatusError], status: int) -> openai.APIStatusError:
    import httpx2

    response = httpx2.Response(status, request=_request(), json={"error": {"message": "x"}})
    return cls("x", response=response, body=None)
