"""Self-adaptation (Transformer²'s two-pass inference): a first pass picks, per problem, which
SVF expert answers it; the second pass answers with that expert.

Three strategies, as in the paper:

- :class:`PromptDispatch`: the base model is asked which of the experts' domains the question
  belongs to, or "other"; "other" or a reply naming no domain means the base weights.
- :class:`ClassifierDispatch`: the same question, answered by an SVF expert trained with
  REINFORCE to classify (:class:`DomainClassification` is that training task).
- :class:`FixedExpert`: one expert for every problem, e.g. the mixture that the few-shot
  cross-entropy method found for a task (:func:`~mafl_graph.svf.cem.few_shot_cem`).

:class:`SelfAdaptiveChatModel` is the two passes as one LangChain chat model, for any app. In
a debate graph whose agents are such models, the first pass is its own node (``adapt``): it
records each agent's :class:`Choice` in the debate state, and every later call of that agent
carries the choice in its metadata (``expert``), so traces, datasets and LangSmith show which
expert answered, and the model skips its own first pass.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import ConfigDict

from mafl_graph.tasks.base import Problem

BASE = "base"
"""The choice of no expert: the base weights."""
OTHER = "other"
"""The dispatch answer for a question of none of the experts' domains."""
EXPERT_KEY = "expert"
"""Run metadata key holding the chosen expert's label (or :data:`BASE`) of a model call."""
STRATEGY_KEY = "expert_strategy"

DOMAIN_PROMPT = (
    "Which kind of problem is the question below? Choose one of: {labels}.\n"
    "Answer with that one word only.\n\nQuestion: {question}"
)
"""The dispatch question (Transformer²'s prompt-engineering strategy); ``other`` is always
among the labels offered."""

_LABEL = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class Choice:
    """Which expert answers a problem, and why."""

    expert: str
    """An expert's label, or :data:`BASE`."""
    adapter: str | None
    """That expert's directory; None for the base."""
    strategy: str
    reply: str | None = None
    """The first pass's reply, where a model was asked."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "expert": self.expert,
            "adapter": self.adapter,
            "strategy": self.strategy,
            "reply": self.reply,
        }


class ExpertLibrary:
    """Named SVF experts of one base model: ``{label: expert directory}``.

    Labels are domain names (a letter, then letters, digits, ``_.-``); ``base`` and ``other``
    are reserved. Every expert is checked on construction, without loading a model: its
    directory holds an expert, and all were made for the same base weights and targets.
    """

    def __init__(self, experts: Mapping[str, str | Path]) -> None:
        if not experts:
            raise ValueError(
                "No SVF experts were given: self-adaptation chooses among experts, so give at "
                "least one (label=directory), e.g. from `mafl svf train`"
            )
        self.paths: dict[str, str] = {}
        configs: dict[str, dict[str, Any]] = {}
        for label, directory in experts.items():
            if not _LABEL.match(label) or label.lower() in (BASE, OTHER):
                raise ValueError(
                    f"Expert label {label!r} is not a usable domain name: use a word of letters, "
                    f"digits and _.- starting with a letter, other than {BASE!r} and {OTHER!r}"
                )
            path = Path(directory).expanduser()
            configs[label] = _expert_config(label, path)
            self.paths[label] = str(path)
        first, *rest = configs.items()
        for label, config in rest:
            for key, what in (("base", "base model"), ("targets", "targets"), ("layers", "layers")):
                if config.get(key) != first[1].get(key):
                    raise ValueError(
                        f"Expert {label!r} was made for other {what} than expert {first[0]!r} "
                        f"({config.get(key)} against {first[1].get(key)}): the experts of one "
                        "library must share the base model and the matrices they rescale"
                    )
        self.base_name: str = first[1]["base"]["name"]

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self.paths)

    def adapter(self, label: str) -> str | None:
        """The directory of ``label``'s expert; None for :data:`BASE`."""
        if label == BASE:
            return None
        if label not in self.paths:
            raise ValueError(
                f"Unknown expert label {label!r}; this library has {', '.join(self.labels)} "
                f"(and {BASE!r} for the base weights)"
            )
        return self.paths[label]

    def choice(self, label: str, strategy: str, reply: str | None = None) -> Choice:
        return Choice(label, self.adapter(label), strategy, reply)

    def __repr__(self) -> str:
        return f"ExpertLibrary({self.paths!r})"


def _expert_config(label: str, path: Path) -> dict[str, Any]:
    from mafl_graph.svf.expert import CONFIG_FILE

    config_path = path / CONFIG_FILE
    if not config_path.is_file():
        raise ValueError(
            f"Expert {label!r}: {path} is not an SVF expert directory (no {CONFIG_FILE}); "
            "pass a directory that `mafl svf train` or the svf tuner wrote"
        )
    try:
        config = json.loads(config_path.read_text())
        config["base"]["name"]  # noqa: B018 - every expert's config names its base
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(
            f"Expert {label!r}: {config_path} is not a readable expert config ({error})"
        ) from None
    return dict(config)


def parse_domain(reply: str, labels: Sequence[str]) -> str | None:
    """The label the reply names first (whole words, any case), or None for "other" or a
    reply naming none; a reply naming several labels counts as the first one named."""
    candidates = [*labels, OTHER]
    found: list[tuple[int, int, str]] = []
    for label in candidates:
        match = re.search(rf"(?<![A-Za-z0-9]){re.escape(label)}(?![A-Za-z0-9])", reply, re.I)
        if match:
            found.append((match.start(), -len(label), label))
    if not found:
        return None
    label = min(found)[2]
    return None if label == OTHER else label


def dispatch_prompt(question: str, labels: Sequence[str], template: str = DOMAIN_PROMPT) -> str:
    return template.format(labels=", ".join([*labels, OTHER]), question=question)


@runtime_checkable
class Dispatcher(Protocol):
    """Picks the expert of one question (the first pass)."""

    library: ExpertLibrary
    strategy: str

    def choose(self, question: str) -> Choice: ...

    async def achoose(self, question: str) -> Choice: ...


class PromptDispatch:
    """Asks a model (the base, greedily) which domain a question belongs to."""

    strategy = "prompt"

    def __init__(
        self,
        library: ExpertLibrary,
        *,
        model_path: str = "smollm2",
        adapter: str | Path | None = None,
        template: str = DOMAIN_PROMPT,
        max_new_tokens: int = 12,
    ) -> None:
        from mafl_graph.local import LocalChatModel

        self.library = library
        self.template = template
        self.model = LocalChatModel(
            model_path=model_path,
            temperature=0.0,
            max_new_tokens=max_new_tokens,
            adapter=None if adapter is None else str(adapter),
        )

    def _messages(self, question: str) -> list[BaseMessage]:
        return [HumanMessage(dispatch_prompt(question, self.library.labels, self.template))]

    def _choice(self, reply: str) -> Choice:
        label = parse_domain(reply, self.library.labels) or BASE
        return self.library.choice(label, self.strategy, reply)

    def choose(self, question: str) -> Choice:
        return self._choice(self.model.invoke(self._messages(question)).text)

    async def achoose(self, question: str) -> Choice:
        return self._choice((await self.model.ainvoke(self._messages(question))).text)

    def choose_many(self, questions: Sequence[str], *, concurrency: int = 16) -> list[Choice]:
        replies = self.model.batch(
            [self._messages(q) for q in questions],  # type: ignore[arg-type]
            config={"max_concurrency": concurrency},
        )
        return [self._choice(r.text) for r in replies]


class ClassifierDispatch(PromptDispatch):
    """The dispatch question answered by a classification expert
    (:class:`DomainClassification`, trained with REINFORCE) instead of the base."""

    strategy = "classifier"

    def __init__(
        self,
        library: ExpertLibrary,
        classifier: str | Path,
        *,
        model_path: str = "smollm2",
        template: str = DOMAIN_PROMPT,
        max_new_tokens: int = 12,
    ) -> None:
        _expert_config("classifier", Path(classifier).expanduser())
        super().__init__(
            library,
            model_path=model_path,
            adapter=classifier,
            template=template,
            max_new_tokens=max_new_tokens,
        )


class FixedExpert:
    """One expert for every question: the few-shot strategy, whose expert (a CEM mixture)
    is chosen once per task, not per problem."""

    def __init__(self, library: ExpertLibrary, label: str, *, strategy: str = "cem") -> None:
        self.library = library
        self.strategy = strategy
        self._choice = library.choice(label, strategy)

    def choose(self, question: str) -> Choice:
        return self._choice

    async def achoose(self, question: str) -> Choice:
        return self._choice


class SelfAdaptiveChatModel(BaseChatModel):
    """A local chat model that answers with the expert its dispatcher picks for the question.

    The question is the last human message. A call whose metadata already names the expert
    (``expert``: a label or ``base``; the debate graph's ``adapt`` node does this) uses it
    without asking again. The reply's ``response_metadata`` holds the choice.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    dispatcher: Any
    model_path: str = "smollm2"
    temperature: float = 0.7
    top_p: float = 0.95
    max_new_tokens: int = 256
    seed: int | None = 0
    dtype: str = "float32"

    @property
    def _llm_type(self) -> str:
        return "mafl-self-adaptive"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model_path": self.model_path,
            "strategy": self.dispatcher.strategy,
            "experts": self.dispatcher.library.paths,
        }

    @property
    def library(self) -> ExpertLibrary:
        return self.dispatcher.library  # type: ignore[no-any-return]

    def expert_model(self, choice: Choice) -> BaseChatModel:
        from mafl_graph.local import LocalChatModel

        return LocalChatModel(
            model_path=self.model_path,
            temperature=self.temperature,
            top_p=self.top_p,
            max_new_tokens=self.max_new_tokens,
            seed=self.seed,
            dtype=self.dtype,
            adapter=choice.adapter,
        )

    def _given(self, run_manager: Any) -> Choice | None:
        metadata = run_manager.metadata if run_manager is not None else {}
        label = metadata.get(EXPERT_KEY)
        if not isinstance(label, str):
            return None
        strategy = metadata.get(STRATEGY_KEY) or self.dispatcher.strategy
        return self.library.choice(label, str(strategy))

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        choice = self._given(run_manager) or self.dispatcher.choose(question_of(messages))
        reply = self.expert_model(choice).invoke(messages, stop=stop, **kwargs)
        return _result(reply, choice)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        choice = self._given(run_manager) or await self.dispatcher.achoose(question_of(messages))
        reply = await self.expert_model(choice).ainvoke(messages, stop=stop, **kwargs)
        return _result(reply, choice)


def is_self_adaptive(model: Any) -> bool:
    """Whether ``model`` picks an expert per problem (and so wants the graph's adapt node)."""
    return isinstance(getattr(model, "dispatcher", None), Dispatcher)


def question_of(messages: Sequence[BaseMessage]) -> str:
    """The question a conversation asks: its last human message."""
    for message in reversed(messages):
        if message.type == "human":
            return message.text
    raise ValueError("A self-adaptive model needs a human message to pick an expert for")


def _result(reply: BaseMessage, choice: Choice) -> ChatResult:
    message = AIMessage(
        content=reply.content,
        usage_metadata=getattr(reply, "usage_metadata", None),
        response_metadata={
            **getattr(reply, "response_metadata", {}),
            EXPERT_KEY: choice.expert,
            "adaptation": choice.as_dict(),
        },
    )
    return ChatResult(generations=[ChatGeneration(message=message)])


# The classification task ------------------------------------------------------------------


@dataclass(frozen=True)
class DomainClassification:
    """Which domain a question is: the task a classification expert is trained on with
    REINFORCE (:func:`~mafl_graph.svf.train_reinforce`), graded by exact label.

    ``source`` is a corpus whose problems know their domain (:class:`~mafl_graph.tasks.Mixed`:
    ``domain_of``); a domain not among ``labels`` is answered ``other``.
    """

    source: Any
    labels: tuple[str, ...]
    template: str = DOMAIN_PROMPT
    name: str = field(default="domain-classification")

    def __post_init__(self) -> None:
        if not hasattr(self.source, "domain_of"):
            raise TypeError(
                f"{type(self.source).__name__} does not tell a problem's domain (domain_of); "
                "train a classifier on a mixed corpus (task 'mixed')"
            )
        if not self.labels:
            raise ValueError("A domain classification needs at least one label")

    def load(self, split: str, n: int | None = None) -> list[Problem]:
        found = []
        for problem in self.source.load(split, n):
            domain = self.source.domain_of(problem)
            label = domain if domain in self.labels else OTHER
            found.append(Problem(problem.id, problem.question, label))
        return found

    def question_prompt(self, problem: Problem) -> str:
        return dispatch_prompt(problem.question, self.labels, self.template)

    def extract_answer(self, text: str) -> str | None:
        return parse_domain(text, self.labels) or (OTHER if re.search(OTHER, text, re.I) else None)

    def is_equivalent(self, answer: str, reference: str) -> bool:
        return answer == reference


def routing_accuracy(chosen: Sequence[str], domains: Sequence[str], labels: Sequence[str]) -> float:
    """The share of problems routed to their own domain's expert (``chosen``: the label each
    problem was routed to); a problem of a domain with no expert among ``labels`` is routed
    right to the base."""
    right = sum(c == (d if d in labels else BASE) for c, d in zip(chosen, domains, strict=True))
    return right / len(chosen) if chosen else 0.0
