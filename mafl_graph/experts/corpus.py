"""Documents to cluster: a mixed corpus's problems as text, their hidden domains kept aside.

A document is what a problem teaches: its question and its reference answer (HumanEval's
reference already begins with the question, so it is the document alone). The hidden domain
goes with each document only so that the measures and the oracle baseline can read it; no
clustering method sees it.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from mafl_graph.tasks.base import Problem

TooLong = Literal["truncate", "refuse"]
TOO_LONG = ("truncate", "refuse")


@dataclass(frozen=True)
class Document:
    """One problem as a document: ``text`` is clustered, ``domain`` is the hidden label."""

    id: str
    text: str
    domain: str | None = None
    question: str = ""
    answer: str | None = None


@dataclass(frozen=True)
class Corpus:
    """The documents of one clustering run, in a fixed order; ``truncated``: the ids of those
    cut to the token budget."""

    documents: tuple[Document, ...]
    truncated: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        ids = [d.id for d in self.documents]
        if len(set(ids)) != len(ids):
            twice = sorted(i for i, n in Counter(ids).items() if n > 1)
            raise ValueError(f"document ids must be unique; repeated: {twice[:5]}")

    def __len__(self) -> int:
        return len(self.documents)

    def __iter__(self) -> Iterator[Document]:
        return iter(self.documents)

    @property
    def ids(self) -> list[str]:
        return [d.id for d in self.documents]

    @property
    def texts(self) -> list[str]:
        return [d.text for d in self.documents]

    @property
    def domains(self) -> list[str]:
        """The hidden domains, in order; a ValueError when a document has none."""
        missing = [d.id for d in self.documents if d.domain is None]
        if missing:
            raise ValueError(
                f"{len(missing)} document(s) have no domain label (e.g. {missing[0]!r}); "
                "the measures and the oracle need a corpus with hidden domains (--task mixed)"
            )
        return [str(d.domain) for d in self.documents]

    def save(self, path: str | Path) -> None:
        """The documents as JSONL (one line each, truncation noted), written atomically."""
        lines = [json.dumps({**asdict(d), "truncated": d.id in self.truncated}) for d in self]
        write_text_atomic(Path(path), "".join(line + "\n" for line in lines))

    @classmethod
    def load(cls, path: str | Path) -> Corpus:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no corpus at {path}; make it with `mafl experts corpus`")
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        documents = tuple(
            Document(**{k: v for k, v in r.items() if k != "truncated"}) for r in records
        )
        return cls(documents, tuple(r["id"] for r in records if r.get("truncated")))


def document_text(problem: Problem) -> str:
    """The question, then the reference answer (once, where the answer repeats the question)."""
    answer = problem.answer or ""
    if answer.startswith(problem.question):
        return answer
    return f"{problem.question}\n{answer}" if answer else problem.question


def problem_domain(task: Any, problem: Problem) -> str | None:
    """The hidden domain: the task's ``domain_of`` where it has one, else the metadata's."""
    domain_of = getattr(task, "domain_of", None)
    if callable(domain_of):
        return str(domain_of(problem))
    domain = problem.metadata.get("domain")
    return None if domain is None else str(domain)


def build_corpus(
    problems: Sequence[Problem],
    *,
    task: Any = None,
    tokenizer: Any = None,
    max_tokens: int | None = None,
    too_long: TooLong = "truncate",
) -> Corpus:
    """The documents of ``problems``, each at most ``max_tokens`` tokens of ``tokenizer``.

    A longer document is cut to the budget (its id is listed in ``Corpus.truncated``) or, with
    ``too_long="refuse"``, the whole corpus is refused with the list of the long ones: a
    perplexity over a context the model cannot hold means nothing, and a silent cut hides it.
    """
    if not problems:
        raise ValueError("the corpus is empty: load at least one problem (check --n and --split)")
    if too_long not in TOO_LONG:
        raise ValueError(f"too_long must be one of {TOO_LONG}; got {too_long!r}")
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"max_tokens must be at least 1; got {max_tokens}")
    if max_tokens is not None and tokenizer is None:
        raise ValueError("a token budget (max_tokens) needs the model's tokenizer")
    documents, long_ids = [], []
    for problem in problems:
        text = document_text(problem)
        if max_tokens is not None:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(ids) > max_tokens:
                long_ids.append((problem.id, len(ids)))
                text = tokenizer.decode(ids[:max_tokens])
        documents.append(
            Document(
                id=problem.id,
                text=text,
                domain=problem_domain(task, problem),
                question=problem.question,
                answer=problem.answer,
            )
        )
    if long_ids and too_long == "refuse":
        listed = ", ".join(f"{i} ({n} tokens)" for i, n in long_ids[:10])
        more = f" and {len(long_ids) - 10} more" if len(long_ids) > 10 else ""
        raise ValueError(
            f"{len(long_ids)} document(s) exceed the {max_tokens}-token budget: {listed}{more}; "
            "raise --max-tokens or let them be truncated (--too-long truncate)"
        )
    return Corpus(tuple(documents), tuple(i for i, _ in long_ids))


def check_k(k: int, n_documents: int) -> None:
    """k piles need 1 ≤ k ≤ the number of documents: a ValueError naming both otherwise."""
    if n_documents < 1:
        raise ValueError("the corpus is empty: there is nothing to cluster")
    if k < 1:
        raise ValueError(f"k must be at least 1; got k={k}")
    if k > n_documents:
        raise ValueError(f"k={k} piles need at least {k} documents; the corpus has {n_documents}")


def pile_members(labels: Iterable[int], k: int) -> list[list[int]]:
    """The document indices of each of ``k`` piles."""
    piles: list[list[int]] = [[] for _ in range(k)]
    for index, label in enumerate(labels):
        piles[label].append(index)
    return piles


def corpus_digest(corpus: Corpus) -> str:
    """SHA-256 of the documents' ids and texts: a run directory belongs to one corpus."""
    import hashlib

    digest = hashlib.sha256()
    for document in corpus:
        digest.update(json.dumps([document.id, document.text]).encode())
    return digest.hexdigest()


def write_text_atomic(path: Path, text: str) -> None:
    """``text`` into ``path`` through a temporary file and one rename: whole or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
