"""Bad input through the `mafl` commands: one clear error, exit code 2, and nothing lost.

Each case runs against a copy of a finished run directory (manifest, checkpoints, results,
datasets) and checks that the error names the bad value and says what to do, that no traceback
is shown, and that every file already on disk is byte-for-byte what it was.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

pytest.importorskip("langchain_openai")

from fault_server import FaultServer, arithmetic_answer, serve  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from mafl_graph.cli import app  # noqa: E402
from mafl_graph.finetune.tuners import TunedModel, load_tuned  # noqa: E402

pytestmark = pytest.mark.allow_hosts(["127.0.0.1"])

KEY = "sk-mafl-bad-input-0123456789abcdef"
RUN = ["--model", "openai:fault-model", "--n", "6", "--max-retries", "0"]
ARITHMETIC = ["--terms", "2", "--high", "9", "--operators", "+"]
Setup = Callable[[Path], list[str]]


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A run directory after `mafl debate` and `mafl datasets`."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    with serve(FaultServer(answer=arithmetic_answer)) as server, pytest.MonkeyPatch.context() as mp:
        mp.setenv("OPENAI_API_KEY", KEY)
        mp.setenv("OPENAI_BASE_URL", server.url)
        args = ["debate", *RUN, *ARITHMETIC, "--run-dir", str(run_dir)]
        debated = CliRunner().invoke(app, args)
        assert debated.exit_code == 0, debated.output
        args = ["datasets", "--run-dir", str(run_dir), "--min-examples", "1"]
        made = CliRunner().invoke(app, args)
        assert made.exit_code == 0, made.output
    yield run_dir


@pytest.fixture
def workspace(finished: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the finished run in ``tmp_path/run``; the key set, no server listening.

    Setups return the task arguments (the run's own, or the bad task file's).
    """
    shutil.copytree(finished, tmp_path / "run")
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")  # never reached
    return tmp_path


def snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def gsm8k_file(lines: list[str]) -> Setup:
    def setup(root: Path) -> list[str]:
        (root / "data" / "gsm8k").mkdir(parents=True)
        (root / "data" / "gsm8k" / "test.jsonl").write_text("\n".join(lines) + "\n")
        return ["--task", "gsm8k", "--data-dir", str(root / "data")]

    return setup


def garbage_checkpoint(root: Path) -> list[str]:
    (root / "run" / "debates.sqlite").write_bytes(b"this is not a SQLite database\n" * 100)
    return ARITHMETIC


def truncated_checkpoint(root: Path) -> list[str]:
    db = root / "run" / "debates.sqlite"
    data = db.read_bytes()
    db.write_bytes(data[: len(data) // 2])
    return ARITHMETIC


def corrupt_manifest(root: Path) -> list[str]:
    (root / "run" / "manifest.json").write_text('{"settings": {"task": "arith')
    return ARITHMETIC


def nothing(root: Path) -> list[str]:
    """The run's own task arguments: the extra arguments are what is wrong."""
    return ARITHMETIC


# (what is wrong, how it is set up, extra arguments, what the error must say) for `mafl debate`.
DEBATE_CASES = [
    ("task file: a line that is not JSON", gsm8k_file(['{"question": "q", "answer": "#### 1"}', '{"question": "q2"']), [], ["line 2 is not valid JSON", "test.jsonl", "fix or remove that line"]),  # noqa: E501
    ("task file: a row without its answer", gsm8k_file(['{"question": "q", "answer": "#### 1"}', '{"question": "q2"}']), [], ["row 1: field 'answer' is missing", "every row needs"]),  # noqa: E501
    ("task file: missing", lambda root: ["--task", "gsm8k", "--data-dir", str(root / "nowhere")], [], ["gsm8k/test.jsonl does not exist", "point data_dir"]),  # noqa: E501
    ("unknown provider", nothing, ["--model", "anthropic:claude-3-5-sonnet"], ["Unknown model provider 'anthropic'", "known providers: local, openai, google_genai"]),  # noqa: E501
    ("no provider", nothing, ["--model", "gpt-4o-mini"], ["'gpt-4o-mini' is neither", "e.g. 'local:smollm2'"]),  # noqa: E501
    ("local model path that does not exist", lambda root: [*ARITHMETIC, "--model", f"local:{root}/no-such-model.gguf"], [], ["no-such-model.gguf' not found", "pass 'smollm2', a .gguf file"]),  # noqa: E501
    ("rounds 0", nothing, ["--rounds", "0"], ["--rounds must be at least 1; got 0"]),
    ("agents 0", nothing, ["--agents", "0"], ["--agents must be at least 1; got 0"]),
    ("one agent, two rounds", nothing, ["--agents", "1", "--rounds", "2"], ["needs at least 2 agents", "rounds=1"]),  # noqa: E501
    ("no problems", nothing, ["--n", "0"], ["--n must be at least 1; got 0"]),
    ("concurrency 0", nothing, ["--concurrency", "0"], ["--concurrency must be at least 1; got 0"]),  # noqa: E501
    ("max tokens 0", nothing, ["--max-tokens", "0"], ["--max-tokens must be at least 1; got 0"]),  # noqa: E501
    ("negative temperature", nothing, ["--temperature", "-1"], ["--temperature must lie in [0, 2]; got -1.0"]),  # noqa: E501
    ("rate 0", nothing, ["--requests-per-second", "0"], ["requests_per_second must be above 0; got 0.0", "leave it unset"]),  # noqa: E501
    ("timeout 0", nothing, ["--timeout", "0"], ["timeout must be above 0 seconds; got 0.0"]),
    ("negative retries", nothing, ["--max-retries", "-1"], ["max_retries must be 0 or more; got -1"]),  # noqa: E501
    ("other settings than the run's", nothing, ["--seed", "7"], ["holds a run made with other settings", "seed: 0 -> 7", "choose a new run directory"]),  # noqa: E501
    ("corrupt manifest", corrupt_manifest, [], ["manifest.json is unreadable", "move the directory aside"]),  # noqa: E501
    ("checkpoint file that is not a database", garbage_checkpoint, [], ["debates.sqlite is damaged (file is not a database)", "left untouched", "move it aside"]),  # noqa: E501
    ("truncated checkpoint file", truncated_checkpoint, [], ["debates.sqlite is damaged", "restore it from a backup"]),  # noqa: E501
]  # fmt: skip


@pytest.mark.parametrize(
    ("setup", "extra", "needles"),
    [pytest.param(s, e, n, id=name) for name, s, e, n in DEBATE_CASES],
)
def test_mafl_debate_refuses_bad_input_and_keeps_what_is_on_disk(
    workspace: Path, setup: Setup, extra: list[str], needles: list[str]
) -> None:
    args = ["debate", *RUN, "--run-dir", str(workspace / "run"), *setup(workspace), *extra]
    before = snapshot(workspace)
    result = CliRunner().invoke(app, args)
    assert_one_clear_error(result, needles)
    assert snapshot(workspace) == before


def test_mafl_datasets_refuses_bad_input_and_keeps_what_is_on_disk(workspace: Path) -> None:
    run = str(workspace / "run")
    cases = [
        (["--w", "1.5"], ["must lie in [0, 1]; got w=1.5"]),
        (["--w", "-0.1"], ["must lie in [0, 1]; got w=-0.1"]),
        (["--run-dir", str(workspace / "missing")], ["manifest.json not found", "mafl debate"]),
    ]
    for extra, needles in cases:
        before = snapshot(workspace)
        result = CliRunner().invoke(app, ["datasets", "--run-dir", run, *extra])
        assert_one_clear_error(result, needles)
        assert snapshot(workspace) == before
    garbage_checkpoint(workspace)
    before = snapshot(workspace)
    result = CliRunner().invoke(app, ["datasets", "--run-dir", run, "--min-examples", "1"])
    assert_one_clear_error(result, ["debates.sqlite is damaged (file is not a database)"])
    assert snapshot(workspace) == before


@pytest.mark.parametrize(
    ("content", "needles"),
    [
        ("{not json", ["tuned.json is not valid JSON", "run `mafl tune` again"]),
        ('{"iteration": 1}', ["has no 'models' list"]),
        ('{"models": [{"agent": 0, "role": "critic"}]}', ["models[0] lacks ['backend', 'model', 'base']"]),  # noqa: E501
        (None, ["adapter directory", "does not exist", "tune iteration 1 again"]),
    ],
)  # fmt: skip
def test_mafl_tune_refuses_a_bad_tuned_json_and_keeps_what_is_on_disk(
    workspace: Path, content: str | None, needles: list[str]
) -> None:
    tuned = workspace / "tuned.json"
    if content is None:  # a tuned.json whose adapter directory is gone
        missing = workspace / "run" / "adapters" / "iter1" / "agent0-generator"
        model = TunedModel(0, "generator", "local", str(missing), "smollm2", 1)
        content = json.dumps({"iteration": 1, "models": [model.as_dict()]})
    tuned.write_text(content)
    before = snapshot(workspace)
    args = [
        "tune",
        "--run-dir",
        str(workspace / "run"),
        "--iteration",
        "2",
        "--previous",
        str(tuned),
    ]  # noqa: E501
    assert_one_clear_error(CliRunner().invoke(app, args), needles)
    assert snapshot(workspace) == before


def test_a_missing_adapter_is_named_when_the_model_is_built(tmp_path: Path) -> None:
    missing = tmp_path / "adapters" / "agent1-critic"
    model = TunedModel(1, "critic", "local", str(missing), "smollm2", 1)
    with pytest.raises(ValueError, match="No LoRA adapter at .*agent1-critic"):
        model.chat_model()
    (tmp_path / "tuned.json").write_text(json.dumps({"models": [model.as_dict()]}))
    with pytest.raises(FileNotFoundError, match=r"models\[0\] \(agent1-critic\): the adapter"):
        load_tuned(tmp_path / "tuned.json")


def assert_one_clear_error(result: object, needles: list[str]) -> None:
    output = getattr(result, "output", "")
    assert getattr(result, "exit_code", None) == 2, output
    assert output.count("error:") == 1, output
    assert "Traceback" not in output
    flat = "".join(output.split())  # the console wraps long paths anywhere
    for needle in needles:
        assert "".join(needle.split()) in flat, (needle, output)
