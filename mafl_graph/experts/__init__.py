"""Specialised experts from a mixed corpus: split it into k piles, tune one expert per pile.

Two clustering methods, Monte Carlo EM by perplexity (:mod:`~mafl_graph.experts.mc_em`) and
LLM-guided union-find (:mod:`~mafl_graph.experts.union_find`), against the baselines that say
whether they work (:mod:`~mafl_graph.experts.baselines`: K-means on sentence embeddings, a
random split, the oracle split by the hidden domains, one pile); measures against the hidden
domains (:mod:`~mafl_graph.experts.metrics`); one expert per pile through the registered
tuners and a :class:`~mafl_graph.society.Society` of them (:mod:`~mafl_graph.experts.train`);
run directories and reports (:mod:`~mafl_graph.experts.runs`, :mod:`~mafl_graph.experts.report`).

Names are imported on first use (MC-EM imports torch).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mafl_graph._lazy import lazy_getattr

_EXPORTS: dict[str, str] = {
    "Corpus": "mafl_graph.experts.corpus",
    "Document": "mafl_graph.experts.corpus",
    "build_corpus": "mafl_graph.experts.corpus",
    "check_k": "mafl_graph.experts.corpus",
    "document_text": "mafl_graph.experts.corpus",
    "ClusterResult": "mafl_graph.experts.clustering",
    "Cost": "mafl_graph.experts.clustering",
    "METHODS": "mafl_graph.experts.clustering",
    "read_result": "mafl_graph.experts.clustering",
    "MCEMConfig": "mafl_graph.experts.config",
    "UnionFindConfig": "mafl_graph.experts.config",
    "cluster_quality": "mafl_graph.experts.metrics",
    "embed": "mafl_graph.experts.baselines",
    "kmeans_clusters": "mafl_graph.experts.baselines",
    "oracle_clusters": "mafl_graph.experts.baselines",
    "random_clusters": "mafl_graph.experts.baselines",
    "single_pile": "mafl_graph.experts.baselines",
    "choice_probabilities": "mafl_graph.experts.mc_em",
    "mc_em_clusters": "mafl_graph.experts.mc_em",
    "read_assignments": "mafl_graph.experts.mc_em",
    "DisjointSets": "mafl_graph.experts.union_find",
    "UnionFindStalled": "mafl_graph.experts.union_find",
    "parse_pick": "mafl_graph.experts.union_find",
    "union_find_clusters": "mafl_graph.experts.union_find",
    "TrainedExpert": "mafl_graph.experts.train",
    "experts_society": "mafl_graph.experts.train",
    "pile_examples": "mafl_graph.experts.train",
    "reference_reply": "mafl_graph.experts.train",
    "train_experts": "mafl_graph.experts.train",
    "accuracy_matrix": "mafl_graph.experts.specialisation",
    "perplexity_matrix": "mafl_graph.experts.specialisation",
    "CorpusSettings": "mafl_graph.experts.runs",
    "ExpertsLayout": "mafl_graph.experts.runs",
    "prepare_corpus": "mafl_graph.experts.runs",
    "write_experts_report": "mafl_graph.experts.report",
    "EvoPromptConfig": "mafl_graph.experts.evoprompt",
    "EvolvedPrompts": "mafl_graph.experts.evoprompt",
    "draft_roles": "mafl_graph.experts.evoprompt",
    "evolve_experts": "mafl_graph.experts.evoprompt",
    "evolve_prompts": "mafl_graph.experts.evoprompt",
    "experts_dev_problems": "mafl_graph.experts.evoprompt",
    "ExpertIdentity": "mafl_graph.experts.mixer",
    "ExpertMixer": "mafl_graph.experts.mixer",
    "MixedGeneration": "mafl_graph.experts.mixer",
    "MixtureChatModel": "mafl_graph.experts.mixer",
    "ProbeReport": "mafl_graph.experts.mixer",
    "ProbeScore": "mafl_graph.experts.mixer",
    "expert_identity": "mafl_graph.experts.mixer",
    "measure_mixer": "mafl_graph.experts.mixer",
    "mixed_generate": "mafl_graph.experts.mixer",
    "train_mixer": "mafl_graph.experts.mixer",
    "train_run_mixer": "mafl_graph.experts.mixer",
    "CooperateSettings": "mafl_graph.experts.cooperate",
    "Strategy": "mafl_graph.experts.cooperate",
    "cooperate": "mafl_graph.experts.cooperate",
    "strategies": "mafl_graph.experts.cooperate",
}

__all__ = [
    "ExpertIdentity",
    "ExpertMixer",
    "MixedGeneration",
    "MixtureChatModel",
    "ProbeReport",
    "ProbeScore",
    "expert_identity",
    "measure_mixer",
    "mixed_generate",
    "train_mixer",
    "train_run_mixer",
    "ClusterResult",
    "CooperateSettings",
    "EvoPromptConfig",
    "EvolvedPrompts",
    "Strategy",
    "cooperate",
    "draft_roles",
    "evolve_experts",
    "evolve_prompts",
    "experts_dev_problems",
    "strategies",
    "Corpus",
    "CorpusSettings",
    "Cost",
    "DisjointSets",
    "Document",
    "ExpertsLayout",
    "MCEMConfig",
    "METHODS",
    "TrainedExpert",
    "UnionFindConfig",
    "UnionFindStalled",
    "accuracy_matrix",
    "build_corpus",
    "check_k",
    "choice_probabilities",
    "cluster_quality",
    "document_text",
    "embed",
    "experts_society",
    "kmeans_clusters",
    "mc_em_clusters",
    "oracle_clusters",
    "parse_pick",
    "perplexity_matrix",
    "pile_examples",
    "prepare_corpus",
    "random_clusters",
    "read_assignments",
    "read_result",
    "reference_reply",
    "single_pile",
    "train_experts",
    "union_find_clusters",
    "write_experts_report",
]

__getattr__ = lazy_getattr(__name__, _EXPORTS, globals())

if TYPE_CHECKING:
    from mafl_graph.experts.baselines import (
        embed,
        kmeans_clusters,
        oracle_clusters,
        random_clusters,
        single_pile,
    )
    from mafl_graph.experts.clustering import METHODS, ClusterResult, Cost, read_result
    from mafl_graph.experts.config import MCEMConfig, UnionFindConfig
    from mafl_graph.experts.cooperate import (
        CooperateSettings,
        Strategy,
        cooperate,
        strategies,
    )
    from mafl_graph.experts.corpus import Corpus, Document, build_corpus, check_k, document_text
    from mafl_graph.experts.evoprompt import (
        EvolvedPrompts,
        EvoPromptConfig,
        draft_roles,
        evolve_experts,
        evolve_prompts,
        experts_dev_problems,
    )
    from mafl_graph.experts.mc_em import choice_probabilities, mc_em_clusters, read_assignments
    from mafl_graph.experts.metrics import cluster_quality
    from mafl_graph.experts.mixer import (
        ExpertIdentity,
        ExpertMixer,
        MixedGeneration,
        MixtureChatModel,
        ProbeReport,
        ProbeScore,
        expert_identity,
        measure_mixer,
        mixed_generate,
        train_mixer,
        train_run_mixer,
    )
    from mafl_graph.experts.report import write_experts_report
    from mafl_graph.experts.runs import CorpusSettings, ExpertsLayout, prepare_corpus
    from mafl_graph.experts.specialisation import accuracy_matrix, perplexity_matrix
    from mafl_graph.experts.train import (
        TrainedExpert,
        experts_society,
        pile_examples,
        reference_reply,
        train_experts,
    )
    from mafl_graph.experts.union_find import (
        DisjointSets,
        UnionFindStalled,
        parse_pick,
        union_find_clusters,
    )
