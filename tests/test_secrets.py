"""API keys never reach what a run writes: checkpoints, results, datasets, manifests, logs, traces.

Runs go through the real CLI and the real OpenAI SDK against the loopback fault server, with the
key given the two usual ways (environment, constructor). Then every file under the test's
directory is read as bytes and searched for the key, and for anything shaped like a key. One run
meets a server that echoes the key in its 401 message, as careless gateways do: the error must
be recorded (it is how the user learns what went wrong) with the key cut out.
LangSmith's side (what a tracer uploads) is tested in tests/test_langsmith.py.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("langchain_openai")

from fakes import ScriptedModel  # noqa: E402
from fault_server import FaultServer, arithmetic_answer, serve  # noqa: E402
from langchain_core.tracers.run_collector import RunCollectorCallbackHandler  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from mafl_graph import Arithmetic, Society, run_debates  # noqa: E402
from mafl_graph.cli import app  # noqa: E402
from mafl_graph.debate import create_debate_graph  # noqa: E402
from mafl_graph.redact import REDACTED, redact, scrub_exception  # noqa: E402
from mafl_graph.rundir import prepare_run_dir  # noqa: E402

pytestmark = pytest.mark.allow_hosts(["127.0.0.1"])

ENV_KEY = "sk-mafl-env-7f3a9c1e5b2d4f608a1c3e5f7b9d1f3a"
ARG_KEY = "sk-proj-mafl-arg-0b1c2d3e4f5a6b7c8d9e0f1a2b3c"
# Anything shaped like a key (OpenAI, Google, LangSmith, Hugging Face, bearer headers).
KEY_SHAPED = re.compile(
    rb"(?<![A-Za-z0-9_\-])(sk-[A-Za-z0-9_\-]{16,}|AIza[0-9A-Za-z_\-]{35}|lsv2_[a-z]{2}_[0-9a-f]{32}"
    rb"|hf_[A-Za-z0-9]{30,}|[Bb]earer\s+[A-Za-z0-9_\-.=]{16,})"
)
DEBATE = [
    "debate", "--model", "openai:fault-model", "--n", "6", "--terms", "2", "--high", "9",
    "--operators", "+", "--max-retries", "0", "--concurrency", "6",
]  # fmt: skip


def leaks(blob: bytes) -> list[bytes]:
    found = [k.encode() for k in (ENV_KEY, ARG_KEY) if k.encode() in blob]
    return found + KEY_SHAPED.findall(blob)


def test_no_file_log_or_trace_of_a_run_holds_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # every library's debug logging, SDK and httpx included
    runner = CliRunner()
    outputs: list[str] = []
    server = FaultServer(answer=arithmetic_answer, api_key=ENV_KEY)
    with serve(server):
        monkeypatch.setenv("OPENAI_API_KEY", ENV_KEY)
        monkeypatch.setenv("OPENAI_BASE_URL", server.url)
        run = tmp_path / "run"
        debated = runner.invoke(app, [*DEBATE, "--run-dir", str(run)])
        assert debated.exit_code == 0, debated.output
        made = runner.invoke(app, ["datasets", "--run-dir", str(run), "--min-examples", "1"])
        assert made.exit_code == 0, made.output
        outputs += [debated.output, made.output]

        # The library road: the key passed to the constructor, and every call traced.
        monkeypatch.delenv("OPENAI_API_KEY")
        server.api_key = ARG_KEY
        task = Arithmetic(terms=2, low=0, high=9, operators="+")
        society = Society.from_model(
            "openai:fault-model", 3, api_key=ARG_KEY, base_url=server.url, seed=0
        )
        collector = RunCollectorCallbackHandler()
        results = run_debates(
            create_debate_graph(society, task),
            task.load("test", 3),
            run_id="library",
            db_path=tmp_path / "library" / "debates.sqlite",
            metadata={"iteration": 1},
            callbacks=[collector],
            progress=False,
        )
        assert all(r.ok for r in results)
        traced = [run.model_dump(mode="json") for run in collector.traced_runs]
        assert traced and "fault-model" in json.dumps(traced)
        (tmp_path / "library" / "traces.json").write_text(json.dumps(traced, default=str))

    # A gateway that echoes the key it was sent in its 401: recorded, with the key cut out.
    echoing = FaultServer(answer=arithmetic_answer, api_key="sk-mafl-the-right-key-000000000")
    with serve(echoing):
        monkeypatch.setenv("OPENAI_API_KEY", ENV_KEY)
        monkeypatch.setenv("OPENAI_BASE_URL", echoing.url)
        refused = tmp_path / "refused"
        failed = runner.invoke(app, [*DEBATE, "--run-dir", str(refused)])
        # every call refused: the results are written, and the command fails (exit 1)
        assert failed.exit_code == 1, failed.output
        outputs.append(failed.output)
    assert len(echoing.requests) == 6 * 3 and all(r.fault == "401" for r in echoing.requests)
    errors = [json.loads(line)["error"] for line in (refused / "results.jsonl").open()]
    assert all("Incorrect API key provided" in e and REDACTED in e for e in errors)
    checkpoint = (refused / "debates.sqlite").read_bytes() + _wal(refused / "debates.sqlite")
    assert b"Incorrect API key provided" in checkpoint  # the error is stored, ...
    assert ENV_KEY.encode() not in checkpoint  # ... the key is not

    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert {"manifest.json", "results.jsonl", "summary.json", "debates.sqlite", "traces.json"} <= {
        p.name for p in files
    }
    assert any(p.name.endswith(".openai.jsonl") for p in files)
    print(f"\nsecrets: searched {len(files)} files, 3 command outputs and the debug log")
    found = {str(p.relative_to(tmp_path)): leaks(p.read_bytes()) for p in files}
    assert not {name: hits for name, hits in found.items() if hits}
    assert not leaks("\n".join(outputs).encode())
    assert not leaks(caplog.text.encode())
    assert caplog.text  # the debug logs were there to search


def _wal(path: Path) -> bytes:
    wal = path.with_name(path.name + "-wal")
    return wal.read_bytes() if wal.exists() else b""


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"openai_api_key": ENV_KEY}, "['openai_api_key']"),
        ({"note": f"use {ARG_KEY}"}, "['note']"),  # the shape gives it away, whatever the name
        ({"auth": {"token": "0123456789abcdef"}}, "['auth']['token']"),
    ],
)
def test_settings_and_metadata_that_hold_a_key_are_refused_before_anything_is_written(
    tmp_path: Path, values: dict[str, Any], named: str
) -> None:
    task = Arithmetic(terms=2, low=0, high=9, operators="+")
    graph = create_debate_graph(Society.from_model(ScriptedModel(reply=_never), 2), task)
    db = tmp_path / "debates.sqlite"
    with pytest.raises(ValueError, match=re.escape(f"metadata{named} looks like a credential")):
        run_debates(graph, task.load("test", 1), db_path=db, metadata=values, progress=False)
    with pytest.raises(ValueError, match=re.escape(f"settings{named} looks like a credential")):
        prepare_run_dir(tmp_path / "run", {"model": "openai:gpt-4o-mini", **values})
    assert list(tmp_path.iterdir()) == []
    # Settings that only sound alike pass.
    prepare_run_dir(tmp_path / "run", {"max_tokens": 96, "seed": 0, "task": "arithmetic"})


def test_redaction_keeps_the_message_and_the_error_type() -> None:
    error = PermissionError(f"gateway said: bad key {ENV_KEY} (Bearer {ARG_KEY})")
    scrubbed = scrub_exception(error)
    assert scrubbed is error and isinstance(error, PermissionError)
    assert ENV_KEY not in repr(error) and ARG_KEY not in repr(error)
    assert "gateway said: bad key" in str(error)
    assert redact("task-arithmetic-test-00001 is a problem id") == (
        "task-arithmetic-test-00001 is a problem id"
    )


def _never(messages: Any) -> str:
    raise AssertionError("no model call may happen: the run is refused first")
