"""Graph logic with scripted models: topology, rounds, roles, summaries, voting, tracing."""

from __future__ import annotations

import asyncio
import re

import pytest
from fakes import CallRecorder, EchoTask, ScriptedModel
from langgraph.checkpoint.memory import InMemorySaver

from mafl_graph import Society, create_debate_graph, run_debates
from mafl_graph.models import CONTINUED_KEY
from mafl_graph.society import Agent


def boxed(value: str):
    return lambda messages: f"I think the answer is \\boxed{{{value}}}"


def society_of(*models: ScriptedModel, summarizer: ScriptedModel | None = None) -> Society:
    agents = tuple(Agent(f"agent{i}", m, m) for i, m in enumerate(models))
    return Society(agents=agents, summarizer=summarizer or ScriptedModel(label="summ"))


def debate(society: Society, task=None, **kwargs):
    task = task or EchoTask(["1"])
    graph = create_debate_graph(society, task, **kwargs).compile()
    problem = task.load("test", 1)[0]
    return graph.invoke(
        {"problem_id": problem.id, "question": problem.question, "reference": problem.answer}
    )


def test_topology_has_the_named_nodes_and_real_edges() -> None:
    graph = create_debate_graph(Society.from_model(ScriptedModel()), EchoTask()).compile()
    drawn = graph.get_graph()
    assert set(drawn.nodes) == {
        "__start__",
        "generate",
        "next_round",
        "summarize",
        "critique",
        "vote",
        "__end__",
    }
    edges = {(e.source, e.target) for e in drawn.edges}
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


@pytest.mark.parametrize("rounds, summarize", [(1, True), (2, True), (3, False), (4, True)])
def test_round_count_and_roles(rounds: int, summarize: bool) -> None:
    gens = [ScriptedModel(label=f"gen{i}", reply=boxed("1")) for i in range(3)]
    crits = [ScriptedModel(label=f"crit{i}", reply=boxed("1")) for i in range(3)]
    summarizer = ScriptedModel(label="summ", reply=lambda m: "they agree")
    agents = tuple(
        Agent(f"agent{i}", g, c) for i, (g, c) in enumerate(zip(gens, crits, strict=True))
    )
    society = Society(agents=agents, summarizer=summarizer)
    state = debate(society, rounds=rounds, summarize=summarize)

    responses = state["responses"]
    assert sorted({r["round"] for r in responses}) == list(range(1, rounds + 1))
    assert len(responses) == 3 * rounds
    for r in responses:
        expected = "generator" if r["round"] == 1 else "critic"
        assert r["role"] == expected
        assert r["model"] == f"{'gen' if r['round'] == 1 else 'crit'}{r['agent']}"
    assert [len(g.calls) for g in gens] == [1, 1, 1]
    assert [len(c.calls) for c in crits] == [rounds - 1] * 3
    assert len(summarizer.calls) == (3 * (rounds - 1) if summarize else 0)
    assert len(state.get("summaries", [])) == len(summarizer.calls)


def test_responses_keep_the_exact_conversation() -> None:
    models = [ScriptedModel(label=f"m{i}", reply=boxed(str(i))) for i in range(3)]
    state = debate(society_of(*models), rounds=3, summarize=False)
    by_key = {(r["agent"], r["round"]): r for r in state["responses"]}
    for (agent, round_), r in by_key.items():
        sent = models[agent].calls[round_ - 1]
        assert [m.text for m in sent] == [t["content"] for t in r["messages"]]
        if round_ > 1:  # the agent's own history comes first, then the debate turn
            previous = by_key[(agent, round_ - 1)]
            assert r["messages"][: len(previous["messages"])] == previous["messages"]
            assert r["messages"][len(previous["messages"])] == {
                "role": "assistant",
                "content": previous["text"],
            }


def test_instruction_and_role_open_every_agents_conversation() -> None:
    from mafl_graph.debate import DebatePrompts

    models = [ScriptedModel(label=f"m{i}", reply=boxed("1")) for i in range(2)]
    society = society_of(*models).with_roles(["You check sums.", ""])
    prompts = DebatePrompts(instruction="Work as a team.")
    state = debate(society, rounds=2, summarize=False, prompts=prompts)
    expected = ["Work as a team.\n\nYou check sums.", "Work as a team."]
    for agent, model in enumerate(models):
        for sent in model.calls:  # round 2 continues the round-1 conversation
            assert (sent[0].type, sent[0].text) == ("system", expected[agent])
            assert [m.type for m in sent].count("system") == 1
    assert all(r["messages"][0]["role"] == "system" for r in state["responses"])
    # Without either, nothing is added: the paper's prompts stay exactly as they were.
    plain = ScriptedModel(reply=boxed("1"))
    debate(society_of(plain), rounds=1)
    assert [m.type for m in plain.calls[0]] == ["human"]
    with pytest.raises(ValueError, match="3 role description.*society of 2"):
        society_of(*models).with_roles(["a", "b", "c"])


def test_an_instruction_keeps_the_tasks_own_debate_wording() -> None:
    from langchain_core.prompts import ChatPromptTemplate

    from mafl_graph.debate import DebatePrompts

    task = EchoTask(["1"])
    task.prompts = DebatePrompts(  # type: ignore[attr-defined]
        debate=ChatPromptTemplate.from_messages([("human", "Fix the code:{answers}")])
    )
    models = [ScriptedModel(label=f"m{i}", reply=boxed("1")) for i in range(2)]
    debate(
        society_of(*models),
        task,
        rounds=2,
        summarize=False,
        prompts=DebatePrompts(instruction="Share what you know."),
    )
    round2 = models[0].calls[1]
    assert round2[0].text == "Share what you know."
    assert round2[-1].text.startswith("Fix the code:")


@pytest.mark.parametrize("summarize", [True, False])
def test_advice_never_includes_the_agents_own_answer(summarize: bool) -> None:
    models = [ScriptedModel(label=f"m{i}", reply=boxed(f"{i}0{i}")) for i in range(3)]
    summarizer = ScriptedModel(label="summ", reply=lambda m: "summary of: " + m[-1].text)
    state = debate(society_of(*models, summarizer=summarizer), rounds=2, summarize=summarize)
    for r in state["responses"]:
        if r["round"] != 2:
            continue
        advice = r["messages"][-1]["content"]
        others = {f"{i}0{i}" for i in range(3) if i != r["agent"]}
        assert set(re.findall(r"\d0\d", advice)) == others
    for s in state.get("summaries", []):
        assert f"{s['agent']}0{s['agent']}" not in s["messages"][-1]["content"]


def test_vote_clusters_equivalent_answers() -> None:
    models = [
        ScriptedModel(reply=boxed("\\frac{1}{2}")),
        ScriptedModel(reply=boxed("0.5")),
        ScriptedModel(reply=boxed("3")),
    ]
    state = debate(society_of(*models), task=EchoTask(["1/2"]), rounds=1)
    assert state["consensus"] == "\\frac{1}{2}"
    assert state["consensus_fraction"] == pytest.approx(2 / 3)
    assert state["correct"] is True


def test_tie_break_is_seeded_not_string_order() -> None:
    models = [ScriptedModel(reply=boxed("7")), ScriptedModel(reply=boxed("5"))]
    winners = {
        seed: debate(society_of(*models), rounds=1, seed=seed)["consensus"] for seed in range(20)
    }
    assert set(winners.values()) == {"7", "5"}
    again = {
        seed: debate(society_of(*models), rounds=1, seed=seed)["consensus"] for seed in winners
    }
    assert again == winners


def test_unparseable_answers_are_wrong_never_right() -> None:
    models = [ScriptedModel(reply=lambda m: "I have no idea.") for _ in range(3)]
    state = debate(society_of(*models), task=EchoTask(["1"]), rounds=2)
    assert all(r["answer"] is None for r in state["responses"])
    assert state["consensus"] is None
    assert state["correct"] is False
    assert state["consensus_fraction"] == 0.0


def test_every_model_call_is_named_tagged_and_carries_metadata() -> None:
    recorder = CallRecorder()
    society = Society.from_model(ScriptedModel(reply=boxed("1")), n_agents=2)
    graph = create_debate_graph(society, EchoTask(["1"]), rounds=2)
    run_debates(
        graph,
        EchoTask(["1"]).load("test"),
        run_id="trace",
        checkpointer=InMemorySaver(),
        metadata={"iteration": 3},
        progress=False,
        callbacks=[recorder],
    )
    names = sorted(r["name"] for r in recorder.runs)
    assert names == ["critic[0]", "critic[1]", "generator[0]", "generator[1]"] + ["summarizer"] * 2
    for run in recorder.runs:
        meta = run["metadata"]
        assert meta["mafl_run_id"] == "trace" and meta["problem_id"] == "echo-0"
        assert meta["iteration"] == 3
        assert f"role:{meta['role']}" in run["tags"]
        assert f"agent:{meta['agent']}" in run["tags"]
        assert f"round:{meta['round']}" in run["tags"]
        assert "iteration:3" in run["tags"]
        # only a reply that the agent's next round appends to its conversation is "continued"
        assert meta[CONTINUED_KEY] is (meta["role"] == "generator"), meta


def test_invalid_settings_are_refused_with_the_value() -> None:
    society = Society.from_model(ScriptedModel(), n_agents=1)
    with pytest.raises(ValueError, match="rounds must be at least 1; got 0"):
        create_debate_graph(society, EchoTask(), rounds=0)
    with pytest.raises(ValueError, match="at least 2 agents"):
        create_debate_graph(society, EchoTask(), rounds=2)
    with pytest.raises(ValueError, match="n_agents must be at least 1; got 0"):
        Society.from_model(ScriptedModel(), n_agents=0)
    with pytest.raises(TypeError, match="Task"):
        create_debate_graph(society, object(), rounds=1)  # type: ignore[arg-type]


def test_async_and_sync_invocation_agree() -> None:
    society = society_of(*(ScriptedModel(reply=boxed(str(i))) for i in range(3)))
    graph = create_debate_graph(society, EchoTask(["1"]), rounds=2).compile()
    start = {"problem_id": "p", "question": "q", "reference": "1"}
    sync_state, async_state = graph.invoke(start), asyncio.run(graph.ainvoke(start))
    key = lambda r: (r["round"], r["agent"])  # noqa: E731
    assert sorted(sync_state["responses"], key=key) == sorted(async_state["responses"], key=key)
