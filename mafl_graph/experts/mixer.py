"""A token-level mixer of experts: every next token is drawn from a weighted mix of the experts.

The experts are adapters (LoRA or SVF) over one base. At each position all k experts read the
same prefix, one row each, in ONE batched forward pass of the embedded engine
(:meth:`~mafl_graph.local.engine.LocalEngine.forward_rows`); each row's final hidden state feeds
that expert's *probe*, a logistic regression that scores how much this expert should speak for
this token, and the next token is drawn from

    p(x) = Σ_k w_k · softmax(logits_k / T)(x),   w_k = s_k / Σ_j s_j,   s_k = σ(h_k · a_k + b_k)

The probes learn from a clustering: for every token of a document, the probe of the expert of
that document's pile learns 1 and the others 0 (:func:`train_mixer`). The probe file records
which experts (adapter directory, a hash of its weights, its base model) it was trained for, and
loading it for other experts is refused. :class:`MixtureChatModel` is the mixer as a LangChain
chat model: an agent of a debate, or a model on its own.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LangSmithParams
from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatResult
from pydantic import PrivateAttr, model_validator

from mafl_graph.local.loading import SMOLLM2_ALIAS

if TYPE_CHECKING:
    import numpy as np
    import torch

    from mafl_graph.experts.clustering import ClusterResult
    from mafl_graph.experts.corpus import Corpus, Document
    from mafl_graph.experts.train import TrainedExpert
    from mafl_graph.local.engine import LocalEngine

FILE_FORMAT = "mafl-expert-mixer"
FILE_VERSION = "1"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".npz")
"""The files of an adapter directory whose bytes are the expert (configs and notes are not)."""

FinishReason = Literal["stop", "length"]


# The experts' identities ---------------------------------------------------------------------


@dataclass(frozen=True)
class ExpertIdentity:
    """Which expert a probe belongs to: its directory, a SHA-256 of its weight files, and the
    base model it was made over (the base directory's last part, as the adapter records it)."""

    adapter: str
    digest: str
    base: str


_digests: dict[tuple[str, int, int], str] = {}


def adapter_directory(expert: str | Path | TrainedExpert) -> Path:
    """The adapter directory of ``expert`` (a directory, or a :class:`TrainedExpert`)."""
    tuned = getattr(expert, "tuned", None)
    if tuned is not None or hasattr(expert, "pile"):
        if tuned is None:
            raise ValueError(f"expert of pile {getattr(expert, 'pile', '?')} was never trained")
        return Path(tuned.model).expanduser().resolve()
    return Path(cast("str | Path", expert)).expanduser().resolve()


def expert_identity(expert: str | Path | TrainedExpert) -> ExpertIdentity:
    """The identity of the LoRA adapter or SVF expert at ``expert``.

    The base is ``base_model_name_or_path`` of a LoRA adapter's ``adapter_config.json`` or the
    base name of an SVF expert's ``svf_config.json``; a directory holding neither is refused.
    """
    directory = adapter_directory(expert)
    if (directory / "adapter_config.json").is_file():
        config = json.loads((directory / "adapter_config.json").read_text())
        base = str(config.get("base_model_name_or_path") or "")
    elif (directory / "svf_config.json").is_file():
        config = json.loads((directory / "svf_config.json").read_text())
        base = str(config.get("base", {}).get("name") or "")
    else:
        raise FileNotFoundError(
            f"No expert at {str(directory)!r} (expected adapter_config.json there, or "
            "svf_config.json for an SVF expert); pass adapter directories written by PEFT's "
            "save_pretrained or by SVFExpert.save."
        )
    return ExpertIdentity(str(directory), _weights_digest(directory), Path(base).name)


def _weights_digest(directory: Path) -> str:
    """SHA-256 over the names and bytes of the weight files (cached while they are unchanged)."""
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"No weight files ({', '.join(WEIGHT_SUFFIXES)}) in {directory}")
    stats = [p.stat() for p in files]
    key = (str(directory), sum(s.st_size for s in stats), max(s.st_mtime_ns for s in stats))
    if key not in _digests:
        digest = hashlib.sha256()
        for path in files:
            digest.update(path.name.encode() + b"\0")
            with path.open("rb") as handle:
                while chunk := handle.read(1 << 20):
                    digest.update(chunk)
        _digests[key] = digest.hexdigest()
    return _digests[key]


def engine_base(engine: LocalEngine) -> str:
    """The name the engine's base goes by in adapter configs (its directory's last part)."""
    source = getattr(engine.model, "name_or_path", None) or engine.model.config._name_or_path
    return Path(str(source)).name


def check_experts(identities: Sequence[ExpertIdentity], engine: LocalEngine | None = None) -> None:
    """Refuse experts made over different base models, or over another base than ``engine``'s:
    a mixture sums their next-token distributions, which needs one vocabulary and one prefix."""
    if not identities:
        raise ValueError("a mixture needs at least one expert; got none")
    bases = {i.base for i in identities}
    if len(bases) > 1:
        listed = "; ".join(f"{i.adapter} -> {i.base!r}" for i in identities)
        raise ValueError(
            f"the experts were made over different base models ({listed}); a mixer mixes "
            "adapters of one base: train every expert over the same base model"
        )
    if engine is not None:
        mine, theirs = engine_base(engine), next(iter(bases))
        if theirs and theirs != mine:
            raise ValueError(
                f"the experts were made over base {theirs!r} but the engine serves {mine!r}; "
                f"load the engine of that base (load_local_model) or experts of {mine!r}"
            )


# The probes ----------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ExpertMixer:
    """One logistic probe per expert over that expert's final hidden state.

    ``weight[k]`` and ``bias[k]`` score expert ``k`` (inputs are raw hidden states: the
    standardisation used in training is folded in); ``experts[k]`` says which expert that is.
    """

    experts: tuple[ExpertIdentity, ...]
    weight: np.ndarray
    bias: np.ndarray
    details: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        k = len(self.experts)
        if self.weight.ndim != 2 or self.weight.shape[0] != k or self.bias.shape != (k,):
            raise ValueError(
                f"{k} experts need a weight of shape [{k}, hidden] and a bias of shape [{k}]; "
                f"got {tuple(self.weight.shape)} and {tuple(self.bias.shape)}"
            )

    @property
    def k(self) -> int:
        return len(self.experts)

    @property
    def hidden_size(self) -> int:
        return int(self.weight.shape[1])

    def scores(self, hidden: Any) -> Any:
        """σ(h_k · a_k + b_k) for rows ``hidden[..., k, :]`` (numpy or torch; same type out)."""
        if hasattr(hidden, "detach"):  # a torch tensor: stay in torch
            import torch

            weight = torch.as_tensor(self.weight, dtype=hidden.dtype)
            bias = torch.as_tensor(self.bias, dtype=hidden.dtype)
            return torch.sigmoid((hidden * weight).sum(-1) + bias)
        import numpy as np

        logits = (np.asarray(hidden) * self.weight).sum(-1) + self.bias
        return 1.0 / (1.0 + np.exp(-logits))

    def weights(self, hidden: Any) -> Any:
        """The mixture weights: the probes' scores normalised to sum to 1 over the experts
        (equal weights where every score underflows to 0)."""
        scores = self.scores(hidden) + 1e-12
        return scores / scores.sum(-1)[..., None]

    def check(self, experts: Sequence[str | Path | TrainedExpert | ExpertIdentity]) -> None:
        """Refuse ``experts`` unless they are this mixer's, in its order, with the same
        weights: a probe reads one expert's hidden states and means nothing for another's."""
        given = [e if isinstance(e, ExpertIdentity) else expert_identity(e) for e in experts]
        mine = [(i.digest, i.base) for i in self.experts]
        if [(i.digest, i.base) for i in given] == mine:
            return
        expected = "\n".join(f"  {i.adapter} (sha256 {i.digest[:12]})" for i in self.experts)
        got = "\n".join(f"  {i.adapter} (sha256 {i.digest[:12]})" for i in given)
        raise ValueError(
            f"this probe file was trained for other experts. It expects, in this order:\n"
            f"{expected}\nbut was given:\n{got}\nTrain the probes for these experts "
            "(train_mixer, or `mafl experts mixer`), or pass the experts it was trained for."
        )

    def save(self, path: str | Path) -> Path:
        """Write the probes as safetensors (``weight`` [k, hidden], ``bias`` [k]) with the
        experts' identities and the training details in the file's metadata."""
        import numpy as np
        from safetensors.numpy import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        metadata = {
            "format": FILE_FORMAT,
            "version": FILE_VERSION,
            "experts": json.dumps([asdict(i) for i in self.experts]),
            "details": json.dumps(dict(self.details)),
        }
        tensors = {
            "weight": np.ascontiguousarray(self.weight, dtype=np.float32),
            "bias": np.ascontiguousarray(self.bias, dtype=np.float32),
        }
        tmp = path.with_name(path.name + ".tmp")
        save_file(tensors, str(tmp), metadata=metadata)
        tmp.replace(path)
        return path

    @classmethod
    def load(
        cls,
        path: str | Path,
        experts: Sequence[str | Path | TrainedExpert] | None = None,
    ) -> ExpertMixer:
        """Read a probe file; with ``experts``, refuse it unless it was trained for them
        (:meth:`check`). Without, its own recorded experts are used as they are now on disk."""
        from safetensors import safe_open
        from safetensors.numpy import load_file

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"no probe file at {path}; train one with train_mixer or `mafl experts mixer`"
            )
        with safe_open(str(path), framework="numpy") as handle:
            metadata = handle.metadata() or {}
        if metadata.get("format") != FILE_FORMAT:
            raise ValueError(
                f"{path} is not an expert mixer's probe file (format "
                f"{metadata.get('format')!r}, expected {FILE_FORMAT!r})"
            )
        tensors = load_file(str(path))
        mixer = cls(
            experts=tuple(ExpertIdentity(**r) for r in json.loads(metadata["experts"])),
            weight=tensors["weight"],
            bias=tensors["bias"],
            details=json.loads(metadata.get("details", "{}")),
        )
        if experts is not None:
            mixer.check(experts)
        return mixer


@dataclass(frozen=True)
class ProbeScore:
    """One probe on held-out tokens: accuracy at 0.5, the majority-class rate (chance), AUC."""

    expert: int
    pile: int
    adapter: str
    train_tokens: int
    test_tokens: int
    accuracy: float
    chance: float
    auc: float | None


@dataclass(frozen=True)
class ProbeReport:
    """What :func:`train_mixer` measured on held-out documents.

    ``router_accuracy``: how often the expert with the highest score is the one of the token's
    document (chance: ``router_chance``, the largest pile's share of the held-out tokens);
    ``document_accuracy``: the same with each document's scores averaged over its tokens.
    """

    probes: tuple[ProbeScore, ...]
    router_accuracy: float
    router_chance: float
    document_accuracy: float
    train_documents: int
    test_documents: int
    settings: Mapping[str, Any]
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def table(self) -> str:
        """The report as a Markdown table."""
        lines = [
            "| expert | pile | held-out tokens | accuracy | chance | AUC |",
            "|---|---|---|---|---|---|",
        ]
        for p in self.probes:
            auc = "n/a" if p.auc is None else f"{p.auc:.3f}"
            lines.append(
                f"| {p.expert} | {p.pile} | {p.test_tokens} | {p.accuracy:.3f} | "
                f"{p.chance:.3f} | {auc} |"
            )
        trained = f"{self.train_documents} training and " if self.train_documents else ""
        lines.append(
            f"\nArgmax router: {self.router_accuracy:.3f} of held-out tokens go to their "
            f"document's expert (chance {self.router_chance:.3f}); per document "
            f"{self.document_accuracy:.3f}. {trained}{self.test_documents} held-out documents."
        )
        return "\n".join(lines)


def document_turns(document: Document) -> tuple[list[dict[str, str]], str]:
    """A document as the experts were trained on it: the question asked, the answer replied
    (the whole text replied where it has no separate answer)."""
    if document.question and document.answer:
        return [{"role": "user", "content": document.question}], document.answer
    return [{"role": "user", "content": ""}], document.text


def train_mixer(
    engine: LocalEngine,
    experts: Sequence[str | Path | TrainedExpert],
    corpus: Corpus,
    result: ClusterResult,
    *,
    held_out: float = 0.2,
    seed: int = 0,
    max_tokens_per_doc: int = 64,
    max_documents_per_pile: int | None = None,
    batch_documents: int = 4,
    regularization: float = 1.0,
    progress: bool = False,
) -> tuple[ExpertMixer, ProbeReport]:
    """Train one probe per expert from ``result``'s piles and measure them on held-out documents.

    ``experts[i]`` is pile ``i``'s expert (a :class:`TrainedExpert` says its own pile; an
    untrained one is skipped, and so are the documents of its pile). Each document is fed as
    the experts were trained on it (question, then answer) to every expert in one batched
    forward pass; the final hidden state after each of its first ``max_tokens_per_doc`` tokens
    (the chat template's shared head excluded) is one example for every probe, labelled 1 for
    the expert of the document's pile and 0 for the others. ``held_out`` of each pile's
    documents (at least one, where a pile has two) are kept for the report. scikit-learn's
    ``LogisticRegression`` (L2, strength ``1 / regularization``, balanced classes) fits each
    probe: a convex fit with no learning rate to tune, to the optimum.
    """
    import numpy as np

    started = time.perf_counter()
    if list(result.ids) != corpus.ids:
        raise ValueError(
            f"the {result.method} clustering is of another corpus ({len(result.ids)} documents "
            f"vs {len(corpus)}); cluster this corpus again"
        )
    if not 0 <= held_out < 1:
        raise ValueError(f"held_out must lie in [0, 1); got {held_out}")
    if max_tokens_per_doc < 1:
        raise ValueError(f"max_tokens_per_doc must be at least 1; got {max_tokens_per_doc}")
    piles = [getattr(e, "pile", i) for i, e in enumerate(experts)]
    used = [i for i, e in enumerate(experts) if getattr(e, "tuned", True) is not None]
    if len(used) < 2:
        raise ValueError(f"a mixer needs at least two trained experts; got {len(used)}")
    sources = [experts[i] for i in used]
    identities = [expert_identity(e) for e in sources]
    check_experts(identities, engine)
    names = [engine.adapter_name(i.adapter) for i in identities]
    owner = {piles[i]: j for j, i in enumerate(used)}  # pile -> expert row

    rng = random.Random(seed)
    train_docs: list[int] = []
    test_docs: list[int] = []
    for pile in sorted(owner):
        members = [d for d, label in enumerate(result.labels) if label == pile]
        rng.shuffle(members)
        if max_documents_per_pile is not None:
            members = members[:max_documents_per_pile]
        n_test = min(max(round(held_out * len(members)), 1 if held_out else 0), len(members) - 1)
        test_docs += members[:n_test]
        train_docs += members[n_test:]
    if not train_docs:
        raise ValueError("no document of any expert's pile to train the probes on")

    features = _document_features(
        engine, names, corpus, train_docs + test_docs, max_tokens_per_doc, batch_documents, progress
    )

    def stack(docs: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x = np.concatenate([features[d] for d in docs], axis=1)  # [experts, tokens, hidden]
        rows = np.concatenate(
            [np.full(features[d].shape[1], owner[result.labels[d]]) for d in docs]
        )
        doc = np.concatenate([np.full(features[d].shape[1], d) for d in docs])
        return x, rows, doc

    x_train, y_train, _ = stack(train_docs)
    weight, bias = _fit_probes(x_train, y_train, regularization, seed)
    mixer = ExpertMixer(
        tuple(identities),
        weight,
        bias,
        details={
            "trained_on": result.method,
            "piles": [piles[i] for i in used],
            "hidden_size": int(weight.shape[1]),
            "train_tokens": int(len(y_train)),
        },
    )
    settings = {
        "held_out": held_out,
        "seed": seed,
        "max_tokens_per_doc": max_tokens_per_doc,
        "max_documents_per_pile": max_documents_per_pile,
        "regularization": regularization,
        "method": result.method,
    }
    if test_docs:
        x_test, y_test, doc_test = stack(test_docs)
        report = _measure(mixer, x_test, y_test, doc_test, y_train, [piles[i] for i in used])
    else:
        report = _empty_report(mixer, y_train, [piles[i] for i in used])
    report = replace(
        report,
        train_documents=len(train_docs),
        test_documents=len(test_docs),
        settings=settings,
        seconds=time.perf_counter() - started,
    )
    return mixer, report


def measure_mixer(
    engine: LocalEngine,
    mixer: ExpertMixer,
    corpus: Corpus,
    piles: Sequence[int | None],
    *,
    max_tokens_per_doc: int = 64,
    batch_documents: int = 4,
    progress: bool = False,
) -> ProbeReport:
    """The probes of ``mixer`` on other documents: ``piles[i]`` is the pile document ``i`` of
    ``corpus`` belongs to (None, or a pile without an expert: left out), e.g. the held-out
    documents of an experts run, each given the pile its domain went to.

    The same measures as :func:`train_mixer`'s held-out report, on tokens neither the probes
    nor (for a run's test documents) the experts were trained on.
    """
    experts = [i.adapter for i in mixer.experts]
    mixer.check(experts)
    check_experts(mixer.experts, engine)
    names = [engine.adapter_name(a) for a in experts]
    own = [int(p) for p in mixer.details.get("piles", range(mixer.k))]
    owner = {pile: k for k, pile in enumerate(own)}
    target = {d: owner[pile] for d, pile in enumerate(piles) if pile is not None and pile in owner}
    docs = list(target)
    if not docs:
        raise ValueError(f"no document belongs to a pile with an expert (piles {own})")
    features = _document_features(
        engine, names, corpus, docs, max_tokens_per_doc, batch_documents, progress
    )
    import numpy as np

    x = np.concatenate([features[d] for d in docs], axis=1)
    rows = np.concatenate([np.full(features[d].shape[1], target[d]) for d in docs])
    doc = np.concatenate([np.full(features[d].shape[1], d) for d in docs])
    report = _measure(mixer, x, rows, doc, np.zeros(0), own)
    settings = {"max_tokens_per_doc": max_tokens_per_doc, "documents": len(docs)}
    return replace(report, test_documents=len(docs), settings=settings)


def _document_features(
    engine: LocalEngine,
    names: list[str],
    corpus: Corpus,
    docs: list[int],
    max_tokens_per_doc: int,
    batch_documents: int,
    progress: bool,
) -> dict[int, np.ndarray]:
    """Each document's final hidden states under every expert for its first
    ``max_tokens_per_doc`` tokens after the chat template's shared head."""
    conversations = {d: _conversation(engine, corpus.documents[d]) for d in docs}
    head = _shared_head(list(conversations.values()))
    return _hidden_states(
        engine,
        names,
        {d: ids[: head + max_tokens_per_doc] for d, ids in conversations.items()},
        head,
        batch_documents,
        progress,
    )


def _conversation(engine: LocalEngine, document: Document) -> list[int]:
    messages, reply = document_turns(document)
    with engine._tokenizer_lock:
        prompt = engine.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=False
        )
        answer = engine.tokenizer(reply, add_special_tokens=False)["input_ids"]
    return [*map(int, prompt), *map(int, answer)][: engine.context_window]


def _shared_head(conversations: list[list[int]]) -> int:
    """The tokens every conversation starts with (the chat template's system prompt and the
    user turn's opening): the same hidden states for every document, so no example."""
    if len(conversations) < 2:
        return 0
    first, head = conversations[0], len(conversations[0])
    for other in conversations[1:]:
        n = 0
        while n < min(head, len(other)) and other[n] == first[n]:
            n += 1
        head = n
    return min(head, min(map(len, conversations)) - 1)


def _hidden_states(
    engine: LocalEngine,
    names: list[str],
    conversations: dict[int, list[int]],
    head: int,
    batch_documents: int,
    progress: bool,
) -> dict[int, np.ndarray]:
    """Each document's final hidden states under every expert, ``[experts, tokens, hidden]``,
    for its tokens after ``head``; a batch holds ``batch_documents`` documents × k experts."""
    import torch

    k = len(names)
    order = sorted(conversations, key=lambda d: len(conversations[d]))  # less padding
    batches = [
        order[i : i + max(batch_documents, 1)] for i in range(0, len(order), batch_documents)
    ]
    out: dict[int, np.ndarray] = {}
    bar: Any = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(order), desc="probe features", unit="doc")
    for batch in batches:
        width = max(len(conversations[d]) for d in batch)
        rows = [conversations[d] for d in batch for _ in range(k)]
        ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        _, hidden, _ = engine.forward_rows(ids, mask, positions, None, names * len(batch))
        for j, d in enumerate(batch):
            n = len(conversations[d])
            block = hidden[j * k : (j + 1) * k, width - n + head :]  # [k, tokens, hidden]
            out[d] = block.float().numpy().copy()
        if bar is not None:
            bar.update(len(batch))
    if bar is not None:
        bar.close()
    return out


def _fit_probes(
    x: np.ndarray, owner: np.ndarray, regularization: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Probe k on expert k's hidden states, 1 where expert k owns the token; standardised for
    the fit, the scaling folded back into the weights so raw hidden states go in."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    weights, biases = [], []
    for k in range(x.shape[0]):
        labels = (owner == k).astype(int)
        if labels.min() == labels.max():
            raise ValueError(
                f"expert {k} has {'every' if labels[0] else 'no'} training token: a probe "
                "needs both; give the other piles documents too"
            )
        mean, std = x[k].mean(0), x[k].std(0) + 1e-6
        probe = LogisticRegression(
            C=1.0 / regularization, class_weight="balanced", max_iter=2000, random_state=seed
        )
        probe.fit((x[k] - mean) / std, labels)
        a = probe.coef_[0] / std
        weights.append(a)
        biases.append(probe.intercept_[0] - float((a * mean).sum()))
    return np.stack(weights).astype(np.float32), np.asarray(biases, dtype=np.float32)


def _measure(
    mixer: ExpertMixer,
    x: np.ndarray,
    owner: np.ndarray,
    doc: np.ndarray,
    train_owner: np.ndarray,
    piles: list[int],
) -> ProbeReport:
    import numpy as np
    from sklearn.metrics import roc_auc_score

    scores = mixer.scores(np.transpose(x, (1, 0, 2)))  # [tokens, experts]
    probes = []
    for k in range(mixer.k):
        labels = owner == k
        rate = float(labels.mean())
        both = 0 < labels.sum() < len(labels)
        probes.append(
            ProbeScore(
                expert=k,
                pile=piles[k],
                adapter=mixer.experts[k].adapter,
                train_tokens=int(len(train_owner)),
                test_tokens=int(len(labels)),
                accuracy=float(((scores[:, k] > 0.5) == labels).mean()),
                chance=max(rate, 1 - rate),
                auc=float(roc_auc_score(labels, scores[:, k])) if both else None,
            )
        )
    routed = scores.argmax(-1) == owner
    shares = np.bincount(owner, minlength=mixer.k) / len(owner)
    per_doc = [int(scores[doc == d].mean(0).argmax() == owner[doc == d][0]) for d in np.unique(doc)]
    return ProbeReport(
        probes=tuple(probes),
        router_accuracy=float(routed.mean()),
        router_chance=float(shares.max()),
        document_accuracy=float(np.mean(per_doc)),
        train_documents=0,
        test_documents=0,
        settings={},
        seconds=0.0,
    )


def _empty_report(mixer: ExpertMixer, train_owner: np.ndarray, piles: list[int]) -> ProbeReport:
    probes = tuple(
        ProbeScore(
            k, piles[k], mixer.experts[k].adapter, len(train_owner), 0, math.nan, math.nan, None
        )
        for k in range(mixer.k)
    )
    return ProbeReport(probes, math.nan, math.nan, math.nan, 0, 0, {}, 0.0)


# Mixed decoding ------------------------------------------------------------------------------


@dataclass(frozen=True)
class MixedGeneration:
    """What :func:`mixed_generate` produced; ``weights[t][k]``: expert k's weight for token t
    (kept when asked for), ``mean_weights``: each expert's weight averaged over the tokens."""

    text: str
    input_tokens: int
    output_tokens: int
    finish_reason: FinishReason
    mean_weights: tuple[float, ...]
    weights: tuple[tuple[float, ...], ...] = ()


def fixed_weights(force: Mapping[int, float] | Sequence[float], k: int) -> list[float]:
    """``force`` as k weights summing to 1: ``{j: 1.0}`` puts all weight on expert j; a list
    gives every expert's weight (normalised)."""
    if isinstance(force, Mapping):
        bad = [j for j in force if not 0 <= j < k]
        if bad:
            raise ValueError(f"forced weights name experts {bad}; there are {k} (0..{k - 1})")
        values = [float(force.get(j, 0.0)) for j in range(k)]
    else:
        values = [float(v) for v in force]
        if len(values) != k:
            raise ValueError(f"{len(values)} forced weights for {k} experts")
    if any(v < 0 or not math.isfinite(v) for v in values) or sum(values) <= 0:
        raise ValueError(f"forced weights must be non-negative with a positive sum; got {values}")
    return [v / sum(values) for v in values]


def mixed_generate(
    engine: LocalEngine,
    experts: Sequence[str | Path | TrainedExpert] | None,
    mixer: ExpertMixer | None,
    messages: list[dict[str, str]],
    *,
    max_tokens: int = 256,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = None,
    stop: list[str] | None = None,
    force: Mapping[int, float] | Sequence[float] | None = None,
    record_weights: bool = False,
) -> MixedGeneration:
    """Reply to ChatML ``messages`` with every token drawn from the experts' mixture.

    ``experts`` default to the mixer's; the mixer must have been trained for them. Each step
    runs the k experts on the same prefix as k rows of one forward pass, weights them by the
    probes (or by ``force``: fixed weights, e.g. ``{j: 1.0}`` for expert j alone, with no
    mixer needed), and draws from ``Σ_k w_k softmax(logits_k / T)`` (its argmax at
    ``temperature=0``, within the nucleus ``top_p`` otherwise, from a generator seeded with
    ``seed``). Stops at EOS, at a ``stop`` string (cut from the text) or after ``max_tokens``.
    """
    import torch

    if mixer is None and force is None:
        raise ValueError("mixed decoding needs a mixer (trained probes) or forced weights")
    if experts is None:
        if mixer is None:
            raise ValueError("name the experts: there is no mixer to take them from")
        experts = [i.adapter for i in mixer.experts]
    identities = [expert_identity(e) for e in experts]
    check_experts(identities, engine)
    if mixer is not None:
        mixer.check(identities)
    k = len(identities)
    forced = fixed_weights(force, k) if force is not None else None
    names = [engine.adapter_name(i.adapter) for i in identities]
    request = engine.request(
        messages, max_new_tokens=max_tokens, temperature=temperature, top_p=top_p, stop=stop
    )
    eos = engine.model.generation_config.eos_token_id
    eos_ids = {eos} if isinstance(eos, int) else set(eos or [])
    generator = torch.Generator()
    generator.manual_seed(seed if seed is not None else random.getrandbits(63))

    prompt = request.prompt_ids
    ids = torch.tensor([prompt] * k)
    mask = torch.ones_like(ids)
    positions = torch.arange(len(prompt)).expand(k, -1)
    logits, hidden, cache = engine.forward_rows(ids, mask, positions, None, names)
    positions = positions[:, -1:]
    fixed = torch.tensor(forced) if forced is not None else None
    generated: list[int] = []
    history: list[tuple[float, ...]] = []
    total = torch.zeros(k, dtype=torch.float64)
    steps = 0
    reason: FinishReason = "length"
    while True:
        if fixed is not None:
            w = fixed
        else:
            assert mixer is not None
            w = mixer.weights(hidden[:, -1, :].float())
        total += w.double()
        steps += 1
        if record_weights:
            history.append(tuple(float(x) for x in w))
        token = _draw(logits.float(), w, temperature, top_p, generator)
        if token in eos_ids:
            reason = "stop"
            break
        generated.append(token)
        if request.stop and any(s in engine._decode(generated) for s in request.stop):
            reason = "stop"
            break
        if len(generated) >= request.max_new_tokens:
            break
        mask = torch.cat([mask, torch.ones(k, 1, dtype=mask.dtype)], -1)
        positions = positions + 1
        logits, hidden, cache = engine.forward_rows(
            torch.full((k, 1), token), mask, positions, cache, names
        )
    text = engine._decode(generated)
    cut = min((i for i in (text.find(s) for s in request.stop) if i >= 0), default=-1)
    if cut >= 0:
        text = text[:cut]
    return MixedGeneration(
        text=text,
        input_tokens=len(prompt),
        output_tokens=len(generated),
        finish_reason=reason,
        mean_weights=tuple(float(x) for x in total / max(steps, 1)),
        weights=tuple(history),
    )


def _draw(
    logits: torch.Tensor,
    weights: torch.Tensor,
    temperature: float,
    top_p: float,
    generator: torch.Generator,
) -> int:
    """One token from ``Σ_k w_k softmax(logits_k / T)``: its argmax at T = 0 (then T = 1 for
    the mix), else an inverse-CDF draw within the nucleus ``top_p``."""
    import torch

    probs = torch.softmax(logits / (temperature or 1.0), dim=-1)  # [k, vocab]
    mixed = (weights.to(probs.dtype)[:, None] * probs).sum(0)
    if temperature == 0:
        return int(mixed.argmax())
    ordered, order = mixed.sort(descending=True)
    ordered = ordered.masked_fill(ordered.cumsum(-1) - ordered > top_p, 0.0)
    cdf = ordered.cumsum(-1)
    draw = torch.rand(1, generator=generator) * cdf[-1]
    pick = int(torch.searchsorted(cdf, draw).clamp(max=len(cdf) - 1))
    return int(order[pick])


# The chat model ------------------------------------------------------------------------------

_CALL_OPTIONS = ("temperature", "top_p", "max_new_tokens", "seed")


class MixtureChatModel(BaseChatModel):
    """The token-level mixture of experts as a LangChain chat model.

    ``mixer``: a probe file (from :meth:`ExpertMixer.save` or ``mafl experts mixer``); its
    experts are used unless ``experts`` names them (the same ones, checked). Or no mixer and
    ``force`` (fixed weights per expert index) with ``experts``. The base is loaded on the first
    call and shared with every local chat model of the same ``model_path`` and ``dtype``.
    ``response_metadata`` carries each expert's mean weight over the reply and its tokens.
    """

    mixer: str | None = None
    """The probe file."""
    experts: list[str] = []
    """The experts' adapter directories (default: the probe file's)."""
    force: dict[int, float] | None = None
    """Fixed weights per expert index instead of the probes' (e.g. ``{0: 1.0}``)."""
    model_path: str = SMOLLM2_ALIAS
    dtype: str = "float32"
    temperature: float = 0.7
    """0 means greedy decoding of the mixture; above 0, sampling."""
    top_p: float = 0.95
    max_new_tokens: int = 256
    seed: int | None = 0
    """Seeds each sampled call, so a run can be replayed; None for fresh randomness."""
    _engine: LocalEngine | None = PrivateAttr(default=None)
    _mixer: ExpertMixer | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _check(self) -> MixtureChatModel:
        # Fail when the society is built, not at the first call of that agent.
        if self.mixer is None and self.force is None:
            raise ValueError("MixtureChatModel needs a probe file (mixer=...) or force=...")
        if self.mixer is not None:
            self._mixer = ExpertMixer.load(self.mixer, self.experts or None)
            if not self.experts:
                self.experts = [i.adapter for i in self._mixer.experts]
        if not self.experts:
            raise ValueError("MixtureChatModel without a mixer needs experts=[adapter dirs]")
        identities = [expert_identity(e) for e in self.experts]
        check_experts(identities)
        if self.force is not None:
            fixed_weights(self.force, len(identities))
        return self

    @property
    def engine(self) -> LocalEngine:
        """The shared engine (loading the model on first use)."""
        if self._engine is None:
            from mafl_graph.local.engine import load_local_model

            self._engine = load_local_model(self.model_path, self.dtype)
        return self._engine

    @property
    def _llm_type(self) -> str:
        return "mafl-mixture"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model_path": self.model_path,
            "mixer": self.mixer,
            "experts": self.experts,
            "force": self.force,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_new_tokens": self.max_new_tokens,
            "seed": self.seed,
        }

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(
            ls_provider="mafl-local",
            ls_model_name=f"mixture:{self.model_path}",
            ls_model_type="chat",
            ls_temperature=kwargs.get("temperature", self.temperature),
            ls_max_tokens=kwargs.get("max_new_tokens", self.max_new_tokens),
        )
        if stop:
            params["ls_stop"] = stop
        return params

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        from mafl_graph.local.chat_model import chat_result, to_chatml

        unknown = set(kwargs) - set(_CALL_OPTIONS)
        if unknown:
            raise TypeError(
                f"MixtureChatModel got unsupported call options {sorted(unknown)}; "
                f"it accepts {', '.join(_CALL_OPTIONS)} and stop."
            )
        options = {name: kwargs.get(name, getattr(self, name)) for name in _CALL_OPTIONS}
        result = mixed_generate(
            self.engine,
            self.experts,
            self._mixer,
            to_chatml(messages),
            max_tokens=options["max_new_tokens"],
            temperature=options["temperature"],
            top_p=options["top_p"],
            seed=options["seed"],
            stop=stop,
            force=self.force,
        )
        return chat_result(
            result,  # type: ignore[arg-type]  # a MixedGeneration has a Generation's fields
            f"mixture:{self.model_path}",
            expert_weights=list(result.mean_weights),
            experts=list(self.experts),
            tokens=result.output_tokens,
        )

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        # Each step takes the engine's lock for one forward pass: a thread keeps the event loop
        # (other agents' calls, the engine's own batches) running while the mixture decodes.
        return await asyncio.to_thread(self._generate, messages, stop, None, **kwargs)


# An experts run directory --------------------------------------------------------------------

MIXER_FILE = "mixer.safetensors"
MIXER_REPORT = "mixer.json"


def train_run_mixer(
    run_dir: str | Path, method: str, *, progress: bool = True, **options: Any
) -> tuple[Path, ProbeReport, ProbeReport | None]:
    """Train the probes for ``method``'s experts of an experts run directory, on its corpus and
    clustering (``options`` go to :func:`train_mixer`), and measure them on the run's held-out
    documents (``test.jsonl``), each given the pile most of its domain's corpus documents went
    to: tokens neither the probes nor the experts saw. Returns the probe file, the report on
    the corpus's held-out documents and the one on the test documents (None without them).

    Writes ``experts/<method>/mixer.safetensors`` (the probes) and ``mixer.json`` (both reports,
    the second under ``"test"``); a rerun with the same settings, for the same experts, reads
    them back instead.
    """
    from mafl_graph.experts.clustering import read_result
    from mafl_graph.experts.corpus import Corpus
    from mafl_graph.experts.runs import load_run, trained_experts
    from mafl_graph.local.engine import load_local_model
    from mafl_graph.rundir import write_json

    layout, settings, corpus = load_run(run_dir)
    experts = trained_experts(run_dir, method)
    path = layout.experts_dir(method) / MIXER_FILE
    report_path = layout.experts_dir(method) / MIXER_REPORT
    if path.is_file() and report_path.is_file():
        saved = json.loads(report_path.read_text())
        try:
            ExpertMixer.load(path, [e for e in experts if e.tuned is not None])
            same = saved.get("settings", {}).items() >= _run_settings(method, options).items()
        except ValueError:
            same = False  # the experts were tuned again: train the probes again
        if same:
            test = saved.pop("test", None)
            return path, _report(saved), _report(test) if test else None
    engine = load_local_model(settings.get("model", SMOLLM2_ALIAS))
    result = read_result(layout.result(method))
    mixer, report = train_mixer(engine, experts, corpus, result, progress=progress, **options)
    mixer.save(path)
    test_report = None
    if layout.test.is_file():
        held = Corpus.load(layout.test)
        if all(d.domain is not None for d in held):
            pile_of = _domain_piles(corpus, result.labels)
            test_report = measure_mixer(
                engine,
                mixer,
                held,
                [pile_of.get(str(d.domain)) for d in held],
                max_tokens_per_doc=options.get("max_tokens_per_doc", 64),
                progress=progress,
            )
    record = report.as_dict()
    record["test"] = test_report.as_dict() if test_report else None
    write_json(report_path, record)
    return path, report, test_report


def _domain_piles(corpus: Corpus, labels: Sequence[int]) -> dict[str, int]:
    """Each hidden domain's pile: the one most of its documents went to."""
    from collections import Counter

    counts: dict[str, Counter[int]] = {}
    for document, label in zip(corpus.documents, labels, strict=True):
        counts.setdefault(str(document.domain), Counter())[label] += 1
    return {domain: c.most_common(1)[0][0] for domain, c in counts.items()}


def _report(record: Mapping[str, Any]) -> ProbeReport:
    return ProbeReport(**{**record, "probes": tuple(ProbeScore(**p) for p in record["probes"])})


def _run_settings(method: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The settings :func:`train_mixer` records for ``options`` (its defaults filled in)."""
    import inspect

    defaults = {
        name: p.default
        for name, p in inspect.signature(train_mixer).parameters.items()
        if p.kind is p.KEYWORD_ONLY and name not in ("batch_documents", "progress")
    }
    return {**defaults, **{k: v for k, v in options.items() if k in defaults}, "method": method}
