"""Per-agent datasets in the formats tuners take, each checked before it leaves the machine.

- OpenAI chat JSONL: ``{"messages": [...]}`` per line, assistant turns with ``weight`` 0/1.
- Vertex AI Gemini tuning JSONL: ``{"contents": [{"role": "user"|"model", "parts":
  [{"text": …}]}], "systemInstruction": …}``. Gemini's format has no per-turn weight: a
  critic's earlier answer stays a ``model`` turn (the conversation the critic really sees), and
  Google does not document whether its tuner computes loss on earlier model turns.
- A Hugging Face ``Dataset``, conversational (``messages``, each with its weight) or
  prompt-completion (``prompt`` = everything before the final reply, ``completion`` = the reply,
  which TRL's ``SFTTrainer`` trains on alone).

The validators check what the providers document that they check (JSON per line, roles, empty
content, weights, a minimum number of examples, tokens per example) and return every problem
with its line number, so a whole file can be fixed in one pass instead of one failed upload at
a time. The exporters refuse to write a file that does not validate. Token counts are
estimates unless ``count_tokens`` is a real tokenizer (see ``estimate_tokens``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mafl_graph.finetune.datasets import AgentDataset, Example, estimate_tokens

# Documented limits (checked 2026): OpenAI needs at least 10 examples; gpt-4o-mini and gpt-4o
# train on up to 65,536 tokens per example (gpt-3.5-turbo: 16,385). Vertex AI's Gemini 2.x
# tuning takes up to 131,072 input+output tokens per example; its docs asked for at least 16
# examples (and recommend 100+).
OPENAI_MIN_EXAMPLES = 10
OPENAI_MAX_TOKENS = 65_536
VERTEX_MIN_EXAMPLES = 16
VERTEX_MAX_TOKENS = 131_072

_OPENAI_ROLES = {"system", "user", "assistant", "tool", "function"}
_OPENAI_MESSAGE_KEYS = {"role", "content", "name", "weight", "function_call", "tool_calls"}
_OPENAI_MESSAGE_KEYS |= {"tool_call_id"}
_VERTEX_KEYS = {"contents", "systemInstruction", "tools"}
_VERTEX_PART_KINDS = {"text", "fileData", "inlineData", "functionCall", "functionResponse"}
_TO_VERTEX = {"user": "user", "assistant": "model"}

HFForm = Literal["messages", "prompt_completion"]
Source = str | Path | Iterable[Any]
Counter = Callable[[str], int]


@dataclass(frozen=True)
class ValidationIssue:
    """One problem: the 1-based line of the JSONL file it is on (None: the file as a whole)."""

    line: int | None
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}" if self.line else f"file: {self.reason}"


class InvalidDatasetError(ValueError):
    """A dataset that a provider would reject; ``issues`` lists every problem."""

    def __init__(self, fmt: str, issues: Sequence[ValidationIssue], where: str = "") -> None:
        self.issues = list(issues)
        listed = "\n".join(f"  {issue}" for issue in self.issues)
        super().__init__(
            f"{len(self.issues)} problem(s) in the {fmt} dataset{where}; nothing was written:"
            f"\n{listed}"
        )


# OpenAI ----------------------------------------------------------------------------------


def openai_record(example: Example) -> dict[str, Any]:
    """One line of OpenAI's chat fine-tuning format."""
    return {"messages": [dict(m) for m in example["messages"]]}


def to_openai_jsonl(
    examples: Sequence[Example],
    path: str | Path,
    *,
    min_examples: int = OPENAI_MIN_EXAMPLES,
    max_tokens: int = OPENAI_MAX_TOKENS,
    count_tokens: Counter = estimate_tokens,
) -> Path:
    """Write ``examples`` as OpenAI chat JSONL, or raise :class:`InvalidDatasetError`."""
    records = [openai_record(e) for e in examples]
    issues = validate_openai(
        records, min_examples=min_examples, max_tokens=max_tokens, count_tokens=count_tokens
    )
    return _write_valid(path, records, issues, "OpenAI")


def validate_openai(
    source: Source,
    *,
    min_examples: int = OPENAI_MIN_EXAMPLES,
    max_tokens: int = OPENAI_MAX_TOKENS,
    count_tokens: Counter = estimate_tokens,
) -> list[ValidationIssue]:
    """Every problem OpenAI's fine-tuning upload would reject, in a file or in records."""
    issues, count = _check_lines(source, lambda r: _openai_problems(r, max_tokens, count_tokens))
    return issues + _too_few(count, min_examples, "OpenAI")


def _openai_problems(record: Any, max_tokens: int, count: Counter) -> list[str]:
    if not isinstance(record, dict):
        return [f"each line must be a JSON object, not {type(record).__name__}"]
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        return ["'messages' must be a non-empty list"]
    found: list[str] = []
    trained = 0
    tokens = 3  # the reply primer, as OpenAI's cookbook counts
    for i, m in enumerate(messages, start=1):
        if not isinstance(m, dict):
            found.append(f"message {i} must be an object")
            continue
        role, content = m.get("role"), m.get("content")
        if unknown := sorted(set(m) - _OPENAI_MESSAGE_KEYS):
            found.append(f"message {i} has unrecognised keys {unknown}")
        if role not in _OPENAI_ROLES:
            found.append(f"message {i} has role {role!r}; use one of {sorted(_OPENAI_ROLES)}")
        calls_tool = bool(m.get("function_call") or m.get("tool_calls"))
        if not calls_tool and (not isinstance(content, str) or not content.strip()):
            found.append(f"message {i} ({role}) has empty or missing content")
        if "weight" in m:
            weight = m["weight"]
            if role != "assistant":
                found.append(f"message {i} ({role}) has a weight; only assistant turns may")
            elif type(weight) is not int or weight not in (0, 1):
                found.append(f"message {i} has weight {weight!r}; it must be 0 or 1")
        if role == "assistant" and m.get("weight", 1) == 1:
            trained += 1
        tokens += 3 + (count(content) if isinstance(content, str) else 0)
    if not any(isinstance(m, dict) and m.get("role") == "assistant" for m in messages):
        found.append("no assistant message: nothing to learn")
    elif trained == 0:
        found.append("every assistant message has weight 0: nothing to learn")
    if tokens > max_tokens:
        found.append(f"about {tokens} tokens, over the limit of {max_tokens} per example")
    return found


# Vertex AI Gemini ---------------------------------------------------------------------------


def vertex_record(example: Example, *, system_instruction: str | None = None) -> dict[str, Any]:
    """One line of Vertex AI's Gemini tuning format.

    Leading system messages (and ``system_instruction``) become ``systemInstruction``; a
    system message later in the conversation has no Gemini equivalent and is refused.
    """
    system = [system_instruction] if system_instruction else []
    contents: list[dict[str, Any]] = []
    for m in example["messages"]:
        if m["role"] == "system":
            if contents:
                raise ValueError(
                    f"problem {example['problem_id']!r}: a system message after the "
                    "conversation started cannot be expressed in Gemini's format."
                )
            system.append(m["content"])
            continue
        contents.append({"role": _TO_VERTEX[m["role"]], "parts": [{"text": m["content"]}]})
    record: dict[str, Any] = {"contents": contents}
    if system:
        record["systemInstruction"] = {"parts": [{"text": text} for text in system]}
    return record


def to_vertex_jsonl(
    examples: Sequence[Example],
    path: str | Path,
    *,
    system_instruction: str | None = None,
    min_examples: int = VERTEX_MIN_EXAMPLES,
    max_tokens: int = VERTEX_MAX_TOKENS,
    count_tokens: Counter = estimate_tokens,
) -> Path:
    """Write ``examples`` as Vertex Gemini tuning JSONL, or raise :class:`InvalidDatasetError`."""
    records = [vertex_record(e, system_instruction=system_instruction) for e in examples]
    issues = validate_vertex(
        records, min_examples=min_examples, max_tokens=max_tokens, count_tokens=count_tokens
    )
    return _write_valid(path, records, issues, "Vertex AI")


def validate_vertex(
    source: Source,
    *,
    min_examples: int = VERTEX_MIN_EXAMPLES,
    max_tokens: int = VERTEX_MAX_TOKENS,
    count_tokens: Counter = estimate_tokens,
) -> list[ValidationIssue]:
    """Every problem Vertex AI's Gemini tuning would reject, in a file or in records."""
    issues, count = _check_lines(source, lambda r: _vertex_problems(r, max_tokens, count_tokens))
    return issues + _too_few(count, min_examples, "Vertex AI")


def _vertex_problems(record: Any, max_tokens: int, count: Counter) -> list[str]:
    if not isinstance(record, dict):
        return [f"each line must be a JSON object, not {type(record).__name__}"]
    found: list[str] = []
    if unknown := sorted(set(record) - _VERTEX_KEYS):
        found.append(f"unrecognised keys {unknown}; expected {sorted(_VERTEX_KEYS)}")
    contents = record.get("contents")
    if not isinstance(contents, list) or not contents:
        return [*found, "'contents' must be a non-empty list"]
    tokens = 0
    if "systemInstruction" in record:
        system = record["systemInstruction"]
        parts = system.get("parts") if isinstance(system, dict) else None
        part_issues, n = _parts_problems(parts, "systemInstruction", count)
        found += part_issues
        tokens += n
    roles: list[Any] = []
    for i, content in enumerate(contents, start=1):
        if not isinstance(content, dict):
            found.append(f"contents[{i}] must be an object")
            roles.append(None)
            continue
        role = content.get("role")
        roles.append(role)
        if role not in ("user", "model"):
            found.append(f"contents[{i}] has role {role!r}; Gemini takes 'user' or 'model'")
        part_issues, n = _parts_problems(content.get("parts"), f"contents[{i}] ({role})", count)
        found += part_issues
        tokens += n
    if roles[0] != "user":
        found.append("the conversation must start with a 'user' turn")
    if roles[-1] != "model":
        found.append("the conversation must end with a 'model' turn (the reply to learn)")
    for i, (a, b) in enumerate(zip(roles, roles[1:], strict=False), start=1):
        if a == b and a in ("user", "model"):
            found.append(f"contents[{i}] and [{i + 1}] are both {a!r}; turns must alternate")
    if tokens > max_tokens:
        found.append(f"about {tokens} tokens, over the limit of {max_tokens} per example")
    return found


def _parts_problems(parts: Any, where: str, count: Counter) -> tuple[list[str], int]:
    if not isinstance(parts, list) or not parts:
        return [f"{where} needs a non-empty 'parts' list"], 0
    found: list[str] = []
    tokens = 0
    for j, part in enumerate(parts, start=1):
        kinds = set(part) & _VERTEX_PART_KINDS if isinstance(part, dict) else set()
        if len(kinds) != 1 or len(part) != 1:
            found.append(f"{where} part {j} must hold exactly one of {sorted(_VERTEX_PART_KINDS)}")
            continue
        if "text" in part:
            text = part["text"]
            if not isinstance(text, str) or not text.strip():
                found.append(f"{where} part {j} has empty text")
            else:
                tokens += count(text)
    return found, tokens


# Hugging Face ----------------------------------------------------------------------------------


def to_hf_dataset(examples: Sequence[Example], form: HFForm = "messages") -> Any:
    """A ``datasets.Dataset`` in TRL's conversational or conversational prompt-completion form.

    ``messages``: each row's ``messages`` with a ``weight`` on every turn (None except on
    assistant turns). ``prompt_completion``: ``prompt`` (the messages before the final reply)
    and ``completion`` (the reply alone), for completion-only loss; it needs the final reply
    to be the only weight-1 turn. Both keep ``problem_id``, ``agent``, ``role``, ``subset``.
    """
    from datasets import Dataset  # imported here: `datasets` takes a second to import

    if form not in ("messages", "prompt_completion"):
        raise ValueError(f"form must be 'messages' or 'prompt_completion'; got {form!r}.")
    rows = []
    bad: list[ValidationIssue] = []
    for i, e in enumerate(examples, start=1):
        meta = {k: e[k] for k in ("problem_id", "agent", "role", "subset")}  # type: ignore[literal-required]
        turns = [_hf_turn(m) for m in e["messages"]]
        if form == "messages":
            rows.append({"messages": turns, **meta})
            continue
        learned = [j for j, m in enumerate(e["messages"]) if _is_trained(m)]
        if learned != [len(turns) - 1]:
            bad.append(ValidationIssue(i, "the final turn must be the only weight-1 reply"))
            continue
        prompt = [{"role": t["role"], "content": t["content"]} for t in turns[:-1]]
        completion = [{"role": "assistant", "content": turns[-1]["content"]}]
        rows.append({"prompt": prompt, "completion": completion, **meta})
    if bad:
        raise InvalidDatasetError(f"Hugging Face {form}", bad)
    if not rows:
        columns = ["messages"] if form == "messages" else ["prompt", "completion"]
        return Dataset.from_dict(
            {k: [] for k in [*columns, "problem_id", "agent", "role", "subset"]}
        )
    return Dataset.from_list(rows)


def _hf_turn(m: Mapping[str, Any]) -> dict[str, Any]:
    weight = m.get("weight", 1) if m["role"] == "assistant" else None
    return {"role": m["role"], "content": m["content"], "weight": weight}


def _is_trained(m: Mapping[str, Any]) -> bool:
    return bool(m["role"] == "assistant" and m.get("weight", 1) == 1)


# Shared ----------------------------------------------------------------------------------------


def _check_lines(
    source: Source, problems: Callable[[Any], list[str]]
) -> tuple[list[ValidationIssue], int]:
    """Issues of every line (JSON text from a file, or records), and how many lines there were."""
    if isinstance(source, str | Path):
        lines: Iterable[Any] = _parsed_lines(Path(source))
    else:
        lines = source
    issues: list[ValidationIssue] = []
    n = 0
    for n, record in enumerate(lines, start=1):
        if isinstance(record, _Unparsable):
            issues.append(ValidationIssue(n, record.reason))
            continue
        issues += [ValidationIssue(n, reason) for reason in problems(record)]
    return issues, n


@dataclass(frozen=True)
class _Unparsable:
    reason: str


def _parsed_lines(path: Path) -> Iterable[Any]:
    with path.open(encoding="utf-8") as f:
        for text in f:
            if not text.strip():
                yield _Unparsable("empty line")
                continue
            try:
                yield json.loads(text)
            except json.JSONDecodeError as exc:
                yield _Unparsable(f"not valid JSON ({exc.msg} at column {exc.colno})")


def _too_few(count: int, minimum: int, provider: str) -> list[ValidationIssue]:
    if count >= minimum:
        return []
    return [
        ValidationIssue(
            None, f"{count} example(s); {provider} needs at least {minimum} to start a job"
        )
    ]


def _write_valid(
    path: str | Path, records: list[dict[str, Any]], issues: list[ValidationIssue], fmt: str
) -> Path:
    path = Path(path)
    if issues:
        raise InvalidDatasetError(fmt, issues, f" for {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    os.replace(tmp, path)
    return path


# A whole run's datasets ---------------------------------------------------------------------

FORMATS: tuple[str, ...] = ("openai", "vertex", "hf")


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_datasets` wrote, and the files it refused with their issues."""

    written: list[Path]
    failed: dict[Path, list[ValidationIssue]]
    skipped: list[str] = field(default_factory=list)
    """Datasets with no example, left out (``skip_empty``): their agents keep their models."""

    @property
    def ok(self) -> bool:
        return not self.failed


def export_datasets(
    datasets: Iterable[AgentDataset],
    out_dir: str | Path,
    *,
    formats: Sequence[str] = FORMATS,
    min_examples: int | None = None,
    count_tokens: Counter = estimate_tokens,
    skip_empty: bool = False,
) -> ExportResult:
    """Every dataset in every format under ``out_dir`` as ``<agent>-<role>.<format>…``.

    ``hf`` saves two ``datasets`` directories, ``.hf-messages`` and ``.hf-prompt-completion``.
    ``min_examples``: overrides each provider's minimum (e.g. 1 for a smoke test). Every file
    of an earlier export of the same dataset (any format) is removed first, so the directory
    only ever holds the latest settings, and a dataset that fails validation leaves nothing
    stale behind for a tuner to upload. ``skip_empty``: a dataset with no example is listed
    in ``skipped`` instead of failing every format's minimum.
    """
    if unknown := sorted(set(formats) - set(FORMATS)):
        raise ValueError(f"unknown format(s) {unknown}; choose from {list(FORMATS)}.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    failed: dict[Path, list[ValidationIssue]] = {}
    skipped: list[str] = []
    limits: dict[str, Any] = {"count_tokens": count_tokens}
    if min_examples is not None:
        limits["min_examples"] = min_examples
    for dataset in datasets:
        for suffixes in _SUFFIXES.values():  # every format: no stale file of other settings
            for suffix in suffixes:
                _remove(out / (dataset.name + suffix))
        if skip_empty and not dataset.examples:
            skipped.append(dataset.name)
            continue
        for fmt in formats:
            for suffix in _SUFFIXES[fmt]:
                path = out / (dataset.name + suffix)
                try:
                    _write(dataset, suffix, path, limits)
                except InvalidDatasetError as exc:
                    failed[path] = exc.issues
                    continue
                written.append(path)
    return ExportResult(written, failed, skipped)


_SUFFIXES = {
    "openai": (".openai.jsonl",),
    "vertex": (".vertex.jsonl",),
    "hf": (".hf-messages", ".hf-prompt-completion"),
}


def _write(dataset: AgentDataset, suffix: str, path: Path, limits: dict[str, Any]) -> None:
    if suffix == ".openai.jsonl":
        to_openai_jsonl(dataset.examples, path, **limits)
    elif suffix == ".vertex.jsonl":
        to_vertex_jsonl(dataset.examples, path, **limits)
    else:
        form: HFForm = "messages" if suffix == ".hf-messages" else "prompt_completion"
        data = to_hf_dataset(dataset.examples, form)
        with _quiet_datasets():
            data.save_to_disk(str(path))


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    """No progress bar per tiny file; the caller prints one summary."""
    from datasets.utils import (
        are_progress_bars_disabled,
        disable_progress_bars,
        enable_progress_bars,
    )

    was_disabled = are_progress_bars_disabled()
    disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            enable_progress_bars()


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
