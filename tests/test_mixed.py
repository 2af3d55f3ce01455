"""A mixed corpus: seeded draws from several tasks, each problem asked, read and graded by its
own task, in the debate, the datasets and the summary alike; and the task options that reach
each task."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest
from fakes import EchoTask, ScriptedModel
from langchain_core.prompts import ChatPromptTemplate
from langgraph.checkpoint.memory import InMemorySaver

from mafl_graph import Society, create_debate_graph, run_debates, summarize_debates
from mafl_graph.config import TaskOptions
from mafl_graph.debate.prompts import DebatePrompts
from mafl_graph.finetune.datasets import build_datasets
from mafl_graph.tasks import GSM8K, Arithmetic, Mixed, Problem, get_task, task_for
from mafl_graph.traces import read_traces

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


class ShoutTask(EchoTask):
    """Answers come as 'ANSWER: x' (never boxed), with its own debate wording."""

    name = "shout"
    prompts = DebatePrompts(
        debate=ChatPromptTemplate.from_messages([("human", "SHOUT again:{answers}")])
    )

    def load(self, split: str, n: int | None = None) -> list[Problem]:
        return [Problem(f"shout-{split}-{i}", f"loud {i}", str(i)) for i in range(n or 3)]

    def question_prompt(self, problem: Problem) -> str:
        return f"SHOUT {problem.question}"

    def extract_answer(self, text: str) -> str | None:
        found = re.search(r"ANSWER: (\S+)", text)
        return found.group(1) if found else None


class QuietTask(EchoTask):
    name = "quiet"

    def load(self, split: str, n: int | None = None) -> list[Problem]:
        return [Problem(f"quiet-{split}-{i}", f"soft {i}", str(10 + i)) for i in range(n or 3)]


def _reply(messages) -> str:
    """Right in each domain's own format: a shouted number after SHOUT, a boxed one else."""
    first = messages[0].text
    number = re.search(r"(\d+)", first).group(1)
    if first.startswith("SHOUT"):
        return f"ANSWER: {number} \\boxed{{999}}"
    return f"\\boxed{{{10 + int(number)}}} ANSWER: 999"


def test_each_problem_is_asked_read_and_graded_by_its_own_task() -> None:
    task = Mixed(tasks={"alpha": ShoutTask(), "beta": QuietTask()})
    problems = task.load("test", 8)
    model = ScriptedModel(reply=_reply)
    graph = create_debate_graph(Society.from_model(model, 2), task, rounds=2, summarize=False)
    results = run_debates(
        graph, problems, run_id="mix", checkpointer=(saver := InMemorySaver()), progress=False
    )
    assert all(r.ok and r.correct for r in results), [r.error for r in results]
    for result in results:
        loud = result.problem_id.startswith("alpha:")
        critique = next(r for r in result.responses if r["round"] == 2)
        # the later round's wording is the domain's own (ShoutTask's prompts, else the paper's)
        assert critique["messages"][-1]["content"].startswith("SHOUT again") is loud
        assert {r["answer"] for r in result.responses} == {result.reference}
    summary = summarize_debates(results, task)
    assert [a.mean for a in summary.round_accuracy] == [1.0, 1.0]
    datasets = build_datasets(read_traces(saver, "mix").traces, task, target="reference")
    assert datasets[(0, "generator")].stats.examples == 8


def test_draws_are_seeded_weighted_prefix_stable_and_tagged() -> None:
    task = Mixed(tasks={"alpha": ShoutTask(), "beta": QuietTask()}, weights="3,1", seed=1)
    problems = task.load("train", 40)
    assert problems == Mixed(tasks=task.tasks, weights=[3, 1], seed=1).load("train", 40)
    assert task.load("train", 10) == problems[:10]
    assert problems != Mixed(tasks=task.tasks, weights="3,1", seed=2).load("train", 40)
    counts = Counter(task.domain_of(p) for p in problems)
    assert counts["alpha"] > counts["beta"] > 0
    for p in problems:
        assert p.metadata["domain"] == p.id.split(":")[0]
        assert p.metadata["source_id"] == p.id.split(":", 1)[1]
        assert p.metadata["domain"] not in task.question_prompt(p)
    # each domain gives its own problems in its own order
    assert [p.metadata["source_id"] for p in problems if p.id.startswith("beta:")] == [
        f"quiet-train-{i}" for i in range(counts["beta"])
    ]


def test_real_tasks_keep_their_splits_apart() -> None:
    task = Mixed(tasks={"arith": Arithmetic(terms=2), "gsm": GSM8K(data_dir=str(DATA))})
    train, test = task.load("train", 60), task.load("test", 60)
    assert not {p.question for p in train} & {p.question for p in test}
    problem = next(p for p in test if p.id.startswith("gsm:"))
    bound = task_for(task, problem)
    assert bound.question_prompt(problem) == GSM8K().question_prompt(problem)
    assert bound.is_equivalent("1,000", "1000")


def test_a_mixed_corpus_from_its_text_spec_as_the_cli_gives_it() -> None:
    task = get_task("mixed", tasks="sums=arithmetic, gsm8k", data_dir=str(DATA), seed=3)
    assert task.domains == ("sums", "gsm8k")
    assert {p.id.split(":")[0] for p in task.load("test", 20)} == {"sums", "gsm8k"}
    # Options in parentheses go to that domain's task.
    task = Mixed(tasks="sums=arithmetic(terms=2;high=50;operators=+),arithmetic(terms=3 high=9)")
    assert task.domains == ("sums", "arithmetic")
    sums, triples = (task.for_problem(Problem(f"{d}:x", "")).task for d in task.domains)
    assert (sums.terms, sums.high, sums.operators) == (2, 50, "+")
    assert (triples.terms, triples.high) == (3, 9)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"tasks": "a=arithmetic,a=gsm8k"}, "named twice"),
        ({"tasks": "my domain=arithmetic"}, "must be letters"),
        ({"tasks": "arithmetic,mmlu"}, "unknown task 'mmlu'"),
        ({"tasks": "arithmetic:algebra"}, "has no modules"),
        ({"tasks": ""}, "at least one domain"),
        ({"tasks": "arithmetic(colour=red)"}, "'colour=red' is not key=value with a key"),
        ({"tasks": "arithmetic(terms=2"}, "not closed"),
        ({"tasks": "arithmetic", "weights": "1,2"}, "2 weight"),
        ({"tasks": "arithmetic", "weights": "x"}, "must be numbers"),
        ({"tasks": "arithmetic,gsm8k", "weights": "0,0"}, "not all zero"),
        ({"tasks": "arithmetic", "weights": "nan"}, "finite"),
    ],
)
def test_bad_specs_are_refused_naming_what_is_wrong(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Mixed(**options)


def test_a_domain_too_small_for_its_draw_is_an_error_not_a_short_corpus() -> None:
    class Tiny(QuietTask):
        def load(self, split: str, n: int | None = None) -> list[Problem]:
            return super().load(split, min(n or 3, 2))

    with pytest.raises(ValueError, match="'tiny' has 2 test problems"):
        Mixed(tasks={"tiny": Tiny(), "alpha": ShoutTask()}).load("test", 30)
    with pytest.raises(ValueError, match="not from this mixed corpus"):
        Mixed(tasks={"alpha": ShoutTask()}).for_problem(Problem("quiet-0", "q", "1"))
    with pytest.raises(TypeError, match="task_for"):
        Mixed(tasks={"alpha": ShoutTask()}).extract_answer("\\boxed{1}")


def test_task_options_reach_only_the_tasks_that_take_them() -> None:
    options = TaskOptions(task="mixed", tasks="arithmetic,gsm8k", weights="2,1", data_dir=DATA)
    built = options.options(seed=4)
    assert built == {
        "tasks": "arithmetic,gsm8k",
        "weights": "2,1",
        "data_dir": str(DATA),
        "seed": 4,
    }
    assert TaskOptions.from_settings("mixed", built) == options
    assert "seed" not in TaskOptions(task="gsm8k").options(seed=4)
    with pytest.raises(ValueError, match=r"--high do not apply to --task gsm8k"):
        TaskOptions(task="gsm8k", high=3).options()
    with pytest.raises(ValueError, match=r"--data-dir do not apply to --task arithmetic"):
        TaskOptions(task="arithmetic", data_dir=DATA).options()
    # the loop's defaults for a task fill only what that task takes
    assert TaskOptions(task="arithmetic", high=9).options(defaults={"high": 30, "terms": 2}) == {
        "high": 9,
        "terms": 2,
    }
