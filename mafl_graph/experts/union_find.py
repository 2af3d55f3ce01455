"""Clustering by LLM guidance: union-find over documents, each union picked by a chat model.

Every document starts as its own cluster. In each round every cluster asks the model once:
here is a summary of the cluster (its documents nearest its centroid, each cut short), and a
numbered list of candidates outside it (the documents nearest the centroid by MiniLM
embedding, at most ``candidates`` of them, so a round costs one call per cluster and a run
O(N · candidates) tokens, never O(N²) calls); which candidate belongs with it? The picked
document's cluster and the asker's are united. Clusters are disjoint sets, so two clusters
that share a document are one: merging "clusters that mostly overlap" happens at each union.
Unions are applied in a seeded order and stop the moment k clusters are left.

A reply is read strictly: the candidate's number, alone or first (``3``, ``Candidate 3``,
``(3)``), in ``\\boxed{3}``, or as a first line that states it and nothing more (``The
candidate is 2.``). Anything else is *unparseable*, a number outside the list is
*out of list*; both are recorded in the journal and skipped, never guessed (the documents of
arithmetic are full of numbers, so "the first number anywhere in the reply" would be a
guess). Each round asks a model with a seed of its own (where it has a seed), so a sampled
model's unusable reply is not repeated for ever; ``patience`` rounds in a row that unite
nothing end the run with an error that says so.

With ``pick="likelihood"`` (local models) the reply is not generated: the answer is the
candidate number the model finds most likely as the first token of its reply, as
multiple-choice benchmarks score a model; it is always a number from the list.

Every call's answer is appended to ``journal.jsonl`` before it is acted on; a rerun replays
the journal (asking nothing it has asked) and goes on from there.
"""

from __future__ import annotations

import json
import os
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from mafl_graph.experts.clustering import ClusterResult, Cost, relabel
from mafl_graph.experts.config import UnionFindConfig
from mafl_graph.experts.corpus import Corpus, check_k, corpus_digest
from mafl_graph.rundir import prepare_run_dir

JOURNAL = "journal.jsonl"
SYSTEM = "You sort documents into groups of the same kind. You answer with one number."
_BOXED = re.compile(r"\\boxed\{\s*(\d+)\s*\}")
_LEADING = re.compile(
    r"^\W*(?:(?:the\s+)?(?:answer|candidate|document|number|option)\s*(?:is|:)?\s*)?#?\(?(\d+)\b",
    re.IGNORECASE,
)
_STATED = re.compile(r"^[^\d\n]*\bis\s+#?(\d+)\s*[.!]?\s*$", re.IGNORECASE)


class UnionFindStalled(RuntimeError):
    """A round united nothing (every reply unparseable or out of list): the model does not
    answer in the expected form. The journal keeps every reply."""


class DisjointSets:
    """Union-find with path halving and union by size."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))
        self.size = [1] * n
        self.count = n

    def find(self, x: int) -> int:
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: int, b: int) -> bool:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return False
        if self.size[ra] < self.size[rb]:
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.size[ra] += self.size[rb]
        self.count -= 1
        return True

    def members(self) -> dict[int, list[int]]:
        groups: dict[int, list[int]] = {}
        for x in range(len(self.parent)):
            groups.setdefault(self.find(x), []).append(x)
        return groups


def parse_pick(reply: str, n_candidates: int) -> tuple[int | None, str]:
    """(candidate number 1..n, "ok"), or (None, "unparseable" | "out-of-list")."""
    text = reply.strip()
    first_line = text.split("\n", 1)[0].strip()
    match = _BOXED.search(text) or _LEADING.match(text) or _STATED.match(first_line)
    if match is None:
        return None, "unparseable"
    number = int(match.group(1))
    if not 1 <= number <= n_candidates:
        return None, "out-of-list"
    return number, "ok"


def question_messages(summary: Sequence[str], candidates: Sequence[str]) -> list[Any]:
    """The system and user messages of one question (LangChain messages)."""
    from langchain_core.messages import HumanMessage, SystemMessage

    shown = "\n\n".join(f"---\n{text}" for text in summary)
    listed = "\n\n".join(f"{i}. {text}" for i, text in enumerate(candidates, 1))
    what = "this document" if len(summary) == 1 else "these documents of one group"
    user = (
        f"Which candidate is most like {what}?\n\n{shown}\n\nCandidates:\n\n{listed}\n\n"
        f"Reply with the number of the candidate only (1 to {len(candidates)}), for example: 2"
    )
    return [SystemMessage(SYSTEM), HumanMessage(user)]


def union_find_clusters(
    corpus: Corpus,
    model: Any,
    out_dir: str | Path,
    config: UnionFindConfig,
    *,
    embeddings: Any = None,
    model_name: str = "",
    progress: bool = True,
) -> ClusterResult:
    """Run (or resume from its journal) LLM-guided union-find over ``corpus`` in ``out_dir``.

    ``model``: any LangChain chat model (its replies' ``usage_metadata`` are counted where
    present). ``embeddings``: unit vectors, one row per document (default: MiniLM's).
    """
    check_k(config.k, len(corpus))
    import numpy as np

    out = Path(out_dir)
    settings = {
        "method": "llm-union-find",
        **asdict(config),
        "model": model_name or type(model).__name__,
        "corpus_sha256": corpus_digest(corpus),
    }
    if config.pick == "likelihood":
        _check_likelihood(model)  # before anything is written
    prepare_run_dir(out, settings)
    started = time.perf_counter()
    if embeddings is None:
        from mafl_graph.experts.baselines import embed

        embeddings = embed(corpus.texts)
    vectors = np.asarray(embeddings, dtype=np.float32)
    if vectors.shape[0] != len(corpus):
        raise ValueError(f"{vectors.shape[0]} embeddings for {len(corpus)} documents")
    journal = _Journal(
        out / JOURNAL,
        corpus.ids,
        corpus.texts,
        excerpt=config.excerpt_chars,
        chunk=config.concurrency,
    )
    sets = DisjointSets(len(corpus))
    counts = {"ok": 0, "unparseable": 0, "out-of-list": 0, "already-joined": 0}
    cost = {"model_calls": 0, "input_tokens": 0, "output_tokens": 0}
    rounds = idle = 0
    for round_ in range(config.max_rounds):
        if sets.count <= config.k:
            break
        rounds = round_ + 1
        questions = _questions(corpus, vectors, sets, config, round_)
        if config.pick == "likelihood":
            ask = _likelihood_asker(model, config.candidates)
        else:
            ask = _asker(_round_model(model, config.seed, round_), config.concurrency)
        answers = _answers(questions, journal, ask, cost, progress=progress)
        united = 0
        for question, answer in zip(questions, answers, strict=True):
            if sets.count <= config.k:
                break
            status = answer["status"]
            if status == "ok":
                picked = question["candidates"][answer["pick"] - 1]
                if sets.union(question["asker"], picked):
                    united += 1
                else:
                    status = "already-joined"
            counts[status] += 1
        idle = 0 if united else idle + 1
        if idle >= config.patience and sets.count > config.k:
            raise UnionFindStalled(
                f"{idle} rounds in a row (to round {round_ + 1}) united no two clusters "
                f"({counts['unparseable']} unparseable, {counts['out-of-list']} out of list "
                f"so far); the model does not answer in the expected form. Every reply is in "
                f"{journal.path}; try another model"
            )
    if sets.count > config.k:
        raise UnionFindStalled(
            f"{sets.count} clusters left after {config.max_rounds} rounds (k={config.k}); "
            f"raise max_rounds (the journal keeps what was asked: a rerun resumes)"
        )
    groups = sets.members()
    labels = relabel(sets.find(i) for i in range(len(corpus)))
    seconds = time.perf_counter() - started
    result_cost = Cost(
        model_calls=cost["model_calls"],
        input_tokens=cost["input_tokens"],
        output_tokens=cost["output_tokens"],
        forward_passes=len(corpus),
        seconds=seconds,
    )
    details = {
        "config": asdict(config),
        "rounds": rounds,
        "replies": counts,
        "journal": str(journal.path),
        "model": settings["model"],
        "replayed_calls": journal.replayed,
        "clusters": len(groups),
    }
    return ClusterResult(
        "llm-union-find", len(groups), labels, tuple(corpus.ids), result_cost, details
    )


def _questions(
    corpus: Corpus, vectors: Any, sets: DisjointSets, config: UnionFindConfig, round_: int
) -> list[dict[str, Any]]:
    """One question per cluster, in a seeded order, against the clusters as the round starts."""
    import numpy as np

    groups = sets.members()
    roots = sorted(groups)
    random.Random(f"union-find:{config.seed}:{round_}").shuffle(roots)
    questions = []
    for root in roots:
        members = groups[root]
        centroid = vectors[members].mean(axis=0)
        similarity = vectors @ centroid
        inside = np.zeros(len(corpus), dtype=bool)
        inside[members] = True
        outside = np.where(~inside)[0]
        nearest = outside[np.argsort(-similarity[outside], kind="stable")][: config.candidates]
        shown = sorted(members, key=lambda i: -float(similarity[i]))[: config.summary_documents]
        questions.append(
            {
                "key": f"{round_}:{corpus.ids[root]}",
                "round": round_,
                "asker": root,
                "cluster_size": len(members),
                "summary": [int(i) for i in shown],
                "candidates": [int(i) for i in nearest],
            }
        )
    return questions


def _answers(
    questions: Sequence[dict[str, Any]],
    journal: _Journal,
    ask: Callable[[list[list[Any]]], list[Any]],
    cost: dict[str, int],
    *,
    progress: bool,
) -> list[dict[str, Any]]:
    """Each question's journalled answer, asking the model for those not yet in the journal."""
    from tqdm.auto import tqdm

    missing = [q for q in questions if q["key"] not in journal.entries]
    for q in questions:
        if q["key"] in journal.entries and journal.entries[q["key"]]["candidates"] != [
            journal.ids[i] for i in q["candidates"]
        ]:
            raise ValueError(
                f"{journal.path} answers question {q['key']} about other candidates; it was "
                "made from another corpus or embeddings: use a new run directory"
            )
    step = journal.chunk
    with tqdm(
        total=len(missing), desc="union-find calls", disable=not progress or not missing
    ) as bar:
        for start in range(0, len(missing), step):
            chunk = missing[start : start + step]
            started = time.perf_counter()
            replies = ask([journal.messages(q) for q in chunk])
            elapsed = time.perf_counter() - started
            entries = []
            for q, reply in zip(chunk, replies, strict=True):
                text = reply.text if hasattr(reply, "text") else str(reply)
                usage = getattr(reply, "usage_metadata", None) or {}
                pick, status = parse_pick(text, len(q["candidates"]))
                entries.append(
                    {
                        "key": q["key"],
                        "round": q["round"],
                        "asker": journal.ids[q["asker"]],
                        "cluster_size": q["cluster_size"],
                        "candidates": [journal.ids[i] for i in q["candidates"]],
                        "reply": text,
                        "pick": pick,
                        "status": status,
                        "input_tokens": int(usage.get("input_tokens", 0)),
                        "output_tokens": int(usage.get("output_tokens", 0)),
                        "seconds": round(elapsed / len(chunk), 3),
                    }
                )
            journal.append(entries)
            bar.update(len(chunk))
    for q in questions:
        entry = journal.entries[q["key"]]
        if q in missing:
            cost["model_calls"] += 1
            cost["input_tokens"] += entry["input_tokens"]
            cost["output_tokens"] += entry["output_tokens"]
    return [journal.entries[q["key"]] for q in questions]


def _round_model(model: Any, seed: int, round_: int) -> Any:
    """The model with a seed of this round, where it has one: a sampled model that was seeded
    once would give a cluster the same unusable reply every round."""
    fields = getattr(type(model), "model_fields", {})
    if "seed" not in fields or not isinstance(getattr(model, "seed", None), int):
        return model
    return model.model_copy(update={"seed": seed * 1_000_003 + round_})


def _asker(model: Any, concurrency: int) -> Callable[[list[list[Any]]], list[Any]]:
    def ask(batch: list[list[Any]]) -> list[Any]:
        return list(model.batch(batch, config={"max_concurrency": concurrency}))

    return ask


def _check_likelihood(model: Any) -> None:
    from mafl_graph.local import LocalChatModel

    if not isinstance(model, LocalChatModel):
        raise ValueError(
            f"pick='likelihood' reads the model's next-token probabilities: it needs a local "
            f"model (local:...), not {type(model).__name__}; use pick='reply'"
        )


def _likelihood_asker(model: Any, candidates: int) -> Callable[[list[list[Any]]], list[Any]]:
    """Each question answered by the candidate number the model finds most likely as the
    first token of its reply (multiple-choice scoring): always a number from the list, and
    the model's own preference among them, for a model too small to answer in form."""
    from langchain_core.messages import AIMessage

    from mafl_graph.local.chat_model import to_chatml

    _check_likelihood(model)
    engine = model.engine
    numbers = [str(i) for i in range(1, candidates + 1)]
    tokens = [engine.tokenizer(n, add_special_tokens=False)["input_ids"] for n in numbers]
    if any(len(t) != 1 for t in tokens):
        raise ValueError(
            "the tokenizer splits a candidate number; pick='likelihood' needs one token each"
        )

    def ask(batch: list[list[Any]]) -> list[Any]:
        replies = []
        for messages in batch:
            chat = to_chatml(messages)
            logprobs, _ = engine.next_token_logprobs(chat, numbers[0], model.adapter)
            # the question's last line says how many candidates it lists: "(1 to N)"
            shown = int(re.findall(r"\(1 to (\d+)\)", chat[-1]["content"])[-1])
            scores = [float(logprobs[0, t[0]]) for t in tokens[:shown]]
            best = max(range(len(scores)), key=scores.__getitem__)
            prompt = engine.tokenizer.apply_chat_template(
                chat, add_generation_prompt=True, tokenize=True, return_dict=False
            )
            usage = {"input_tokens": len(prompt), "output_tokens": 0, "total_tokens": len(prompt)}
            replies.append(AIMessage(content=numbers[best], usage_metadata=usage))
        return replies

    return ask


class _Journal:
    """``journal.jsonl``: one line per model call, appended (and synced) before it is used."""

    def __init__(
        self, path: Path, ids: Sequence[str], texts: Sequence[str], *, excerpt: int, chunk: int
    ) -> None:
        self.path = path
        self.ids, self.texts = list(ids), list(texts)
        self.excerpt, self.chunk = excerpt, chunk
        self.entries: dict[str, dict[str, Any]] = {}
        text = path.read_text() if path.is_file() else ""
        lines = text.splitlines()
        if text and not text.endswith("\n"):
            # A line cut by a crash mid-write: that call is asked again, so drop it.
            lines = lines[:-1]
            path.write_text("".join(line + "\n" for line in lines))
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                raise ValueError(f"{path}:{number} is unreadable; the journal is damaged") from None
            self.entries[entry["key"]] = entry
        self.replayed = len(self.entries)

    def messages(self, question: dict[str, Any]) -> list[Any]:
        cut = self.excerpt
        summary = [self.texts[i][:cut] for i in question["summary"]]
        candidates = [self.texts[i][:cut] for i in question["candidates"]]
        return question_messages(summary, candidates)

    def append(self, entries: Sequence[dict[str, Any]]) -> None:
        with self.path.open("a") as handle:
            handle.writelines(json.dumps(e) + "\n" for e in entries)
            handle.flush()
            os.fsync(handle.fileno())
        for entry in entries:
            self.entries[entry["key"]] = entry
