"""Experts: the logic of clustering, measures, bad input and reports, with fakes (no model).

Union-find runs against scripted chat models (one that knows the domains, one that answers
badly, one that fails mid-run); embeddings are given, so MiniLM is not loaded.
"""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from fakes import ScriptedModel

from mafl_graph.experts.baselines import oracle_clusters, random_clusters, single_pile
from mafl_graph.experts.clustering import ClusterResult, Cost, read_result, relabel
from mafl_graph.experts.config import MCEMConfig, UnionFindConfig
from mafl_graph.experts.corpus import Corpus, Document, build_corpus, check_k, document_text
from mafl_graph.experts.mc_em import choice_probabilities, draw_expert, epoch_order
from mafl_graph.experts.metrics import cluster_quality
from mafl_graph.experts.union_find import (
    JOURNAL,
    DisjointSets,
    UnionFindStalled,
    parse_pick,
    union_find_clusters,
)
from mafl_graph.tasks.base import Problem

DOMAINS = ("alpha", "beta", "gamma")


def _corpus(per_domain: int = 4) -> Corpus:
    docs = [
        Document(id=f"{d}:{i}", text=f"{d} document number {i}", domain=d)
        for i in range(per_domain)
        for d in DOMAINS
    ]
    return Corpus(tuple(docs))


def _embeddings(corpus: Corpus, noise: float = 0.05, seed: int = 0) -> np.ndarray:
    """One axis per domain plus a little noise: nearest neighbours share the domain."""
    rng = np.random.default_rng(seed)
    rows = []
    for doc in corpus:
        v = np.zeros(len(DOMAINS) + 2)
        v[DOMAINS.index(doc.domain)] = 1.0
        v += noise * rng.standard_normal(len(v))
        rows.append(v / np.linalg.norm(v))
    return np.array(rows)


def _knowing_reply(messages) -> str:
    """Picks the first candidate of the group's domain, or says it does not know."""
    text = messages[-1].text
    group = re.search(r"---\n(\w+) document", text).group(1)
    candidates = re.findall(r"^(\d+)\. (\w+) document", text, flags=re.MULTILINE)
    for number, domain in candidates:
        if domain == group:
            return f"The candidate is {number}."
    return "None of them, sorry."


# Measures ------------------------------------------------------------------------------------


def test_quality_is_perfect_for_the_domains_and_low_for_a_mixed_split():
    domains = ["a", "a", "b", "b", "c", "c"]
    perfect = cluster_quality([2, 2, 0, 0, 1, 1], domains)  # names of piles do not matter
    assert perfect["nmi"] == pytest.approx(1.0) and perfect["ari"] == pytest.approx(1.0)
    assert perfect["purity"] == 1.0 and perfect["sizes"] == [2, 2, 2]
    mixed = cluster_quality([0, 1, 0, 1, 0, 1], domains)
    assert mixed["nmi"] < 0.1 and mixed["ari"] < 0
    assert mixed["purity"] == pytest.approx(2 / 6)
    assert mixed["composition"] == {0: {"a": 1, "b": 1, "c": 1}, 1: {"a": 1, "b": 1, "c": 1}}


def test_quality_refuses_mismatched_or_empty_labels():
    with pytest.raises(ValueError, match="3 labels for 2 documents"):
        cluster_quality([0, 1, 1], ["a", "b"])
    with pytest.raises(ValueError, match="no documents"):
        cluster_quality([], [])


def test_baselines_random_is_balanced_and_seeded_oracle_follows_domains():
    corpus = _corpus()
    split = random_clusters(corpus, 3, seed=1)
    assert split.sizes == [4, 4, 4]
    assert split.labels == random_clusters(corpus, 3, seed=1).labels
    assert split.labels != random_clusters(corpus, 3, seed=2).labels
    oracle = oracle_clusters(corpus)
    assert oracle.k == 3 and cluster_quality(oracle.labels, corpus.domains)["nmi"] == 1.0
    with pytest.raises(ValueError, match="k must be 3; got k=2"):
        oracle_clusters(corpus, 2)
    assert single_pile(corpus).labels == (0,) * len(corpus)


def test_relabel_and_result_checks():
    assert relabel(["x", "y", "x", "z"]) == (0, 1, 0, 2)
    with pytest.raises(ValueError, match=r"labels must lie in 0..1; got \[2\]"):
        ClusterResult("m", 2, (0, 2), ("a", "b"))
    with pytest.raises(ValueError, match="2 labels for 1 documents"):
        ClusterResult("m", 2, (0, 1), ("a",))


# Bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("k", "n", "message"),
    [
        (0, 5, "k must be at least 1; got k=0"),
        (-2, 5, "k must be at least 1; got k=-2"),
        (6, 5, "k=6 piles need at least 6 documents; the corpus has 5"),
        (1, 0, "the corpus is empty"),
    ],
)
def test_k_out_of_range_is_refused_with_the_values(k, n, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        check_k(k, n)


def test_every_method_refuses_k_larger_than_the_corpus(tmp_path):
    corpus = _corpus(1)  # 3 documents
    with pytest.raises(ValueError, match="k=4 piles need at least 4 documents"):
        random_clusters(corpus, 4)
    with pytest.raises(ValueError, match="k=4 piles need at least 4 documents"):
        union_find_clusters(corpus, ScriptedModel(), tmp_path, UnionFindConfig(k=4))
    assert not (tmp_path / JOURNAL).exists()  # refused before anything was written
    with pytest.raises(ValueError, match="k must be at least 1; got k=0"):
        MCEMConfig(k=0)
    with pytest.raises(ValueError, match="temperature must be positive"):
        MCEMConfig(temperature=0)


def test_an_empty_corpus_is_refused():
    with pytest.raises(ValueError, match="the corpus is empty"):
        build_corpus([])


class _Tokenizer:
    """Whitespace tokens, enough to count and cut."""

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": text.split()}

    def decode(self, ids):
        return " ".join(ids)


def test_too_long_documents_are_truncated_with_a_count_or_refused_with_the_list():
    problems = [
        Problem("short", "two words"),
        Problem("long1", " ".join(["w"] * 10), "x"),
        Problem("long2", " ".join(["v"] * 12)),
    ]
    corpus = build_corpus(problems, tokenizer=_Tokenizer(), max_tokens=5)
    assert corpus.truncated == ("long1", "long2")
    assert [len(t.split()) for t in corpus.texts] == [2, 5, 5]
    with pytest.raises(ValueError, match=r"2 document\(s\) exceed the 5-token budget: long1 \(11"):
        build_corpus(problems, tokenizer=_Tokenizer(), max_tokens=5, too_long="refuse")
    with pytest.raises(ValueError, match="too_long must be one of"):
        build_corpus(problems, too_long="drop")  # type: ignore[arg-type]


def test_documents_are_question_and_answer_once(tmp_path):
    assert document_text(Problem("a", "1+1", "2")) == "1+1\n2"
    code = Problem("c", "def f():\n", "def f():\n    return 1\n")
    assert document_text(code) == code.answer  # the reference repeats the question
    corpus = Corpus((Document("a", "t", "d"), Document("b", "u", "e")), truncated=("b",))
    corpus.save(tmp_path / "c.jsonl")
    assert Corpus.load(tmp_path / "c.jsonl") == corpus
    with pytest.raises(ValueError, match=r"repeated: \['a'\]"):
        Corpus((Document("a", "t"), Document("a", "u")))
    with pytest.raises(ValueError, match="have no domain label"):
        _ = Corpus((Document("a", "t"),)).domains


# MC-EM's draw ------------------------------------------------------------------------------


def test_the_draw_is_inverse_to_relative_perplexity_and_sharpens_with_temperature():
    equal = choice_probabilities([2.0, 2.0, 2.0], 1.0)
    assert equal == pytest.approx([1 / 3] * 3)  # equal experts: uniform, as at the start
    nll = [math.log(10.0), math.log(20.0)]  # perplexities 10 and 20
    assert choice_probabilities(nll, 1.0) == pytest.approx([2 / 3, 1 / 3])  # ∝ 1/ppl
    sharp = choice_probabilities(nll, 0.1)
    assert sharp[0] > 0.99
    flat = choice_probabilities(nll, 100.0)
    assert flat[0] == pytest.approx(0.5, abs=0.01)


def test_draws_and_orders_are_seeded_per_position():
    probabilities = [0.2, 0.3, 0.5]
    draws = [draw_expert(probabilities, 0, 0, p) for p in range(2000)]
    assert draws == [draw_expert(probabilities, 0, 0, p) for p in range(2000)]
    assert draws.count(2) / len(draws) == pytest.approx(0.5, abs=0.04)
    assert sorted(epoch_order(10, 0, 0)) == list(range(10))
    assert epoch_order(10, 0, 0) != epoch_order(10, 0, 1)


# Union-find ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("2", (2, "ok")),
        ("Candidate 3", (3, "ok")),
        ("(1) because it is similar", (1, "ok")),
        ("The candidate is 2.", (2, "ok")),
        ("I pick \\boxed{4}", (4, "ok")),
        ("The answer is 5", (5, "ok")),
        ("7", (None, "out-of-list")),
        ("0", (None, "out-of-list")),
        ("The candidate is 14+16*8", (None, "out-of-list")),
        ("It looks like 6+3=9 so maybe the second", (None, "unparseable")),
        ("", (None, "unparseable")),
        ("I think 3", (None, "unparseable")),
    ],
)
def test_replies_are_read_strictly_never_guessed(reply, expected):
    assert parse_pick(reply, 5) == expected


def test_disjoint_sets_count_and_members():
    sets = DisjointSets(5)
    assert sets.union(0, 1) and sets.union(3, 4) and not sets.union(1, 0)
    assert sets.count == 3
    assert sorted(sorted(m) for m in sets.members().values()) == [[0, 1], [2], [3, 4]]


def test_a_model_that_knows_the_domains_recovers_them_with_bounded_calls(tmp_path):
    corpus = _corpus(5)  # 15 documents
    model = ScriptedModel(reply=_knowing_reply)
    config = UnionFindConfig(k=3, candidates=3, concurrency=4)
    result = union_find_clusters(corpus, model, tmp_path, config, embeddings=_embeddings(corpus))
    assert result.k == 3
    assert cluster_quality(result.labels, corpus.domains)["nmi"] == pytest.approx(1.0)
    # One call per cluster per round; clusters at least halve each round while picks are good.
    assert result.cost.model_calls == len(model.calls) <= 2 * len(corpus)
    asked = [m[-1].text for m in model.calls]
    assert all(len(re.findall(r"^\d+\. ", t, flags=re.MULTILINE)) <= 3 for t in asked)
    journal = [json.loads(line) for line in (tmp_path / JOURNAL).read_text().splitlines()]
    assert len(journal) == len(model.calls)
    # "None" (no candidate of its domain left outside the cluster) is the only skipped reply.
    assert {e["status"] for e in journal if not e["reply"].startswith("None")} == {"ok"}


def test_unparseable_and_out_of_list_picks_are_recorded_and_skipped(tmp_path):
    corpus = _corpus(4)

    def reply(messages):
        text = messages[-1].text
        first = re.search(r"---\n(\w+ document number \d+)", text).group(1)
        asker = first.replace(" document number ", ":")
        if asker == "alpha:0":
            return "Hmm, hard to say."
        if asker == "beta:1":
            return "9"
        return _knowing_reply(messages)

    model = ScriptedModel(reply=reply)
    config = UnionFindConfig(k=3, candidates=3, summary_documents=1)
    result = union_find_clusters(corpus, model, tmp_path, config, embeddings=_embeddings(corpus))
    journal = [json.loads(line) for line in (tmp_path / JOURNAL).read_text().splitlines()]
    skipped = {e["asker"]: e["status"] for e in journal if e["round"] == 0 and e["pick"] is None}
    assert skipped == {"alpha:0": "unparseable", "beta:1": "out-of-list"}
    assert result.details["replies"]["unparseable"] >= 1
    assert result.details["replies"]["out-of-list"] >= 1
    # The skipped askers were never united by their own reply, yet the domains are recovered
    # (others picked them): nothing was guessed from "9" or from prose.
    assert cluster_quality(result.labels, corpus.domains)["nmi"] == pytest.approx(1.0)


def test_a_model_that_never_answers_in_form_stops_with_an_error_and_a_full_journal(tmp_path):
    corpus = _corpus(2)
    model = ScriptedModel(reply=lambda m: "Documents are interesting.")
    config = UnionFindConfig(k=2, patience=2)
    with pytest.raises(UnionFindStalled, match="2 rounds in a row .* united no two clusters"):
        union_find_clusters(corpus, model, tmp_path, config, embeddings=_embeddings(corpus))
    journal = (tmp_path / JOURNAL).read_text().splitlines()
    assert len(journal) == len(model.calls) == 2 * len(corpus)
    assert all(json.loads(line)["status"] == "unparseable" for line in journal)


def test_an_interrupted_run_resumes_from_its_journal_asking_nothing_twice(tmp_path):
    corpus = _corpus(5)
    embeddings = _embeddings(corpus)
    config = UnionFindConfig(k=3, candidates=3, concurrency=4)
    whole = ScriptedModel(reply=_knowing_reply)
    expected = union_find_clusters(corpus, whole, tmp_path / "whole", config, embeddings=embeddings)

    def failing(messages):
        if len(failing_model.calls) >= 6:
            raise ConnectionError("the provider went away")
        return _knowing_reply(messages)

    failing_model = ScriptedModel(reply=failing)
    with pytest.raises(ConnectionError):
        union_find_clusters(corpus, failing_model, tmp_path / "cut", config, embeddings=embeddings)
    journalled = len((tmp_path / "cut" / JOURNAL).read_text().splitlines())
    assert 0 < journalled < len(whole.calls)
    again = ScriptedModel(reply=_knowing_reply)
    resumed = union_find_clusters(corpus, again, tmp_path / "cut", config, embeddings=embeddings)
    assert resumed.labels == expected.labels
    assert len(again.calls) == len(whole.calls) - journalled
    assert resumed.details["replayed_calls"] == journalled


def test_a_journal_cut_mid_line_loses_only_that_call(tmp_path):
    corpus = _corpus(3)
    embeddings = _embeddings(corpus)
    config = UnionFindConfig(k=3, candidates=3)
    first = ScriptedModel(reply=_knowing_reply)
    union_find_clusters(corpus, first, tmp_path, config, embeddings=embeddings)
    path = tmp_path / JOURNAL
    text = path.read_text()
    path.write_text(text[: len(text) - 20])  # the last line half-written
    again = ScriptedModel(reply=_knowing_reply)
    union_find_clusters(corpus, again, tmp_path, config, embeddings=embeddings)
    assert len(again.calls) == 1


def test_a_rerun_with_other_settings_is_refused(tmp_path):
    corpus = _corpus(2)
    embeddings = _embeddings(corpus)
    model = ScriptedModel(reply=_knowing_reply)
    union_find_clusters(corpus, model, tmp_path, UnionFindConfig(k=3), embeddings=embeddings)
    with pytest.raises(ValueError, match="other settings .*candidates: 5 -> 2"):
        union_find_clusters(
            corpus, model, tmp_path, UnionFindConfig(k=3, candidates=2), embeddings=embeddings
        )


def test_results_round_trip_and_a_damaged_one_is_named(tmp_path):
    from mafl_graph.experts.clustering import write_result

    result = ClusterResult("kmeans", 2, (0, 1, 1), ("a", "b", "c"), Cost(model_calls=3))
    write_result(tmp_path / "r.json", result)
    assert read_result(tmp_path / "r.json") == result
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json is unreadable"):
        read_result(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError, match="run `mafl experts cluster`"):
        read_result(tmp_path / "missing.json")


# Piles as datasets, reports, the command line ---------------------------------------------

TASKS = "arithmetic,algebra=dm-math:algebra__linear_1d"


def _mixed_corpus(n: int = 12):
    from mafl_graph.experts.corpus import build_corpus
    from mafl_graph.tasks import Mixed

    task = Mixed(tasks=TASKS)
    return task, build_corpus(task.load("train", n), task=task)


def test_piles_become_chat_datasets_whose_replies_their_own_task_grades_right():
    from mafl_graph.experts.train import pile_examples, problem_of, reference_reply
    from mafl_graph.grading import Verdict
    from mafl_graph.tasks.base import grade_answer, task_for

    task, corpus = _mixed_corpus()
    result = oracle_clusters(corpus)
    piles = pile_examples(corpus, result, task)
    assert [len(p) for p in piles] == result.sizes
    for pile, examples in enumerate(piles):
        for example in examples:
            assert example["agent"] == pile and example["role"] == "generator"
            user, reply = example["messages"]
            assert reply["weight"] == 1 and user["role"] == "user"
    for document in corpus:
        problem = problem_of(document)
        reply, found = reference_reply(task, problem)
        own = task_for(task, problem)
        assert found
        assert grade_answer(own, own.extract_answer(reply), problem.answer) is Verdict.EQUIVALENT
    other = ClusterResult("kmeans", 1, (0,), ("x",))
    with pytest.raises(ValueError, match="of another corpus"):
        pile_examples(corpus, other, task)


def test_the_report_has_quality_cost_composition_and_the_mc_em_figure(tmp_path):
    from mafl_graph.experts.clustering import write_result
    from mafl_graph.experts.report import write_experts_report
    from mafl_graph.experts.runs import MARKER, ExpertsLayout
    from mafl_graph.rundir import write_json

    corpus = _corpus(4)
    layout = ExpertsLayout(tmp_path)
    corpus.save(layout.corpus)
    write_json(layout.root / "manifest.json", {"settings": {"kind": "experts"}})
    write_json(layout.marker, {"kind": "experts"})
    assert layout.marker.name == MARKER
    write_result(layout.result("oracle"), oracle_clusters(corpus))
    write_result(layout.result("random"), random_clusters(corpus, 3))
    mc_em = layout.cluster_dir("mc-em")
    records = [
        {"epoch": e, "position": p, "id": corpus.ids[p], "expert": p % 3}
        for e in range(2)
        for p in range(len(corpus))
    ]
    (mc_em / "assignments.jsonl").parent.mkdir(parents=True)
    (mc_em / "assignments.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    path, table = write_experts_report(tmp_path)
    text = path.read_text()
    assert "| oracle | 3 | 1.000 | 1.000 | 1.000 | 4 / 4 / 4 |" in text
    assert "**random**" in text and "| pile | alpha | beta | gamma | size |" in text
    assert layout.figure.stat().st_size > 1000 and "composition.png" in text
    assert table.row_count == 2


@pytest.fixture
def cli():
    from typer.testing import CliRunner

    import mafl_graph.cli.experts  # noqa: F401 - registers `mafl experts`
    from mafl_graph.cli.app import app

    runner = CliRunner()
    return lambda *args: runner.invoke(app, ["experts", *args])


def _one_error_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    return lines[0]


def test_cli_bad_input_is_one_line_and_exit_2(cli, tmp_path):
    run = str(tmp_path / "run")
    missing = cli("cluster", "--run-dir", run, "--method", "random")
    assert missing.exit_code == 2
    assert "is not an experts run" in _one_error_line(missing)
    empty = cli("corpus", "--run-dir", run, "--n", "0", "--tasks", TASKS, "--max-tokens", "64")
    assert empty.exit_code == 2 and "n must be at least 1" in _one_error_line(empty)
    made = cli("corpus", "--run-dir", run, "--n", "12", "--test-n", "0", "--tasks", TASKS)
    assert made.exit_code == 0, made.output
    for args, message in [
        (("--method", "random", "--k", "0"), "k must be at least 1; got k=0"),
        (("--method", "kmeans", "--k", "13"), "k=13 piles need at least 13 documents"),
        (("--method", "spectral"), "unknown --method spectral"),
        (("--method", "mc-em", "--temperature", "-1"), "temperature must be positive"),
    ]:
        result = cli("cluster", "--run-dir", run, *args)
        assert result.exit_code == 2, result.output
        assert message in _one_error_line(result)
    assert not (tmp_path / "run" / "clusters").exists()  # nothing half-written


def test_cli_refuses_too_long_documents_listing_them_and_writes_nothing(cli, tmp_path):
    run = tmp_path / "run"
    args = ("--run-dir", str(run), "--n", "6", "--test-n", "0", "--tasks", TASKS)
    refused = cli("corpus", *args, "--max-tokens", "3", "--too-long", "refuse")
    assert refused.exit_code == 2
    line = _one_error_line(refused)
    assert "exceed the 3-token budget" in line and "arithmetic:" in line
    assert not run.exists() or not any(run.iterdir())
    truncated = cli("corpus", *args, "--max-tokens", "3")
    assert truncated.exit_code == 0 and "6 truncated to 3 tokens" in truncated.output


def test_the_experts_help_imports_none_of_the_heavy_libraries():
    import subprocess
    import sys

    heavy = ["torch", "transformers", "datasets", "sympy", "peft", "sklearn"]
    code = (
        "import sys, json\n"
        "import mafl_graph.cli.experts\n"
        "from mafl_graph.cli.app import app\n"
        "for args in (['experts', '--help'], ['experts', 'cluster', '--help']):\n"
        "    try:\n"
        "        app(args)\n"
        "    except SystemExit as exit:\n"
        "        assert exit.code == 0, (args, exit.code)\n"
        f"print(json.dumps([m for m in {heavy!r} if m in sys.modules]))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(done.stdout.splitlines()[-1]) == []


def test_specialisation_tables_compare_each_methods_best_expert_with_the_single_model():
    from mafl_graph.experts.report import best_expert_ratios
    from mafl_graph.experts.specialisation import matrix_table

    perplexity = {
        "base": {"a": 5.0, "b": 4.0},
        "single/expert0": {"a": 2.0, "b": 4.0},
        "x/expert0": {"a": 1.0, "b": 8.0},
        "x/expert1": {"a": 4.0, "b": 2.0},
    }
    assert best_expert_ratios(perplexity) == {"x": {"a": 0.5, "b": 0.5}}
    assert best_expert_ratios({"base": {"a": 1.0}}) == {}
    table = matrix_table(perplexity)
    assert "| x/expert0 | **1.00** | 8.00 |" in table
    assert "| single/expert0 | 2.00 | 4.00 |" in table
    assert "| s | 50% |" in matrix_table({"s": {"a": 0.5}}, percent=True, best="max")


def test_likelihood_picks_need_a_local_model_and_are_refused_before_anything_is_written(tmp_path):
    corpus = _corpus(2)
    config = UnionFindConfig(k=2, pick="likelihood")
    with pytest.raises(ValueError, match="needs a local model .*not ScriptedModel"):
        union_find_clusters(
            corpus, ScriptedModel(), tmp_path, config, embeddings=_embeddings(corpus)
        )
    assert not any(tmp_path.iterdir())
    with pytest.raises(ValueError, match="pick must be one of reply, likelihood; got 'vote'"):
        UnionFindConfig(pick="vote")
