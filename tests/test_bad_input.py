"""Bad input through the `mafl` commands: one clear error, exit code 2, and nothing lost.

Each case runs against a copy of a finished run directory (manifest, checkpoints, results,
datasets) and checks that the error names the bad value and says what to do, that no traceback
is shown, and that every file already on disk is byte-for-byte what it was.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

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


def gsm8k_text(text: str) -> Setup:
    def setup(root: Path) -> list[str]:
        (root / "data" / "gsm8k").mkdir(parents=True)
        (root / "data" / "gsm8k" / "test.jsonl").write_text(text)
        return ["--task", "gsm8k", "--data-dir", str(root / "data")]

    return setup


def run_dir_is_a_file(root: Path) -> list[str]:
    (root / "a-file").write_text("not a directory\n")
    return [*ARITHMETIC, "--run-dir", str(root / "a-file")]


def checkpoint_is_a_directory(root: Path) -> list[str]:
    (root / "run" / "debates.sqlite").unlink()
    (root / "run" / "debates.sqlite").mkdir()
    return ARITHMETIC


def foreign_database(root: Path) -> list[str]:
    """A sound SQLite file of another application where the checkpoints should be."""
    db = root / "run" / "debates.sqlite"
    db.unlink()
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
        conn.execute("INSERT INTO invoices (total) VALUES (12.5)")
        conn.commit()
    return ARITHMETIC


def manifest_without_settings(root: Path) -> list[str]:
    (root / "run" / "manifest.json").write_text('{"settings": null}\n')
    return ARITHMETIC


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
    ("task file: empty", gsm8k_text(""), [], ["gsm8k/test.jsonl holds no rows"]),
    ("task file: blank lines only", gsm8k_text("\n\n  \n"), [], ["gsm8k/test.jsonl holds no rows"]),  # noqa: E501
    ("task file: an empty reference", gsm8k_file(['{"question": "q", "answer": "#### 1"}', '{"question": "q2", "answer": "so #### "}']), [], ["test.jsonl, line 2, row 1", "holds '', not a number"]),  # noqa: E501
    ("task file: a reference in words", gsm8k_file(['{"question": "q", "answer": "#### four"}']), [], ["test.jsonl, line 1, row 0", "holds 'four', not a number"]),  # noqa: E501
    ("task file: the bad row after a blank line", gsm8k_file(['{"question": "q", "answer": "#### 1"}', "", '{"question": "q2", "answer": "#### x"}']), [], ["test.jsonl, line 3, row 1"]),  # noqa: E501
    ("run directory that is a file", run_dir_is_a_file, [], ["a-file is a file; choose a directory"]),  # noqa: E501
    ("checkpoint file that is a directory", checkpoint_is_a_directory, [], ["debates.sqlite is not a file", "left untouched"]),  # noqa: E501
    ("checkpoint file of another application", foreign_database, [], ["debates.sqlite is a SQLite database of something else", "invoices", "left untouched"]),  # noqa: E501
    ("manifest without settings", manifest_without_settings, [], ["manifest.json is unreadable (no 'settings' object in it)"]),  # noqa: E501
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


def test_mafl_datasets_leaves_a_foreign_database_as_it_was(workspace: Path) -> None:
    foreign_database(workspace)
    before = snapshot(workspace)
    args = ["datasets", "--run-dir", str(workspace / "run"), "--min-examples", "1"]
    result = CliRunner().invoke(app, args)
    assert_one_clear_error(result, ["a SQLite database of something else", "invoices"])
    assert snapshot(workspace) == before


def test_a_wrong_key_fails_the_command_and_says_why_once(tmp_path: Path) -> None:
    """Every call refused (401): exit 1, the provider's reason once, redacted."""
    wrong = "sk-mafl-wrong-key-0123456789abcdef"
    fault_server = FaultServer(answer=arithmetic_answer, api_key=KEY)
    with serve(fault_server) as server, pytest.MonkeyPatch.context() as mp:
        mp.setenv("OPENAI_API_KEY", wrong)
        mp.setenv("OPENAI_BASE_URL", server.url)
        args = ["debate", *RUN, *ARITHMETIC, "--run-dir", str(tmp_path / "run")]
        result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output
    assert result.stderr.count("Incorrect API key provided") == 1, result.stderr
    assert "6 debate(s)" in result.stderr
    assert "every debate failed" in result.stderr
    assert wrong not in result.output
    assert wrong not in "".join(p.read_text() for p in (tmp_path / "run").glob("*.json*"))


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux)")
@pytest.mark.parametrize(
    ("layout", "needles"),
    [
        ("unreadable data file", ["data/gsm8k/test.jsonl: Permission denied"]),
        ("unreadable data folder", ["data/gsm8k/test.jsonl: Permission denied"]),
        ("run directory in a read-only folder", ["read-only/run: Permission denied"]),
    ],
)
def test_paths_the_user_may_not_use_are_one_line(layout: str, needles: list[str]) -> None:
    """Run as an unprivileged user (root reads everything), in a process of its own."""
    root = Path(tempfile.mkdtemp(prefix="mafl-permissions-", dir="/tmp"))
    try:
        root.chmod(0o755)
        data = root / "data" / "gsm8k"
        data.mkdir(parents=True)
        (data / "test.jsonl").write_text('{"question": "q", "answer": "#### 1"}\n')
        (root / "read-only").mkdir()
        run_dir = root / "run"
        if layout == "unreadable data file":
            (data / "test.jsonl").chmod(0o600)
        elif layout == "unreadable data folder":
            data.chmod(0o700)
        else:
            run_dir = root / "read-only" / "run"
        for folder in (root / "data", root / "read-only"):
            folder.chmod(folder.stat().st_mode & 0o7555)
        home = root / "home"  # where the datasets library may write its cache
        home.mkdir()
        if os.geteuid() == 0:
            for path in [root, *root.rglob("*")]:
                os.chown(path, 0, 0)
            os.chown(home, 65534, 65534)
        user = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        command = [*(user if os.geteuid() == 0 else []), sys.executable, "-m", "mafl_graph.cli"]
        args = ["debate", *RUN, "--task", "gsm8k", "--data-dir", str(root / "data")]
        done = subprocess.run(
            [*command, *args, "--run-dir", str(run_dir)],
            capture_output=True,
            text=True,
            cwd=root,
            env={**os.environ, "OPENAI_API_KEY": KEY, "HOME": str(home)},
            timeout=120,
        )
        result = SimpleNamespace(exit_code=done.returncode, stdout=done.stdout, stderr=done.stderr)
        assert_one_clear_error(result, needles)
        assert not run_dir.exists()
    finally:
        for path in [root, *root.rglob("*")]:
            path.chmod(0o700)
        shutil.rmtree(root)


def assert_one_clear_error(result: object, needles: list[str]) -> None:
    """Exit 2 and one unwrapped line on stderr, naming what is wrong; nothing on stdout says
    error, and no traceback anywhere."""
    stderr, stdout = getattr(result, "stderr", ""), getattr(result, "stdout", "")
    assert getattr(result, "exit_code", None) == 2, (stdout, stderr)
    lines = [line for line in stderr.splitlines() if "error:" in line]
    assert len(lines) == 1, stderr
    assert "error:" not in stdout, stdout
    assert "Traceback" not in stdout + stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
