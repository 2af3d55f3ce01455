"""EvoPrompt over a debating society, with scripted models: selection, survival, the parse of
<prompt>, the fitness cache, resuming, and the evolved prompts reaching the debaters."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
from fakes import EchoTask, ScriptedModel
from langchain_core.messages import BaseMessage

from mafl_graph.debate import create_debate_graph
from mafl_graph.debate.run import run_debates
from mafl_graph.experts.evoprompt import (
    INSTRUCTION_KIND,
    EvolvedPrompts,
    EvoPromptConfig,
    FitnessCache,
    PromptSet,
    Scored,
    de_generation,
    de_request,
    de_select,
    draft_roles,
    evolve_prompts,
    fitness,
    ga_generation,
    ga_parents,
    ga_request,
    parse_prompt,
    roulette,
    survivors,
)
from mafl_graph.society import Agent, Society

ANSWERS = ["1", "2", "3", "4"]


def _system(messages: list[BaseMessage]) -> str:
    return next((m.text for m in messages if m.type == "system"), "")


def starred(messages: list[BaseMessage]) -> str:
    """A debater that solves problem i only when its system message holds more than i stars:
    a prompt set's fitness is (stars, capped) / 4, so better prompts are easy to write."""
    question = next(m.text for m in messages if m.type == "human")
    index = int(re.search(r"q(\d+)", question).group(1))  # type: ignore[union-attr]
    right = index < _system(messages).count("*")
    return f"\\boxed{{{ANSWERS[index] if right else '99'}}}"


def improving(messages: list[BaseMessage]) -> str:
    """An optimizer whose child is the (GA) first parent or (DE) basic prompt plus one star."""
    request = messages[-1].text.split("Now:")[-1]
    found = re.search(r"Basic prompt: (.*)", request) or re.search(r"Prompt 1: (.*)", request)
    assert found is not None
    return f"1. Crossover ...\n2. Final prompt: <prompt>{found.group(1).strip()} *</prompt>"


def society_of(*models: ScriptedModel, summarizer: ScriptedModel | None = None) -> Society:
    agents = tuple(Agent(f"expert{i}", m, m) for i, m in enumerate(models))
    return Society(agents=agents, summarizer=summarizer or ScriptedModel(label="summ"))


TASK = EchoTask(ANSWERS)
DEV = TASK.load("train", 4)
SMALL = {"population": 3, "iterations": 2, "rounds": 1, "summarize": False}


def evolve(tmp: Path, debater: ScriptedModel, optimizer_model: ScriptedModel, **config):
    return evolve_prompts(
        society_of(debater),
        TASK,
        DEV,
        tmp,
        EvoPromptConfig(**{**SMALL, **config}),
        optimizer_model,
        seed_roles=("You are careful.", "You are quick.", "You are thorough."),
    )


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# The parse of <prompt> ---------------------------------------------------------------------


def test_parse_prompt_takes_the_last_answer_and_passes_over_the_request_s_own_tags() -> None:
    request = ga_request("You are fast.", "You are right.")
    assert parse_prompt("<prompt>draft</prompt> then <prompt> “Final one.” </prompt>") == (
        "Final one."
    )
    # The instruction echoed back ("starting with <prompt> and ending with </prompt>") and the
    # worked example's answer are the request's own text, not an answer.
    echoed = "Give the final prompt, starting with <prompt> and ending with </prompt>."
    example = re.search(r"<prompt>(.*?)</prompt>", request).group(0)  # type: ignore[union-attr]
    assert parse_prompt(echoed, request) is None
    assert parse_prompt(f"As shown: {example}", request) is None
    assert parse_prompt(f"{example}\n<prompt>You are exact.</prompt>", request) == "You are exact."
    assert parse_prompt("<PROMPT>Cut off by the token lim", request) == "Cut off by the token lim"
    assert parse_prompt("Give the final prompt, starting with <prompt> and end", request) is None
    assert parse_prompt("No tags at all.", request) is None
    assert parse_prompt("<prompt>  </prompt>", request) is None


# Selection and survival --------------------------------------------------------------------


def test_roulette_draws_in_proportion_to_fitness_and_never_a_zero() -> None:
    population = [Scored("zero", 0.0), Scored("one", 1.0), Scored("three", 3.0)]
    drawn = [m.text for m in roulette(population, 4000, random.Random(0))]
    assert "zero" not in drawn
    assert 2.6 < drawn.count("three") / drawn.count("one") < 3.4
    flat = [m.text for m in roulette([Scored("a", 0.0), Scored("b", 0.0)], 400, random.Random(1))]
    assert 150 < flat.count("a") < 250  # all zero: uniform
    with pytest.raises(ValueError, match="non-empty"):
        roulette([], 1, random.Random(0))
    pairs = ga_parents([Scored("only", 1.0)], 3, random.Random(0))
    assert pairs == [(Scored("only", 1.0), Scored("only", 1.0))] * 3


def test_ga_keeps_the_best_n_of_parents_and_children_and_skips_a_reply_without_a_prompt() -> None:
    parents = [Scored("p-low", 0.1), Scored("p-mid", 0.5), Scored("p-high", 0.9)]
    scores = {"c-best": 1.0, "c-tie": 0.5, "p-mid": 0.5}
    replies = iter(["<prompt>c-best</prompt>", "I would rather not.", "<prompt>c-tie</prompt>"])
    scored: list[str] = []

    def score(text: str) -> float:
        scored.append(text)
        return scores[text]

    population, children = ga_generation(
        parents,
        n=3,
        ask=lambda requests: [next(replies) for _ in requests],
        score=score,
        rng=random.Random(0),
    )
    assert [m.text for m in population] == ["c-best", "p-high", "p-mid"]  # tie: the parent
    assert [c.failure is not None for c in children] == [False, True, False]
    assert children[1].reply == "I would rather not." and children[1].text is None
    assert scored == ["c-best", "c-tie"]  # the failed child costs no evaluation
    assert survivors([Scored("a", 0.2)], [Scored("a", 0.9), Scored("b", 0.1)], 5) == [
        Scored("a", 0.2),
        Scored("b", 0.1),
    ]


def test_de_replaces_a_member_only_with_a_child_that_scores_higher() -> None:
    assert de_select(Scored("m", 0.5), Scored("c", 0.6)) == Scored("c", 0.6)
    assert de_select(Scored("m", 0.5), Scored("c", 0.5)) == Scored("m", 0.5)
    assert de_select(Scored("m", 0.5), None) == Scored("m", 0.5)
    population = [Scored("a", 0.2), Scored("b", 0.8), Scored("c", 0.5)]
    scores = {"a2": 0.9, "b2": 0.1}
    replies = {"a": "<prompt>a2</prompt>", "b": "<prompt>b2</prompt>", "c": "no prompt here"}
    requests_seen: list[str] = []

    def ask(requests: list[str]) -> list[str]:
        requests_seen.extend(requests)
        tails = [r.split("Now:")[-1] for r in requests]
        return [replies[re.search(r"Basic prompt: (\w+)", t).group(1)] for t in tails]  # type: ignore[union-attr]

    new, children = de_generation(
        population, ask=ask, score=scores.__getitem__, rng=random.Random(0)
    )
    assert [m.text for m in new] == ["a2", "b", "c"]
    assert children[2].failure and children[2].text is None
    # Each request merges into the best member and names two others as the differing pair.
    for request, member in zip(requests_seen, "abc", strict=True):
        tail = request.split("Now:")[-1]
        assert "Prompt 3: b" in tail
        pair = re.findall(r"Prompt [12]: (\w+)", tail)
        assert len(set(pair)) == 2 and member not in pair
    assert "Identify the parts where Prompt 1 and Prompt 2 differ" in de_request(
        "m", "x", "y", "z", INSTRUCTION_KIND
    )


def test_fitness_is_accuracy_plus_weighted_agreement() -> None:
    results = [
        {"correct": True, "consensus_fraction": 1.0},
        {"correct": None, "consensus_fraction": 0.5},  # undecided counts as wrong
    ]
    assert fitness(results) == 0.5
    assert fitness(results, agreement_weight=0.2) == pytest.approx(0.5 + 0.2 * 0.75)


# Bad input ---------------------------------------------------------------------------------


def test_an_empty_population_or_bad_settings_are_refused_clearly(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="population must be at least 1"):
        EvoPromptConfig(population=0)
    with pytest.raises(ValueError, match="de needs a population of at least 3"):
        EvoPromptConfig(optimizer="de", population=2)
    with pytest.raises(ValueError, match="evolve must name"):
        EvoPromptConfig(evolve="everything")
    with pytest.raises(ValueError, match="optimizer must be one of"):
        EvoPromptConfig(optimizer="pso")
    society = society_of(ScriptedModel(reply=starred))
    config = EvoPromptConfig(**SMALL, evolve="instruction")
    with pytest.raises(ValueError, match="initial population of instruction is empty"):
        evolve_prompts(society, TASK, DEV, tmp_path / "a", config, seed_instructions=())
    with pytest.raises(ValueError, match="dev_problems is empty"):
        evolve_prompts(society, TASK, [], tmp_path / "b", config)
    de = EvoPromptConfig(**{**SMALL, "optimizer": "de"}, evolve="instruction")
    with pytest.raises(ValueError, match="instruction has 2"):
        evolve_prompts(society, TASK, DEV, tmp_path / "c", de, seed_instructions=("x", "y"))
    with pytest.raises(FileNotFoundError, match="no EvoPrompt result"):
        EvolvedPrompts.load(tmp_path / "nothing")


# The whole run -----------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["ga", "de"])
def test_evolution_improves_records_every_candidate_and_applies(
    tmp_path: Path, method: str
) -> None:
    debater, optimizer = ScriptedModel(reply=starred), ScriptedModel(reply=improving)
    result = evolve(tmp_path, debater, optimizer, optimizer=method)
    # Each generation adds a star to the instruction and to the role: 2 iterations, 4 stars.
    assert result.fitness == result.accuracy == 1.0
    assert result.instruction.count("*") + result.roles[0].count("*") >= 4
    candidates = lines(tmp_path / "candidates.jsonl")
    children = [c for c in candidates if c["origin"] == method]
    assert len(children) == 2 * 2 * 3  # iterations x tracks x population
    assert all(c["score"] is not None and c["set"] for c in candidates)
    steps = lines(tmp_path / "generations.jsonl")
    assert [s["best"] for s in steps if s["track"] == "instruction"] == sorted(
        s["best"] for s in steps if s["track"] == "instruction"
    )  # the best never gets worse
    assert EvolvedPrompts.load(tmp_path) == result
    assert result.usage["optimizer_calls"] == 12
    # One debate per (prompt set, problem), each one call: the cache paid for nothing twice.
    assert result.usage["debate_calls"] == len(debater.calls) == 4 * result.usage["prompt_sets"]
    # The result applies to a society and a debate like any roles and prompts.
    society = result.society(society_of(debater))
    assert society.agents[0].role == result.roles[0]
    assert result.prompts.instruction == result.instruction


def test_a_reply_without_a_prompt_is_recorded_as_a_failed_candidate(tmp_path: Path) -> None:
    replies = iter(range(1000))

    def sometimes(messages: list[BaseMessage]) -> str:
        return improving(messages) if next(replies) % 2 else "Sure! Here is a better prompt."

    result = evolve(tmp_path, ScriptedModel(reply=starred), ScriptedModel(reply=sometimes))
    failed = [c for c in lines(tmp_path / "candidates.jsonl") if c["failure"]]
    assert failed and all(c["text"] is None and c["score"] is None for c in failed)
    assert failed[0]["reply"] == "Sure! Here is a better prompt."
    assert result.usage["failed_candidates"] == len(failed)
    assert result.fitness > 0


def test_a_cached_prompt_set_is_never_debated_again(tmp_path: Path) -> None:
    debater = ScriptedModel(reply=starred)
    config = EvoPromptConfig(**SMALL)
    cache = FitnessCache(tmp_path, society_of(debater), TASK, DEV, config)
    prompt_set = PromptSet("Work together **", ("You are careful.",))
    assert cache.score(prompt_set) == 0.5
    assert len(debater.calls) == 4
    again = FitnessCache(tmp_path, society_of(debater), TASK, DEV, config)
    assert again.score(prompt_set) == 0.5 and again.debated == 0
    assert len(debater.calls) == 4
    # A larger dev set debates only the problems the set has no result for.
    more = FitnessCache(tmp_path, society_of(debater), EchoTask([*ANSWERS, "5"]), [*DEV], config)
    assert more.score(prompt_set) == 0.5 and len(debater.calls) == 4


def test_resume_after_an_interruption_mid_iteration_pays_for_nothing_twice(
    tmp_path: Path,
) -> None:
    whole_debater, whole_optimizer = ScriptedModel(reply=starred), ScriptedModel(reply=improving)
    whole = evolve(tmp_path / "whole", whole_debater, whole_optimizer)

    # The first run dies in iteration 1: one optimizer call fails (the others of its batch
    # arrive), and, in a second try, a debate of a child fails.
    count = iter(range(1000))

    def flaky_optimizer(messages: list[BaseMessage]) -> str:
        if next(count) == 4:
            raise ConnectionError("the optimizer went away")
        return improving(messages)

    debates = iter(range(10_000))

    def flaky_debater(messages: list[BaseMessage]) -> str:
        if next(debates) == 5:
            raise ValueError("the debater went away")
        return starred(messages)

    run = tmp_path / "run"
    first_debater, first_optimizer = (
        ScriptedModel(reply=starred),
        ScriptedModel(reply=flaky_optimizer),
    )
    with pytest.raises(RuntimeError, match="optimizer model failed"):
        evolve(run, first_debater, first_optimizer)
    second_debater, second_optimizer = (
        ScriptedModel(reply=flaky_debater),
        ScriptedModel(reply=improving),
    )
    with pytest.raises(RuntimeError, match="dev debate"):
        evolve(run, second_debater, second_optimizer)
    third_debater, third_optimizer = ScriptedModel(reply=starred), ScriptedModel(reply=improving)
    resumed = evolve(run, third_debater, third_optimizer)

    assert (resumed.instruction, resumed.roles, resumed.fitness) == (
        whole.instruction,
        whole.roles,
        whole.fitness,
    )
    debater_calls = [first_debater, second_debater, third_debater]
    optimizer_calls = [first_optimizer, second_optimizer, third_optimizer]
    assert sum(len(m.calls) for m in debater_calls) == len(whole_debater.calls)
    assert sum(len(m.calls) for m in optimizer_calls) == len(whole_optimizer.calls)
    assert resumed.usage == whole.usage
    # A finished run asked again costs nothing.
    idle_debater, idle_optimizer = ScriptedModel(reply=starred), ScriptedModel(reply=improving)
    assert evolve(run, idle_debater, idle_optimizer) == resumed
    assert not idle_debater.calls and not idle_optimizer.calls
    # More iterations continue from where the run stopped.
    evolve(run, idle_debater, idle_optimizer, iterations=3)
    assert len(idle_optimizer.calls) == 2 * 3  # one more generation of both tracks
    assert {s["iteration"] for s in lines(run / "generations.jsonl")} == {0, 1, 2, 3}
    with pytest.raises(ValueError, match="other settings"):
        evolve(run, idle_debater, idle_optimizer, population=4)


# Drafting and the real debate --------------------------------------------------------------


def test_experts_draft_their_roles_from_their_piles_once(tmp_path: Path) -> None:
    def drafter(topic: str):
        def reply(messages: list[BaseMessage]) -> str:
            text = messages[-1].text
            assert "Problem 1:" in text and topic in text
            return f"<prompt>You are good at {topic}.</prompt>"

        return reply

    mute = ScriptedModel(reply=lambda messages: "I am good at many things.")
    society = society_of(ScriptedModel(reply=drafter("sums")), mute)
    piles = [["What is 2 sums 3?", "sums of 4 and 5"], ["Code a sort."]]
    drafts = draft_roles(society, piles, drafts=2, examples=1, run_dir=tmp_path)
    assert drafts == [["You are good at sums."], []]
    failed = [c for c in lines(tmp_path / "candidates.jsonl") if c["failure"]]
    assert [c["track"] for c in failed] == ["role:expert1", "role:expert1"]
    again = society_of(ScriptedModel(reply=drafter("sums")), ScriptedModel())
    assert draft_roles(again, piles, drafts=2, examples=1, run_dir=tmp_path) == drafts
    assert not again.agents[0].generator.calls  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="one pile"):
        draft_roles(society, piles[:1])


def test_evolved_instruction_and_roles_reach_the_models_as_the_system_message(
    tmp_path: Path,
) -> None:
    def drafting_debater(name: str):
        def reply(messages: list[BaseMessage]) -> str:
            if "describe what you are good at" in messages[-1].text:
                return f"<prompt>You are {name}, the drafted expert.</prompt>"
            return starred(messages)

        return reply

    models = [ScriptedModel(reply=drafting_debater(f"E{i}")) for i in range(2)]
    summarizer = ScriptedModel(label="summ", reply=lambda m: "They agree.")
    society = society_of(*models, summarizer=summarizer)
    result = evolve_prompts(
        society,
        TASK,
        DEV[:2],
        tmp_path,
        EvoPromptConfig(population=2, iterations=1, rounds=2, drafts=1, examples=1),
        ScriptedModel(reply=improving),
        piles=[["q one"], ["q two"]],
    )
    initial = json.loads((tmp_path / "initial.json").read_text())
    assert initial["populations"][1][0] == ["You are E0, the drafted expert.", "draft"]
    # Every debater call of the evolution opened with a candidate instruction, then a
    # candidate of the agent's own role; the drafted role was among those debated.
    texts: dict[str, set[str]] = {}
    for candidate in lines(tmp_path / "candidates.jsonl"):
        texts.setdefault(candidate["track"], set()).add(candidate["text"])
    for i, model in enumerate(models):
        systems = {c[0].text for c in model.calls if c[0].type == "system"}
        allowed = {
            f"{instruction}\n\n{role}"
            for instruction in texts["instruction"]
            for role in texts[f"role:expert{i}"]
        }
        assert systems and systems <= allowed
        assert any(s.endswith(f"You are E{i}, the drafted expert.") for s in systems)
    # The result applies: a fresh debate sends exactly instruction + blank line + role.
    fresh = [ScriptedModel(reply=starred) for _ in range(2)]
    graph = create_debate_graph(
        result.society(society_of(*fresh)), TASK, rounds=2, prompts=result.prompts
    )
    run_debates(graph, DEV[:1], db_path=tmp_path / "check.sqlite", progress=False)
    for model, role in zip(fresh, result.roles, strict=True):
        first = model.calls[0]
        assert first[0].type == "system"
        assert first[0].text == f"{result.instruction}\n\n{role}"
        assert first[1].type == "human"


# An experts run's dev split and the command --------------------------------------------------


def test_the_dev_split_is_train_problems_beyond_the_corpus_never_test(tmp_path: Path) -> None:
    from mafl_graph.experts.corpus import Corpus
    from mafl_graph.experts.evoprompt import experts_dev_problems
    from mafl_graph.experts.runs import CorpusSettings, prepare_corpus

    run = tmp_path / "experts"
    corpus = prepare_corpus(run, CorpusSettings(task="arithmetic", n=6, test_n=3, max_tokens=None))
    dev = experts_dev_problems(run, 4)
    held_out = set(Corpus.load(run / "test.jsonl").ids)
    assert len(dev) == 4 and all(p.answer for p in dev)
    assert not {p.id for p in dev} & (set(corpus.ids) | held_out)
    assert all("train" in p.id for p in dev)
    assert experts_dev_problems(run, 4) == dev  # the same split on every call
    with pytest.raises(ValueError, match="at least 1"):
        experts_dev_problems(run, 0)
    test_corpus = tmp_path / "on-test"
    prepare_corpus(
        test_corpus, CorpusSettings(task="arithmetic", split="test", n=3, test_n=0, max_tokens=None)
    )
    with pytest.raises(ValueError, match="test split"):
        experts_dev_problems(test_corpus, 2)


def test_the_command_is_registered_on_the_experts_group() -> None:
    from typer.testing import CliRunner

    import mafl_graph.cli.experts_evolve  # noqa: F401 - registers the command
    from mafl_graph.cli.app import app

    shown = CliRunner().invoke(app, ["experts", "evolve", "--help"], terminal_width=200)
    assert shown.exit_code == 0, shown.output
    for name in ("--method", "--optimizer", "--population", "--iterations", "--dev"):
        assert name in shown.output
    refused = CliRunner().invoke(
        app, ["experts", "evolve", "--run-dir", "nowhere", "--optimizer", "pso"]
    )
    assert refused.exit_code != 0 and "optimizer must be one of" in refused.output


def test_evolve_experts_drafts_from_each_expert_s_pile_and_debates_on_the_dev_split(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mafl_graph.experts import runs, train
    from mafl_graph.experts.corpus import pile_members
    from mafl_graph.experts.evoprompt import evolve_experts

    run = tmp_path / "experts"
    corpus = runs.prepare_corpus(
        run, runs.CorpusSettings(task="arithmetic", n=6, test_n=2, max_tokens=None)
    )
    clusters = runs.cluster(run, "random", k=2)
    tuned = {"role": "generator", "backend": "local", "base": "smollm2", "model": "none"}
    experts = [
        {"pile": p, "documents": 3, "tuned": {**tuned, "agent": p}} for p in range(clusters.k)
    ]
    runs.write_json(runs.ExpertsLayout(run).experts_record("random"), experts)
    asked: dict[str, list[str]] = {"expert0": [], "expert1": []}

    def debater(name: str):
        def reply(messages: list[BaseMessage]) -> str:
            if "describe what you are good at" in messages[-1].text:
                asked[name].append(messages[-1].text)
                return f"<prompt>You are {name}.</prompt>"
            return "\\boxed{0}"

        return reply

    def fake_society(trained, **chat):
        assert chat == {"temperature": 0.7, "max_new_tokens": 256}  # a local expert's fields
        assert [e.pile for e in trained] == [0, 1]
        return society_of(*(ScriptedModel(reply=debater(f"expert{e.pile}")) for e in trained))

    monkeypatch.setattr(train, "experts_society", fake_society)
    config = EvoPromptConfig(population=2, iterations=1, rounds=1, drafts=1, examples=10)
    result = evolve_experts(run, "random", config, dev=2, optimizer_model=ScriptedModel())
    out = run / "evoprompt" / "random-ga"
    assert Path(result.run_dir) == out and (out / "result.json").is_file()
    members = pile_members(clusters.labels, clusters.k)
    for pile, requests in enumerate(asked.values()):
        questions = [corpus.documents[i].question for i in members[pile]]
        assert len(requests) == 1 and all(q in requests[0] for q in questions)
    dev_ids = [json.loads(line)["id"] for line in (out / "dev.jsonl").read_text().splitlines()]
    assert len(dev_ids) == 2 and not set(dev_ids) & set(corpus.ids)
