"""mafl_graph: multiagent fine-tuning (Subramaniam, Du et al., ICLR 2025) on LangGraph.

The public API, exported lazily: ``import mafl_graph`` imports none of its submodules (and so
neither LangGraph, ``datasets``, sympy nor torch); each name is imported on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Where each public name lives.
_EXPORTS: dict[str, str] = {
    "compare_methods": "mafl_graph.compare",
    "arun_debates": "mafl_graph.debate",
    "create_debate_graph": "mafl_graph.debate",
    "DebateInput": "mafl_graph.debate",
    "DebatePrompts": "mafl_graph.debate",
    "DebateRecord": "mafl_graph.debate",
    "DebateResult": "mafl_graph.debate",
    "DebateState": "mafl_graph.debate",
    "Response": "mafl_graph.debate",
    "run_debates": "mafl_graph.debate",
    "Accuracy": "mafl_graph.evaluate",
    "accuracy": "mafl_graph.evaluate",
    "DebateSummary": "mafl_graph.evaluate",
    "evaluate_society": "mafl_graph.evaluate",
    "Evaluation": "mafl_graph.evaluate",
    "summarize_debates": "mafl_graph.evaluate",
    "AgentDataset": "mafl_graph.finetune",
    "build_datasets": "mafl_graph.finetune",
    "DatasetStats": "mafl_graph.finetune",
    "Example": "mafl_graph.finetune",
    "export_datasets": "mafl_graph.finetune",
    "InvalidDatasetError": "mafl_graph.finetune",
    "to_hf_dataset": "mafl_graph.finetune",
    "to_openai_jsonl": "mafl_graph.finetune",
    "to_vertex_jsonl": "mafl_graph.finetune",
    "validate_openai": "mafl_graph.finetune",
    "validate_vertex": "mafl_graph.finetune",
    "ValidationIssue": "mafl_graph.finetune",
    "Backoff": "mafl_graph.finetune.tuners",
    "get_tuner": "mafl_graph.finetune.tuners",
    "load_tuned": "mafl_graph.finetune.tuners",
    "LocalTuneConfig": "mafl_graph.finetune.tuners",
    "LocalTuner": "mafl_graph.finetune.tuners",
    "OpenAITuneConfig": "mafl_graph.finetune.tuners",
    "OpenAITuner": "mafl_graph.finetune.tuners",
    "tune_run": "mafl_graph.finetune.tuners",
    "tuned_society": "mafl_graph.finetune.tuners",
    "TunedModel": "mafl_graph.finetune.tuners",
    "Tuner": "mafl_graph.finetune.tuners",
    "TuningError": "mafl_graph.finetune.tuners",
    "VertexTuneConfig": "mafl_graph.finetune.tuners",
    "VertexTuner": "mafl_graph.finetune.tuners",
    "extract_boxed": "mafl_graph.grading",
    "extract_number": "mafl_graph.grading",
    "grade": "mafl_graph.grading",
    "is_equivalent": "mafl_graph.grading",
    "last_number": "mafl_graph.grading",
    "majority_vote": "mafl_graph.grading",
    "Verdict": "mafl_graph.grading",
    "Vote": "mafl_graph.grading",
    "push_dataset": "mafl_graph.langsmith",
    "push_datasets": "mafl_graph.langsmith",
    "PushedDataset": "mafl_graph.langsmith",
    "read_traces_langsmith": "mafl_graph.langsmith",
    "LoopError": "mafl_graph.loop",
    "MultiagentFinetuning": "mafl_graph.loop",
    "resolve_model": "mafl_graph.models",
    "Agent": "mafl_graph.society",
    "Society": "mafl_graph.society",
    "Arithmetic": "mafl_graph.tasks",
    "get_task": "mafl_graph.tasks",
    "GSM8K": "mafl_graph.tasks",
    "MATH": "mafl_graph.tasks",
    "Problem": "mafl_graph.tasks",
    "Task": "mafl_graph.tasks",
    "aread_traces": "mafl_graph.traces",
    "DebateTrace": "mafl_graph.traces",
    "read_traces": "mafl_graph.traces",
    "read_traces_sqlite": "mafl_graph.traces",
    "RunTraces": "mafl_graph.traces",
    "UnfinishedThread": "mafl_graph.traces",
    "UsageRecorder": "mafl_graph.usage",
}

__all__ = [
    "Accuracy",
    "accuracy",
    "Agent",
    "AgentDataset",
    "aread_traces",
    "Arithmetic",
    "arun_debates",
    "Backoff",
    "build_datasets",
    "compare_methods",
    "create_debate_graph",
    "DatasetStats",
    "DebateInput",
    "DebatePrompts",
    "DebateRecord",
    "DebateResult",
    "DebateState",
    "DebateSummary",
    "DebateTrace",
    "evaluate_society",
    "Evaluation",
    "Example",
    "export_datasets",
    "extract_boxed",
    "extract_number",
    "get_task",
    "get_tuner",
    "grade",
    "GSM8K",
    "InvalidDatasetError",
    "is_equivalent",
    "last_number",
    "load_tuned",
    "LocalTuneConfig",
    "LocalTuner",
    "LoopError",
    "majority_vote",
    "MATH",
    "MultiagentFinetuning",
    "OpenAITuneConfig",
    "OpenAITuner",
    "Problem",
    "push_dataset",
    "push_datasets",
    "PushedDataset",
    "read_traces",
    "read_traces_langsmith",
    "read_traces_sqlite",
    "resolve_model",
    "Response",
    "run_debates",
    "RunTraces",
    "Society",
    "summarize_debates",
    "Task",
    "to_hf_dataset",
    "to_openai_jsonl",
    "to_vertex_jsonl",
    "tune_run",
    "tuned_society",
    "TunedModel",
    "Tuner",
    "TuningError",
    "UnfinishedThread",
    "UsageRecorder",
    "validate_openai",
    "validate_vertex",
    "ValidationIssue",
    "Verdict",
    "VertexTuneConfig",
    "VertexTuner",
    "Vote",
]

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ imports
    from mafl_graph.compare import (
        compare_methods,
    )
    from mafl_graph.debate import (
        DebateInput,
        DebatePrompts,
        DebateRecord,
        DebateResult,
        DebateState,
        Response,
        arun_debates,
        create_debate_graph,
        run_debates,
    )
    from mafl_graph.evaluate import (
        Accuracy,
        DebateSummary,
        Evaluation,
        accuracy,
        evaluate_society,
        summarize_debates,
    )
    from mafl_graph.finetune import (
        AgentDataset,
        DatasetStats,
        Example,
        InvalidDatasetError,
        ValidationIssue,
        build_datasets,
        export_datasets,
        to_hf_dataset,
        to_openai_jsonl,
        to_vertex_jsonl,
        validate_openai,
        validate_vertex,
    )
    from mafl_graph.finetune.tuners import (
        Backoff,
        LocalTuneConfig,
        LocalTuner,
        OpenAITuneConfig,
        OpenAITuner,
        TunedModel,
        Tuner,
        TuningError,
        VertexTuneConfig,
        VertexTuner,
        get_tuner,
        load_tuned,
        tune_run,
        tuned_society,
    )
    from mafl_graph.grading import (
        Verdict,
        Vote,
        extract_boxed,
        extract_number,
        grade,
        is_equivalent,
        last_number,
        majority_vote,
    )
    from mafl_graph.langsmith import (
        PushedDataset,
        push_dataset,
        push_datasets,
        read_traces_langsmith,
    )
    from mafl_graph.loop import (
        LoopError,
        MultiagentFinetuning,
    )
    from mafl_graph.models import (
        resolve_model,
    )
    from mafl_graph.society import (
        Agent,
        Society,
    )
    from mafl_graph.tasks import (
        GSM8K,
        MATH,
        Arithmetic,
        Problem,
        Task,
        get_task,
    )
    from mafl_graph.traces import (
        DebateTrace,
        RunTraces,
        UnfinishedThread,
        aread_traces,
        read_traces,
        read_traces_sqlite,
    )
    from mafl_graph.usage import (
        UsageRecorder,
    )


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
