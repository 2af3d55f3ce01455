"""LangSmith review: what every model call's run carries, per-agent datasets rebuilt from a
project's runs, and datasets pushed to LangSmith.

The real ``langsmith`` client and LangChain's real ``LangChainTracer`` talk to a loopback
stand-in for the LangSmith API (tests/fake_langsmith.py), so what is checked is exactly what
LangSmith would receive and return. Debates use scripted models (graph logic), except the
secrets test, which drives the real ``langchain-openai`` client against a loopback OpenAI.
"""

from __future__ import annotations

import json
import re

import pytest

pytest.importorskip("langsmith")

from fake_http import serve  # noqa: E402
from fake_langsmith import FakeLangSmith  # noqa: E402
from fakes import EchoTask, ScriptedModel  # noqa: E402
from langchain_core.messages import BaseMessage  # noqa: E402
from langchain_core.tracers import LangChainTracer  # noqa: E402
from langgraph.checkpoint.memory import InMemorySaver  # noqa: E402
from langsmith import Client  # noqa: E402

from mafl_graph import (  # noqa: E402
    Society,
    build_datasets,
    create_debate_graph,
    read_traces,
    run_debates,
)
from mafl_graph.langsmith import push_dataset, push_datasets, read_traces_langsmith  # noqa: E402
from mafl_graph.society import Agent  # noqa: E402

pytestmark = pytest.mark.allow_hosts(["127.0.0.1"])

KEY = "lsv2_pt_0123456789abcdef_test-secret"
PROJECT = "mafl-review"
ANSWERS = ["1", "2", "3", "4", "5"]
BROKEN = "q4"  # every agent fails on this question: its debate never finishes


def _reply(agent: int):
    """Agent 1 is wrong in round 1 and corrects itself (D_C-); the others are right."""

    def reply(messages: list[BaseMessage]) -> str:
        question = re.search(r"Solve (q\d+)", messages[0].text)
        assert question, messages[0].text
        if question.group(1) == BROKEN:
            raise RuntimeError("provider exploded")
        truth = ANSWERS[int(question.group(1)[1:])]
        first_round = len(messages) == 1
        if agent == 1 and first_round:
            return f"I think \\boxed{{{int(truth) + 10}}}"
        return f"So the answer is \\boxed{{{truth}}}"

    return reply


def _society() -> Society:
    agents = tuple(
        Agent(f"agent{i}", ScriptedModel(reply=_reply(i)), ScriptedModel(reply=_reply(i)))
        for i in range(3)
    )
    return Society(agents, summarizer=ScriptedModel(reply=lambda m: "They mostly agree."))


def _client(url: str) -> Client:
    # Unbatched ingestion (POST /runs, PATCH /runs/{id}), which the stand-in speaks.
    return Client(api_url=url, api_key=KEY, auto_batch_tracing=False)


def _traced_debates(url: str, saver: InMemorySaver, iteration: int = 2) -> list:
    task = EchoTask(ANSWERS)
    graph = create_debate_graph(_society(), task, rounds=2, summarize=True)
    tracer = LangChainTracer(project_name=PROJECT, client=_client(url))
    results = run_debates(
        graph,
        task.load("train"),
        run_id="r1",
        checkpointer=saver,
        metadata={"iteration": iteration},
        callbacks=[tracer],
        progress=False,
    )
    tracer.wait_for_futures()
    return results


def test_every_model_call_run_is_named_tagged_and_carries_run_problem_and_iteration():
    fake = FakeLangSmith(KEY)
    with serve(fake) as (url, _):
        _traced_debates(url, InMemorySaver())
    llm = [r for r in fake.runs.values() if r["run_type"] == "llm"]
    finished = [r for r in llm if r["extra"]["metadata"]["problem_id"] != "echo-4"]
    # 4 finished debates × (3 generators + 3 summaries + 3 critics)
    assert len(finished) == 4 * 9
    names = sorted(r["name"] for r in finished if r["extra"]["metadata"]["problem_id"] == "echo-0")
    expected = ["critic[0]", "critic[1]", "critic[2]", "generator[0]", "generator[1]"]
    assert names == expected + ["generator[2]"] + ["summarizer"] * 3
    for run in llm:
        meta = run["extra"]["metadata"]
        assert meta["mafl_run_id"] == "r1"
        assert meta["problem_id"].startswith("echo-")
        assert meta["iteration"] == 2
        assert meta["thread_id"] == f"r1/{meta['problem_id']}"
        for key in ("role", "agent", "round"):
            assert f"{key}:{meta[key]}" in run["tags"]
        assert "iteration:2" in run["tags"]
        expected_name = "summarizer" if meta["role"] == "summarizer" else None
        assert run["name"] == (expected_name or f"{meta['role']}[{meta['agent']}]")
        assert run["session_id"] == fake.sessions[PROJECT]["id"]
    failed = [r for r in llm if r["extra"]["metadata"]["problem_id"] == "echo-4"]
    assert failed and all("provider exploded" in r["error"] for r in failed)


def test_datasets_from_langsmith_equal_datasets_from_the_checkpointer():
    fake = FakeLangSmith(KEY)
    saver = InMemorySaver()
    task = EchoTask(ANSWERS)
    with serve(fake) as (url, _):
        _traced_debates(url, saver)
        _traced_debates(url, InMemorySaver(), iteration=3)  # another iteration, same run id
        from_langsmith = read_traces_langsmith(
            PROJECT, "r1", client=_client(url), filter={"iteration": 2}
        )
        wrong_run = read_traces_langsmith(PROJECT, "r2", client=_client(url))
    from_checkpoints = read_traces(saver, "r1", filter={"iteration": 2})
    assert [t.problem_id for t in from_langsmith] == ["echo-0", "echo-1", "echo-2", "echo-3"]
    assert [t.problem_id for t in from_checkpoints] == [t.problem_id for t in from_langsmith]
    for ls, cp in zip(from_langsmith, from_checkpoints, strict=True):
        assert (ls.thread_id, ls.question, ls.reference) == (
            cp.thread_id,
            cp.question,
            cp.reference,
        )
        assert (ls.consensus, ls.consensus_fraction, ls.correct) == (
            cp.consensus,
            cp.consensus_fraction,
            cp.correct,
        )
        assert ls.responses == cp.responses and ls.summaries == cp.summaries
        assert ls.metadata["iteration"] == 2 and ls.metadata["mafl_run_id"] == "r1"
        # The run's metadata as the checkpoints hold it, none of LangSmith's own additions.
        assert ls.metadata.items() <= cp.metadata.items()
    built = build_datasets(from_langsmith, task)
    assert built == build_datasets(from_checkpoints, task)
    assert built[(1, "critic")].stats.wrong_first == 4  # agent 1 corrected itself each time
    assert built[(1, "generator")].examples == []
    # The debate that never reached the vote is reported, with why, not silently dropped.
    [unfinished] = from_langsmith.unfinished
    assert (unfinished.problem_id, unfinished.thread_id) == ("echo-4", "r1/echo-4")
    assert "provider exploded" in (unfinished.error or "")
    assert [u.problem_id for u in from_checkpoints.unfinished] == ["echo-4"]
    # Both readers give the same error: the exception's type and message, naming the call.
    assert unfinished.error == from_checkpoints.unfinished[0].error
    assert re.fullmatch(
        r"RuntimeError: scripted \(generator of agent \d, round 1, problem echo-4\): "
        r"provider exploded",
        unfinished.error or "",
    )
    assert len(wrong_run) == 0 and wrong_run.unfinished == []
    # The server was asked for this run's runs only (the filter is what LangSmith parses).
    assert any('eq(metadata_value, "r1")' in q.get("filter", "") for q in fake.queries)


def test_push_dataset_creates_it_once_and_adds_only_missing_examples():
    fake = FakeLangSmith(KEY)
    saver = InMemorySaver()
    with serve(fake) as (url, calls):
        _traced_debates(url, saver)
        # w=1: critics train on D_C- alone (here no critic has a D_C+ to mix in)
        datasets = build_datasets(read_traces(saver, "r1"), EchoTask(ANSWERS), w=1.0)
        critic = datasets[(1, "critic")]
        client = _client(url)
        first = push_dataset(critic, "mafl-r1-agent1-critic", client=client)
        again = push_dataset(critic, "mafl-r1-agent1-critic", client=client)
        everything = push_datasets(datasets, "mafl-r1", client=client)
        uploads = [c for c in calls if c.path.startswith("/examples/bulk")]
    assert (first.added, first.already_there) == (len(critic.examples), 0)
    assert (again.added, again.already_there) == (0, len(critic.examples))
    assert again.dataset_id == first.dataset_id
    assert {p.name for p in everything} == {f"mafl-r1-{d.name}" for d in datasets.values()}
    assert len(fake.datasets) == len(datasets)
    stored = [e for e in fake.examples.values() if e["dataset_id"] == first.dataset_id]
    assert len(stored) == len(critic.examples)
    by_problem = {e["metadata"]["problem_id"]: e for e in stored}
    for example in critic.examples:
        remote = by_problem[example["problem_id"]]
        *context, reply = example["messages"]
        assert remote["inputs"]["messages"] == context
        assert remote["outputs"]["message"] == {"role": "assistant", "content": reply["content"]}
        assert remote["metadata"]["subset"] == example["subset"] == "D_C-"
        assert remote["split"] == "train"
    # The critic saw its own wrong first answer: present, with weight 0 (never learned).
    assert any(m.get("weight") == 0 for m in stored[0]["inputs"]["messages"])
    # one upload per dataset with examples; the critic pushed first had nothing left to add
    others = [d for d in datasets.values() if d.examples and d is not critic]
    assert critic.examples and len(uploads) == 1 + len(others)


def test_no_api_key_reaches_a_traced_run():
    pytest.importorskip("langchain_openai")
    from fake_providers import FakeOpenAIChat
    from langchain_openai import ChatOpenAI

    from mafl_graph import Arithmetic

    openai_key = "sk-proj-test-0123456789-secret"
    fake, openai = FakeLangSmith(KEY), FakeOpenAIChat(openai_key)
    task = Arithmetic(terms=2, low=0, high=9, operators="+", seed=0)
    with serve(fake) as (ls_url, _), serve(openai) as (openai_url, _):
        model = ChatOpenAI(model="gpt-4o-mini", base_url=f"{openai_url}/v1", api_key=openai_key)
        graph = create_debate_graph(Society.from_model(model, n_agents=2), task, rounds=2)
        tracer = LangChainTracer(project_name=PROJECT, client=_client(ls_url))
        results = run_debates(
            graph,
            task.load("test", 2),
            run_id="keys",
            checkpointer=InMemorySaver(),
            callbacks=[tracer],
            progress=False,
        )
        tracer.wait_for_futures()
    assert all(r.ok and r.correct for r in results)
    assert openai.billing.calls == 2 * 6
    stored = json.dumps(list(fake.runs.values()))
    assert len([r for r in fake.runs.values() if r["run_type"] == "llm"]) == 12
    assert openai_key not in stored and KEY not in stored
    assert "gpt-4o-mini" in stored  # the model is named, only the key is kept out
