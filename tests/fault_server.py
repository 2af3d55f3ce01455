"""A loopback server that speaks the OpenAI chat-completions API and injects faults.

Why our own and not llm-katan: its failure simulation is a random error rate on a real model,
while these tests need (a) computed answers, so a 200-problem debate costs milliseconds per
call, (b) faults decided by the request itself, so a resumed run meets the same faults and
answers as an uninterrupted one, and (c) a call log with enough detail to count retries and
find a successful call that was paid for twice.

Every request is keyed by its content (model, messages, seed): the n-th attempt of one call is
``(key, n)``, and whether it fails, and how, is a hash of ``(seed, key, n)``. So concurrency and
timing never change which faults a run meets, only when.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# Faults a client should retry (the server breaks; the request was fine) ...
TRANSIENT = ("429", "500", "503", "timeout", "drop", "empty", "truncated", "garbage")
# ... and answers that are well-formed but bad: they must be recorded, never retried.
ANSWER_FAULTS = ("no_answer", "huge")
HUGE_BYTES = 100_000


@dataclass
class Request:
    """One HTTP request as the server saw it, and what it did with it."""

    seq: int
    key: str
    attempt: int
    """1 for the first request with this key, 2 for its first retry, …"""
    body: dict[str, Any] | None
    fault: str | None
    arrived: float
    replied: float | None = None
    """When a successful answer was written to the socket (None for faults)."""
    text: str | None = None

    @property
    def ok(self) -> bool:
        """A successful, billable answer: the kind of call that must never be paid twice."""
        return self.replied is not None


Answer = Callable[[dict[str, Any]], str]
Hook = Callable[[Request], None]


@dataclass
class FaultServer:
    """Answers ``POST /v1/chat/completions`` with ``answer(body)`` unless a fault is drawn.

    ``rate``: the share of attempts that get a fault, drawn from ``kinds``.
    ``always``: a predicate on the body; matching requests always get a 500 (a call that keeps
    failing). ``plan(key, attempt, body)``, when given, names the fault itself (or None).
    ``delay``: seconds before each answer (latency). ``hang``: how long a ``timeout``
    fault keeps the client waiting. ``hook`` runs when a request arrives, before any answer
    (tests use it to kill the client mid-run). ``retry_after_ms`` goes out with every 429.
    """

    answer: Answer
    rate: float = 0.0
    kinds: tuple[str, ...] = TRANSIENT
    seed: int = 0
    always: Callable[[dict[str, Any]], bool] | None = None
    plan: Callable[[str, int, dict[str, Any]], str | None] | None = None
    delay: float = 0.0
    hang: float = 2.0
    hook: Hook | None = None
    retry_after_ms: int = 50
    api_key: str | None = None
    requests: list[Request] = field(default_factory=list)
    url: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _attempts: Counter[str] = field(default_factory=Counter)

    # What the log says ---------------------------------------------------------------------

    def faults(self) -> Counter[str]:
        """Faults injected, by kind."""
        return Counter(r.fault for r in self.requests if r.fault)

    def successes(self) -> Counter[str]:
        """Successful answers per request key."""
        return Counter(r.key for r in self.requests if r.ok)

    def retried_calls(self) -> int:
        """Requests that repeated an earlier request's content: each one a retry."""
        return sum(1 for r in self.requests if r.attempt > 1)

    # Deciding -------------------------------------------------------------------------------

    def _fault(self, key: str, attempt: int, body: dict[str, Any]) -> str | None:
        if self.always is not None and self.always(body):
            return "500"
        if self.plan is not None:
            return self.plan(key, attempt, body)
        if not self.rate:
            return None
        draw = _unit(f"{self.seed}:{key}:{attempt}")
        if draw >= self.rate:
            return None
        return self.kinds[int(draw / self.rate * len(self.kinds)) % len(self.kinds)]

    def _register(self, raw: bytes) -> Request:
        try:
            body = json.loads(raw)
        except json.JSONDecodeError:
            body = None
        key = request_key(body) if isinstance(body, dict) else hashlib.sha256(raw).hexdigest()
        with self._lock:
            self._attempts[key] += 1
            attempt = self._attempts[key]
            fault = self._fault(key, attempt, body) if isinstance(body, dict) else "400"
            request = Request(len(self.requests), key, attempt, body, fault, time.monotonic())
            self.requests.append(request)
        return request


def request_key(body: dict[str, Any]) -> str:
    """What identifies one logical call: the same model, messages and seed."""
    ident = {k: body.get(k) for k in ("model", "messages", "seed")}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def _unit(text: str) -> float:
    """A number in [0, 1) fixed by ``text``."""
    return int(hashlib.sha256(text.encode()).hexdigest()[:12], 16) / 16**12


def completion(text: str | None, model: str, finish: str = "stop") -> dict[str, Any]:
    """A chat.completion object as the OpenAI API returns it."""
    return {
        "id": "chatcmpl-" + hashlib.sha256((text or "").encode()).hexdigest()[:12],
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "finish_reason": finish,
                "logprobs": None,
            }
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20},
    }


@contextmanager
def serve(server: FaultServer) -> Iterator[FaultServer]:
    """Run ``server`` on 127.0.0.1 at a free port (``server.url`` ends in ``/v1``)."""

    class _Handler(BaseHTTPRequestHandler):
        # HTTP/1.0: one connection per request. With keep-alive, an SDK client cached by base
        # URL (langchain-openai caches them per process) would keep talking to the handler
        # threads of an earlier server that happened to have the same port.
        protocol_version = "HTTP/1.0"

        def do_POST(self) -> None:  # noqa: N802 - the http.server naming
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            if not self.path.endswith("/chat/completions"):
                self._send(404, {"error": {"message": f"no route {self.path}"}})
                return
            request = server._register(raw)
            sent = self.headers.get("Authorization", "")
            if server.api_key and sent != f"Bearer {server.api_key}":
                # Echo the key as a careless gateway would: what the client records must not.
                request.fault = "401"
                message = f"Incorrect API key provided: {sent.removeprefix('Bearer ')}."
                self._send(401, _error(message, "invalid_api_key"))
                return
            if server.hook is not None:
                server.hook(request)  # may raise to abandon the request (its client was killed)
            self._reply(request)

        def _reply(self, request: Request) -> None:
            model = (request.body or {}).get("model", "?")
            fault = request.fault
            if fault == "400":
                self._send(400, {"error": {"message": "body is not JSON"}})
            elif fault == "429":
                headers = {"retry-after-ms": str(server.retry_after_ms), "retry-after": "1"}
                self._send(429, _error("Rate limit reached", "rate_limit_exceeded"), headers)
            elif fault in ("500", "503"):
                self._send(int(fault), _error("The server had an error", "server_error"))
            elif fault == "timeout":
                time.sleep(server.hang)
                self.close_connection = True
            elif fault == "drop":
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
            elif fault == "empty":
                self._send(200, completion("", model))
            elif fault == "truncated":
                body = json.dumps(completion("\\boxed{1}", model)).encode()
                self._send_raw(200, body[: len(body) // 2])
            elif fault == "garbage":
                self._send_raw(200, b"<html>\x00\xff upstream proxy error</html>")
            else:
                self._answer(request, model)

        def _answer(self, request: Request, model: str) -> None:
            assert request.body is not None
            text = server.answer(request.body)
            if request.fault == "no_answer":  # tagged without digits, so calls stay distinct
                tag = request.key[:8].translate(str.maketrans("0123456789", "ghijklmnop"))
                text = f"I cannot tell what the result is ({tag})."
            elif request.fault == "huge":
                text = "Let me think. " + "x" * HUGE_BYTES + " " + text
            if server.delay:
                time.sleep(server.delay)
            request.text = text
            self._send(200, completion(text, model))
            request.replied = time.monotonic()

        def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
            self._send_raw(status, json.dumps(payload).encode(), headers)

        def _send_raw(
            self, status: int, body: bytes, headers: dict[str, str] | None = None
        ) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()

        def log_message(self, *args: Any) -> None:  # keep test output clean
            pass

    class _Server(ThreadingHTTPServer):
        daemon_threads = True
        block_on_close = False
        request_queue_size = 256  # hundreds of concurrent calls must not be refused at connect

        def handle_error(self, request: Any, client_address: Any) -> None:
            pass  # clients that time out and hang up are expected here

    http = _Server(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    server.url = f"http://127.0.0.1:{http.server_address[1]}/v1"
    try:
        yield server
    finally:
        http.shutdown()
        http.server_close()


def _error(message: str, code: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": code, "param": None, "code": code}}


# Answers ------------------------------------------------------------------------------------

_EXPR = re.compile(r"result of ([0-9+\-*() ]+)\?")


def arithmetic_answer(body: dict[str, Any], right: float = 0.7) -> str:
    """A debater that reads the arithmetic question and is right ``right`` of the time.

    Whether it is right is a hash of the request, so every agent, round and seed differs, and
    the same request always gets the same answer. Summaries restate the answers they were given.
    """
    messages = body.get("messages", [])
    first = str(messages[0].get("content", "")) if messages else ""
    last = str(messages[-1].get("content", "")) if messages else ""
    key = request_key(body)
    match = _EXPR.search(first)
    if match is None:  # the summarizer: its prompt carries the other agents' answers
        boxed = re.findall(r"\\boxed\{(-?\d+)\}", last)
        return f"Summary [{key[:6]}]: the agents answered " + ", ".join(boxed) + "."
    value = _evaluate(match.group(1))
    if _unit(key) >= right:
        value += 1 + int(_unit(key + "w") * 3)
    return f"Working it out [{key[:6]}]: the result is \\boxed{{{value}}}."


def _evaluate(expression: str) -> int:
    """``a+b*c-…`` with the usual precedence, without eval."""
    tokens = re.findall(r"\d+|[+\-*]", expression.replace("(", "").replace(")", ""))
    total, sign, product = 0, 1, int(tokens[0])
    for op, value in zip(tokens[1::2], tokens[2::2], strict=True):
        if op == "*":
            product *= int(value)
        else:
            total += sign * product
            sign, product = (1 if op == "+" else -1), int(value)
    return total + sign * product
