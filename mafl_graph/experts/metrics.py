"""How well piles recover the hidden domains: NMI, ARI (scikit-learn), purity and pile sizes.

NMI and ARI are 1 for the domains themselves and about 0 for a random split; purity is the
share of documents that belong to their pile's most common domain (1/number of domains for a
random split of a balanced corpus, 1 for the oracle).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any


def cluster_quality(labels: Sequence[int], domains: Sequence[str]) -> dict[str, Any]:
    """NMI, ARI, purity, the pile sizes and each pile's documents per domain."""
    if len(labels) != len(domains):
        raise ValueError(f"{len(labels)} labels for {len(domains)} documents; give one each")
    if not labels:
        raise ValueError("no documents to measure")
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    piles = sorted(set(labels))
    composition = {
        int(p): dict(Counter(d for label, d in zip(labels, domains, strict=True) if label == p))
        for p in piles
    }
    majority = sum(max(counts.values()) for counts in composition.values())
    return {
        "nmi": float(normalized_mutual_info_score(domains, labels)),
        "ari": float(adjusted_rand_score(domains, labels)),
        "purity": majority / len(labels),
        "sizes": [sum(composition[p].values()) for p in piles],
        "composition": composition,
    }


def composition_table(composition: dict[Any, dict[str, int]], domains: Sequence[str]) -> str:
    """Markdown: one row per pile, one column per domain, the count of its documents."""
    header = "| pile | " + " | ".join(domains) + " | size |"
    rule = "|---" * (len(domains) + 2) + "|"
    lines = [header, rule]
    for pile, counts in composition.items():
        cells = [str(counts.get(d, 0)) for d in domains]
        lines.append(f"| {pile} | " + " | ".join(cells) + f" | {sum(counts.values())} |")
    return "\n".join(lines)
