"""The debate inside another app, traced to LangSmith and read back, as an integrating developer
would run it.

The app is examples/debate_as_subgraph.py, both ways of embedding (the debate as a node, and
called from a node), with state keys named like the debate's (``responses``, ``correct``,
``question`` …). The real ``langsmith`` client and LangChain's real tracer upload to the loopback
stand-in for the LangSmith API (tests/fake_langsmith.py), which answers the read queries; the key
test drives the real ``langchain-openai`` client against a loopback gateway that echoes the key it
was sent in its 401. Other models are scripted (graph logic).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("langsmith")

from fake_http import serve  # noqa: E402
from fake_langsmith import FakeLangSmith  # noqa: E402
from fakes import ScriptedModel  # noqa: E402
from langchain_core.messages import BaseMessage  # noqa: E402
from langchain_core.tracers import LangChainTracer  # noqa: E402
from langgraph.checkpoint.memory import InMemorySaver  # noqa: E402
from langgraph.graph import START, StateGraph  # noqa: E402
from langsmith import Client  # noqa: E402
from langsmith.env import get_langchain_env_var_metadata  # noqa: E402
from typing_extensions import TypedDict  # noqa: E402

from mafl_graph import (  # noqa: E402
    Arithmetic,
    Problem,
    Society,
    build_datasets,
    create_debate_graph,
    read_traces,
    run_debates,
)
from mafl_graph.langsmith import read_traces_langsmith  # noqa: E402
from mafl_graph.society import Agent  # noqa: E402

pytestmark = pytest.mark.allow_hosts(["127.0.0.1"])

KEY = "lsv2_pt_0123456789abcdef0123456789abcdef_0123456789"
PROJECT = "helper-app"
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "debate_as_subgraph.py"


@pytest.fixture(autouse=True)
def langsmith_settings(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Settings that the langsmith client copies into every run's metadata, as a deployment
    has them: a reader must not hand them out as the debate's metadata."""
    monkeypatch.setenv("LANGSMITH_PROJECT", PROJECT)
    monkeypatch.setenv("LANGSMITH_REVISION_ID", "rev-42")
    get_langchain_env_var_metadata.cache_clear()
    yield
    get_langchain_env_var_metadata.cache_clear()


def _example() -> Any:
    spec = importlib.util.spec_from_file_location("debate_as_subgraph", EXAMPLE)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = example
    spec.loader.exec_module(example)
    return example


def _answer(messages: list[BaseMessage]) -> str:
    first = messages[0].text
    if "What is the result of " not in first:  # the summarizer's prompt
        return "The others say the same."
    expression = first.split("What is the result of ", 1)[1].split("?", 1)[0]
    return f"\\boxed{{{eval(expression, {'__builtins__': {}})}}}"  # digits and + - * only


def _client(url: str) -> Client:
    return Client(api_url=url, api_key=KEY, auto_batch_tracing=False)


def _config(thread: str, run_id: str, tracer: LangChainTracer) -> Any:
    return {
        "configurable": {"thread_id": thread},
        "metadata": {"mafl_run_id": run_id},
        "callbacks": [tracer],
    }


@pytest.mark.parametrize("style", ["subgraph", "call"])
def test_every_debate_an_app_runs_is_read_back_alike_from_langsmith_and_its_checkpoints(
    style: str,
) -> None:
    society = Society.from_model(ScriptedModel(reply=_answer), n_agents=3)
    task = Arithmetic()
    app = _example().build_app(society, task, style=style, checkpointer=InMemorySaver())
    fake = FakeLangSmith(KEY)
    own = {"responses": ["Hello!"], "correct": "app-value"}  # the app's keys, debate names
    with serve(fake) as (url, _):
        tracer = LangChainTracer(project_name=PROJECT, client=_client(url))

        def two_turns() -> None:  # one thread, two debates
            config = _config("a", "helper", tracer)
            app.invoke({"request": "What is 12 + 7*2?", **own}, config)
            app.invoke({"request": "And 3*3?"}, config)

        with ThreadPoolExecutor(2) as pool:  # two threads of the app at once
            done = [
                pool.submit(two_turns),
                pool.submit(app.invoke, {"request": "5+5?", **own}, _config("b", "helper", tracer)),
            ]
            for future in done:
                future.result()
        tracer.wait_for_futures()
        from_langsmith = read_traces_langsmith(PROJECT, "helper", client=_client(url))
        other_run = read_traces_langsmith(PROJECT, "someone-else", client=_client(url))
    from_checkpoints = read_traces(app.checkpointer, "helper")

    # The app's state is its own: the debate handed back its record and nothing else.
    for thread, replies in (("a", 3), ("b", 2)):
        values = app.get_state({"configurable": {"thread_id": thread}}).values
        assert values["correct"] == "app-value" and len(values["responses"]) == replies
        assert all(isinstance(r, str) for r in values["responses"])

    # Every debate, three in two threads, read back from either source, alike.
    assert sorted(t.consensus for t in from_langsmith) == ["10", "26", "9"]
    assert from_langsmith.unfinished == [] and from_checkpoints.unfinished == []
    assert len(from_checkpoints) == 3 and len(other_run) == 0
    assert [t.thread_id for t in from_langsmith] == ["a", "a", "b"]
    for ls, cp in zip(from_langsmith, from_checkpoints, strict=True):
        assert (ls.thread_id, ls.checkpoint_ns, ls.problem_id) == (
            cp.thread_id,
            cp.checkpoint_ns,
            cp.problem_id,
        )
        assert ls.checkpoint_ns.startswith("debate:" if style == "subgraph" else "consult:")
        assert (ls.question, ls.consensus, ls.consensus_fraction, ls.correct) == (
            cp.question,
            cp.consensus,
            cp.consensus_fraction,
            cp.correct,
        )
        assert ls.responses == cp.responses and len(ls.responses) == 6
        assert ls.summaries == cp.summaries and len(ls.summaries) == 3
        # The run's metadata, as the checkpoints hold it: not LangSmith's own settings.
        assert ls.metadata == {"mafl_run_id": "helper"}
        assert ls.metadata.items() <= cp.metadata.items()
    assert build_datasets(from_langsmith, task) == build_datasets(from_checkpoints, task)

    # Every model call of every debate carries the app's tag.
    llm = [r for r in fake.runs.values() if r["run_type"] == "llm"]
    assert len(llm) == 3 * 9
    assert all(r["extra"]["metadata"]["mafl_run_id"] == "helper" for r in llm)
    # Each model node is one run with the model's run under it, not a node run nested in a
    # second run of the same name.
    runs = fake.runs.values()
    for node in ("generate", "summarize", "critique"):
        named = [r for r in runs if r["name"] == node]
        assert len(named) == 3 * 3, node  # 3 debates, 3 agents
        parents = {str(r["id"]) for r in named}
        assert not [r for r in named if str(r.get("parent_run_id")) in parents], node


def _gateway_society(openai_url: str) -> Society:
    """Agent 0 calls a gateway that refuses its key and echoes it; the others are scripted."""
    from langchain_openai import ChatOpenAI

    refused = ChatOpenAI(model="gateway-model", base_url=openai_url, max_retries=0)
    scripted = ScriptedModel(reply=_answer)
    agents = (Agent("a0", refused, refused), *(Agent(f"a{i}", scripted, scripted) for i in (1, 2)))
    return Society(agents, summarizer=scripted)


def test_a_key_that_a_model_error_echoes_reaches_no_trace_result_checkpoint_or_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("langchain_openai")
    from fault_server import FaultServer, arithmetic_answer
    from fault_server import serve as serve_gateway

    # Not shaped like any provider's key: only knowing the environment's keys redacts it.
    openai_key = "gateway-credential-4f1d9a7c2be8"
    monkeypatch.setenv("OPENAI_API_KEY", openai_key)
    gateway = FaultServer(answer=arithmetic_answer, api_key="the-key-the-gateway-wants-000")
    fake = FakeLangSmith(KEY)
    task = Arithmetic(terms=2, low=0, high=9, operators="+", seed=0)
    problem = task.load("test", 1)[0]
    with serve(fake) as (url, _), serve_gateway(gateway):
        society = _gateway_society(gateway.url)
        tracer = LangChainTracer(project_name=PROJECT, client=_client(url))
        # The runner's road ...
        saver = InMemorySaver()
        [result] = run_debates(
            create_debate_graph(society, task, rounds=2),
            [problem],
            run_id="keys",
            checkpointer=saver,
            callbacks=[tracer],
            progress=False,
        )
        # ... and an app's.
        app = _example().build_app(society, task, checkpointer=InMemorySaver())
        with pytest.raises(Exception) as raised:
            app.invoke({"request": problem.question}, _config("app-1", "keys-app", tracer))
        tracer.wait_for_futures()
        read = {
            run: read_traces_langsmith(PROJECT, run, client=_client(url))
            for run in ("keys", "keys-app")
        }
    assert gateway.faults()["401"] == 2  # agent 0's generator, once per road (no retry)
    stored = {"keys": saver, "keys-app": app.checkpointer}
    uploaded = json.dumps(list(fake.runs.values()))
    assert "Incorrect API key provided: [REDACTED]" in uploaded  # the error is there ...
    assert openai_key not in uploaded and KEY not in uploaded  # ... and no key
    for text in (str(raised.value), result.error or "", repr(raised.value)):
        assert openai_key not in text and "Incorrect API key provided" in text
    # The error says which call failed, as an empty reply's does.
    app_problem = app.get_state({"configurable": {"thread_id": "app-1"}}).values["problem_id"]
    where = {
        "keys": f"gateway-model (generator of agent 0, round 1, problem {problem.id})",
        "keys-app": f"gateway-model (generator of agent 0, round 1, problem {app_problem})",
    }
    assert where["keys"] in (result.error or "") and where["keys-app"] in str(raised.value)
    error_type = type(raised.value).__name__
    for run_id, saver_of_run in stored.items():
        blob = repr(saver_of_run.storage) + repr(saver_of_run.writes)
        assert "Incorrect API key provided" in blob and openai_key not in blob
        from_checkpoints = read_traces(saver_of_run, run_id)
        [cp] = from_checkpoints.unfinished
        [ls] = read[run_id].unfinished
        assert len(read[run_id]) == len(from_checkpoints) == 0
        # Both readers report the same error, as the exception's type and message.
        assert ls.error == cp.error
        assert (ls.thread_id, ls.checkpoint_ns, ls.problem_id) == (
            cp.thread_id,
            cp.checkpoint_ns,
            cp.problem_id,
        )
        assert (cp.error or "").startswith(f"{error_type}: {where[run_id]}: Error code: 401")
        assert "Traceback" not in (ls.error or "") and openai_key not in (ls.error or "")


class _Host(TypedDict, total=False):
    question: str
    responses: str


def test_a_host_state_without_a_problem_id_is_told_what_is_missing() -> None:
    debate = create_debate_graph(
        Society.from_model(ScriptedModel(reply=_answer), n_agents=2), Arithmetic()
    ).compile(name="debate")
    host = StateGraph(_Host)
    host.add_node("debate", debate)
    host.add_edge(START, "debate")
    fake = FakeLangSmith(KEY)
    with serve(fake) as (url, _):
        tracer = LangChainTracer(project_name=PROJECT, client=_client(url))
        with pytest.raises(ValueError, match="has no problem_id") as raised:
            host.compile().invoke({"question": "1+1", "responses": "mine"}, {"callbacks": [tracer]})
        tracer.wait_for_futures()
    assert "it was given ['question']" in str(raised.value)
    [root] = [r for r in fake.runs.values() if r.get("parent_run_id") is None]
    assert "has no problem_id" in root["error"]
    assert not [r for r in fake.runs.values() if r["run_type"] == "llm"]  # nobody was asked


def test_a_debate_input_without_a_question_is_refused_by_the_runner_too() -> None:
    graph = create_debate_graph(Society.from_model(ScriptedModel(), n_agents=2), Arithmetic())
    [result] = run_debates(
        graph, [Problem("p1", "", None)], checkpointer=InMemorySaver(), progress=False
    )
    assert result.error is not None and "has no question" in result.error


def test_a_graph_with_an_output_key_runs_under_run_debates_and_refuses_a_debate_key() -> None:
    society = Society.from_model(ScriptedModel(reply=_answer), n_agents=2)
    task = Arithmetic(terms=2, low=0, high=9, operators="+", seed=0)
    graph = create_debate_graph(society, task, output_key="debate")
    [result] = run_debates(
        graph, task.load("test", 1), checkpointer=InMemorySaver(), progress=False
    )
    assert result.ok and result.correct is True and len(result.responses) == 4
    with pytest.raises(ValueError, match="not one of the debate's own keys"):
        create_debate_graph(society, task, output_key="responses")
