"""A tuning backend is one class plus one registration: a test-only ``echo`` backend, registered
here, tunes a run directory, is read back and served through the registry with no other change.
And each built-in backend's ``from_options`` gives the config the commands gave."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.fake_chat_models import FakeListChatModel

from mafl_graph.finetune.tuners import (
    BACKENDS,
    Backoff,
    JobLedger,
    LocalTuneConfig,
    LocalTuner,
    OpenAITuneConfig,
    OpenAITuner,
    TunedModel,
    TuneOptions,
    TunerBackend,
    TunerFactory,
    VertexTuneConfig,
    VertexTuner,
    get_tuner,
    load_tuned,
    register_tuner,
    registry,
    tune_run,
    tuner_class,
    tuner_for_provider,
)
from mafl_graph.rundir import RunLayout


@dataclass(frozen=True)
class EchoConfig:
    greeting: str = "hello"
    seed: int = 0
    backoff: Backoff = dataclasses.field(default_factory=Backoff)


class EchoTuner(TunerBackend):
    """Its "model" is a JSON file holding the reply the served chat model gives."""

    backend = "echo"
    provider = "echo_provider"
    dataset_format = "openai"
    parallel_jobs = True
    config_type = EchoConfig
    default_base = "echo-base"

    @classmethod
    def _config_from_options(cls, options: TuneOptions, seed: int) -> EchoConfig:
        return EchoConfig(greeting=options.suffix or "hello", seed=seed)

    @classmethod
    def serve(cls, tuned: TunedModel, **kwargs: Any) -> BaseChatModel:
        reply = json.loads(Path(tuned.model).read_text())["reply"]
        return FakeListChatModel(responses=[reply])

    @classmethod
    def check_served(cls, tuned: TunedModel) -> None:
        if not Path(tuned.model).is_file():
            raise FileNotFoundError(f"({tuned.name}): no echo model at {tuned.model}")

    def _run(self, ledger: JobLedger, facts: dict[str, Any], dataset: Any, cfg: EchoConfig) -> None:
        ledger.update(**facts, status="running")
        lines = Path(dataset).read_text().splitlines()
        out = ledger.path.with_name(f"echo-agent{facts['agent']}-{facts['role']}.json")
        reply = f"{cfg.greeting} from {facts['role']} {facts['agent']}, {len(lines)} examples"
        out.write_text(json.dumps({"reply": reply, "base": facts["base"]}))
        ledger.update(status="succeeded", model=str(out))


RECORD = {"messages": [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2"}]}


@pytest.fixture
def echo(monkeypatch: pytest.MonkeyPatch) -> type[EchoTuner]:
    # Registrations are process-wide: work on copies, so other tests never see "echo".
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_PROVIDERS", dict(registry._PROVIDERS))
    register_tuner("echo", EchoTuner)
    return EchoTuner


def _datasets(run_dir: Path, names: list[str]) -> None:
    out = RunLayout(run_dir).datasets_dir()
    out.mkdir(parents=True)
    for i, name in enumerate(names):
        (out / f"{name}.openai.jsonl").write_text((json.dumps(RECORD) + "\n") * (i + 1))
    (out / "agent9-generator.vertex.jsonl").write_text("{}\n")  # another backend's format


def test_a_registered_backend_tunes_loads_and_serves_through_the_registry(echo, tmp_path):
    _datasets(tmp_path, ["agent0-generator", "agent1-critic"])
    assert "echo" in BACKENDS and tuner_class("echo") is echo
    assert tuner_for_provider("echo_provider") == "echo"
    factory = TunerFactory("echo")
    assert factory.dataset_format == "openai" and echo.dataset_suffix == ".openai.jsonl"
    tuner = factory(tmp_path, iteration=1)
    assert isinstance(tuner, EchoTuner) and tuner.default_base == "echo-base"

    outcomes = tune_run(tuner, tmp_path)
    assert [(o.agent, o.role, o.error) for o in outcomes] == [
        (0, "generator", None),
        (1, "critic", None),
    ]
    tuned = load_tuned(RunLayout(tmp_path).tuned)
    assert load_tuned(RunLayout(tmp_path).tuned_at(1)) == tuned
    assert {m.backend for m in tuned.values()} == {"echo"}
    chat = tuned[(1, "critic")].chat_model(temperature=0.0)
    assert chat.invoke("hi").content == "hello from critic 1, 2 examples"

    # A rerun reads the ledger and tunes nothing; iteration 2 continues from iteration 1.
    again = get_tuner("echo", tmp_path)
    assert tune_run(again, tmp_path)[0].tuned == tuned[(0, "generator")]
    second = tune_run(factory(tmp_path, iteration=2), tmp_path, previous=tuned)
    assert {o.base for o in second} == {m.model for m in tuned.values()}

    Path(tuned[(0, "generator")].model).unlink()
    with pytest.raises(FileNotFoundError, match=r"tuned\.json, models\[0\] \(agent0-generator\)"):
        load_tuned(RunLayout(tmp_path).tuned_at(1))


def test_a_registered_backend_is_built_from_the_generic_options(echo, tmp_path):
    options = TuneOptions(suffix="hi", base="echo-2")
    factory = echo.factory(options, model="echo-1", seed=4)
    tuner = factory(tmp_path, iteration=3)
    assert (tuner.iteration, tuner.default_base, tuner.config) == (3, "echo-2", EchoConfig("hi", 4))
    assert echo.settings(factory) == {"tune": dataclasses.asdict(EchoConfig("hi", 4))}
    record = json.loads(json.dumps(dataclasses.asdict(EchoConfig("yo", 1, Backoff(initial=2)))))
    replayed = echo.from_options(tmp_path, TuneOptions(), model="echo-1", record=record)
    assert replayed.config == EchoConfig("yo", 1, Backoff(initial=2))
    assert replayed.default_base == "echo-1" and echo.serving(options) == {}


def test_unknown_backends_and_providers_name_the_known_ones(tmp_path):
    for make in (
        lambda: get_tuner("nope", tmp_path),
        lambda: TunerFactory("nope"),
        lambda: TunedModel(0, "generator", "nope", "m", "b").chat_model(),
    ):
        with pytest.raises(ValueError, match="'nope'; choose one of local, openai, vertex"):
            make()
    with pytest.raises(ValueError, match="tunable providers: local, openai, google_genai"):
        tuner_for_provider("anthropic")
    assert [tuner_for_provider(p) for p in ("local", "openai", "google_genai")] == [
        "local",
        "openai",
        "vertex",
    ]


# Each built-in backend's config from the generic options -----------------------------------


def test_local_defaults_are_one_set_for_library_tune_and_loop():
    assert LocalTuner.config_from(TuneOptions()) == LocalTuneConfig()
    assert (LocalTuneConfig().epochs, LocalTuneConfig().learning_rate) == (2.0, 3e-4)
    assert (LocalTuneConfig().batch_size, LocalTuneConfig().lora_alpha) == (8, 32)
    options = TuneOptions(epochs=1.0, learning_rate=1e-4, batch_size=2, max_steps=5, lora_r=8)
    assert LocalTuner.config_from(options, seed=3) == LocalTuneConfig(
        epochs=1.0, learning_rate=1e-4, batch_size=2, max_steps=5, lora_r=8, lora_alpha=16, seed=3
    )
    assert LocalTuner.config_from(TuneOptions(lora_alpha=8, full=True)).lora_alpha == 8


def test_local_from_options_tunes_the_societys_model(tmp_path):
    pytest.importorskip("torch")
    tuner = LocalTuner.from_options(tmp_path, TuneOptions(), model="/models/m", iteration=2)
    assert (tuner.model_path, tuner.default_base, tuner.iteration) == ("/models/m",) * 2 + (2,)
    assert not tuner.parallel_jobs and tuner.dataset_suffix == ".openai.jsonl"
    based = LocalTuner.from_options(tmp_path, TuneOptions(base="/full"), model="smollm2")
    assert (based.model_path, based.default_base) == ("smollm2", "/full")


def test_hosted_configs_leave_unset_settings_to_the_provider():
    poll = Backoff(initial=10.0, maximum=300.0)
    assert OpenAITuner.config_from(TuneOptions(), seed=2) == OpenAITuneConfig(
        epochs="auto", learning_rate_multiplier="auto", batch_size="auto", seed=2, backoff=poll
    )
    options = TuneOptions(
        epochs=3.0, learning_rate=0.5, batch_size=4, poll_interval=400, suffix="s"
    )
    assert OpenAITuner.config_from(options) == OpenAITuneConfig(
        epochs=3, learning_rate_multiplier=0.5, batch_size=4, seed=0, suffix="s",
        backoff=Backoff(initial=400, maximum=400),
    )  # fmt: skip
    assert VertexTuner.config_from(TuneOptions()) == VertexTuneConfig(backoff=poll)
    assert VertexTuner.config_from(options) == VertexTuneConfig(
        epochs=3, learning_rate_multiplier=0.5, batch_size=4, backoff=Backoff(400, maximum=400)
    )
    for backend in (LocalTuner, OpenAITuner, VertexTuner):
        config = backend.config_from(options, seed=7)
        record = json.loads(json.dumps(dataclasses.asdict(config)))  # as a manifest holds it
        assert backend.config_from(TuneOptions(), record=record) == config


def test_hosted_from_options_tunes_the_base_or_the_societys_model(tmp_path):
    tuner = OpenAITuner.from_options(tmp_path, TuneOptions(), model="gpt-x", client=object())
    assert (tuner.default_base, tuner.parallel_jobs, tuner.retry) == ("gpt-x", True, False)
    options = TuneOptions(base="gpt-y", project="proj", bucket="gs://b", location="eu")
    factory = OpenAITuner.factory(options, model="gpt-x", retry=True, client=object())
    assert factory(tmp_path).default_base == "gpt-y" and factory(tmp_path).retry
    assert OpenAITuner.settings(factory)["tune_base"] == "gpt-y"
    vertex = VertexTuner.from_options(tmp_path, options, model="gemini", client=object())
    assert (vertex.project, vertex.location, vertex.bucket) == ("proj", "eu", "b")
    assert (vertex.default_base, vertex.dataset_suffix) == ("gpt-y", ".vertex.jsonl")
    assert VertexTuner.serving(options) == {"vertexai": True, "project": "proj", "location": "eu"}
    for make in (
        lambda: VertexTuner.from_options(tmp_path, TuneOptions(), model="gemini", client=object()),
        lambda: VertexTuner.factory(TuneOptions(), model="gemini"),  # before any iteration
    ):
        with pytest.raises(ValueError, match="--project"):
            make()


def test_a_factory_without_options_passes_its_keywords_to_the_constructor(tmp_path):
    pytest.importorskip("torch")
    config = LocalTuneConfig(epochs=1.0)
    factory = TunerFactory("local", model="/models/m", retry=True, config=config)
    tuner = factory(tmp_path, iteration=2)
    assert (tuner.model_path, tuner.retry, tuner.iteration) == ("/models/m", True, 2)
    assert tuner.config is config is factory.config
