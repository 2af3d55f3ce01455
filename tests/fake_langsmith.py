"""A stand-in for the LangSmith API, served on loopback by ``fake_http.serve``.

It speaks what the real ``langsmith`` client uses here: run ingestion without batching
(``POST /runs``, ``PATCH /runs/{id}``), projects (``GET /sessions``, created when a run names
one), run queries (``POST /runs/query`` with the filter language's ``and``/``or``/``eq`` on
``name``, ``run_type`` and metadata key-value pairs; anything else is refused with 400, so a
malformed filter fails the test), and datasets with examples.
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlparse

from fake_http import Call

TENANT = "00000000-0000-0000-0000-000000000001"


class FakeLangSmith:
    def __init__(self, api_key: str) -> None:
        self.api_key = api_key
        self.runs: dict[str, dict[str, Any]] = {}
        self.sessions: dict[str, dict[str, Any]] = {}
        self.datasets: dict[str, dict[str, Any]] = {}
        self.examples: dict[str, dict[str, Any]] = {}
        self.queries: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def __call__(self, call: Call) -> tuple[int, Any]:
        if call.headers.get("x-api-key") != self.api_key:
            return 401, {"detail": "bad api key"}
        url = urlparse(call.path)
        path, query = url.path, parse_qs(url.query)
        with self.lock:
            if path == "/info":
                return 200, {"version": "0.16.0", "instance_flags": {}}
            if call.method == "POST" and path == "/runs":
                return self._post_run(call.json())
            if call.method == "PATCH" and path.startswith("/runs/"):
                run = self.runs[path.rsplit("/", 1)[1]]
                run.update({k: v for k, v in call.json().items() if v is not None})
                run["status"] = "error" if run.get("error") else "success"
                return 200, {}
            if call.method == "GET" and path == "/sessions":
                name = query.get("name", [None])[0]
                return 200, [s for s in self.sessions.values() if name in (None, s["name"])]
            if call.method == "POST" and path == "/runs/query":
                return self._query(call.json())
            if path == "/datasets":
                return self._datasets(call, query)
            if call.method == "GET" and path == "/examples":
                dataset = query.get("dataset", [None])[0]
                found = [e for e in self.examples.values() if e["dataset_id"] == dataset]
                offset = int(query.get("offset", ["0"])[0])
                limit = int(query.get("limit", ["100"])[0])
                return 200, found[offset : offset + limit]
            if call.method == "POST" and path == "/examples/bulk":
                return self._examples(call.json())
        return 404, {"detail": f"no route {call.method} {path}"}

    # Runs --------------------------------------------------------------------------------

    def _post_run(self, run: dict[str, Any]) -> tuple[int, Any]:
        name = run.pop("session_name", None) or "default"
        session = self.sessions.setdefault(
            name,
            {
                "id": str(uuid.uuid4()),
                "name": name,
                "tenant_id": TENANT,
                "start_time": _now(),
                "reference_dataset_id": None,
            },
        )
        run["session_id"] = session["id"]
        run.setdefault("status", "pending")
        self.runs[str(run["id"])] = run
        return 200, {}

    def _query(self, body: dict[str, Any]) -> tuple[int, Any]:
        self.queries.append(body)
        try:
            match = _parse(body["filter"]) if body.get("filter") else (lambda run: True)
        except ValueError as exc:
            return 400, {"detail": f"bad filter: {exc}"}
        sessions = set(body.get("session") or [])
        found = [
            _as_listed(run)
            for run in self.runs.values()
            if (not sessions or run["session_id"] in sessions)
            and (body.get("run_type") is None or run["run_type"] == body["run_type"])
            and match(run)
        ]
        return 200, {"runs": found, "cursors": {"next": None}}

    # Datasets ----------------------------------------------------------------------------

    def _datasets(self, call: Call, query: dict[str, list[str]]) -> tuple[int, Any]:
        if call.method == "GET":
            name = query.get("name", [None])[0]
            return 200, [d for d in self.datasets.values() if name in (None, d["name"])]
        body = call.json()
        if any(d["name"] == body["name"] for d in self.datasets.values()):
            return 409, {"detail": "dataset exists"}
        dataset = {**body, "id": str(uuid.uuid4()), "created_at": _now(), "tenant_id": TENANT}
        self.datasets[dataset["id"]] = dataset
        return 200, dataset

    def _examples(self, body: list[dict[str, Any]]) -> tuple[int, Any]:
        created = []
        for example in body:
            example_id = str(example.get("id") or uuid.uuid4())
            if example_id in self.examples:
                return 409, {"detail": f"example {example_id} exists"}
            self.examples[example_id] = {
                **example,
                "id": example_id,
                "created_at": _now(),
                "modified_at": _now(),
            }
            created.append(self.examples[example_id])
        return 200, created


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _as_listed(run: dict[str, Any]) -> dict[str, Any]:
    """A stored run as /runs/query lists it (attachments come back as s3_urls there)."""
    listed = {k: v for k, v in run.items() if k != "attachments"}
    return {"child_run_ids": None, "trace_id": run.get("trace_id", run["id"]), **listed}


# The filter language: just the part these tests need, refusing the rest. ---------------

_TOKEN = re.compile(r'\s*(?:(?P<str>"(?:[^"\\]|\\.)*")|(?P<name>[a-z_]+)|(?P<sym>[(),]))')


def _parse(text: str) -> Any:
    tokens: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            if text[pos:].strip() == "":
                break
            raise ValueError(f"unexpected text at {pos}: {text[pos:]!r}")
        kind = m.lastgroup or ""
        tokens.append((kind, m.group(kind)))
        pos = m.end()
    node, rest = _expr(tokens)
    if rest:
        raise ValueError(f"trailing tokens {rest}")
    return _combine("and", [node]) if isinstance(node, tuple) else node


def _expr(tokens: list[tuple[str, str]]) -> tuple[Any, list[tuple[str, str]]]:
    kind, op = tokens[0]
    if kind != "name" or tokens[1] != ("sym", "("):
        raise ValueError(f"expected a function call, got {tokens[:2]}")
    rest = tokens[2:]
    if op == "eq":
        (k1, field), (_, comma), (k2, value), (_, close) = rest[:4]
        if (k1, k2, comma, close) != ("name", "str", ",", ")"):
            raise ValueError(f"bad eq(...): {rest[:4]}")
        if field not in ("name", "run_type", "metadata_key", "metadata_value"):
            raise ValueError(f"field {field!r} is not supported here")
        return ("eq", field, json.loads(value)), rest[4:]
    if op not in ("and", "or"):
        raise ValueError(f"operator {op!r} is not supported here")
    args = []
    while True:
        arg, rest = _expr(rest)
        args.append(arg)
        if rest[0] == ("sym", ","):
            rest = rest[1:]
            continue
        if rest[0] == ("sym", ")"):
            break
        raise ValueError(f"expected , or ) in {op}(...)")
    return _combine(op, args), rest[1:]


def _combine(op: str, args: list[Any]) -> Any:
    """and/or over conditions; inside one and(), metadata_key k and metadata_value v mean
    "the run's metadata has k with value v" (LangSmith's key-value pair form)."""
    checks = []
    key = None
    for arg in args:
        if isinstance(arg, tuple) and arg[0] == "eq" and arg[1] == "metadata_key":
            key = arg[2]
        elif isinstance(arg, tuple) and arg[0] == "eq" and arg[1] == "metadata_value":
            if key is None or op != "and":
                raise ValueError("metadata_value without a metadata_key in the same and()")
            checks.append(_metadata_pair(key, arg[2]))
            key = None
        elif isinstance(arg, tuple) and arg[0] == "eq":
            checks.append(_field(arg[1], arg[2]))
        else:
            checks.append(arg)
    if key is not None:
        checks.append(lambda run, k=key: k in _metadata(run))
    return (
        (lambda run: all(c(run) for c in checks))
        if op == "and"
        else (lambda run: any(c(run) for c in checks))
    )


def _metadata(run: dict[str, Any]) -> dict[str, Any]:
    return (run.get("extra") or {}).get("metadata") or {}


def _metadata_pair(key: str, value: Any) -> Any:
    return lambda run: key in _metadata(run) and str(_metadata(run)[key]) == str(value)


def _field(field: str, value: Any) -> Any:
    return lambda run: run.get(field) == value
