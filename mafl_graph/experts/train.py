"""One expert per pile, tuned through the registered tuners, and a Society of the experts.

Each pile becomes a chat dataset: the problem asked in its own task's words, answered by its
reference in a form its own task grades as right (so an expert learns the answer format its
graders read). The datasets are written in the tuner's format to
``<experts dir>/datasets/pile<i>`` and tuned with the backend's own ``tune`` (local LoRA here;
hosted backends through the same call), which keeps a ledger per pile: a rerun tunes only the
piles not yet done. The experts then form a :class:`~mafl_graph.society.Society`, one agent
per expert, that debates like any other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mafl_graph.experts.clustering import ClusterResult
from mafl_graph.experts.corpus import Corpus, pile_members
from mafl_graph.tasks.base import Problem, Task, grade_answer, task_for

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel

    from mafl_graph.finetune.datasets import Example
    from mafl_graph.finetune.tuners.base import TunedModel
    from mafl_graph.finetune.tuners.options import TuneOptions
    from mafl_graph.society import Society


def reference_reply(task: Task, problem: Problem) -> tuple[str, bool]:
    """A reply stating ``problem``'s reference answer that its own task grades as right, and
    whether one was found (else the bare reference)."""
    from mafl_graph.grading import Verdict

    answer = problem.answer or ""
    own = task_for(task, problem)
    # Stripped: a reply that starts with a newline would merge with the template's own
    # newline after "assistant" into one token, and the trained span could not be found.
    text = answer.strip()
    forms = (f"The answer is \\boxed{{{text}}}.", text, f"```python\n{text}\n```")
    for reply in forms:
        try:
            extracted = own.extract_answer(reply)
            if grade_answer(own, extracted, answer) is Verdict.EQUIVALENT:
                return reply, True
        except Exception:  # a form a task cannot read is simply not that task's form
            continue
    return text, False


def problem_of(document: Any) -> Problem:
    """The problem a document was made from (id, question and reference are enough to ask
    and grade it: see :func:`~mafl_graph.tasks.base.task_for`)."""
    return Problem(document.id, document.question, document.answer)


def pile_examples(corpus: Corpus, result: ClusterResult, task: Task) -> list[list[Example]]:
    """The chat examples of each pile: the question in its task's words, the graded reply."""
    if list(result.ids) != corpus.ids:
        raise ValueError(
            f"the {result.method} clustering is of another corpus ({len(result.ids)} documents "
            f"vs {len(corpus)}); cluster this corpus again"
        )
    piles: list[list[Example]] = []
    for pile, members in enumerate(pile_members(result.labels, result.k)):
        examples: list[Example] = []
        for index in members:
            problem = problem_of(corpus.documents[index])
            reply, _ = reference_reply(task, problem)
            prompt = task_for(task, problem).question_prompt(problem)
            examples.append(
                {
                    "messages": [
                        {"role": "user", "content": prompt},
                        {"role": "assistant", "content": reply, "weight": 1},
                    ],
                    "problem_id": problem.id,
                    "agent": pile,
                    "role": "generator",
                    "subset": "D_G",
                }
            )
        piles.append(examples)
    return piles


@dataclass(frozen=True)
class TrainedExpert:
    """Pile ``pile``'s expert: None where the pile was empty (nothing to tune on)."""

    pile: int
    documents: int
    tuned: TunedModel | None


def train_experts(
    corpus: Corpus,
    result: ClusterResult,
    task: Task,
    out_dir: str | Path,
    *,
    backend: str = "local",
    options: TuneOptions | None = None,
    model: str = "",
    seed: int = 0,
) -> list[TrainedExpert]:
    """Tune one expert per pile of ``result`` with the ``backend`` tuner, in ``out_dir``.

    An empty pile gets no expert (recorded as such); a pile's finished expert is reused on a
    rerun (the tuner's ledger checks it was tuned on the same data).
    """
    from mafl_graph.finetune.export import to_openai_jsonl, to_vertex_jsonl
    from mafl_graph.finetune.tuners.options import TuneOptions
    from mafl_graph.finetune.tuners.registry import tuner_class

    cls = tuner_class(backend)
    tuner = cls.from_options(
        out_dir, options or TuneOptions(), model=model or cls.default_base, seed=seed
    )
    datasets = Path(out_dir) / "datasets"
    experts = []
    for pile, examples in enumerate(pile_examples(corpus, result, task)):
        if not examples:
            experts.append(TrainedExpert(pile, 0, None))
            continue
        path = datasets / f"pile{pile}{cls.dataset_suffix}"
        if cls.dataset_format == "vertex":
            to_vertex_jsonl(examples, path)
        elif backend == "openai":
            to_openai_jsonl(examples, path)
        else:  # a local tuner takes any number of examples; the hosted minimum is OpenAI's
            to_openai_jsonl(examples, path, min_examples=1)
        tuned = tuner.tune(pile, "generator", path, tuner.default_base)
        experts.append(TrainedExpert(pile, len(examples), tuned))
    return experts


def experts_society(
    experts: Sequence[TrainedExpert],
    *,
    summarizer: str | BaseChatModel | None = None,
    **chat_kwargs: Any,
) -> Society:
    """A Society with one agent per trained expert (``expert<pile>``), generator and critic
    both the expert; ``summarizer`` defaults to the untuned base model of the first expert's
    backend. ``chat_kwargs`` go to every expert's chat model (temperature, seed, ...)."""
    from mafl_graph.finetune.tuners.registry import tuner_class
    from mafl_graph.models import resolve_model
    from mafl_graph.society import Agent, Society

    trained = [e for e in experts if e.tuned is not None]
    if not trained:
        raise ValueError("no trained expert to make a society of (every pile was empty)")
    agents = []
    for expert in trained:
        assert expert.tuned is not None
        chat = expert.tuned.chat_model(**chat_kwargs)
        agents.append(Agent(name=f"expert{expert.pile}", generator=chat, critic=chat))
    if summarizer is None:
        first = trained[0].tuned
        assert first is not None
        provider = tuner_class(first.backend).provider
        base = first.options.get("model_path", first.base) if provider == "local" else first.base
        summarizer = resolve_model(f"{provider}:{base}", **chat_kwargs)
    elif isinstance(summarizer, str):
        summarizer = resolve_model(summarizer)
    return Society(agents=tuple(agents), summarizer=summarizer)
