"""Loopback stand-ins for the OpenAI chat completions and Gemini generateContent APIs.

The real ``langchain-openai`` and ``langchain-google-genai`` clients talk to these (through
their base-URL settings), so the tests exercise the real request and response handling. Each
answers the arithmetic question in the conversation's first user message correctly, in
``\\boxed{}``, and reports token usage (a quarter of the characters, like a tokenizer would
roughly) so the tests can check what the run directory recorded against what was "billed".
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from typing import Any

from fake_http import Call

_QUESTION = re.compile(r"What is the result of ([0-9+\-*/ ()]+)\?")


def _answer(first_user_text: str) -> str:
    match = _QUESTION.search(first_user_text)
    if not match:
        return "Both agents agree on the result."
    value = eval(match.group(1), {"__builtins__": {}})  # digits and operators only (the regex)
    return f"Adding it up step by step gives {value}. \\boxed{{{value}}}"


def _tokens(text: str) -> int:
    return max(1, len(text) // 4)


@dataclass
class Billing:
    """What a fake provider charged: calls and tokens, as its usage fields reported them."""

    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def charge(self, prompt: str, reply: str) -> tuple[int, int]:
        tokens_in, tokens_out = _tokens(prompt), _tokens(reply)
        with self.lock:
            self.calls += 1
            self.input_tokens += tokens_in
            self.output_tokens += tokens_out
        return tokens_in, tokens_out


class FakeOpenAIChat:
    """POST /v1/chat/completions with a bearer key."""

    model = "gpt-4o-mini-2024-07-18"

    def __init__(self, api_key: str) -> None:
        self.api_key = api_key
        self.billing = Billing()

    def __call__(self, call: Call) -> tuple[int, Any]:
        if call.headers.get("authorization") != f"Bearer {self.api_key}":
            return 401, {"error": {"message": "Incorrect API key", "type": "invalid_request_error"}}
        if call.method != "POST" or call.path.split("?")[0] != "/v1/chat/completions":
            return 404, {"error": {"message": f"no route {call.method} {call.path}"}}
        messages = call.json()["messages"]
        first = next(m["content"] for m in messages if m["role"] == "user")
        reply = _answer(first)
        tokens_in, tokens_out = self.billing.charge(" ".join(m["content"] for m in messages), reply)
        return 200, {
            "id": f"chatcmpl-{self.billing.calls}",
            "object": "chat.completion",
            "created": 0,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": reply},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
            "usage": {
                "prompt_tokens": tokens_in,
                "completion_tokens": tokens_out,
                "total_tokens": tokens_in + tokens_out,
            },
        }


class FakeGemini:
    """POST /v1[beta]/models/<model>:generateContent with an API key header (Gemini API).

    Both API versions: langchain-google-genai moved its default from v1beta to v1 (4.x).
    """

    def __init__(self, api_key: str) -> None:
        self.api_key = api_key
        self.billing = Billing()
        self.models: set[str] = set()

    def __call__(self, call: Call) -> tuple[int, Any]:
        if call.headers.get("x-goog-api-key") != self.api_key:
            return 403, {
                "error": {"code": 403, "message": "bad key", "status": "PERMISSION_DENIED"}
            }
        path = call.path.split("?")[0]
        match = re.fullmatch(r"/v1(?:beta)?/models/([^:]+):generateContent", path)
        if call.method != "POST" or not match:
            return 404, {
                "error": {"code": 404, "message": f"no route {path}", "status": "NOT_FOUND"}
            }
        self.models.add(match.group(1))
        contents = call.json()["contents"]
        texts = [p.get("text", "") for c in contents for p in c.get("parts", [])]
        first = next(
            p.get("text", "") for c in contents if c.get("role") == "user" for p in c["parts"]
        )
        reply = _answer(first)
        tokens_in, tokens_out = self.billing.charge(" ".join(texts), reply)
        return 200, {
            "candidates": [
                {
                    "content": {"role": "model", "parts": [{"text": reply}]},
                    "finishReason": "STOP",
                    "index": 0,
                }
            ],
            "usageMetadata": {
                "promptTokenCount": tokens_in,
                "candidatesTokenCount": tokens_out,
                "totalTokenCount": tokens_in + tokens_out,
            },
            "modelVersion": match.group(1),
        }


def _google_error(code: int, message: str, status: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "status": status}}


class FakeOpenAIPlatform(FakeOpenAIChat):
    """Chat completions that answer MATH problems, plus the fine-tuning API (files, jobs).

    ``answers`` maps a question's text to its reference answer. The model sampled with
    ``seed=1`` (agent 1's generator in a society from ``Society.from_model``) gets two of every
    three questions wrong in round 1, so debates produce corrections (D_C-) as well as
    confirmations (D_C+). Jobs succeed at once and name the tuned model after their suffix;
    chat requests to tuned models are recorded in ``tuned_calls``.
    """

    def __init__(self, api_key: str, answers: dict[str, str]) -> None:
        super().__init__(api_key)
        self.answers = answers
        self.order = {q: i for i, q in enumerate(answers)}
        self.jobs: dict[str, dict[str, Any]] = {}
        self.uploads = 0
        self.tuned_calls: dict[str, int] = {}

    def __call__(self, call: Call) -> tuple[int, Any]:
        if call.headers.get("authorization") != f"Bearer {self.api_key}":
            return 401, {"error": {"message": "Incorrect API key", "type": "invalid_request_error"}}
        path = call.path.split("?")[0]
        with self.billing.lock:
            if call.method == "POST" and path == "/v1/files":
                self.uploads += 1
                return 200, {
                    "id": f"file-{self.uploads}",
                    "object": "file",
                    "bytes": len(call.body),
                    "created_at": 0,
                    "filename": "train.jsonl",
                    "purpose": "fine-tune",
                }
            if call.method == "POST" and path == "/v1/fine_tuning/jobs":
                body = call.json()
                job_id = f"ftjob-{len(self.jobs) + 1}"
                tuned = f"ft:{body['model']}:org:{body['suffix']}:{job_id[-1]}"
                self.jobs[job_id] = {**_job(job_id, body), "fine_tuned_model": tuned}
                return 200, {**self.jobs[job_id], "status": "validating_files"}
            if call.method == "GET" and path.startswith("/v1/fine_tuning/jobs/"):
                return 200, self.jobs[path.rsplit("/", 1)[1]]
        if call.method == "POST" and path == "/v1/chat/completions":
            return self._chat(call.json())
        return 404, {"error": {"message": f"no route {call.method} {path}"}}

    def _chat(self, body: dict[str, Any]) -> tuple[int, Any]:
        messages = body["messages"]
        first = next(m["content"] for m in messages if m["role"] == "user")
        question = next((q for q in self.answers if q in first), None)
        if question is None:  # the summarizer's prompt
            reply = "The other agent's answer is stated at its end."
        else:
            answer = self.answers[question]
            wrong = body.get("seed") == 1 and len(messages) == 1 and self.order[question] % 3
            reply = f"Working through it, the result is \\boxed{{{'7777' if wrong else answer}}}"
        if body["model"].startswith("ft:"):
            with self.billing.lock:
                self.tuned_calls[body["model"]] = self.tuned_calls.get(body["model"], 0) + 1
        prompt = " ".join(m["content"] for m in messages)
        tokens_in, tokens_out = self.billing.charge(prompt, reply)
        return 200, {
            "id": f"chatcmpl-{self.billing.calls}",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": reply},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
            "usage": {
                "prompt_tokens": tokens_in,
                "completion_tokens": tokens_out,
                "total_tokens": tokens_in + tokens_out,
            },
        }


def _job(job_id: str, body: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": job_id,
        "object": "fine_tuning.job",
        "created_at": 0,
        "model": body["model"],
        "training_file": body["training_file"],
        "organization_id": "org",
        "result_files": [],
        "seed": body.get("seed", 0),
        "hyperparameters": {"n_epochs": "auto"},
        "status": "succeeded",
        "error": None,
        "finished_at": 1,
        "trained_tokens": 1000,
        "validation_file": None,
    }
