"""``mafl svf compare``: the base, SVF, LoRA and full fine-tuning on the same data per domain,
each training in its own process (real, on the embedded SmolLM2, a step each), graded on the
same held-out problems; resuming trains nothing; bad input is refused before anything is
written."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

import mafl_graph.cli.svf_compare  # noqa: F401  (registers `mafl svf compare`)
from mafl_graph.report import register_run_report
from mafl_graph.svf import compare
from mafl_graph.tasks import Arithmetic, HumanEval, Problem

# One domain, named by a labelled spec: every domain runs the same code once more.
DOMAINS = ["--domain", "add=dm-math:arithmetic__add_or_sub"]
TINY = [
    *("--n-train", "2", "--n-test", "3", "--max-steps", "1", "--batch-size", "2"),
    *("--lora-r", "2", "--layers", "-1:", "--max-new-tokens", "6"),
]
# SmolLM2-135M: 30 layers, hidden 576, key/value width 192, MLP width 1536.
LAYERS, HIDDEN, KV, MLP = 30, 576, 192, 1536


def mafl(*args: object):
    from typer.testing import CliRunner

    from mafl_graph.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


# Training data (no model) -------------------------------------------------------------------


def test_the_reply_states_the_reference_in_the_form_the_task_grades():
    task = Arithmetic(terms=2, high=30, operators="+")
    problem = task.load("train", 1)[0]
    assert compare.reference_reply(task, problem) == f"The answer is \\boxed{{{problem.answer}}}."
    # A worked solution is kept as it is when it ends on the answer, else the answer follows.
    worked = Problem("w", "1+1", "2", {"solution": "One and one.\nSo 1+1=2"})
    assert compare.reference_reply(task, worked) == "One and one.\nSo 1+1=2"
    bare = Problem("b", "1+1", "2", {"solution": "Add them up."})
    assert compare.reference_reply(task, bare) == "Add them up.\n\nThe answer is \\boxed{2}."
    code = HumanEval()
    first = code.load("train", 1)[0]
    assert compare.reference_reply(code, first) == f"```python\n{first.answer.strip()}\n```"
    with pytest.raises(ValueError, match=r"reference of 'x' \('seven'\) is graded right"):
        compare.reference_reply(task, Problem("x", "3+4", "seven"))
    records = compare.training_records(task, [problem])
    assert records[0]["messages"][0]["content"] == task.question_prompt(problem)
    assert records[0]["messages"][1]["weight"] == 1


# Real runs on the embedded model ------------------------------------------------------------


@pytest.fixture(scope="module")
def compared(engine, tmp_path_factory: pytest.TempPathFactory):
    """SVF and LoRA on a domain, a step each, graded on three test problems."""
    run = tmp_path_factory.mktemp("compare") / "run"
    args = ["svf", "compare", *DOMAINS, "--methods", "base,svf,lora", *TINY, "--run-dir", run]
    result = mafl(*args)
    assert result.exit_code == 0, result.output
    return run, args, json.loads((run / compare.RESULT_FILE).read_text())


def _lora_parameters(r: int) -> int:
    """LoRA of rank r on every linear layer: r × (inputs + outputs) per matrix."""
    per_layer = 2 * (HIDDEN + HIDDEN) + 2 * (HIDDEN + KV) + 3 * (HIDDEN + MLP)
    return LAYERS * r * per_layer


@pytest.mark.integration
def test_each_method_tunes_on_the_same_data_and_is_graded_against_the_base(compared):
    from mafl_graph.tasks.base import grade_answer, task_for

    run, _, summary = compared
    assert list(summary["results"]) == ["add"]
    assert summary["methods"] == ["base", "svf", "lora"]
    for domain, result in summary["results"].items():
        task = compare.parse_domain(summary["domains"][domain]["spec"]).task
        # The same conversations for every method: one file, and each ledger names its digest.
        records = [json.loads(line) for line in (run / f"datasets/{domain}.openai.jsonl").open()]
        train = task.load("train", 2)
        assert len(records) == 2
        for problem, record in zip(train, records, strict=True):
            reply = record["messages"][1]["content"]
            own = task_for(task, problem)
            assert grade_answer(own, own.extract_answer(reply), problem.answer).name == "EQUIVALENT"
        digests = {
            json.loads(
                (run / f"training/{domain}/{m}/tuning/iter1/agent0-generator.json").read_text()
            )["dataset_sha256"]
            for m in ("svf", "lora")
        }
        assert len(digests) == 1

        rows = result["rows"]
        assert list(rows) == ["base", "svf", "lora"]
        flags = {m: json.loads((run / f"evaluations/{domain}/{m}.json").read_text()) for m in rows}
        ids = result["test_ids"]
        assert ids == [p.id for p in task.load("test", 3)]
        for method, row in rows.items():
            assert row["accuracy"]["n"] == 3
            assert row["accuracy"]["correct"] == sum(bool(flags[method][i]) for i in ids)
        for method in ("svf", "lora"):
            row = rows[method]
            diff = [bool(flags[method][i]) - bool(flags["base"][i]) for i in ids]
            assert row["vs_base"]["mean"] == pytest.approx(sum(diff) / 3)
            assert row["steps"] == 1 and 0 < row["train_seconds"] < row["wall_seconds"]
            assert row["loss_first"] == row["loss_last"] > 0  # one step's real loss
            # A process that loaded the model and trained: hundreds of MB, not the parent's.
            assert 400 < row["peak_rss_mb"] < 8000
            out = Path(
                json.loads((run / f"training/{domain}/{method}.json").read_text())["tuned"]["model"]
            )
            on_disk = sum(os.path.getsize(Path(d) / f) for d, _, fs in os.walk(out) for f in fs)
            assert row["file_bytes"] == on_disk
        # SVF on the last layer's three MLP matrices: one scale per singular value.
        assert rows["svf"]["trainable_parameters"] == 3 * HIDDEN
        svf_out = run / "training" / domain / "svf/adapters/iter1/agent0-generator"
        metrics = json.loads((svf_out / "metrics.json").read_text())
        assert metrics["trainable_parameters"] == 3 * HIDDEN  # the SVF tuner's own count
        assert rows["lora"]["trainable_parameters"] == _lora_parameters(2)
        assert rows["lora"]["file_bytes"] > 4 * _lora_parameters(2) > 50 * rows["svf"]["file_bytes"]


@pytest.mark.integration
def test_a_rerun_trains_and_grades_nothing_and_other_settings_are_refused(compared, monkeypatch):
    run, args, summary = compared
    records = sorted((run / "training").glob("*/*.json"))
    assert len(records) == 2
    stamps = {p: p.stat().st_mtime_ns for p in [*records, *(run / "evaluations").glob("*/*")]}

    def no_training(*a, **k):
        raise AssertionError("a finished training ran again")

    monkeypatch.setattr(compare.subprocess, "run", no_training)
    monkeypatch.setattr(compare, "_serve", no_training)
    again = mafl(*args)
    assert again.exit_code == 0, again.output
    assert json.loads((run / compare.RESULT_FILE).read_text()) == summary
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps

    other = mafl(*[a if a != "3" else "4" for a in args])
    assert other.exit_code == 2
    assert "holds a tuning comparison with other settings (n_test" in " ".join(other.output.split())

    register_run_report(compare.RUN_FILE, "mafl_graph.svf.compare:write_compare_report")
    report = mafl("report", "--run-dir", run)
    assert report.exit_code == 0, report.output
    text = (run / "report.md").read_text()
    assert f"| add | LoRA | {compare.compare_rows(summary)[-1]['accuracy']} |" in text
    assert f"{_lora_parameters(2):,}" in text and "| add | SVF (z vectors) |" in text


@pytest.mark.integration
def test_a_full_fine_tune_is_configured_counted_and_served_as_a_model_of_its_own(engine, tmp_path):
    """Full fine-tuning's own training is the local tuner's (tests/test_tuner_local.py); here
    what the harness adds: its config, counting a whole model's weights, serving the model."""
    from mafl_graph.local import LocalChatModel
    from mafl_graph.local.loading import prepare_model_dir

    configs = compare.tune_configs(
        ["lora", "full"], **{**SETTINGS, "learning_rates": compare.LEARNING_RATES}
    )
    assert configs["full"]["full"] is True and configs["lora"]["full"] is False
    assert configs["full"]["learning_rate"] == 2e-5 and configs["lora"]["lora_alpha"] == 4
    # A whole model directory (the base as saved): every weight once, the tied output too.
    model = prepare_model_dir("smollm2")
    assert compare.saved_parameters(model) == 134_515_008
    record = {
        "tuned": {
            "agent": 0,
            "role": "generator",
            "backend": "local",
            "model": str(model),
            "base": "smollm2",
            "options": {"model_path": "smollm2", "full": True},
        }
    }
    served = compare._serve(record, "float32", 4)  # built, not run
    assert isinstance(served, LocalChatModel) and served.adapter is None
    assert (served.model_path, served.max_new_tokens, served.temperature) == (str(model), 4, 0.0)
    with pytest.raises(FileNotFoundError, match="holds no safetensors file"):
        compare.saved_parameters(tmp_path)


SETTINGS = {
    "epochs": 1.0,
    "max_steps": 1,
    "batch_size": 2,
    "lora_r": 2,
    "svf_layers": None,
    "dtype": "float32",
    "seed": 0,
}


def test_a_training_without_its_record_starts_over_and_a_failed_one_says_why(tmp_path, monkeypatch):
    """The parent's side of a training subprocess, with the child scripted."""
    import subprocess

    leftover = tmp_path / "training/d/lora/adapters/iter1/agent0-generator"
    leftover.mkdir(parents=True)
    (leftover / "adapter_model.safetensors").write_text("half-written")
    seen = []

    def child(argv, check):
        job = json.loads(Path(argv[-1]).read_text())
        seen.append(job)
        assert not Path(job["tuner_dir"]).exists()  # what the killed run left is gone
        if job["method"] == "svf":
            Path(job["record"]).with_name("svf.error.txt").write_text(
                "ValueError: No trainable example for agent0-generator\n"
            )
            return subprocess.CompletedProcess(argv, 1)
        model = Path(job["tuner_dir"]) / "model"
        model.mkdir(parents=True)
        compare.write_json(Path(job["record"]), {"tuned": {"model": str(model)}})
        return subprocess.CompletedProcess(argv, 0)

    monkeypatch.setattr(compare.subprocess, "run", child)
    dataset = tmp_path / "d.jsonl"
    record = compare.train_method(tmp_path, "d", "lora", {"lr": 1}, "smollm2", dataset)
    assert record == {"tuned": {"model": str(tmp_path / "training/d/lora/model")}}
    assert seen[0]["config"] == {"lr": 1} and seen[0]["backend"] == "local"
    assert compare.train_method(tmp_path, "d", "lora", {}, "smollm2", dataset) == record
    assert len(seen) == 1  # its record exists: never trained again
    with pytest.raises(ValueError, match=r"training svf on d failed .*\(exit 1\): ValueError: No"):
        compare.train_method(tmp_path, "d", "svf", {}, "smollm2", dataset)
    assert not (tmp_path / "training/d/svf.json").exists()
    # A record whose model is gone is no result: it says how to train again.
    shutil.rmtree(tmp_path / "training/d/lora/model")
    with pytest.raises(FileNotFoundError, match="delete .*lora.json to train lora on d again"):
        compare.train_method(tmp_path, "d", "lora", {}, "smollm2", dataset)


# Bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--methods", "base,qlora"], "unknown method 'qlora'; choose among base, svf, lora, full"),
        (["--methods", "base"], "methods base tune nothing"),
        (["--model", "openai:gpt-4o-mini"], "'openai:gpt-4o-mini' is a hosted model"),
        (["--domain", "geometry"], "unknown task 'geometry'"),
        (["--domain", "dm-math:no_such_module"], "unknown dm-math module 'no_such_module'"),
        (["--domain", "arithmetic:add"], "task 'arithmetic' has no modules"),
        (["--domain", "arithmetic,gsm8k"], "--domain 'arithmetic,gsm8k' is not one domain"),
        (["--domain", "arithmetic"], "domain 'arithmetic' is named twice"),
        (["--learning-rate", "lora"], "--learning-rate 'lora' is not method=number"),
        (["--learning-rate", "dora=1e-3"], "learning rate for unknown method 'dora'"),
        (["--n-train", "0"], "n_train must be at least 1; got 0"),
        (["--dtype", "float8"], "dtype must be one of float32, bfloat16, float16; got 'float8'"),
        (["--layers", "29,30"], "Layer 30 is out of range: the model has 30 layers"),
    ],
)
def test_bad_input_exits_2_naming_the_value_and_writes_nothing(args, expected, tmp_path):
    result = mafl("svf", "compare", "--domain", "arithmetic", *args, "--run-dir", tmp_path / "r")
    assert result.exit_code == 2, result.output
    assert expected in " ".join(result.output.split()), result.output
    assert not (tmp_path / "r").exists()
