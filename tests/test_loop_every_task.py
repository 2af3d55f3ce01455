"""`mafl loop`, `compare` and `sweep` run on every task the CLI offers, each through the real
OpenAI SDK against the loopback OpenAI (tests/openai_world.py), which answers sums and the
problems it is given."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

pytest.importorskip("langchain_openai")

from fake_http import serve  # noqa: E402
from openai_world import KEY, OpenAIWorld  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from mafl_graph.cli import app  # noqa: E402
from mafl_graph.config import LOOP_TASK_DEFAULTS, LoopConfig, TaskOptions  # noqa: E402

pytestmark = pytest.mark.allow_hosts(["127.0.0.1"])

# Each task's local files, in its own format, hold sums the loopback server can answer.
SUMS = [(a, b) for a in range(1, 6) for b in range(1, 4)]


def _data_dir(root: Path) -> Path:
    for split, rows in (("train", SUMS[:9]), ("test", SUMS[9:])):
        gsm8k, math = root / "gsm8k", root / "math500"
        gsm8k.mkdir(parents=True, exist_ok=True)
        math.mkdir(parents=True, exist_ok=True)
        question = "Tom has some apples. What is the result of {}+{}?"
        (gsm8k / f"{split}.jsonl").write_text(
            "".join(
                json.dumps({"question": question.format(a, b), "answer": f"So #### {a + b}"}) + "\n"
                for a, b in rows
            )
        )
        (math / f"{split}.jsonl").write_text(
            "".join(
                json.dumps({"question": question.format(a, b), "answer": f"\\boxed{{{a + b}}}"})
                + "\n"
                for a, b in rows
            )
        )
    return root


@pytest.fixture
def mafl(monkeypatch: pytest.MonkeyPatch):
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level

    def run(*args: str, url: str) -> object:
        monkeypatch.setenv("OPENAI_BASE_URL", url + "/v1")
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        return CliRunner().invoke(app, list(args))

    yield run
    root.handlers[:], root.level = handlers, level


# The options each task needs here ("DATA": the local files below). The loopback server answers
# the sums of the first three, and the others from a table of their problems' references.
TASKS = {
    "arithmetic": [],
    "gsm8k": ["--data-dir", "DATA"],
    "math": ["--data-dir", "DATA"],
    "dm-math": ["--module", "arithmetic__add_or_sub"],
    "humaneval": [],
    "mixed": ["--tasks", "arithmetic,dm-math:numbers__gcd,humaneval", "--weights", "1,1,2"],
}
SUM_TASKS = ("arithmetic", "gsm8k", "math")


def _answers(task: str) -> dict[str, str]:
    """What the loopback server knows of a task beyond sums: the loop's problems' references."""
    if task in SUM_TASKS:
        return {}
    flags = iter(TASKS[task])
    options = {flag.removeprefix("--"): value for flag, value in zip(flags, flags, strict=True)}
    built, _ = TaskOptions(task=task, **options).build(seed=0)
    problems = built.load("train", 6) + built.load("test", 3)
    return {p.question: p.answer for p in problems if p.answer is not None}


@pytest.mark.parametrize("task", list(TASKS))
def test_loop_compare_and_sweep_run_on_every_task(tmp_path: Path, mafl, task: str) -> None:
    data = [str(_data_dir(tmp_path / "data")) if a == "DATA" else a for a in TASKS[task]]
    common = ["--task", task, *data, "--model", "openai:gpt-4o-mini", "--iterations", "1"]
    common += ["--n-train", "6", "--n-test", "3", "--concurrency", "3", "--poll-interval", "0.01"]
    world = OpenAIWorld(answers=_answers(task))
    with serve(world) as (url, _):
        loop = mafl("loop", "--run-dir", str(tmp_path / "loop"), *common, url=url)
        assert loop.exit_code == 0, loop.output[-3000:]
        compare = mafl(
            "compare",
            *("--run-dir", str(tmp_path / "compare"), "--methods", "majority-vote,single"),
            *(*common, "--no-diversity"),
            url=url,
        )
        assert compare.exit_code == 0, compare.output[-3000:]
        sweep = mafl(
            "sweep", "--run-dir", str(tmp_path / "sweep"), "--grid", "w=0.5", *common, url=url
        )
        assert sweep.exit_code == 0, sweep.output[-3000:]
        transfer = mafl(
            *("eval", "--run-dir", str(tmp_path / "loop"), "--train-task", task),
            *("--test-task", "dm-math", "--module", "numbers__gcd", "--n", "2"),
            url=url,
        )
        assert transfer.exit_code == 0, transfer.output[-3000:]
    metrics = json.loads((tmp_path / "loop" / "metrics.json").read_text())
    assert [m["iteration"] for m in metrics] == [0, 1]
    settings = json.loads((tmp_path / "loop" / "manifest.json").read_text())["settings"]
    assert settings["task"] == task
    # The loop's own arithmetic (sums up to 20) applies only to arithmetic.
    assert ("high" in settings["task_options"]) == (task == "arithmetic")
    rebuilt = LoopConfig.from_manifest(tmp_path / "loop")[0].task_options
    assert rebuilt.task == task
    assert (
        rebuilt.options(seed=0, defaults=LOOP_TASK_DEFAULTS.get(task)) == settings["task_options"]
    )
    # The tuned (ft:) models answer every test problem, in each task's own answer format.
    assert metrics[1]["eval"]["round_accuracy"][0]["mean"] == 1.0
    for method in ("majority-vote", "single"):
        assert (tmp_path / "compare" / method / "metrics.json").is_file()
    assert (tmp_path / "sweep" / "sweep.md").read_text().count("w=0.5") == 1
