"""Experts on the embedded model (``integration``): MC-EM's draws, checkpoint and resume;
experts tuned per pile through the local tuner, their perplexities, and their Society debating.

Kept small (a handful of short documents, one or two steps): the logic is tested with fakes
in test_experts_logic.py; these check that the real model, PEFT and the tuner do what it says.
"""

from __future__ import annotations

import json

import pytest

from mafl_graph.experts.config import MCEMConfig
from mafl_graph.experts.corpus import Corpus, Document
from mafl_graph.experts.mc_em import ASSIGNMENTS, CHECKPOINT, EXPERTS, _Run, mc_em_clusters

pytestmark = pytest.mark.integration

DOCS = (
    ("sums:0", "3+4\n7", "sums"),
    ("code:0", "def add(a, b):\n    return a + b", "code"),
    ("sums:1", "12+9\n21", "sums"),
    ("code:1", "def neg(x):\n    return -x", "code"),
)
CONFIG = MCEMConfig(k=2, checkpoint_every=2, learning_rate=5e-3, seed=3)


@pytest.fixture(scope="module")
def corpus(engine) -> Corpus:  # the engine fixture skips where the model is unavailable
    return Corpus(tuple(Document(i, t, d) for i, t, d in DOCS))


def _journal(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / ASSIGNMENTS).read_text().splitlines()]


def test_mc_em_draws_uniformly_at_first_records_every_draw_and_resumes_exactly(
    corpus, tmp_path, monkeypatch
):
    whole = mc_em_clusters(corpus, tmp_path / "whole", CONFIG, progress=False)
    records = _journal(tmp_path / "whole")
    assert [r["position"] for r in records] == list(range(len(corpus)))
    assert sorted(r["id"] for r in records) == sorted(corpus.ids)
    # The experts start equal (a fresh LoRA adds nothing): the first draw is uniform; after
    # training steps the experts' perplexities differ.
    assert records[0]["probabilities"] == [0.5, 0.5]
    assert len(set(records[0]["perplexities"])) == 1
    assert any(len(set(r["perplexities"])) > 1 for r in records[1:])
    assert whole.cost.training_steps == len(corpus) and whole.cost.forward_passes == len(corpus)
    for name in ("expert0", "expert1"):
        assert (tmp_path / "whole" / EXPERTS / name / "adapter_config.json").is_file()

    # Interrupted after the first checkpoint (2 documents), then run again.
    step = _Run._step

    def failing_step(self, epoch, position, chunk, state):
        if position == 2:
            raise KeyboardInterrupt
        return step(self, epoch, position, chunk, state)

    monkeypatch.setattr(_Run, "_step", failing_step)
    with pytest.raises(KeyboardInterrupt):
        mc_em_clusters(corpus, tmp_path / "cut", CONFIG, progress=False)
    assert len(_journal(tmp_path / "cut")) == 2 and (tmp_path / "cut" / CHECKPOINT).is_file()
    monkeypatch.setattr(_Run, "_step", step)
    resumed = mc_em_clusters(corpus, tmp_path / "cut", CONFIG, progress=False)
    assert resumed.labels == whole.labels
    assert _journal(tmp_path / "cut") == records  # the same draws, perplexities and losses
    with pytest.raises(ValueError, match="other settings"):
        mc_em_clusters(corpus, tmp_path / "cut", MCEMConfig(k=2, seed=4), progress=False)


def test_experts_per_pile_are_tuned_measured_and_debate_as_a_society(tmp_path):
    from mafl_graph.debate import create_debate_graph, run_debates
    from mafl_graph.experts.baselines import oracle_clusters
    from mafl_graph.experts.corpus import build_corpus
    from mafl_graph.experts.specialisation import perplexity_matrix
    from mafl_graph.experts.train import experts_society, train_experts
    from mafl_graph.finetune.tuners.options import TuneOptions
    from mafl_graph.local import LocalChatModel
    from mafl_graph.tasks import Mixed

    task = Mixed(tasks="arithmetic,algebra=dm-math:algebra__linear_1d")
    corpus = build_corpus(task.load("train", 6), task=task)
    result = oracle_clusters(corpus)
    options = TuneOptions(max_steps=1, batch_size=2, learning_rate=1e-3)
    experts = train_experts(corpus, result, task, tmp_path / "experts", options=options)
    assert [e.documents for e in experts] == result.sizes
    adapters = {f"expert{e.pile}": e.tuned.model for e in experts}
    for adapter in adapters.values():
        assert (tmp_path / "experts" / "adapters").is_dir() and adapter.startswith(str(tmp_path))
    again = train_experts(corpus, result, task, tmp_path / "experts", options=options)
    assert [e.tuned for e in again] == [e.tuned for e in experts]  # nothing tuned twice

    held_out = build_corpus(task.load("test", 6), task=task)
    matrix = perplexity_matrix({"base": None, **adapters}, held_out, task, per_domain=1)
    assert set(matrix) == {"base", "expert0", "expert1"}
    assert all(
        set(row) == {"algebra", "arithmetic"} and min(row.values()) > 1 for row in matrix.values()
    )
    assert matrix["expert0"] != matrix["base"]  # a tuned expert scores the replies differently

    society = experts_society(experts, temperature=0.0, max_new_tokens=12)
    assert [a.name for a in society.agents] == ["expert0", "expert1"]
    assert [a.generator.adapter for a in society.agents] == list(adapters.values())
    assert isinstance(society.summarizer, LocalChatModel) and society.summarizer.adapter is None
    graph = create_debate_graph(society, task, rounds=1, summarize=False)
    [debate] = run_debates(
        graph, task.load("test", 1), db_path=tmp_path / "d.sqlite", progress=False
    )
    assert debate.error is None
    assert sorted(r["agent"] for r in debate.responses) == [0, 1]


def test_union_find_by_likelihood_always_picks_from_the_list(corpus, tmp_path):
    import numpy as np

    from mafl_graph.experts.config import UnionFindConfig
    from mafl_graph.experts.union_find import JOURNAL, union_find_clusters
    from mafl_graph.local import LocalChatModel

    vectors = np.array(
        [[1.0, 0.1 * i] if d == "sums" else [0.1 * i, 1.0] for i, (_, _, d) in enumerate(DOCS)]
    )
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    config = UnionFindConfig(k=2, candidates=2, pick="likelihood")
    result = union_find_clusters(
        corpus, LocalChatModel(), tmp_path, config, embeddings=vectors, progress=False
    )
    journal = [json.loads(line) for line in (tmp_path / JOURNAL).read_text().splitlines()]
    assert result.k == 2 and journal
    assert all(e["status"] == "ok" and e["pick"] in (1, 2) for e in journal)
    assert all(e["input_tokens"] > 0 for e in journal)
