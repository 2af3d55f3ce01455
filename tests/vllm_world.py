"""A loopback vLLM or SGLang server: one base model, LoRA adapters loaded at run time.

It speaks the routes and answers of the real servers (as their sources have them), so the
``openai`` SDK, langchain-openai's ``ChatOpenAI`` and the serving backend meet what they would
meet on a GPU box:

* ``GET /v1/models``: the base (``root`` its path, ``parent`` null) and, on vLLM, every loaded
  adapter (``root`` its path, ``parent`` the base); SGLang lists the base alone;
* vLLM ``POST /v1/load_lora_adapter`` / ``/v1/unload_lora_adapter`` (only with runtime updating
  on, as ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`` gives; else FastAPI's 404 ``{"detail": "Not
  Found"}``): plain-text success, errors as ``{"error": {"message", "type", "param", "code"}}``
  ("has already been loaded", "No adapter found for <path>" 404, "LoRA rank R is greater than
  max_lora_rank M." 500, "cannot be found" 404);
* SGLang ``POST /load_lora_adapter`` / ``/unload_lora_adapter``: ``{"success", "error_message",
  "loaded_adapters"}``, 400 on failure ("because it is already loaded", "is incompatible with
  the current LoRA memory pool configuration ... `--max-lora-rank`");
* ``POST /v1/chat/completions``: ``model`` names the base, a loaded adapter (vLLM) or
  ``base:adapter`` (SGLang); anything else is refused as the server refuses it.

Chats answer arithmetic questions right, saying which model answered ("<name> says: ..."), and
every call is recorded with the adapter that answered it. The server reads adapters from disk
as the real one does, through ``mounts`` (its path prefix -> a local directory) when it sees the
run directory elsewhere; ``adapter_404`` makes every adapter unreadable; :meth:`stop` and
:meth:`start` take the server down and bring it back on the same port.
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"
_QUESTION = re.compile(r"What is the result of ([0-9+\-* ]+)\?")


@dataclass
class ServerWorld:
    dialect: str = "vllm"
    """"vllm" or "sglang"."""
    base: str = BASE
    root: str | None = None
    """The base's path as /v1/models shows it (default: its name)."""
    max_lora_rank: int = 16
    runtime_loading: bool = True
    mounts: dict[str, Path] = field(default_factory=dict)
    """Server path prefix -> local directory; when set, other paths do not exist for it."""
    api_key: str | None = None
    adapter_404: bool = False
    loaded: dict[str, str] = field(default_factory=dict)
    """Adapter name -> path as it was given (``--lora-modules`` at start fills this too)."""
    chats: list[tuple[str, str]] = field(default_factory=list)
    """(``model`` as sent, the adapter that answered or "base") of every answered chat."""
    loads: list[dict[str, Any]] = field(default_factory=list)
    """Every registration request's body, answered or refused."""
    unloads: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None
    port: int = 0

    # The server --------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The OpenAI base URL, as ``--serving-url`` takes it."""
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> str:
        """Listen on 127.0.0.1 (the same port again after :meth:`stop`); the OpenAI base URL."""
        world = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                try:
                    status, payload = world.handle(self.command, self.path, headers, raw)
                except Exception as exc:  # a bug in the world: a 500 that says what it was
                    status, payload = 500, {"error": {"message": repr(exc)}}
                if isinstance(payload, str):
                    body, kind = payload.encode(), "text/plain; charset=utf-8"
                else:
                    body, kind = json.dumps(payload).encode(), "application/json"
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _any

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self.url

    def stop(self) -> None:
        """Take the server down: connections are refused until :meth:`start`."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> ServerWorld:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # What it answers -----------------------------------------------------------------------

    def handle(
        self, method: str, path: str, headers: dict[str, str], raw: bytes
    ) -> tuple[int, Any]:
        if self.api_key and headers.get("authorization") != f"Bearer {self.api_key}":
            return 401, {"error": "Unauthorized"}
        body = json.loads(raw) if raw else {}
        vllm = self.dialect == "vllm"
        if method == "GET" and path == "/v1/models":
            return 200, self._models()
        if method == "POST" and path == "/v1/chat/completions":
            return self._chat(body)
        if vllm and self.runtime_loading and method == "POST":
            if path == "/v1/load_lora_adapter":
                return self._vllm_load(body)
            if path == "/v1/unload_lora_adapter":
                return self._vllm_unload(body)
        if not vllm and method == "POST":
            if path == "/load_lora_adapter":
                return self._sglang_load(body)
            if path == "/unload_lora_adapter":
                return self._sglang_unload(body)
        return 404, {"detail": "Not Found"}

    def _models(self) -> dict[str, Any]:
        card = {"object": "model", "created": int(time.time()), "owned_by": self.dialect}
        if self.dialect == "sglang":  # its served model name, as id and root alike
            return {"object": "list", "data": [{**card, "id": self.base, "root": self.base}]}
        data = [
            {**card, "id": self.base, "root": self.root or self.base, "parent": None},
            *(
                {**card, "id": name, "root": path, "parent": self.base}
                for name, path in self.loaded.items()
            ),
        ]
        return {"object": "list", "data": data}

    def _read_rank(self, path: str) -> int | None:
        """The adapter's rank, read where the server sees ``path``; None: nothing there."""
        local = Path(path)
        if self.mounts:
            local = next(
                (
                    Path(mount) / Path(path).relative_to(prefix)
                    for prefix, mount in self.mounts.items()
                    if Path(path).is_relative_to(prefix)
                ),
                Path("/nonexistent"),
            )
        config = local / "adapter_config.json"
        if self.adapter_404 or not config.is_file():
            return None
        return int(json.loads(config.read_text())["r"])

    def _vllm_load(self, body: dict[str, Any]) -> tuple[int, Any]:
        name, path = body.get("lora_name"), body.get("lora_path")
        with self.lock:
            self.loads.append(body)
            if not name or not path:
                return _vllm_error(
                    400, "InvalidUserInput", "Both 'lora_name' and 'lora_path' must be provided."
                )
            if name in self.loaded:
                return _vllm_error(
                    400,
                    "InvalidUserInput",
                    f"The lora adapter '{name}' has already been loaded. If you want to load "
                    "the adapter in place, set 'load_inplace' to True.",
                )
            rank = self._read_rank(path)
            if rank is None:
                return _vllm_error(
                    404, "NotFoundError", f"Loading lora {name} failed: No adapter found for {path}"
                )
            if rank > self.max_lora_rank:
                return _vllm_error(
                    500,
                    "InternalServerError",
                    f"LoRA rank {rank} is greater than max_lora_rank {self.max_lora_rank}.",
                )
            self.loaded[name] = path
        return 200, f"Success: LoRA adapter '{name}' added successfully."

    def _vllm_unload(self, body: dict[str, Any]) -> tuple[int, Any]:
        name = body.get("lora_name")
        with self.lock:
            self.unloads.append(str(name))
            if name not in self.loaded:
                return _vllm_error(
                    404, "NotFoundError", f"The lora adapter '{name}' cannot be found."
                )
            del self.loaded[name]
        return 200, f"Success: LoRA adapter '{name}' removed successfully."

    def _sglang_load(self, body: dict[str, Any]) -> tuple[int, Any]:
        name, path = body["lora_name"], body["lora_path"]
        with self.lock:
            self.loads.append(body)
            error = None
            if name in self.loaded:
                error = f"Failed to load LoRA adapter {name} because it is already loaded"
            elif (rank := self._read_rank(path)) is None:
                error = f"Can't find 'adapter_config.json' at '{path}'"
            elif rank > self.max_lora_rank:
                error = (
                    f"LoRA adapter {name} with rank {rank} is incompatible with the current "
                    "LoRA memory pool configuration. Please ensure that the LoRA adapter's rank "
                    "is within the configured `--max-lora-rank` and that the target modules are "
                    "included in `--lora-target-modules`."
                )
            else:
                self.loaded[name] = path
            result = {
                "success": error is None,
                "error_message": error,
                "loaded_adapters": dict(self.loaded),
            }
        return (200 if error is None else 400), result

    def _sglang_unload(self, body: dict[str, Any]) -> tuple[int, Any]:
        name = body["lora_name"]
        with self.lock:
            self.unloads.append(name)
            if name not in self.loaded:
                message = f"LoRA with name {name} does not exist. Loaded LoRAs: {list(self.loaded)}"
                return 400, {"success": False, "error_message": message, "loaded_adapters": {}}
            del self.loaded[name]
            return 200, {"success": True, "error_message": None, "loaded_adapters": self.loaded}

    def _answerer(self, model: str) -> str | None:
        """The adapter ``model`` asks for ("base" for the base), None: a model it lacks."""
        if model == self.base:
            return "base"
        if self.dialect == "sglang":
            base, sep, adapter = model.rpartition(":")
            return adapter if sep and base == self.base and adapter in self.loaded else None
        return model if model in self.loaded else None

    def _chat(self, body: dict[str, Any]) -> tuple[int, Any]:
        model = body["model"]
        answerer = self._answerer(model)
        if answerer is None:
            if self.dialect == "sglang":
                return 400, {
                    "object": "error",
                    "message": f"The model `{model}` does not exist.",
                    "type": "BadRequestError",
                    "param": None,
                    "code": 400,
                }
            return _vllm_error(
                404, "NotFoundError", f"The model `{model}` does not exist.", "model"
            )
        text = " ".join(str(m.get("content", "")) for m in body["messages"])
        questions = _QUESTION.findall(text)
        if questions:
            value = eval(questions[-1], {"__builtins__": {}})  # digits and + - * only
            reply = f"{answerer} says: the result is {value}. \\boxed{{{value}}}"
        else:
            reply = f"{answerer} says: the others agree."
        with self.lock:
            self.chats.append((model, answerer))
        return 200, {
            "id": f"chatcmpl-{len(self.chats)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": reply},
                }
            ],
            "usage": {"prompt_tokens": 20, "completion_tokens": 8, "total_tokens": 28},
        }


def _vllm_error(status: int, kind: str, message: str, param: str | None = None) -> tuple[int, Any]:
    return status, {"error": {"message": message, "type": kind, "param": param, "code": status}}


def write_adapter(directory: Path, rank: int = 8, weights: bytes = b"weights") -> Path:
    """A PEFT LoRA adapter directory as the local tuner writes one (config and weights)."""
    directory.mkdir(parents=True, exist_ok=True)
    config = {"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "rank_pattern": {}}
    (directory / "adapter_config.json").write_text(json.dumps(config))
    (directory / "adapter_model.safetensors").write_bytes(weights)
    return directory
