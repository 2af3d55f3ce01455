"""A loopback OpenAI that both chats and fine-tunes, for end-to-end tests of the loop.

Chat: base models get even sums wrong in round 1 (so there is something to learn);
critics (a conversation with history) and fine-tuned models (``ft:…``) answer correctly. So a
loop that tunes the right models on the right data visibly improves, and one that does not,
does not. Fine-tuning: files and jobs that succeed at once, naming the tuned model after the
job's base model, suffix and id, so a test can see which model each iteration continued from.

Files and jobs are listed as the API lists them (``GET /v1/files?purpose=``, ``GET
/v1/fine_tuning/jobs?metadata[k]=v``, newest first, in pages with ``has_more`` and ``after``).

Every request is logged; ``kill_at`` SIGKILLs a worker process when a chosen request arrives
(it and every later request go unanswered), to test resumption at that exact point.
``kill_after`` instead answers the k-th upload or job creation (the file or job exists) and
kills the worker as the answer goes out: the crash between the provider's answer and the
client's record of it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from fake_http import Call, stop_then_kill

KEY = "sk-loop-test-0123456789abcdef"
_SUM = re.compile(r"What is the result of (\d+)\+(\d+)\?")


@dataclass
class OpenAIWorld:
    chats: list[str] = field(default_factory=list)
    """Key (model, messages, seed) of every chat request that was answered."""
    jobs: list[dict[str, Any]] = field(default_factory=list)
    files: list[dict[str, Any]] = field(default_factory=list)
    uploads: int = 0
    requests: int = 0
    kill_at: int | None = None
    """SIGKILL ``pid`` when request number ``kill_at`` (1-based, any route) arrives."""
    pid: int | None = None
    grace: float = 0.5
    kill_after: tuple[str, int] | None = None
    """("upload" | "job", k): answer the k-th of those creations, and kill ``pid`` with it."""
    killed_after: dict[str, Any] | None = None
    """The file or job whose answer the kill cut off."""
    answers: dict[str, str] = field(default_factory=dict)
    """Question text -> reference: a prompt that contains the question is answered (like a sum:
    tuned models always right) in the reference's form, a fenced function or a boxed value."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, call: Call) -> tuple[int, Any]:
        if call.headers.get("authorization") != f"Bearer {KEY}":
            return 401, {"error": {"message": "bad key"}}
        with self.lock:
            self.requests += 1
            n = self.requests
        if self.kill_at is not None and n >= self.kill_at and self.pid:
            # From the chosen request on, nothing more is answered: the kill lands after a
            # grace period in which replies already sent can be saved by the client. (A reply
            # still in flight when a process dies is paid twice by any client; this measures
            # whether anything beyond that window is lost.)
            time.sleep(self.grace if n == self.kill_at else 2 * self.grace)
            if n == self.kill_at:
                os.kill(self.pid, signal.SIGKILL)
            return 500, {"error": {"message": "the client is gone"}}
        url = urlsplit(call.path)
        path, query = url.path, parse_qs(url.query)
        if path == "/v1/chat/completions":
            return 200, self._chat(call.json())
        if path == "/v1/files" and call.method == "POST":
            name, content = file_part(call.body)
            with self.lock:
                n = self.uploads + 1
                file = {
                    "id": f"file-{n}",
                    "object": "file",
                    "bytes": len(content),
                    "created_at": n,
                    "filename": name,
                    "purpose": "fine-tune",
                    "status": "processed",
                }
                self._maybe_kill("upload", n, file)  # before any request can list the file
                self.uploads = n
                self.files.append(file)
            return 200, file
        if path == "/v1/files" and call.method == "GET":
            purpose = query.get("purpose", [None])[0]
            files = [f for f in self.files if purpose in (None, f["purpose"])]
            return 200, _page(files, query, default_limit=10000)
        if path == "/v1/fine_tuning/jobs" and call.method == "POST":
            body = call.json()
            with self.lock:
                # Named by what it tunes, so a resumed run gets the same model names as an
                # uninterrupted one (and a job created twice shows up as "-2").
                same = sum(
                    j["suffix"] == body["suffix"] and j["model"] == body["model"] for j in self.jobs
                )
                digest = hashlib.sha1(body["model"].encode()).hexdigest()[:6]
                job = {"id": f"ftjob-{body['suffix']}-{digest}-{same + 1}", **body}
                self._maybe_kill("job", len(self.jobs) + 1, job)  # before any can list the job
                self.jobs.append(job)
            return 200, self._job(job)
        if path == "/v1/fine_tuning/jobs" and call.method == "GET":
            wanted = {
                k[len("metadata[") : -1]: v[0]
                for k, v in query.items()
                if k.startswith("metadata[")
            }
            jobs = [
                self._job(j)
                for j in self.jobs
                if all((j.get("metadata") or {}).get(k) == v for k, v in wanted.items())
            ]
            return 200, _page(jobs, query, default_limit=20)
        if path.startswith("/v1/fine_tuning/jobs/") and call.method == "GET":
            job_id = path.rsplit("/", 1)[1]
            return 200, self._job(next(j for j in self.jobs if j["id"] == job_id))
        return 404, {"error": {"message": f"no route {call.method} {path}"}}

    def _maybe_kill(self, kind: str, n: int, made: dict[str, Any]) -> None:
        """Stop the client now, before ``made`` exists for it (it cannot read the answer this
        request is about to get, nor list it), and kill it once the answer has been sent."""
        if self.kill_after != (kind, n) or not self.pid:
            return
        stop_then_kill(self.pid)
        self.killed_after = made

    def _chat(self, body: dict[str, Any]) -> dict[str, Any]:
        messages, model = body["messages"], body["model"]
        key = json.dumps([model, messages, body.get("seed")], sort_keys=True)
        match = _SUM.search(messages[0]["content"])
        known = next((a for q, a in self.answers.items() if q in messages[0]["content"]), None)
        if known is not None:
            right = model.startswith("ft:") or len(messages) > 1 or len(known) % 2 == 1
            answer = known if right else "nothing"
            text = f"```python\n{answer}\n```" if "def " in known else f"\\boxed{{{answer}}}"
        elif not match:
            text = "The other agents say different things."
        else:
            a, b = int(match[1]), int(match[2])
            right = model.startswith("ft:") or len(messages) > 1 or (a + b) % 2 == 1
            value = a + b if right else a + b + 1
            text = f"The sum is {value}. \\boxed{{{value}}}"
        with self.lock:
            self.chats.append(key)
        return {
            "id": "c",
            "object": "chat.completion",
            "created": 0,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": text},
                }
            ],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
        }

    @staticmethod
    def _job(job: dict[str, Any]) -> dict[str, Any]:
        base = job["model"].removeprefix("ft:").split(":")[0]
        return {
            "id": job["id"],
            "object": "fine_tuning.job",
            "created_at": 0,
            "model": job["model"],
            "training_file": job["training_file"],
            "organization_id": "org",
            "result_files": [],
            "seed": 0,
            "hyperparameters": {"n_epochs": "auto"},
            "status": "succeeded",
            "fine_tuned_model": f"ft:{base}:org:{job.get('suffix')}:{job['id']}",
            "error": None,
            "finished_at": 1,
            "trained_tokens": 10,
            "validation_file": None,
            "metadata": job.get("metadata"),
        }


def file_part(body: bytes) -> tuple[str, bytes]:
    """The name and bytes of the file in a multipart/form-data upload.

    A body cut short (its sender died mid-request) raises, as the API refuses it, instead of
    storing a truncated file.
    """
    if not body.rstrip().endswith(b"--"):
        raise ValueError("the multipart body ends before its closing boundary")
    start = body.index(b'filename="') + len(b'filename="')
    name = body[start : body.index(b'"', start)].decode()
    content_start = body.index(b"\r\n\r\n", start) + 4
    return name, body[content_start : body.index(b"\r\n--", content_start)]


def _page(items: list[dict[str, Any]], query: dict[str, list[str]], default_limit: int) -> Any:
    """One page of a list endpoint: newest first, ``limit`` items after the id ``after``."""
    newest = list(reversed(items))
    if after := query.get("after", [None])[0]:
        ids = [i["id"] for i in newest]
        newest = newest[ids.index(after) + 1 :] if after in ids else []
    limit = int(query.get("limit", [default_limit])[0])
    page = newest[:limit]
    return {
        "object": "list",
        "data": page,
        "has_more": len(newest) > limit,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
    }
