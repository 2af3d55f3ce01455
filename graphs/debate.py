"""The graphs LangGraph Studio loads (`langgraph dev`; see langgraph.json at the repository root).

Studio calls each factory with the run's config, so the models, the number of agents, the
rounds and the task are chosen per run in Studio's "configurable" panel (or in
``config={"configurable": {...}}`` through the HTTP API), not fixed when the server starts. The
graphs are compiled without a checkpointer: the dev server brings its own and refuses graphs
that do.

API keys never go in the configurable settings (the server stores them with every thread and
run): ``google_genai:`` and ``openai:`` models read ``GOOGLE_API_KEY`` / ``OPENAI_API_KEY``
from the server's environment (or a ``.env`` file named by langgraph.json's ``env`` key).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.graph.state import CompiledStateGraph
from typing_extensions import TypedDict  # pydantic refuses typing.TypedDict before 3.12

from mafl_graph import Society, create_debate_graph, get_task


class DebateSettings(TypedDict, total=False):
    """What a Studio run may configure (every key optional; defaults in ``DEFAULTS``).

    Declared as the graph's context schema only so that Studio lists these fields in its
    configuration panel; the factory reads them from ``config["configurable"]``.
    """

    model: str
    """``provider:model`` for every agent: ``local:smollm2``, ``google_genai:gemini-2.0-flash``…"""
    summarizer_model: str
    """Another model for the summarizer (default: ``model``)."""
    agents: int
    rounds: int
    summarize: bool
    task: str
    """``arithmetic``, ``gsm8k`` or ``math`` (the graph grades answers with its rules)."""
    task_options: dict[str, Any]
    """The task's constructor options (a JSON object), e.g. a mixed task's domains."""
    max_tokens: int
    temperature: float
    seed: int
    experts: str
    """SVF experts as ``label=directory`` pairs separated by commas: every agent then
    self-adapts, its expert picked per problem in the graph's ``adapt`` node (local models)."""
    classifier: str
    """With ``experts``: a classification expert's directory to pick them (default: the base
    is asked, prompt dispatch)."""


DEFAULTS: DebateSettings = {
    "model": "local:smollm2",
    "agents": 3,
    "rounds": 2,
    "summarize": True,
    "task": "arithmetic",
    "seed": 0,
}


def make_graph(config: RunnableConfig) -> CompiledStateGraph:
    """The debate graph for this run's settings (see :class:`DebateSettings`)."""
    return _build(_settings(config.get("configurable") or {}), name="debate")


def make_single_agent_graph(config: RunnableConfig) -> CompiledStateGraph:
    """One agent answering once: the baseline a debate is compared with, on the same models."""
    settings = {**_settings(config.get("configurable") or {}), "agents": 1, "rounds": 1}
    return _build(settings, name="single_agent")


def _settings(configurable: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults overlaid with this run's values, converted and checked with a clear error.

    The configurable dict also carries the server's own keys (thread_id, assistant_id, …),
    so unknown keys are left alone rather than refused.
    """
    settings: dict[str, Any] = {**DEFAULTS}
    converters = {"agents": int, "rounds": int, "max_tokens": int, "seed": int}
    for key in DebateSettings.__annotations__:
        value = configurable.get(key)
        if value is None or value == "":
            continue
        try:
            if key == "task_options":
                value = json.loads(value) if isinstance(value, str) else dict(value)
            elif key in converters:
                value = converters[key](value)
            elif key == "temperature":
                value = float(value)
            elif key == "summarize":
                value = _as_bool(value)
        except (TypeError, ValueError) as exc:
            kind = "a JSON object" if key == "task_options" else "a number"
            raise ValueError(f"configurable {key!r} must be {kind}; got {value!r}.") from exc
        settings[key] = value
    return settings


def _self_adaptive(settings: Mapping[str, Any], options: Mapping[str, Any]) -> Any:
    """The agents' model when ``experts`` are configured: a self-adaptive local model."""
    from mafl_graph.svf.adapt import (
        ClassifierDispatch,
        ExpertLibrary,
        PromptDispatch,
        SelfAdaptiveChatModel,
    )
    from mafl_graph.svf.runs import local_model_path

    pairs = [p.strip() for p in str(settings["experts"]).split(",") if p.strip()]
    malformed = [p for p in pairs if "=" not in p]
    if malformed:
        raise ValueError(f"configurable 'experts' must be label=directory pairs; got {malformed}")
    library = ExpertLibrary(dict(p.split("=", 1) for p in pairs))
    model_path = local_model_path(str(settings["model"]))
    classifier = settings.get("classifier")
    dispatcher = (
        ClassifierDispatch(library, classifier, model_path=model_path)
        if classifier
        else PromptDispatch(library, model_path=model_path)
    )
    kwargs = {"max_new_tokens": options["max_tokens"]} if "max_tokens" in options else {}
    kwargs.update({k: options[k] for k in ("temperature", "seed") if k in options})
    return SelfAdaptiveChatModel(dispatcher=dispatcher, model_path=model_path, **kwargs)


def _as_bool(value: Any) -> bool:
    if isinstance(value, str):  # Studio's form may send "false"
        if value.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"configurable 'summarize' must be true or false; got {value!r}.")
        return value.lower() in ("true", "1")
    return bool(value)


def _build(settings: Mapping[str, Any], *, name: str) -> CompiledStateGraph:
    model_options = {k: settings[k] for k in ("max_tokens", "temperature") if k in settings}
    if str(settings["model"]).startswith("local:"):
        model_options["seed"] = settings["seed"]
    model = settings["model"]
    if settings.get("experts"):
        model, model_options = _self_adaptive(settings, model_options), {}
    society = Society.from_model(
        model,
        settings["agents"],
        summarizer=settings.get("summarizer_model"),
        **model_options,
    )
    builder = create_debate_graph(
        society,
        get_task(settings["task"], **settings.get("task_options", {})),
        rounds=settings["rounds"],
        summarize=settings["summarize"],
        seed=settings["seed"],
    )
    # Shown in Studio's configuration panel (the graph itself reads no context).
    builder.context_schema = DebateSettings  # type: ignore[assignment]
    return builder.compile(name=name)
