"""A loopback Vertex AI (and Cloud Storage, and an OAuth token endpoint) that chats and tunes.

What ``mafl loop --model google_genai:… --project … --bucket …`` needs, with the real
google-genai, langchain-google-genai and google-auth clients: the OAuth token endpoint of an
application-default-credentials file, Cloud Storage media uploads and object metadata
(``md5Hash``), ``tuningJobs`` create / get / list (with the ``labels.KEY="VALUE"`` filter and
page tokens), and ``generateContent`` for publisher models and tuned models' endpoints.

Chat answers as tests/openai_world.py does: the base model gets even sums wrong in a first
answer; a conversation with history (a critic) and a tuned endpoint answer right. Jobs succeed
at once and are named after what they tune, so a resumed run gets an uninterrupted run's names,
and a job created twice shows up as ``-2``. ``kill_after`` answers the k-th upload or job
creation and kills ``pid`` as the answer goes out.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from fake_http import Call, stop_then_kill

TOKEN = "ya29.loop-test-token"
_SUM = re.compile(r"What is the result of (\d+)\+(\d+)\?")
_LABEL = re.compile(r'labels\.(\w+)\s*=\s*"([^"]*)"')
_CHAT = re.compile(
    r"/v1(?:beta1)?/projects/([^/]+)/locations/([^/]+)/"
    r"(publishers/google/models/[^:/]+|endpoints/[^:/]+):generateContent"
)


def _error(code: int, message: str, status: str) -> tuple[int, Any]:
    return code, {"error": {"code": code, "message": message, "status": status}}


@dataclass
class VertexWorld:
    project: str = "proj"
    location: str = "us-central1"
    bucket: str = "bucket"
    objects: dict[str, dict[str, Any]] = field(default_factory=dict)
    jobs: list[dict[str, Any]] = field(default_factory=list)
    uploads: int = 0
    chats: list[str] = field(default_factory=list)
    """The model of every answered generateContent call."""
    pid: int | None = None
    kill_after: tuple[str, int] | None = None
    """("upload" | "job", k): answer the k-th of those creations, and kill ``pid`` with it."""
    killed_after: dict[str, Any] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def parent(self) -> str:
        return f"projects/{self.project}/locations/{self.location}"

    def adc_file(self, path: Path, url: str) -> Path:
        """Application default credentials whose token endpoint is this server."""
        path.write_text(
            json.dumps(
                {
                    # (an "authorized_user" file always refreshes at Google; this type
                    # honours token_url)
                    "type": "external_account_authorized_user",
                    "audience": "//iam.googleapis.com/x",
                    "client_id": "c",
                    "client_secret": "s",
                    "refresh_token": "r",
                    "token_url": f"{url}/token",
                }
            )
        )
        return path

    def __call__(self, call: Call) -> tuple[int, Any]:
        url = urlsplit(call.path)
        path, query = unquote(url.path), parse_qs(url.query)
        if call.method == "POST" and path == "/token":
            return 200, {"access_token": TOKEN, "expires_in": 3600, "token_type": "Bearer"}
        if call.headers.get("authorization") != f"Bearer {TOKEN}":
            return _error(401, "no token", "UNAUTHENTICATED")
        storage = f"/storage/v1/b/{self.bucket}/o"
        if call.method == "POST" and path == "/upload" + storage:
            return self._upload(query["name"][0], call.body)
        if call.method == "GET" and path.startswith(storage + "/"):
            name = path.removeprefix(storage + "/")
            if name not in self.objects:
                return _error(404, f"No such object: {self.bucket}/{name}", "NOT_FOUND")
            return 200, self.objects[name]
        jobs = f"/v1beta1/{self.parent}/tuningJobs"
        if call.method == "POST" and path == jobs:
            return self._create(call.json())
        if call.method == "GET" and path == jobs:
            return self._list(query)
        if call.method == "GET" and path.startswith(jobs + "/"):
            name = path.removeprefix("/v1beta1/")
            job = next((j for j in self.jobs if j["name"] == name), None)
            if job is None:
                return _error(404, f"{name} not found", "NOT_FOUND")
            return 200, self._succeeded(job)
        match = _CHAT.fullmatch(path)
        if call.method == "POST" and match:
            if (match[1], match[2]) != (self.project, self.location):
                return _error(403, f"not this project and location: {path}", "PERMISSION_DENIED")
            return 200, self._chat(match[3], call.json())
        return _error(404, f"no route {call.method} {path}", "NOT_FOUND")

    def _upload(self, name: str, content: bytes) -> tuple[int, Any]:
        with self.lock:
            self.uploads += 1
            n = self.uploads
            md5 = base64.b64encode(hashlib.md5(content).digest()).decode()
            stored = {
                "kind": "storage#object",
                "name": name,
                "bucket": self.bucket,
                "size": str(len(content)),
                "md5Hash": md5,
                "generation": str(n),
            }
            self._maybe_kill("upload", n, {"id": name, **stored})  # before any can read it
            self.objects[name] = stored
        return 200, stored

    def _create(self, body: dict[str, Any]) -> tuple[int, Any]:
        base = body.get("baseModel") or next(iter(body.get("preTunedModel", {}).values()), "")
        with self.lock:
            display = body.get("tunedModelDisplayName", "")
            same = sum(j["base"] == base and j["display"] == display for j in self.jobs)
            digest = hashlib.sha1(f"{base} {display}".encode()).hexdigest()[:8]
            job_id = f"{digest}-{same + 1}"
            job = {
                "name": f"{self.parent}/tuningJobs/{job_id}",
                "id": job_id,
                "base": base,
                "display": display,
                "request": body,
            }
            self._maybe_kill("job", len(self.jobs) + 1, job)  # before any request can list it
            self.jobs.append(job)
        return 200, {**body, "name": job["name"], "state": "JOB_STATE_PENDING"}

    def _list(self, query: dict[str, list[str]]) -> tuple[int, Any]:
        wanted = dict(_LABEL.findall(query.get("filter", [""])[0]))
        found = [
            self._succeeded(j)
            for j in reversed(self.jobs)  # newest first
            if all((j["request"].get("labels") or {}).get(k) == v for k, v in wanted.items())
        ]
        start = int(query.get("pageToken", ["0"])[0] or 0)
        size = int(query.get("pageSize", ["10"])[0])
        page: dict[str, Any] = {"tuningJobs": found[start : start + size]}
        if start + size < len(found):
            page["nextPageToken"] = str(start + size)
        return 200, page

    def _succeeded(self, job: dict[str, Any]) -> dict[str, Any]:
        return {
            **job["request"],
            "name": job["name"],
            "state": "JOB_STATE_SUCCEEDED",
            "tunedModel": {
                "model": f"{self.parent}/models/{job['id']}@1",
                "endpoint": f"{self.parent}/endpoints/{job['id']}",
            },
        }

    def _maybe_kill(self, kind: str, n: int, made: dict[str, Any]) -> None:
        """Stop the client now, before ``made`` exists for it (it cannot read the answer this
        request is about to get, nor list it), and kill it once the answer has been sent."""
        if self.kill_after != (kind, n) or not self.pid:
            return
        stop_then_kill(self.pid)
        self.killed_after = made

    def _chat(self, model: str, body: dict[str, Any]) -> dict[str, Any]:
        contents = body["contents"]
        first = " ".join(
            p.get("text", "") for c in contents if c.get("role") == "user" for p in c["parts"]
        )
        match = _SUM.search(first)
        if not match:
            text = "The other agents say different things."
        else:
            a, b = int(match[1]), int(match[2])
            tuned = model.startswith("endpoints/")
            right = tuned or len(contents) > 1 or (a + b) % 2 == 1
            value = a + b if right else a + b + 1
            text = f"The sum is {value}. \\boxed{{{value}}}"
        with self.lock:
            self.chats.append(model)
        return {
            "candidates": [
                {
                    "content": {"role": "model", "parts": [{"text": text}]},
                    "finishReason": "STOP",
                    "index": 0,
                }
            ],
            "usageMetadata": {
                "promptTokenCount": 10,
                "candidatesTokenCount": 5,
                "totalTokenCount": 15,
            },
            "modelVersion": model,
        }
