"""LangGraph Studio: the real `langgraph dev` server loads langgraph.json's graphs, draws their
real edges, and runs a debate on the embedded model chosen through the run's configurable
settings, all through its HTTP API (langgraph-sdk) on loopback.

The server runs in a temporary directory (it keeps its own state in ``.langgraph_api/`` under
the working directory), from a copy of the repository's langgraph.json whose paths are made
absolute: the graph ids and entry points are the repository's own.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("langgraph_api")
pytest.importorskip("langgraph_sdk")

from langgraph_sdk import get_sync_client  # noqa: E402

pytestmark = [pytest.mark.allow_hosts(["127.0.0.1"]), pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[1]
STARTUP_TIMEOUT = 120.0
TINY = {"model": "local:smollm2", "agents": 2, "rounds": 2, "max_tokens": 12}
PROBLEM = {"problem_id": "studio-1", "question": "2+3", "reference": "5"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[tuple[str, float]]:
    """(URL, seconds to start) of a `langgraph dev` serving the repository's graphs."""
    try:
        from mafl_graph.local import smollm2_gguf_path

        smollm2_gguf_path()
    except (ImportError, FileNotFoundError) as error:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"embedded model unavailable: {error}")
    workdir = tmp_path_factory.mktemp("studio")
    config = json.loads((ROOT / "langgraph.json").read_text())
    config["dependencies"] = [str((ROOT / d).resolve()) for d in config["dependencies"]]
    config["graphs"] = {
        name: str((ROOT / spec.split(":")[0]).resolve()) + ":" + spec.split(":")[1]
        for name, spec in config["graphs"].items()
    }
    (workdir / "langgraph.json").write_text(json.dumps(config))
    env = {
        **os.environ,
        "LANGSMITH_TRACING": "false",
        "LANGCHAIN_TRACING_V2": "false",
        "LANGGRAPH_CLI_NO_ANALYTICS": "1",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("LANGSMITH_API_KEY", None)
    cli = Path(sys.executable).with_name("langgraph")
    log = (workdir / "server.log").open("w")
    started = time.perf_counter()
    process = subprocess.Popen(
        [str(cli), "dev", "--port", str(_free_port()), "--no-browser", "--no-reload"],
        cwd=workdir,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        url = _wait_until_up(workdir / "server.log", process)
        yield url, time.perf_counter() - started
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def _wait_until_up(log: Path, process: subprocess.Popen) -> str:
    """The API URL the server printed, once it answers; its log if it died or hung."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    url = None
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if process.poll() is not None:
            pytest.fail(f"langgraph dev exited with {process.returncode}:\n{text[-4000:]}")
        if url is None and (found := re.search(r"API: \S*(http://127\.0\.0\.1:\d+)", text)):
            url = found.group(1)
        if url is not None:
            try:
                with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), 1):
                    pass
                if "Application started up" in text:
                    return url
            except OSError:
                pass
        time.sleep(0.25)
    pytest.fail(f"langgraph dev did not start in {STARTUP_TIMEOUT:.0f} s:\n{text[-4000:]}")


def test_studio_lists_both_graphs_with_their_real_edges_and_schemas(server):
    url, seconds = server
    client = get_sync_client(url=url)
    assistants = {a["graph_id"]: a for a in client.assistants.search()}
    assert set(assistants) == {"debate", "single_agent"}
    graph = client.assistants.get_graph(assistants["debate"]["assistant_id"])
    edges = {(e["source"], e["target"]) for e in graph["edges"]}
    assert edges == {
        ("__start__", "generate"),
        ("generate", "next_round"),
        ("next_round", "summarize"),
        ("next_round", "critique"),
        ("next_round", "vote"),
        ("summarize", "critique"),
        ("critique", "next_round"),
        ("vote", "__end__"),
    }
    schemas = client.assistants.get_schemas(assistants["debate"]["assistant_id"])
    assert set(schemas["input_schema"]["properties"]) == {"problem_id", "question", "reference"}
    assert {"consensus", "responses", "correct"} <= set(schemas["output_schema"]["properties"])
    settings = schemas["context_schema"]["properties"]
    assert {"model", "agents", "rounds", "summarize", "task", "max_tokens"} <= set(settings)
    print(f"langgraph dev answered after {seconds:.1f} s")


def test_a_debate_configured_per_run_runs_on_the_embedded_model_and_reads_back(server):
    url, _ = server
    client = get_sync_client(url=url)
    thread = client.threads.create()
    started = time.perf_counter()
    final = client.runs.wait(
        thread["thread_id"], "debate", input=PROBLEM, config={"configurable": TINY}
    )
    seconds = time.perf_counter() - started
    state = client.threads.get_state(thread["thread_id"])["values"]
    assert state == final
    responses = state["responses"]
    # 2 agents × 2 rounds, as configured for this run (the defaults are 3 agents)
    assert sorted((r["round"], r["agent"], r["role"]) for r in responses) == [
        (1, 0, "generator"),
        (1, 1, "generator"),
        (2, 0, "critic"),
        (2, 1, "critic"),
    ]
    assert len(state["summaries"]) == 2
    assert all(r["model"] == "smollm2" and r["text"] for r in responses)
    assert "2+3" in responses[0]["messages"][0]["content"]
    assert isinstance(state["correct"], bool) and "consensus" in state
    # The single-agent graph on the same server: one answer, no debate.
    single = client.runs.wait(None, "single_agent", input=PROBLEM, config={"configurable": TINY})
    assert [(r["round"], r["role"]) for r in single["responses"]] == [(1, "generator")]
    print(f"debate run through the server: {seconds:.1f} s")


def test_a_bad_setting_given_as_context_fails_the_run_with_the_reason(server):
    # Studio sends the settings as the run's context when the graph declares a context schema;
    # the server mirrors them into the configurable settings the factory reads.
    url, _ = server
    client = get_sync_client(url=url)
    with pytest.raises(Exception, match="n_agents must be at least 1; got 0"):
        client.runs.wait(None, "debate", input=PROBLEM, context={**TINY, "agents": 0})
