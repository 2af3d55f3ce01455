"""Self-adaptation: dispatch parsing, expert libraries and their bad input, the classification
task, CEM mixtures and search, the self-adaptive chat model, and the debate graph's adapt node
(on the embedded SmolLM2, with experts on its last two layers' MLPs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from langchain_core.callbacks import BaseCallbackHandler
from langgraph.checkpoint.memory import InMemorySaver

from mafl_graph.svf.adapt import (
    BASE,
    Choice,
    DomainClassification,
    ExpertLibrary,
    FixedExpert,
    PromptDispatch,
    SelfAdaptiveChatModel,
    parse_domain,
    routing_accuracy,
)
from mafl_graph.tasks import Arithmetic

LAYERS = (-2, -1)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("svf-cache")


@pytest.fixture(scope="module")
def experts(engine, cache: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Two spread-out experts on the last two layers' MLPs."""
    from mafl_graph.local import prepare_model_dir
    from mafl_graph.local.loading import shared_base
    from mafl_graph.svf import SVFExpert, decompose

    root = tmp_path_factory.mktemp("experts")
    model = shared_base(prepare_model_dir("smollm2"), "float32")
    decomposition = decompose(model, layers=LAYERS, cache_dir=cache, progress=False)
    return {
        label: str(SVFExpert.init(decomposition, seed=seed, mean=0.0, std=3.0).save(root / label))
        for seed, label in ((1, "arithmetic"), (2, "algebra"))
    }


# Parsing and libraries (no model) -----------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "label"),
    [
        ("arithmetic", "arithmetic"),
        ("The answer is: Algebra.", "algebra"),
        ("other", None),
        ("It is arithmetic, not algebra", "arithmetic"),
        ("pre-algebraic", None),  # a word containing a label is not the label
        ("", None),
        ("I think it's OTHER than arithmetic", None),  # "other" named first
    ],
)
def test_parse_domain_names_the_first_label_or_none(reply: str, label: str | None) -> None:
    assert parse_domain(reply, ["arithmetic", "algebra"]) == label


def test_library_refuses_bad_experts(tmp_path: Path, experts: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="No SVF experts"):
        ExpertLibrary({})
    with pytest.raises(ValueError, match="'base' is not a usable"):
        ExpertLibrary({"base": experts["arithmetic"]})
    with pytest.raises(ValueError, match="not an SVF expert directory"):
        ExpertLibrary({"code": tmp_path})
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "svf_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a readable expert config"):
        ExpertLibrary({"code": corrupt})
    other = tmp_path / "other-base"
    other.mkdir()
    config = json.loads((Path(experts["algebra"]) / "svf_config.json").read_text())
    config["base"]["fingerprint"] = "0" * 64
    (other / "svf_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="other base model"):
        ExpertLibrary({"arithmetic": experts["arithmetic"], "algebra": other})
    library = ExpertLibrary(experts)
    with pytest.raises(ValueError, match="Unknown expert label 'geometry'"):
        library.adapter("geometry")
    assert library.adapter(BASE) is None


def test_domain_classification_grades_labels() -> None:
    from mafl_graph.tasks import Mixed

    source = Mixed(tasks="arithmetic,humaneval")
    task = DomainClassification(source, labels=("arithmetic",))
    problems = task.load("train", 12)
    assert {p.answer for p in problems} == {"arithmetic", "other"}
    assert all("Question: " in task.question_prompt(p) for p in problems)
    assert task.extract_answer("Arithmetic.") == "arithmetic"
    assert task.extract_answer("something else entirely, other") == "other"
    assert task.extract_answer("no idea") is None
    with pytest.raises(TypeError, match="domain_of"):
        DomainClassification(Arithmetic(), labels=("arithmetic",))


def test_routing_accuracy_counts_experts_and_base() -> None:
    chosen = ["arithmetic", BASE, "arithmetic", BASE]
    domains = ["arithmetic", "code", "algebra", "arithmetic"]
    assert routing_accuracy(chosen, domains, ["arithmetic", "algebra"]) == 0.5


# CEM ----------------------------------------------------------------------------------------


def test_mixture_of_one_hot_weights_is_that_expert(experts: dict[str, str], cache: Path) -> None:
    from mafl_graph.svf import SVFExpert
    from mafl_graph.svf.cem import mix_experts

    loaded = [SVFExpert.load(p) for p in experts.values()]
    s = torch.rand(576) + 0.1
    mixed = mix_experts(loaded, torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
    for name in loaded[1].z:
        torch.testing.assert_close(
            mixed.multipliers(name, s[: loaded[1].z[name].numel()]),
            loaded[1].multipliers(name, s[: loaded[1].z[name].numel()]),
            rtol=1e-4,
            atol=1e-5,
        )
    half = mix_experts(loaded, torch.full((2, 2), 0.5))
    name = next(iter(half.z))
    expected = (loaded[0].scales(name) + loaded[1].scales(name)) / 2
    ratio = half.scales(name) / expected
    assert torch.allclose(ratio, ratio[0].expand_as(ratio), rtol=1e-4)
    with pytest.raises(ValueError, match="alphas must be"):
        mix_experts(loaded, torch.ones(2, 3))


def test_cem_searches_saves_resumes_and_refuses(
    experts: dict[str, str], cache: Path, tmp_path: Path
) -> None:
    from mafl_graph.svf import SVFExpert
    from mafl_graph.svf.cem import few_shot_cem
    from mafl_graph.svf.config import CEMConfig

    task = Arithmetic(terms=2, low=0, high=9, operators="+")
    examples = task.load("train", 2)
    config = CEMConfig(population=2, elites=1, generations=2, examples=2, max_new_tokens=4)
    run = dict(out_dir=tmp_path, config=config, cache_dir=cache, progress=False)
    result = few_shot_cem(experts, task, examples, **run)
    state = json.loads((tmp_path / "cem_state.json").read_text())
    assert len(state["candidates"]) == 4 and len(result.history) == 2
    assert 0.0 <= result.fitness <= 1.0 and len(result.alphas) == 2
    mixture = SVFExpert.load(result.expert_path)
    assert mixture.settings["cem"]["labels"] == ["arithmetic", "algebra"]
    again = few_shot_cem(experts, task, examples, **run)  # cached: nothing rerun
    assert again.alphas == result.alphas
    with pytest.raises(ValueError, match="other settings"):
        few_shot_cem(experts, task, task.load("train", 3)[1:], **run)
    with pytest.raises(ValueError, match="No SVF experts"):
        few_shot_cem({}, task, examples, **run)
    with pytest.raises(ValueError, match="elites"):
        CEMConfig(population=2, elites=3)


# The chat model and the graph ---------------------------------------------------------------


class ScriptedDispatch:
    """Picks by the question's first number: even -> arithmetic, odd -> base (unit logic)."""

    strategy = "scripted"

    def __init__(self, library: ExpertLibrary) -> None:
        self.library = library
        self.asked: list[str] = []

    def choose(self, question: str) -> Choice:
        self.asked.append(question)
        first = int(next(t for t in question.replace("+", " ").split() if t.isdigit()))
        return self.library.choice("arithmetic" if first % 2 == 0 else BASE, self.strategy)

    async def achoose(self, question: str) -> Choice:
        return self.choose(question)


class Metadata(BaseCallbackHandler):
    def __init__(self) -> None:
        self.seen: list[dict] = []

    def on_chat_model_start(self, serialized, messages, *, metadata=None, **kwargs) -> None:
        self.seen.append(dict(metadata or {}))


def test_prompt_dispatch_and_standalone_model(experts: dict[str, str]) -> None:
    library = ExpertLibrary(experts)
    dispatch = PromptDispatch(library, max_new_tokens=8)
    choices = dispatch.choose_many(["What is 2+3?", "Solve 2x = 4 for x."])
    assert all(c.strategy == "prompt" and c.reply is not None for c in choices)
    assert all(c.expert in (*library.labels, BASE) for c in choices)
    model = SelfAdaptiveChatModel(dispatcher=FixedExpert(library, "algebra"), max_new_tokens=6)
    reply = model.invoke("What is 2+3?")
    assert reply.response_metadata["expert"] == "algebra"
    assert reply.response_metadata["adaptation"]["adapter"] == experts["algebra"]
    # A call that names its expert (as the debate graph's calls do) is not dispatched again.
    asked = ScriptedDispatch(library)
    model = SelfAdaptiveChatModel(dispatcher=asked, max_new_tokens=6)
    named = model.invoke("What is 2+3?", config={"metadata": {"expert": BASE}})
    assert named.response_metadata["expert"] == BASE and asked.asked == []


def test_debate_graph_adapts_each_problem_once_and_records_it(experts: dict[str, str]) -> None:
    from mafl_graph import Society, create_debate_graph

    library = ExpertLibrary(experts)
    dispatch = ScriptedDispatch(library)
    model = SelfAdaptiveChatModel(dispatcher=dispatch, temperature=0.0, max_new_tokens=8)
    society = Society.from_model(model, n_agents=2)
    task = Arithmetic(terms=2, low=0, high=9, operators="+")
    graph = create_debate_graph(society, task, rounds=2, summarize=False).compile(
        checkpointer=InMemorySaver()
    )
    assert "adapt" in graph.get_graph().nodes
    problem = next(p for p in task.load("test", 10) if int(p.question.split("+")[0]) % 2 == 0)
    seen = Metadata()
    state = graph.invoke(
        {"problem_id": problem.id, "question": problem.question, "reference": problem.answer},
        {"configurable": {"thread_id": "t"}, "callbacks": [seen]},
    )
    assert dispatch.asked == [problem.question]  # one first pass for both agents
    assert state["adaptation"]["0"]["expert"] == "arithmetic"
    assert {r["expert"] for r in state["responses"]} == {"arithmetic"}
    experts_seen = [m.get("expert") for m in seen.seen if "agent" in m]
    assert len(experts_seen) == 4 and set(experts_seen) == {"arithmetic"}
    # A society without self-adaptive models has no adapt node.
    plain = create_debate_graph(Society.from_model("local:smollm2", n_agents=2), task)
    assert "adapt" not in plain.compile().get_graph().nodes


# The commands -------------------------------------------------------------------------------

MIXED = ["--task", "mixed", "--tasks", "arithmetic,algebra=dm-math:algebra__linear_1d"]


def mafl(*args: str):
    from typer.testing import CliRunner

    from mafl_graph.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def test_svf_commands_refuse_bad_input_with_exit_2(experts: dict[str, str], tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "svf_config.json").write_text(
        (Path(experts["algebra"]) / "svf_config.json").read_text()
    )
    (corrupt / "svf_expert.safetensors").write_bytes(b"not a safetensors file")
    cases = {
        "Unknown domain label(s) 'geometry'": [
            "svf",
            "adapt",
            *MIXED,
            "--expert",
            f"geometry={experts['algebra']}",
        ],
        "is not an SVF expert directory": [
            "svf",
            "adapt",
            *MIXED,
            "--expert",
            f"arithmetic={tmp_path / 'missing'}",
        ],
        "is a hosted model": ["svf", "train", "--model", "openai:gpt-4o-mini", "--steps", "1"],
        "needs --classifier": [
            "svf",
            "adapt",
            *MIXED,
            "--expert",
            f"arithmetic={experts['arithmetic']}",
            "--strategy",
            "classifier",
        ],
        "not label=directory": ["svf", "adapt", *MIXED, "--expert", "arithmetic"],
    }
    for expected, args in cases.items():
        result = mafl(*args, "--run-dir", tmp_path / "run")
        assert result.exit_code == 2, (expected, result.output)
        assert expected in " ".join(result.output.split()), result.output
    assert not (tmp_path / "run").exists()  # refused before anything was written
    # A corrupt expert file, and one made for other targets, are refused when loaded.
    result = mafl(
        "svf",
        "adapt",
        *MIXED,
        "--expert",
        f"arithmetic={corrupt}",
        "--strategy",
        "cem",
        "--population",
        "1",
        "--elites",
        "1",
        "--generations",
        "1",
        "--examples",
        "1",
        "--n-test",
        "2",
        "--max-new-tokens",
        "4",
        "--run-dir",
        tmp_path / "corrupt-run",
    )
    assert result.exit_code == 2 and "corrupt" in result.output, result.output


def test_svf_adapt_compares_strategies_and_reports(experts: dict[str, str], tmp_path: Path) -> None:
    args = [
        "svf",
        "adapt",
        *MIXED,
        "--expert",
        f"arithmetic={experts['arithmetic']}",
        "--expert",
        f"algebra={experts['algebra']}",
        "--strategy",
        "prompt,cem",
        "--population",
        "2",
        "--elites",
        "1",
        "--generations",
        "1",
        "--examples",
        "2",
        "--n-test",
        "4",
        "--max-new-tokens",
        "6",
        "--run-dir",
        tmp_path,
    ]
    result = mafl(*args)
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "svf_adapt.json").read_text())
    assert set(summary["rows"]) == {"base", "arithmetic", "algebra", "adapt-prompt", "adapt-cem"}
    assert sum(summary["rows"]["adapt-prompt"]["routes"].values()) == 4
    routes = json.loads((tmp_path / "routes" / "prompt.json").read_text())
    assert all("reply" in r for r in routes.values())
    again = mafl(*args)  # resumed: everything is read back, nothing asked again
    assert again.exit_code == 0 and json.loads((tmp_path / "svf_adapt.json").read_text()) == summary
    report = mafl("report", "--run-dir", tmp_path)
    assert report.exit_code == 0, report.output
    assert "few-shot CEM" in (tmp_path / "report.md").read_text()


def test_studio_graph_with_experts_self_adapts(experts: dict[str, str]) -> None:
    import importlib.util

    path = Path(__file__).parents[1] / "graphs" / "debate.py"
    spec = importlib.util.spec_from_file_location("studio_graphs", path)
    assert spec is not None and spec.loader is not None
    graphs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(graphs)
    pairs = ",".join(f"{label}={path}" for label, path in experts.items())
    graph = graphs.make_graph({"configurable": {"experts": pairs, "agents": 2}})
    assert "adapt" in graph.get_graph().nodes
    with pytest.raises(ValueError, match="label=directory"):
        graphs.make_graph({"configurable": {"experts": "nonsense"}})
    with pytest.raises(ValueError, match="hosted model"):
        graphs.make_graph({"configurable": {"experts": pairs, "model": "openai:gpt-4o-mini"}})


@pytest.mark.parametrize(
    ("text", "layers"),
    [("-6:", (-6, -5, -4, -3, -2, -1)), ("0,3", (0, 3)), ("2:5", (2, 3, 4)), (None, None)],
)
def test_layer_options(text: str | None, layers: tuple[int, ...] | None) -> None:
    from mafl_graph.cli.svf import parse_layers

    assert parse_layers(text) == layers


def test_layer_and_expert_options_refuse_nonsense() -> None:
    from mafl_graph.cli.svf import parse_experts, parse_layers

    for text in ("3:", "a,b", "1-4"):
        with pytest.raises(ValueError, match="--layers"):
            parse_layers(text)
    with pytest.raises(ValueError, match="given twice"):
        parse_experts(["a=x", "a=y"])
    assert parse_experts(["sums = runs/a"]) == {"sums": "runs/a"}
