"""Every agent's adapter on one vLLM or SGLang server: the serving backend through the real
clients (the ``openai`` SDK, langchain-openai's ChatOpenAI) against a loopback server that
speaks both servers' endpoints (tests/vllm_world.py), and the whole ``mafl loop`` on it.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("langchain_openai")

from typer.testing import CliRunner  # noqa: E402
from vllm_world import BASE, ServerWorld, write_adapter  # noqa: E402

from mafl_graph.config import LoopConfig  # noqa: E402
from mafl_graph.finetune.tuners.base import TunedModel  # noqa: E402
from mafl_graph.serving import (  # noqa: E402
    ServingError,
    ServingOptions,
    serving_class,
)

pytestmark = pytest.mark.allow_hosts(["127.0.0.1"])
DIALECTS = ["vllm", "sglang"]
KEY = "sk-serving-test-0123456789abcdef"


def _tuned(root, iteration=1, agents=(0, 1), rank=8, weights=b"w"):
    """(agent, "generator") -> TunedModel of adapters written where the local tuner puts them."""
    return {
        (a, "generator"): TunedModel(
            agent=a,
            role="generator",
            backend="local",
            model=str(
                write_adapter(
                    root / "adapters" / f"iter{iteration}" / f"agent{a}-generator",
                    rank=rank,
                    weights=weights + bytes([a]),
                )
            ),
            base="smollm2",
            iteration=iteration,
            options={"model_path": "smollm2"},
        )
        for a in agents
    }


def _backend(dialect, url, **options):
    return ServingOptions(serving=dialect, serving_url=url, **options).build(model="local:smollm2")


@pytest.mark.parametrize("dialect", DIALECTS)
def test_each_agent_is_answered_by_its_own_adapter_through_both_clients(tmp_path, dialect):
    import openai

    with ServerWorld(dialect=dialect) as world:
        served = _backend(dialect, world.url).prepare(_tuned(tmp_path))
        names = {key: model.served_as for key, model in served.items()}
        adapters = {key: name.rpartition(":")[2] for key, name in names.items()}
        assert sorted(world.loaded) == sorted(adapters.values())
        assert all(a.startswith(f"mafl-i1-agent{k[0]}-generator-") for k, a in adapters.items())
        if dialect == "sglang":  # SGLang's OpenAI name of an adapter is base:adapter
            assert all(n == f"{BASE}:{adapters[k]}" for k, n in names.items())
        # The server reads each adapter from the run directory (its absolute path).
        assert {b["lora_path"] for b in world.loads} == {m.model for m in served.values()}

        reply = (
            served[(1, "generator")].chat_model(temperature=0).invoke("What is the result of 2+3?")
        )
        assert reply.content.startswith(adapters[(1, "generator")]) and "boxed{5}" in reply.content
        client = openai.OpenAI(base_url=world.url, api_key="EMPTY")
        answer = client.chat.completions.create(
            model=names[(0, "generator")],
            messages=[{"role": "user", "content": "What is the result of 4*5?"}],
        )
        assert answer.choices[0].message.content.startswith(adapters[(0, "generator")])
        assert world.chats == [
            (names[(1, "generator")], adapters[(1, "generator")]),
            (names[(0, "generator")], adapters[(0, "generator")]),
        ]
        listed = {m.id: m for m in client.models.list()}
        if dialect == "vllm":  # vLLM lists each adapter with its base as parent
            assert all(listed[a].model_extra["parent"] == BASE for a in adapters.values())


@pytest.mark.parametrize("dialect", DIALECTS)
def test_registration_is_idempotent_and_an_old_iteration_is_unloaded(tmp_path, dialect):
    with ServerWorld(dialect=dialect) as world:
        first = _tuned(tmp_path)
        _backend(dialect, world.url).prepare(first)
        # A resumed loop (a new backend, a new process) registers the same adapters again:
        # vLLM lists them and nothing is sent; SGLang answers "already loaded", which is done.
        again = _backend(dialect, world.url).prepare(first)
        assert len(world.loaded) == 2
        sent = len(world.loads)
        assert sent == (2 if dialect == "vllm" else 4)
        # Iteration 2 retrains agent 0; agent 1 had no data and keeps its iteration-1 adapter.
        second = {**first, **_tuned(tmp_path, iteration=2, agents=(0,), weights=b"new")}
        backend = _backend(dialect, world.url)
        served = backend.prepare(second)
        released = backend.release(first, keep=second)
        kept = again[(1, "generator")].served_as.rpartition(":")[2]
        gone = again[(0, "generator")].served_as.rpartition(":")[2]
        assert released == [gone] and world.unloads == [gone]
        assert sorted(world.loaded) == sorted(
            m.served_as.rpartition(":")[2] for m in served.values()
        )
        assert kept in world.loaded
        # Released again (a rerun after the release): already gone is fine, nothing fails.
        assert backend.release(first, keep=second) == [gone]


@pytest.mark.parametrize("dialect", DIALECTS)
def test_a_rank_above_max_lora_rank_names_the_flag(tmp_path, dialect):
    with ServerWorld(dialect=dialect, max_lora_rank=16) as world:
        tuned = _tuned(tmp_path, agents=(0,), rank=32)
        with pytest.raises(ServingError, match="--max-lora-rank") as caught:
            _backend(dialect, world.url).prepare(tuned)
        assert "rank 32" in str(caught.value) and world.url in str(caught.value)
        assert world.loaded == {}
        # Known beforehand (--serving-max-lora-rank), nothing is even sent.
        world.loads.clear()
        with pytest.raises(ServingError, match="--max-lora-rank 32"):
            _backend(dialect, world.url, serving_max_lora_rank=16).prepare(tuned)
        assert world.loads == []


def test_a_server_that_is_down_is_named_then_used_once_it_is_back(tmp_path, monkeypatch):
    import openai

    monkeypatch.setenv("VLLM_API_KEY", KEY)
    world = ServerWorld(api_key=KEY)
    world.start()
    world.stop()
    backend = _backend("vllm", world.url)
    tuned = _tuned(tmp_path)
    with pytest.raises(ServingError, match="not reachable") as caught:
        backend.prepare(tuned)
    assert world.url in str(caught.value) and KEY not in str(caught.value)
    with world:  # back on the same port
        served = backend.prepare(tuned)
        assert len(world.loaded) == 2 and len(world.loads) == 2
        reply = served[(0, "generator")].chat_model().invoke("What is the result of 1+1?")
        assert "boxed{2}" in reply.content
    with world:  # restarted, it has forgotten its adapters: a chat is refused as vLLM does
        world.loaded.clear()
        with pytest.raises(openai.NotFoundError, match="does not exist"):
            served[(0, "generator")].chat_model(max_retries=0).invoke("What is the result of 1+1?")
        served = backend.prepare(tuned)  # what the rerun does first: register them again
        reply = served[(0, "generator")].chat_model().invoke("What is the result of 1+1?")
        assert "boxed{2}" in reply.content and len(world.loaded) == 2
    # A wrong key is refused with the variable to set, never the key.
    with ServerWorld(api_key="another-key-0123456789") as other:
        with pytest.raises(ServingError, match="VLLM_API_KEY") as caught:
            _backend("vllm", other.url).check()
        assert KEY not in str(caught.value)


def test_404_for_an_adapter_says_what_to_do_and_the_path_map_fixes_it(tmp_path):
    off = pytest.raises(ServingError, match="VLLM_ALLOW_RUNTIME_LORA_UPDATING=True")
    with ServerWorld(runtime_loading=False) as world, off:
        _backend("vllm", world.url).prepare(_tuned(tmp_path))
    # The server mounts the run directory at /mnt/runs: the local path is not there for it.
    with ServerWorld(mounts={"/mnt/runs": tmp_path}) as world:
        tuned = _tuned(tmp_path)
        with pytest.raises(ServingError, match="--serving-path-map") as caught:
            _backend("vllm", world.url).prepare(tuned)
        assert "No adapter found" in str(caught.value) and world.loaded == {}
        mapped = _backend("vllm", world.url, serving_path_map=f"{tmp_path}=/mnt/runs")
        mapped.prepare(tuned)
        assert sorted(world.loaded.values()) == [
            "/mnt/runs/adapters/iter1/agent0-generator",
            "/mnt/runs/adapters/iter1/agent1-generator",
        ]


@pytest.mark.parametrize("dialect", DIALECTS)
def test_a_server_on_another_base_model_is_refused(tmp_path, dialect):
    with ServerWorld(dialect=dialect, base="Qwen/Qwen2.5-0.5B-Instruct") as world:
        backend = _backend(dialect, world.url)
        with pytest.raises(ServingError, match="Qwen/Qwen2.5-0.5B-Instruct") as caught:
            backend.check()
        assert BASE in str(caught.value) and world.url in str(caught.value)
        assert world.loads == []
        # The same model under another name is accepted once named.
        _backend(dialect, world.url, serving_base="Qwen/Qwen2.5-0.5B-Instruct").check()


def test_options_that_cannot_serve_are_refused_before_anything_runs():
    with pytest.raises(ValueError, match="--serving-url"):
        LoopConfig.of(serving="vllm").serving_backend()
    with pytest.raises(ValueError, match="local: model"):
        LoopConfig.of(
            serving="sglang", serving_url="http://h/v1", model="openai:gpt-4o-mini"
        ).serving_backend()
    with pytest.raises(ValueError, match="--serving vllm"):
        LoopConfig.of(serving_url="http://h/v1").serving_backend()
    with pytest.raises(ValueError, match="Unknown serving backend"):
        serving_class("tgi")
    with pytest.raises(ValueError, match="LOCAL=REMOTE"):
        LoopConfig.of(
            serving="vllm", serving_url="http://h", serving_path_map="/a"
        ).serving_backend()


def test_mafl_loop_runs_on_the_server_and_resumes_after_each_failure(tmp_path, monkeypatch):
    """The whole loop: base society on the server, the local LoRA tuner, each tuned agent's
    adapter registered and answering; a server that is down, one on another base, then one
    that cannot read the adapters, each stop the run with one line, and the rerun pays for
    nothing twice."""
    pytest.importorskip("peft")
    from mafl_graph.cli import app
    from mafl_graph.local.loading import smollm2_gguf_path

    try:
        smollm2_gguf_path()
    except FileNotFoundError as error:
        pytest.skip(f"embedded model unavailable: {error}")
    monkeypatch.setenv("VLLM_API_KEY", KEY)
    # The loop's diversity measure loads a sentence embedder (about 10 s here); it has its own
    # tests, and what it scores does not depend on where the society is served.
    monkeypatch.setattr("mafl_graph.diversity.embedding_dissimilarity", lambda results: None)
    run_dir = tmp_path / "run"
    world = ServerWorld(api_key=KEY, mounts={"/mnt/runs": run_dir}, adapter_404=True)
    world.start()
    world.stop()
    args = ["loop", "--run-dir", str(run_dir), "--serving", "vllm", "--serving-url", world.url]
    args += ["--serving-path-map", f"{run_dir}=/mnt/runs", "--iterations", "1", "--agents", "2"]
    args += ["--rounds", "1", "--n-train", "4", "--n-test", "2", "--high", "10"]
    args += ["--max-steps", "1", "--batch-size", "1", "--max-tokens", "24", "--concurrency", "4"]
    runner = CliRunner()

    down = runner.invoke(app, args)
    assert down.exit_code == 1 and "not reachable" in down.output and world.url in down.output
    assert not (run_dir / "manifest.json").exists()  # refused before anything was written
    with ServerWorld(base="Qwen/Qwen2.5-0.5B-Instruct") as other:
        wrong = runner.invoke(app, [other.url if a == world.url else a for a in args])
    assert wrong.exit_code == 1 and "Qwen/Qwen2.5-0.5B-Instruct" in wrong.output
    assert other.chats == [] and not (run_dir / "manifest.json").exists()

    with world:
        unreadable = runner.invoke(app, args)
        assert unreadable.exit_code == 1, unreadable.output
        assert "--serving-path-map" in unreadable.output and KEY not in unreadable.output
        before = list(world.chats)
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert {"train", "datasets", "tuning"} <= set(metrics[1]) and "eval" not in metrics[1]
        adapters = sorted((run_dir / "adapters" / "iter1").iterdir())
        stamps = {a: (a / "metrics.json").stat().st_mtime_ns for a in adapters}
        assert adapters and all(answerer == "base" for _, answerer in before)

        world.adapter_404 = False  # the cause fixed: the same command resumes
        done = runner.invoke(app, args)
        assert done.exit_code == 0, done.output
    after = world.chats[len(before) :]
    # Only the tuned evaluation ran (2 problems x 2 agents, one round), each agent on its own
    # adapter; nothing was retrained.
    assert len(after) == 2 * 2 and all(a.startswith("mafl-i1-agent") for _, a in after)
    assert {a.split("-")[2] for _, a in after} == {f"agent{i}" for i in range(2)}
    assert {a: (a / "metrics.json").stat().st_mtime_ns for a in adapters} == stamps
    assert sorted(world.loaded.values()) == [f"/mnt/runs/adapters/iter1/{a.name}" for a in adapters]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert [m["iteration"] for m in metrics] == [0, 1] and metrics[1]["eval"]["accuracy"][
        "mean"
    ] == 1
    # The key is in no file of the run.
    for path in run_dir.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".jsonl", ".md", ".sqlite"):
            assert KEY.encode() not in path.read_bytes(), path
