"""LangGraph Studio: the real `langgraph dev` server loads langgraph.json's graphs, draws their
real edges, and runs a debate on the embedded model chosen through the run's configurable
settings, all through its HTTP API (langgraph-sdk) on loopback.

The server runs in a temporary directory (it keeps its own state in ``.langgraph_api/`` under
the working directory), from a copy of the repository's langgraph.json whose paths are made
absolute: the graph ids and entry points are the repository's own.
"""

from __future__ import annotations

import time

import pytest

pytest.importorskip("langgraph_api")
pytest.importorskip("langgraph_sdk")

from langgraph_dev import server_fixture  # noqa: E402, F401  (the `server` fixture)
from langgraph_sdk import get_sync_client  # noqa: E402

pytestmark = [pytest.mark.allow_hosts(["127.0.0.1"]), pytest.mark.integration]

TINY = {"model": "local:smollm2", "agents": 2, "rounds": 2, "max_tokens": 12}
PROBLEM = {"problem_id": "studio-1", "question": "2+3", "reference": "5"}


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
