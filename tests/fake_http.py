"""A loopback HTTP server for testing real SDKs against scripted provider APIs.

Each test gives a handler ``(method, path, headers, body) -> (status, json)``; the server
records every request so tests can count uploads and job creations.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Call:
    method: str
    path: str
    headers: dict[str, str]
    """Lower-cased names."""
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


Handler = Callable[[Call], tuple[int, Any]]


def stop(pid: int) -> None:
    """SIGSTOP ``pid`` (a child of this process) and return once all its threads have stopped.

    kill() only queues the signal: one thread of the process is woken to start the stop, and the
    others run until it gets a CPU. On a loaded machine a thread waiting on a socket could still
    read an answer sent right after kill() and record it (a killed loop's ledger once held the
    file whose answer the kill was to cut off). The parent is told of the stop only when the
    last thread has stopped; WNOWAIT leaves that report, and an exit, for Popen to collect.
    """
    os.kill(pid, signal.SIGSTOP)
    if hasattr(os, "waitid"):
        os.waitid(os.P_PID, pid, os.WSTOPPED | os.WEXITED | os.WNOWAIT)
    else:  # macOS before Python 3.13: consumes the stop's report; Popen still reaps the exit
        os.waitpid(pid, os.WUNTRACED)


def stop_then_kill(pid: int, after: float = 0.2) -> None:
    """:func:`stop` ``pid`` now and SIGKILL it ``after`` seconds later: what a provider's answer
    sent in between cannot reach (the client dies between answer and record)."""
    stop(pid)
    threading.Timer(after, os.kill, (pid, signal.SIGKILL)).start()


@contextmanager
def serve(handler: Handler) -> Iterator[tuple[str, list[Call]]]:
    """Run ``handler`` on 127.0.0.1 at a free port; yield (``http://127.0.0.1:port``, calls)."""
    calls: list[Call] = []

    class _Handler(BaseHTTPRequestHandler):
        def _any(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            headers = {k.lower(): v for k, v in self.headers.items()}
            call = Call(self.command, self.path, headers, self.rfile.read(length))
            calls.append(call)
            try:
                status, payload = handler(call)
            except Exception as exc:  # surface handler bugs as 500s with the reason
                status, payload = 500, {"error": {"message": repr(exc)}}
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_DELETE = do_PATCH = do_PUT = _any

        def log_message(self, *args: Any) -> None:  # keep test output clean
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", calls
    finally:
        server.shutdown()
        server.server_close()
