"""A loopback HTTP server for testing real SDKs against scripted provider APIs.

Each test gives a handler ``(method, path, headers, body) -> (status, json)``; the server
records every request so tests can count uploads and job creations.
"""

from __future__ import annotations

import json
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
