"""Experiment tracking: the real W&B (offline), MLflow (a local SQLite store) and TensorBoard
(event files) follow a short loop of scripted models and a test tuner, and what each wrote is
read back from disk; a resumed run's tracker runs replay its whole history. Then names,
missing packages, and a tracker that is one class plus one registration."""

from __future__ import annotations

import dataclasses
import json
import struct
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import pytest
from fakes import ScriptedModel, SplitTask
from langchain_core.messages import BaseMessage

from mafl_graph.config import LoopConfig
from mafl_graph.finetune.tuners import registry as tuners
from mafl_graph.finetune.tuners.base import JobLedger, TunedModel, TunerBackend
from mafl_graph.finetune.tuners.local import ADAPTER_METRICS
from mafl_graph.loop import MultiagentFinetuning, TunerFactory
from mafl_graph.rundir import RunLayout
from mafl_graph.society import Society
from mafl_graph.tracking import (
    Tracker,
    make_trackers,
    register_tracker,
    step_metrics,
    tracker_names,
    unregister_tracker,
)
from mafl_graph.tracking.tensorboard import TensorBoardTracker

LOSSES = [2.0, 1.5, 1.0]  # every tuned model's losses, in every iteration


# Fakes -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Config:
    pass


class LossTuner(TunerBackend):
    """Tunes instantly and saves losses beside the adapter, where the local tuner saves them."""

    backend = "test-losses"
    config_type = _Config
    default_base = "scripted"

    def _run(self, ledger: JobLedger, facts: dict[str, Any], dataset: Any, cfg: Any) -> None:
        out = self.layout.adapter(self.iteration, facts["agent"], facts["role"])
        out.mkdir(parents=True, exist_ok=True)
        metrics = {"steps": len(LOSSES), "loss_last": LOSSES[-1], "losses": LOSSES, "base": "x"}
        (out / ADAPTER_METRICS).write_text(json.dumps(metrics))
        ledger.update(status="succeeded", model=f"tuned-{facts['agent']}-{facts['role']}")

    @classmethod
    def serve(cls, tuned: TunedModel, **kwargs: Any) -> ScriptedModel:
        return ScriptedModel(label=tuned.model, reply=lambda messages: "\\boxed{7}")

    @classmethod
    def _config_from_options(cls, options: Any, seed: int) -> _Config:
        return _Config()


@pytest.fixture
def tuner(monkeypatch: pytest.MonkeyPatch) -> TunerFactory:
    monkeypatch.setitem(tuners._REGISTRY, LossTuner.backend, LossTuner)
    return TunerFactory(LossTuner.backend)


def _society() -> Society:
    # Agent 2 errs in round 1 and takes the others' answer in round 2 (it has seen theirs), so
    # every generator and agent 2's critic have something to learn.
    def reply(agent: int) -> Callable[[list[BaseMessage]], str]:
        def answer(messages: list[BaseMessage]) -> str:
            revised = agent != 2 or any(m.type == "ai" for m in messages)
            return "\\boxed{7}" if revised else "\\boxed{5}"

        return answer

    agents = [ScriptedModel(label=f"base{i}", reply=reply(i)) for i in range(3)]
    society = Society.from_model(agents[0], 3)
    return society.replace(generators=dict(enumerate(agents)), critics=dict(enumerate(agents)))


def _loop(tuner: TunerFactory, iterations: int, report_to: Any) -> MultiagentFinetuning:
    return MultiagentFinetuning(
        _society(),
        SplitTask(),
        tuner,
        iterations=iterations,
        n_train=3,
        n_test=2,
        concurrency=2,
        w=1.0,  # critics learn from revisions only: agent 2's critic has them
        diversity=lambda society, evaluation: {"consensus": 0.5, "kl": 0.25},
        settings={"note": "tracked"},
        report_to=report_to,
        progress=False,
    )


# Reading back what each tracker wrote ---------------------------------------------------------


def _wandb_records(path: Path) -> Iterator[Any]:
    """The records of an offline run's .wandb file (LevelDB-style log: 32 KiB blocks,
    7-byte chunk headers; W&B's own Python reader is gone, its Go core reads it)."""
    from wandb.proto import wandb_internal_pb2

    data, block, pos, parts = path.read_bytes(), 32768, 7, []
    while pos + 7 <= len(data):
        left = block - pos % block
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if left < 7 or (length == 0 and kind == 0):
            pos += left
            continue
        parts.append(data[pos + 7 : pos + 7 + length])
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = wandb_internal_pb2.Record()  # type: ignore[attr-defined]
            record.ParseFromString(b"".join(parts))
            parts = []
            yield record


def _wandb_run(path: Path) -> dict[str, Any]:
    """Config, the history rows, and the files of one offline run."""
    run: dict[str, Any] = {"config": {}, "history": [], "files": set(), "exit": None}
    for record in _wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run["name"] = record.run.display_name
            run["config"] |= {i.key: json.loads(i.value_json) for i in record.run.config.update}
        elif kind == "history":
            row = {
                i.key or "/".join(i.nested_key): json.loads(i.value_json)
                for i in record.history.item
            }
            run["history"].append(row)
        elif kind == "files":
            run["files"] |= {f.path for f in record.files.files}
        elif kind == "exit":
            run["exit"] = record.exit.exit_code
    return run


def _series(rows: list[dict[str, Any]], name: str, axis: str) -> list[tuple[int, float]]:
    return [(row[axis], row[name]) for row in rows if name in row]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # SQLAlchemy's, inside MLflow's store
def test_wandb_mlflow_and_tensorboard_follow_the_loop_and_a_resumed_run(
    tmp_path: Path, tuner: TunerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # MLflow keeps a SQLite store's artifacts under ./mlruns: a working directory of the test's.
    monkeypatch.chdir(tmp_path)
    wandb_dir = tmp_path / "wandb"
    wandb_dir.mkdir()
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(wandb_dir))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_dir = tmp_path / "run"
    every = ["wandb", "mlflow,tensorboard"]

    _loop(tuner, 1, every).run(run_dir)
    # Extended by an iteration: a resumed run, whose tracker runs replay iterations 0 and 1.
    metrics = _loop(tuner, 2, every).run(run_dir)
    assert [r["iteration"] for r in metrics] == [0, 1, 2]
    accuracy = [(r["iteration"], r["eval"]["accuracy"]["mean"]) for r in metrics]
    sizes = [
        (r["iteration"], sum(d["examples"] for d in r["datasets"]["datasets"].values()))
        for r in metrics[1:]
    ]
    assert all(n > 0 for _, n in sizes)
    # Each agent's model keeps training: its curve runs on across iterations.
    curve = list(enumerate(LOSSES * 2, start=1))

    # Weights & Biases: two offline runs, the second with the whole history.
    files = sorted(wandb_dir.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 2
    first, second = (_wandb_run(f) for f in files)
    assert first["exit"] == second["exit"] == 0
    assert _series(first["history"], "eval/accuracy/mean", "iteration") == accuracy[:2]
    rows = second["history"]
    assert second["name"] == "run"
    assert second["config"]["method"] == "multiagent"
    assert second["config"]["note"] == "tracked" and second["config"]["iterations"] == 2
    assert second["config"]["run_dir"] == str(run_dir)
    assert _series(rows, "eval/accuracy/mean", "iteration") == accuracy
    assert _series(rows, "datasets/examples", "iteration") == sizes
    assert _series(rows, "diversity/kl", "iteration") == [(0, 0.25), (1, 0.25), (2, 0.25)]
    assert _series(rows, "eval/round_accuracy/1/n", "iteration")[0] == (0, 6)
    assert _series(rows, "tuning/agent0-generator/loss_last", "iteration") == [(1, 1.0), (2, 1.0)]
    assert _series(rows, "loss/agent2-critic", "tuning_step") == curve
    assert any(f.startswith("media/images/figures/accuracy") for f in second["files"])

    # MLflow: two runs of the experiment, the second finished with the whole history.
    client = MlflowClient()
    experiment = client.get_experiment_by_name("mafl-graph")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time"])
    assert [r.info.run_name for r in runs] == ["run", "run"]
    latest = runs[-1].info.run_id
    assert runs[-1].info.status == "FINISHED"

    def history(name: str) -> list[tuple[int, float]]:
        return sorted((m.step, m.value) for m in client.get_metric_history(latest, name))

    assert history("eval/accuracy/mean") == accuracy
    assert history("datasets/examples") == sizes
    assert history("loss/agent0-generator") == curve
    params = runs[-1].data.params
    assert params["method"] == "multiagent" and params["agents"] == "3"
    assert params["note"] == "tracked" and params["iterations"] == "2"
    figures = [a.path for a in client.list_artifacts(latest, "figures")]
    assert figures == ["figures/accuracy.png", "figures/diversity.png"]

    # TensorBoard: event files under the run directory, replaced (not doubled) on resume.
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0})
    events.Reload()

    def scalars(tag: str) -> list[tuple[int, float]]:
        return [(e.step, e.value) for e in events.Scalars(tag)]

    assert scalars("eval/accuracy/mean") == accuracy
    assert scalars("datasets/examples") == sizes
    assert scalars("loss/agent2-critic") == curve
    assert set(events.Tags()["images"]) == {"figures/accuracy", "figures/diversity"}
    image = events.Images("figures/accuracy")[-1]
    assert image.step == 2 and image.encoded_image_string.startswith(b"\x89PNG")
    settings = events.Tensors("settings/text_summary")[0].tensor_proto.string_val[0].decode()
    assert '"method": "multiagent"' in settings


def test_mlflow_writes_to_a_file_store_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.tracking import MlflowClient

    from mafl_graph.tracking.mlflow import MlflowTracker

    # MLflow 3 keeps the file store for those who ask for it.
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = (tmp_path / "mlruns").as_uri()
    figure = tmp_path / "accuracy.png"
    figure.write_bytes(b"\x89PNG\r\n\x1a\n")
    tracker = MlflowTracker(experiment="file-store", tracking_uri=uri)
    tracker.start(tmp_path / "run", {"method": "multiagent", "tune": {"epochs": 2}})
    run_id = tracker.run_id
    assert run_id is not None
    tracker.log_step(1, "eval", {"accuracy": {"mean": 0.5}})
    tracker.log_curve("loss/agent0-generator", [2.0, 1.0], first_step=4)
    tracker.finish([figure])
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert run.data.params == {"method": "multiagent", "tune.epochs": "2"}
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "eval/accuracy/mean")] == [
        (1, 0.5)
    ]
    loss = client.get_metric_history(run_id, "loss/agent0-generator")
    assert sorted((m.step, m.value) for m in loss) == [(4, 2.0), (5, 1.0)]
    assert [a.path for a in client.list_artifacts(run_id, "figures")] == ["figures/accuracy.png"]


# Names, packages, and the protocol -----------------------------------------------------------


class Recorder(Tracker):
    """Keeps every call; ``fail_in`` names a primitive that raises."""

    name = "test-recorder"
    made: ClassVar[list[Recorder]] = []
    fail_in: ClassVar[str | None] = None

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        type(self).made.append(self)

    def _call(self, *call: Any) -> None:
        self.calls.append(call)
        if call[0] == self.fail_in:
            raise RuntimeError(f"{call[0]} is down")

    def open(self, run_dir: Path, settings: Mapping[str, Any]) -> None:
        self._call("open", run_dir.name, dict(settings))

    def log_metrics(self, metrics: Mapping[str, float], *, step: int, axis: str) -> None:
        self._call("log_metrics", dict(metrics), step, axis)

    def log_files(self, paths: Any) -> None:
        self._call("log_files", [p.name for p in paths])

    def close(self, *, failed: bool = False) -> None:
        self._call("close", failed)


@pytest.fixture
def recorder() -> Iterator[type[Recorder]]:
    register_tracker(Recorder.name, Recorder)
    Recorder.made.clear()
    Recorder.fail_in = None
    yield Recorder
    unregister_tracker(Recorder.name)


def test_names_are_checked_when_the_loop_is_built(
    recorder: type[Recorder], monkeypatch: pytest.MonkeyPatch, tuner: TunerFactory
) -> None:
    assert tracker_names()[:3] == ("wandb", "mlflow", "tensorboard")
    with pytest.raises(ValueError, match="Unknown tracker 'comet'.*wandb, mlflow, tensorboard"):
        _loop(tuner, 1, ["comet"])
    assert make_trackers("none") == make_trackers(None) == make_trackers(()) == []
    assert [t.name for t in make_trackers("test-recorder,test-recorder")] == ["test-recorder"]
    assert {"wandb", "mlflow", "tensorboard", "test-recorder"} <= {
        t.name for t in make_trackers("all")
    }
    mine = Recorder()
    assert make_trackers([mine]) == [mine]
    # A missing package: one line naming the extra, before anything runs.
    monkeypatch.setattr(TensorBoardTracker, "requires", "no_such_package_here")
    with pytest.raises(
        ImportError, match=r"report_to='tensorboard' needs .*mafl-graph\[tracking\]"
    ):
        _loop(tuner, 1, "tensorboard")
    assert "tensorboard" not in {t.name for t in make_trackers("all")}
    # The CLI's option comes from LoopConfig, and reaches the loop before anything is written.
    assert LoopConfig.of(report_to=["mlflow"]).loop_options()["report_to"] == ["mlflow"]
    assert LoopConfig().loop_options()["report_to"] == []


def test_the_cli_takes_report_to(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from mafl_graph.cli import app

    assert "--report-to" in CliRunner().invoke(app, ["loop", "--help"]).output
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-" + "x" * 24)  # a hosted society: no model
    args = ["loop", "--model", "openai:gpt-4o-mini-2024-07-18", "--run-dir", str(tmp_path / "r")]
    result = CliRunner().invoke(app, [*args, "--report-to", "tensorboard,comet"])
    assert result.exit_code != 0 and "Unknown tracker 'comet'" in result.output
    assert not (tmp_path / "r").exists()


def test_a_registered_tracker_sees_each_step_in_order_and_a_resumed_run_replays(
    tmp_path: Path, tuner: TunerFactory, recorder: type[Recorder]
) -> None:
    _loop(tuner, 1, "test-recorder").run(tmp_path)
    _loop(tuner, 1, "test-recorder").run(tmp_path)  # finished: everything is read back
    first, again = (r.calls for r in Recorder.made)
    assert first[0][:2] == ("open", tmp_path.name) and first[0][2]["agents"] == 3
    steps = [(c[2], next(iter(c[1])).split("/")[0]) for c in first if c[0] == "log_metrics"]
    assert steps == [
        (0, "eval"),
        (0, "diversity"),
        (1, "train"),
        (1, "datasets"),
        (1, "tuning"),
        # agent 0's and 1's generators, agent 2's critic
        *[(s, "loss") for _ in range(3) for s in (1, 2, 3)],
        (1, "eval"),
        (1, "diversity"),
    ]
    assert first[-2] == ("log_files", ["accuracy.png", "diversity.png"])
    assert first[-1] == ("close", False)
    assert again == first


def test_a_comparison_reports_each_method_as_its_own_run(
    tmp_path: Path, tuner: TunerFactory, recorder: type[Recorder]
) -> None:
    from mafl_graph.compare import compare_methods

    compare_methods(
        _society(),
        SplitTask(),
        tuner,
        tmp_path,
        methods=["multiagent", "single"],
        iterations=1,
        n_train=3,
        n_test=2,
        concurrency=2,
        w=1.0,
        progress=False,
        report_to="test-recorder",
    )
    opened = [r.calls[0][1] for r in Recorder.made if r.calls]
    assert opened == ["multiagent", "single"]
    assert all(r.calls[-1] == ("close", False) for r in Recorder.made if r.calls)


def test_a_failing_tracker_is_dropped_and_one_that_cannot_start_stops_the_run(
    tmp_path: Path,
    tuner: TunerFactory,
    recorder: type[Recorder],
    caplog: pytest.LogCaptureFixture,
) -> None:
    Recorder.fail_in = "log_metrics"
    metrics = _loop(tuner, 1, "test-recorder").run(tmp_path / "a")
    assert [r["iteration"] for r in metrics] == [0, 1]
    calls = Recorder.made[-1].calls
    assert [c[0] for c in calls] == ["open", "log_metrics", "close"] and calls[-1][1] is True
    assert "test-recorder failed in log_step (RuntimeError: log_metrics is down)" in caplog.text

    Recorder.fail_in = "open"
    with pytest.raises(RuntimeError, match="open is down"):
        _loop(tuner, 1, "test-recorder").run(tmp_path / "b")
    assert not RunLayout(tmp_path / "b").metrics.exists()  # nothing was debated


def test_step_metrics_names() -> None:
    record = {
        "accuracy": {"mean": 0.5, "n": 2},
        "round_accuracy": [{"mean": 0.25}],
        "tuned": ["agent0-generator"],
        "ok": True,
        "none": None,
    }
    assert step_metrics("eval", record) == {
        "eval/accuracy/mean": 0.5,
        "eval/accuracy/n": 2.0,
        "eval/round_accuracy/1/mean": 0.25,
    }
    datasets = {"unfinished": 0, "datasets": {"agent0-generator": {"examples": 3}}}
    assert step_metrics("datasets", datasets) == {
        "datasets/unfinished": 0.0,
        "datasets/agent0-generator/examples": 3.0,
    }
