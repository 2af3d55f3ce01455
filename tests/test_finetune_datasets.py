"""Per-agent datasets by the paper's definitions, from real debate checkpoints."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
from fakes import EchoTask
from langgraph.checkpoint.memory import InMemorySaver
from test_traces import Script, scripted_society

from mafl_graph import create_debate_graph, run_debates
from mafl_graph.debate.state import Response
from mafl_graph.finetune import build_datasets, mix_counts
from mafl_graph.finetune.datasets import check_w
from mafl_graph.traces import DebateTrace, RunTraces, read_traces, read_traces_sqlite

# Known answers (None = the reply states no answer), per problem, agent and round.
# References: q0 -> 1, q1 -> 2, q2 -> 3, q3 -> 4.
ANSWERS: dict[str, dict[int, tuple[str | None, str | None]]] = {
    "q0": {0: ("1", "1"), 1: ("2", "1"), 2: ("1", "1")},  # consensus 1 (right)
    "q1": {0: ("5", "5"), 1: ("5", "5"), 2: ("2", "2")},  # consensus 5 (wrong)
    "q2": {0: (None, "3"), 1: ("3", "3"), 2: ("3", "3")},  # consensus 3 (right)
    "q3": {0: (None, None), 1: (None, None), 2: (None, None)},  # no consensus
}


def known(agent: int, question: str, round_: int) -> str:
    problem = next(q for q in ANSWERS if f"Solve {q}." in question)
    answer = ANSWERS[problem][agent][min(round_, 2) - 1]
    return f"Round {round_}: \\boxed{{{answer}}}" if answer else f"Round {round_}: unsure"


def run(tmp_path: Path, script: Script = known, rounds: int = 2) -> RunTraces:
    task = EchoTask(["1", "2", "3", "4"])
    graph = create_debate_graph(scripted_society(script), task, rounds=rounds)
    db = tmp_path / "d.sqlite"
    run_debates(graph, task.load("test"), run_id="r", db_path=db, progress=False)
    return read_traces_sqlite(db, "r")


def members(dataset, subset: str | None = None) -> set[str]:
    return {e["problem_id"] for e in dataset.examples if subset in (None, e["subset"])}


def pool(dataset, subset: str) -> set[str]:
    return {e["problem_id"] for e in dataset.pools[subset]}


@pytest.fixture(scope="module")
def traces(tmp_path_factory: pytest.TempPathFactory) -> RunTraces:
    return run(tmp_path_factory.mktemp("debates"))


def test_generator_and_critic_membership_against_the_consensus(traces: RunTraces) -> None:
    assert [t.consensus for t in traces] == ["1", "5", "3", None]
    sets = build_datasets(traces, EchoTask(), w=0.5)
    assert sorted(sets) == [(a, r) for a in range(3) for r in ("critic", "generator")]
    p = lambda *ids: {f"echo-{i}" for i in ids}  # noqa: E731
    assert [members(sets[(a, "generator")]) for a in range(3)] == [p(0, 1), p(1, 2), p(0, 2)]
    assert [pool(sets[(a, "critic")], "D_C-") for a in range(3)] == [p(2), p(0), set()]
    assert [pool(sets[(a, "critic")], "D_C+") for a in range(3)] == [p(0, 1), p(1, 2), p(0, 2)]
    gen0 = sets[(0, "generator")].stats
    assert (gen0.examples, gen0.candidates, gen0.no_target) == (2, 3, 1)
    critic1 = sets[(1, "critic")].stats
    assert (critic1.wrong_first, critic1.right_first) == (1, 2)
    assert (critic1.used_wrong_first, critic1.used_right_first) == (1, 1)
    assert all(e["subset"] == "D_G" for e in sets[(0, "generator")].examples)


def test_the_reference_variant_uses_the_ground_truth(traces: RunTraces) -> None:
    sets = build_datasets(traces, EchoTask(), w=0.5, target="reference")
    p = lambda *ids: {f"echo-{i}" for i in ids}  # noqa: E731
    assert [members(sets[(a, "generator")]) for a in range(3)] == [p(0), p(2), p(0, 1, 2)]
    assert [pool(sets[(a, "critic")], "D_C-") for a in range(3)] == [p(2), p(0), set()]
    assert [pool(sets[(a, "critic")], "D_C+") for a in range(3)] == [p(0), p(2), p(0, 1, 2)]
    assert sets[(0, "generator")].stats.no_target == 0  # q3 has a reference, no consensus


def test_examples_learn_only_the_final_reply(traces: RunTraces) -> None:
    sets = build_datasets(traces, EchoTask(), w=1.0)
    [gen] = [e for e in sets[(0, "generator")].examples if e["problem_id"] == "echo-0"]
    assert gen["messages"] == [
        {"role": "user", "content": "Solve q0."},
        {"role": "assistant", "content": "Round 1: \\boxed{1}", "weight": 1},
    ]
    [critic] = sets[(0, "critic")].examples  # w=1: D_C- only, i.e. q2
    roles = [(m["role"], m.get("weight")) for m in critic["messages"]]
    assert roles == [("user", None), ("assistant", 0), ("user", None), ("assistant", 1)]
    assert critic["messages"][1]["content"] == "Round 1: unsure"  # the wrong first answer
    assert critic["messages"][-1]["content"] == "Round 2: \\boxed{3}"
    assert "summary of responses" in critic["messages"][2]["content"]


def test_in_a_longer_debate_every_earlier_answer_has_weight_zero(tmp_path: Path) -> None:
    three = run(tmp_path, rounds=3)
    sets = build_datasets(three, EchoTask(), w=0.0)
    for example in sets[(1, "critic")].examples:
        weights = [m["weight"] for m in example["messages"] if m["role"] == "assistant"]
        assert weights == [0, 0, 1]
        assert example["messages"][-1]["content"].startswith("Round 3")


@pytest.mark.parametrize(
    "n_wrong, n_right, w, expected",
    [
        (10, 100, 0.67, (10, 5)),
        (100, 10, 0.67, (20, 10)),
        (3, 7, 0.5, (3, 3)),
        (7, 3, 0.5, (3, 3)),
        (5, 8, 1.0, (5, 0)),
        (5, 8, 0.0, (0, 8)),
        (0, 8, 0.67, (0, 0)),
        (8, 0, 0.67, (0, 0)),
        (8, 0, 1.0, (8, 0)),
        (0, 0, 0.67, (0, 0)),
        (1, 200, 0.67, (1, 0)),
    ],
)
def test_mix_counts_keep_the_share_and_never_overdraw(
    n_wrong: int, n_right: int, w: float, expected: tuple[int, int]
) -> None:
    got = mix_counts(n_wrong, n_right, w)
    assert got == expected
    assert got[0] <= n_wrong and got[1] <= n_right


def synthetic(n: int, wrong_every: int | None) -> list[DebateTrace]:
    """Hand-built finished debates of one agent: right in the end, wrong first every k-th."""
    traces = []
    for i in range(n):
        first = "0" if wrong_every and i % wrong_every == 0 else "1"
        question: list = [{"role": "user", "content": f"Solve p{i}."}]
        debate = [
            *question,
            {"role": "assistant", "content": first},
            {"role": "user", "content": "?"},
        ]
        responses = [
            Response(agent=0, role="generator", round=1, messages=question, text=first,
                     answer=first, model="m"),
            Response(agent=0, role="critic", round=2, messages=debate, text="1", answer="1",
                     model="m"),
        ]  # fmt: skip
        traces.append(
            DebateTrace(
                run_id="s",
                thread_id=f"s/p{i:03d}",
                problem_id=f"p{i:03d}",
                question="q",
                reference="1",
                consensus="1",
                consensus_fraction=1.0,
                correct=True,
                responses=responses,
            )
        )
    return traces


@pytest.mark.parametrize("w", [0.0, 0.67, 1.0])
def test_mixing_with_w(w: float) -> None:
    traces = synthetic(90, wrong_every=3)  # |D_C-| = 30, |D_C+| = 60
    critic = build_datasets(traces, EchoTask(), w=w)[(0, "critic")]
    n_wrong = sum(e["subset"] == "D_C-" for e in critic.examples)
    n_right = sum(e["subset"] == "D_C+" for e in critic.examples)
    assert (n_wrong, n_right) == {0.0: (0, 60), 0.67: (30, 15), 1.0: (30, 0)}[w]
    assert len({e["problem_id"] for e in critic.examples}) == len(critic.examples)  # no repeats
    if 0 < w < 1:
        assert abs(n_wrong / (n_wrong + n_right) - w) < 0.02


def test_a_tiny_or_empty_side_shrinks_the_mix_instead_of_crashing() -> None:
    tiny = build_datasets(synthetic(40, wrong_every=40), EchoTask(), w=0.67)[(0, "critic")]
    assert (tiny.stats.wrong_first, tiny.stats.right_first) == (1, 39)
    assert (tiny.stats.used_wrong_first, tiny.stats.used_right_first) == (1, 0)
    no_wrong = build_datasets(synthetic(20, wrong_every=None), EchoTask(), w=0.67)
    assert no_wrong[(0, "critic")].examples == []
    all_wrong = build_datasets(synthetic(20, wrong_every=1), EchoTask(), w=0.67)
    assert all_wrong[(0, "critic")].examples == []
    only_wrong = build_datasets(synthetic(20, wrong_every=1), EchoTask(), w=1)[(0, "critic")]
    assert len(only_wrong.examples) == 20


def test_seeded_and_deterministic() -> None:
    traces = synthetic(60, wrong_every=2)

    def order(seed: int) -> list[str]:
        sets = build_datasets(traces, EchoTask(), w=0.67, seed=seed)
        return [e["problem_id"] for d in sets.values() for e in d.examples]

    assert order(0) == order(0)
    assert order(0) != order(1)
    assert sorted(order(0)) != order(0)  # shuffled, not in problem order


def test_stats_count_tokens(traces: RunTraces) -> None:
    sets = build_datasets(traces, EchoTask(), w=1.0, count_tokens=lambda text: 1)
    critic = sets[(0, "critic")].stats  # one example of four messages, one of them trained
    assert (critic.mean_tokens, critic.mean_trained_tokens) == (4.0, 1.0)
    default = build_datasets(traces, EchoTask(), w=1.0)[(0, "generator")].stats
    assert default.mean_tokens == math.ceil(len("Solve q0.") / 4) + math.ceil(
        len("Round 1: \\boxed{1}") / 4
    )
    assert set(default.as_dict()) >= {"examples", "wrong_first", "right_first", "mean_tokens"}


@pytest.mark.parametrize("w", [-0.1, 1.5, float("nan"), "abc"])
def test_an_invalid_w_is_refused_naming_it(traces: RunTraces, w) -> None:
    with pytest.raises(ValueError, match=re.escape(f"w={w!r}")):
        build_datasets(traces, EchoTask(), w=w)
    with pytest.raises(ValueError, match="must lie in"):
        check_w(w)


def test_other_bad_arguments(traces: RunTraces) -> None:
    with pytest.raises(ValueError, match="target must be one of"):
        build_datasets(traces, EchoTask(), target="majority")  # type: ignore[arg-type]
    no_reference = [DebateTrace(**{**t.__dict__, "reference": None}) for t in traces]
    with pytest.raises(ValueError, match="none of the 4 debates has a reference"):
        build_datasets(no_reference, EchoTask(), target="reference")
    with pytest.raises(ValueError, match="n_agents=2"):
        build_datasets(traces, EchoTask(), n_agents=2)
    more = build_datasets(traces, EchoTask(), n_agents=4)
    assert more[(3, "generator")].examples == [] and more[(3, "critic")].examples == []


def test_one_round_debates_have_no_critic_datasets() -> None:
    saver = InMemorySaver()
    task = EchoTask(["1", "2"])
    graph = create_debate_graph(scripted_society(lambda a, q, r: "\\boxed{1}"), task, rounds=1)
    run_debates(graph, task.load("test"), run_id="one", checkpointer=saver, progress=False)
    sets = build_datasets(read_traces(saver, "one"), task)
    assert sorted(sets) == [(0, "generator"), (1, "generator"), (2, "generator")]
    assert [len(d.examples) for d in sets.values()] == [2, 2, 2]
