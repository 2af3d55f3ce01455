"""Whether the experts specialised: each expert's perplexity and accuracy on held-out
problems of each domain (a k × domains matrix), beside the single model and the untuned base.

Perplexity is of the reference reply (the one the experts were tuned to give, see
:func:`~mafl_graph.experts.train.reference_reply`) after the question in its task's words,
under each local model (the embedded engine's ``next_token_logprobs``: LoRA and SVF experts
alike). Accuracy is of greedy answers, read and graded by each problem's own task; it works
with any chat model, local or hosted.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from mafl_graph.experts.corpus import Corpus
from mafl_graph.experts.train import problem_of, reference_reply
from mafl_graph.tasks.base import Task, grade_answer, task_for


def by_domain(corpus: Corpus, per_domain: int | None = None) -> dict[str, list[int]]:
    """Document indices of each hidden domain (the first ``per_domain`` of each), in order."""
    groups: dict[str, list[int]] = {}
    for index, domain in enumerate(corpus.domains):
        groups.setdefault(domain, []).append(index)
    if per_domain is not None:
        groups = {d: members[:per_domain] for d, members in groups.items()}
    return dict(sorted(groups.items()))


def perplexity_matrix(
    models: Mapping[str, str | None],
    corpus: Corpus,
    task: Task,
    *,
    per_domain: int | None = None,
    model_path: str = "smollm2",
) -> dict[str, dict[str, float]]:
    """``{model name: {domain: perplexity}}`` of held-out reference replies.

    ``models``: name -> a local adapter directory (None: the untuned base). Perplexity is
    exp of the mean token NLL over all of a domain's replies.
    """
    from mafl_graph.local import load_local_model

    engine = load_local_model(model_path)
    groups = by_domain(corpus, per_domain)
    matrix: dict[str, dict[str, float]] = {}
    for name, adapter in models.items():
        row = {}
        for domain, members in groups.items():
            nll, tokens = 0.0, 0
            for index in members:
                problem = problem_of(corpus.documents[index])
                reply, _ = reference_reply(task, problem)
                prompt = task_for(task, problem).question_prompt(problem)
                logprobs, ids = engine.next_token_logprobs(
                    [{"role": "user", "content": prompt}], reply, adapter
                )
                nll -= float(logprobs.gather(1, ids[:, None]).sum())
                tokens += len(ids)
            row[domain] = math.exp(nll / max(tokens, 1))
        matrix[name] = row
    return matrix


def accuracy_matrix(
    models: Mapping[str, Any],
    corpus: Corpus,
    task: Task,
    *,
    per_domain: int | None = None,
    concurrency: int = 16,
) -> dict[str, dict[str, float]]:
    """``{model name: {domain: accuracy}}``: each chat model's greedy answers to held-out
    problems, graded by each problem's own task (accuracy in 0..1)."""
    groups = by_domain(corpus, per_domain)
    matrix: dict[str, dict[str, float]] = {}
    for name, model in models.items():
        row = {}
        for domain, members in groups.items():
            problems = [problem_of(corpus.documents[i]) for i in members]
            prompts = [[("user", task_for(task, p).question_prompt(p))] for p in problems]
            replies = model.batch(prompts, config={"max_concurrency": concurrency})
            right = 0
            for problem, reply in zip(problems, replies, strict=True):
                own = task_for(task, problem)
                verdict = grade_answer(own, own.extract_answer(reply.text), problem.answer or "")
                right += verdict.name == "EQUIVALENT"
            row[domain] = right / len(problems) if problems else math.nan
        matrix[name] = row
    return matrix


def matrix_table(
    matrix: Mapping[str, Mapping[str, float]],
    *,
    percent: bool = False,
    best: str = "min",
) -> str:
    """Markdown: one row per model, one column per domain; each column's best value bold."""
    domains: list[str] = sorted({d for row in matrix.values() for d in row})
    lines = ["| model | " + " | ".join(domains) + " |", "|---" * (len(domains) + 1) + "|"]
    pick = min if best == "min" else max
    bests = {
        d: pick(row[d] for row in matrix.values() if d in row and not math.isnan(row[d]))
        for d in domains
        if any(d in row and not math.isnan(row[d]) for row in matrix.values())
    }
    for name, row in matrix.items():
        cells = []
        for d in domains:
            value = row.get(d, math.nan)
            text = (
                "–" if math.isnan(value) else (f"{100 * value:.0f}%" if percent else f"{value:.2f}")
            )
            column = [r[d] for r in matrix.values() if d in r and not math.isnan(r[d])]
            varies = len(set(column)) > 1
            cells.append(f"**{text}**" if varies and value == bests.get(d) else text)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def specialisation_gain(
    matrix: Mapping[str, Mapping[str, float]], experts: Sequence[str], single: str
) -> dict[str, float]:
    """Per domain: the single model's perplexity over the best expert's (above 1: an expert
    beats the single model on that domain)."""
    domains = sorted({d for row in matrix.values() for d in row})
    return {
        d: matrix[single][d] / min(matrix[e][d] for e in experts)
        for d in domains
        if experts and single in matrix
    }
