"""The debate's nodes: generate, summarize, critique (one model call each) and vote.

Every model call is its own graph task (fanned out with ``Send``), so a checkpointer saves
each answer the moment it arrives and a killed run never pays for a finished call twice.
A ``Send`` carries only whose turn it is; the node reads the state it needs from the graph's
channels (see :class:`AgentTurn` for why).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from langchain_core.callbacks import BaseCallbackHandler, BaseCallbackManager
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage
from langchain_core.runnables import Runnable, RunnableConfig, RunnableLambda
from langchain_core.runnables.config import merge_configs
from langgraph.errors import GraphBubbleUp
from langgraph.types import Command, Send

from mafl_graph.debate.journal import JOURNAL_KEY, ReplyJournal
from mafl_graph.debate.prompts import (
    DebatePrompts,
    format_answers,
    merge_prompts,
    system_message,
)
from mafl_graph.debate.state import (
    AgentTurn,
    ChatTurn,
    DebateRecord,
    DebateState,
    ResponseDelta,
    Role,
    completed_round,
    latest_responses,
)
from mafl_graph.grading import Verdict, majority_vote
from mafl_graph.models import CONTINUED_KEY, EmptyReplyError, model_label
from mafl_graph.redact import redact, redact_value, scrub_exception
from mafl_graph.society import Society
from mafl_graph.tasks.base import Problem, Task, grade_answer, task_for

try:  # reads the channels from inside a node reached by Send (LangGraph's own edges use it)
    from langgraph.pregel._read import ChannelRead
except ImportError:  # pragma: no cover - depends on the installed langgraph
    ChannelRead = None  # type: ignore[assignment,misc]

_STATE_KEYS = ["problem_id", "question", "reference", "responses", "summaries", "adaptation"]


@dataclass(frozen=True)
class _Call:
    """One planned model call: who makes it, with what messages."""

    model: BaseChatModel
    history: list[ChatTurn]
    """The agent's conversation so far (its round-``follows`` messages and reply), or none."""
    prompt: list[ChatTurn]
    role: Role
    agent: int
    round: int
    problem_id: str
    task: Task | None = None
    """The task that reads the answer out of the reply (None for a summary: it states none)."""
    follows: int | None = None
    choice: dict[str, Any] | None = None
    """The agent's self-adaptation choice for this problem (see :meth:`DebateNodes.adapt`)."""

    @property
    def messages(self) -> list[ChatTurn]:
        return self.history + self.prompt


class DebateNodes:
    """The node functions of one debate graph, bound to its society, task and settings."""

    def __init__(
        self,
        society: Society,
        task: Task,
        *,
        rounds: int,
        summarize: bool,
        prompts: DebatePrompts | None,
        seed: int,
        output_key: str | None = None,
    ) -> None:
        self.society = society
        self.output_key = output_key
        self.task = task
        self.rounds = rounds
        self.summarize_answers = summarize
        self.explicit_prompts = prompts
        self.seed = seed
        self.generate = self._model_node("generate", self._plan_generate, _append_response)
        self.summarize = self._model_node("summarize", self._plan_summary, _forward_summary)
        self.critique = self._model_node("critique", self._plan_critique, _append_response)

    # Routing ---------------------------------------------------------------------------

    def fan_out(self, state: DebateState) -> list[Send]:
        """Round 1: every agent answers the question independently.

        The graph's entry, so the input is checked here: a host graph whose state lacks a key
        gets an error naming it, not a ``KeyError`` from inside a model node.
        """
        check_input(state)
        return [self._turn("generate", state, agent, 1) for agent in range(len(self.society))]

    def next_round(self, state: DebateState) -> Command[Any]:
        """After all agents answered a round: start the next one, or vote after the last."""
        done = completed_round(state)
        if done >= self.rounds:
            return Command(goto="vote")
        node = "summarize" if self.summarize_answers else "critique"
        return Command(
            goto=[self._turn(node, state, agent, done + 1) for agent in range(len(self.society))]
        )

    # Self-adaptation -------------------------------------------------------------------

    def _dispatchers(self) -> dict[int, Any]:
        """Each self-adapting agent's dispatcher (its generator's, else its critic's)."""
        from mafl_graph.svf.adapt import is_self_adaptive

        found = {}
        for index, agent in enumerate(self.society.agents):
            for model in (agent.generator, agent.critic):
                if is_self_adaptive(model):
                    found[index] = model.dispatcher  # type: ignore[attr-defined]
                    break
        return found

    @property
    def adapts(self) -> bool:
        """Whether any agent picks an expert per problem (the graph then has an adapt node)."""
        return bool(self._dispatchers())

    def _adapted(self, choices: dict[int, Any]) -> dict[str, Any]:
        return {"adaptation": {str(agent): c.as_dict() for agent, c in choices.items()}}

    def adapt(self, state: DebateState) -> dict[str, Any]:
        """The first pass: each self-adapting agent's expert for this problem, asked once per
        dispatcher (agents sharing one share its answer) and kept in the state."""
        check_input(state)
        asked: dict[int, Any] = {}
        choices = {}
        for agent, dispatcher in self._dispatchers().items():
            if id(dispatcher) not in asked:
                asked[id(dispatcher)] = dispatcher.choose(state["question"])
            choices[agent] = asked[id(dispatcher)]
        return self._adapted(choices)

    async def aadapt(self, state: DebateState) -> dict[str, Any]:
        check_input(state)
        asked: dict[int, Any] = {}
        choices = {}
        for agent, dispatcher in self._dispatchers().items():
            if id(dispatcher) not in asked:
                asked[id(dispatcher)] = await dispatcher.achoose(state["question"])
            choices[agent] = asked[id(dispatcher)]
        return self._adapted(choices)

    def adapt_node(self) -> Runnable:
        """:meth:`adapt` as a node, sync and async."""
        return _node_runnable(self.adapt, self.aadapt, "adapt")

    @staticmethod
    def _choice(state: DebateState, agent: int) -> dict[str, Any] | None:
        return (state.get("adaptation") or {}).get(str(agent))

    @staticmethod
    def _turn(node: str, state: DebateState, agent: int, round_: int) -> Send:
        if ChannelRead is None:  # the node cannot read the channels: it gets the state
            return Send(node, AgentTurn(agent=agent, round=round_, state=state))
        return Send(node, AgentTurn(agent=agent, round=round_))

    # The task and wording of each problem ------------------------------------------------

    def _task(self, state: DebateState) -> Task:
        """The task that asks and grades this debate's problem (a mixed corpus's source task)."""
        problem = Problem(state["problem_id"], state["question"], state.get("reference"))
        return task_for(self.task, problem)

    def _prompts(self, state: DebateState) -> DebatePrompts:
        """The problem's task's prompts (code asks for a function where maths asks for a
        boxed answer), else the paper's; each field the graph's prompts set to other than the
        paper's wins, so an instruction given to a mixed corpus keeps each task's wording."""
        own = getattr(self._task(state), "prompts", None) or DebatePrompts()
        if self.explicit_prompts is None:
            return own
        return merge_prompts(own, self.explicit_prompts)

    # Planning the model calls ----------------------------------------------------------

    def _plan_generate(self, turn: AgentTurn, state: DebateState) -> _Call:
        agent = turn["agent"]
        problem = Problem(state["problem_id"], state["question"], state.get("reference"))
        task = task_for(self.task, problem)
        question = [ChatTurn(role="user", content=task.question_prompt(problem))]
        # The later rounds continue this conversation, so they keep the system message too.
        system = system_message(self._prompts(state), self.society.agents[agent].role)
        opening = [ChatTurn(role="system", content=system)] if system else []
        return _Call(
            model=self.society.agents[agent].generator,
            history=[],
            prompt=opening + question,
            role="generator",
            agent=agent,
            round=1,
            problem_id=state["problem_id"],
            task=task,
            choice=self._choice(state, agent),
        )

    def _plan_summary(self, turn: AgentTurn, state: DebateState) -> _Call:
        others = self._others(turn, state)
        prompts = self._prompts(state)
        prompt = prompts.summarize.format_messages(answers=format_answers(prompts, others))
        return _Call(
            model=self.society.summarizer,
            history=[],
            prompt=_to_turns(prompt),
            role="summarizer",
            agent=turn["agent"],
            round=turn["round"],
            problem_id=state["problem_id"],
        )

    def _plan_critique(self, turn: AgentTurn, state: DebateState) -> _Call:
        agent, round_ = turn["agent"], turn["round"]
        own = next(r for r in latest_responses(state, round_ - 1) if r["agent"] == agent)
        summary = self._summary(turn, state)
        prompts = self._prompts(state)
        if summary is not None:
            prompt = prompts.debate_with_summary.format_messages(summary=summary)
        else:
            answers = format_answers(prompts, self._others(turn, state))
            prompt = prompts.debate.format_messages(answers=answers)
        return _Call(
            model=self.society.agents[agent].critic,
            history=[*own["messages"], ChatTurn(role="assistant", content=own["text"])],
            prompt=_to_turns(prompt),
            role="critic",
            agent=agent,
            round=round_,
            problem_id=state["problem_id"],
            task=self._task(state),
            follows=round_ - 1,
            choice=self._choice(state, agent),
        )

    def _summary(self, turn: AgentTurn, state: DebateState) -> str | None:
        """The summary this agent's critique is given, if the debate summarizes."""
        if "state" in turn:  # a turn that carries its state carries its summary too
            return turn.get("summary")
        if not self.summarize_answers:
            return None
        return next(
            s["text"]
            for s in state.get("summaries", [])
            if s["agent"] == turn["agent"] and s["round"] == turn["round"]
        )

    @staticmethod
    def _others(turn: AgentTurn, state: DebateState) -> list[str]:
        """The other agents' latest answers; an agent never sees its own answer as advice."""
        previous = latest_responses(state, turn["round"] - 1)
        return [r["text"] for r in previous if r["agent"] != turn["agent"]]

    # Making the calls ------------------------------------------------------------------

    def _model_node(
        self,
        name: str,
        plan: Callable[[AgentTurn, DebateState], _Call],
        finish: Callable[[AgentTurn, ResponseDelta], Any],
    ) -> Runnable:
        """A node that makes one planned call, runnable both sync and async."""

        def run(turn: AgentTurn, config: RunnableConfig) -> Any:
            call = plan(turn, _state(turn, config))
            sent = _as_input(call)
            journal = _Journaled.of(call, sent, config)
            kept = journal.reply() if journal else None
            try:
                reply = kept or call.model.invoke(sent, self._call_config(call, config))
            except Exception as exc:  # LangGraph records it in the checkpoint: no keys there
                _failed(call, exc)
                raise
            return finish(turn, self._accepted(call, reply, journal, kept))

        async def arun(turn: AgentTurn, config: RunnableConfig) -> Any:
            call = plan(turn, _state(turn, config))
            sent = _as_input(call)
            journal = _Journaled.of(call, sent, config)
            kept = journal.reply() if journal else None
            try:
                reply = kept or await call.model.ainvoke(sent, self._call_config(call, config))
            except Exception as exc:
                _failed(call, exc)
                raise
            return finish(turn, self._accepted(call, reply, journal, kept))

        return _node_runnable(run, arun, name)

    def _accepted(
        self,
        call: _Call,
        reply: BaseMessage,
        journal: _Journaled | None,
        kept: BaseMessage | None,
    ) -> ResponseDelta:
        """The reply as a response, journaled first if it is new (an empty reply raises here,
        and is retried, before anything keeps it)."""
        response = self._response(call, reply)
        if journal is not None and kept is None:
            journal.keep(reply)
        return response

    def _call_config(self, call: _Call, config: RunnableConfig) -> RunnableConfig:
        """LangSmith-ready name, tags and metadata for one model call."""
        inherited = config.get("metadata") or {}
        metadata = {
            "agent": call.agent,
            "role": call.role,
            "round": call.round,
            "problem_id": call.problem_id,
            # The agent's next round appends this reply to these messages (see _plan_critique).
            CONTINUED_KEY: call.role != "summarizer" and call.round < self.rounds,
        }
        tags = [f"role:{call.role}", f"agent:{call.agent}", f"round:{call.round}"]
        if call.choice is not None:
            from mafl_graph.svf.adapt import EXPERT_KEY, STRATEGY_KEY

            metadata[EXPERT_KEY] = call.choice["expert"]
            metadata[STRATEGY_KEY] = call.choice["strategy"]
            tags.append(f"expert:{call.choice['expert']}")
        if "iteration" in inherited:
            tags.append(f"iteration:{inherited['iteration']}")
        run_name = "summarizer" if call.role == "summarizer" else f"{call.role}[{call.agent}]"
        merged = merge_configs(config, {"run_name": run_name, "tags": tags, "metadata": metadata})
        # The model reports a failure to the callbacks before this node sees it: the redacting
        # handler goes first, so no tracer uploads a key that the provider's error echoes.
        merged["callbacks"] = redacting_callbacks(merged.get("callbacks"))
        return merged

    def _response(self, call: _Call, reply: BaseMessage) -> ResponseDelta:
        """The call's response as the state stores it: its new turns, not its history."""
        text = reply.text if isinstance(reply.text, str) else str(reply.content)
        if not text.strip():
            # Nothing to grade and nothing to debate: the others would be shown a blank answer.
            # Raised (and retried by the node's policy) rather than recorded as a wrong answer.
            raise EmptyReplyError(f"{_where(call)} returned an empty reply")
        answer = None if call.task is None else call.task.extract_answer(text)
        response = ResponseDelta(
            agent=call.agent,
            role=call.role,
            round=call.round,
            prompt=call.prompt,
            text=text,
            answer=answer,
            model=model_label(call.model),
        )
        if call.follows is not None:
            response["follows"] = call.follows
        if call.choice is not None:
            response["expert"] = call.choice["expert"]
        usage = getattr(reply, "usage_metadata", None)
        if usage:
            response["tokens"] = int(usage.get("total_tokens", 0))
        return response

    # Voting ------------------------------------------------------------------------------

    def vote(self, state: DebateState) -> dict[str, Any]:
        """Majority over the final round, clustered by the task's equivalence.

        ``correct`` is None where there is no reference or grading the consensus ran out of
        time; ``undecided`` counts the grades (clustering included) that ran out of time.
        """
        final = latest_responses(state, self.rounds)
        task = self._task(state)
        vote = majority_vote(
            [r["answer"] for r in final],
            equivalent=lambda answer, other: grade_answer(task, answer, other),
            seed=f"{self.seed}:{state['problem_id']}",
        )
        reference = state.get("reference")
        correct = None
        undecided = vote.undecided
        if reference is not None:
            verdict = grade_answer(task, vote.answer, reference)
            undecided += verdict is Verdict.UNDECIDED
            correct = None if verdict is Verdict.UNDECIDED else verdict is Verdict.EQUIVALENT
        verdict_keys: dict[str, Any] = {
            "consensus": vote.answer,
            "consensus_fraction": vote.fraction,
            "correct": correct,
            "undecided": undecided,
        }
        if self.output_key is None:
            return verdict_keys
        record = DebateRecord(
            problem_id=state["problem_id"],
            consensus=vote.answer,
            consensus_fraction=vote.fraction,
            correct=correct,
            undecided=undecided,
            responses=list(state.get("responses", [])),
            summaries=list(state.get("summaries", [])),
        )
        return {**verdict_keys, self.output_key: record}


@dataclass(frozen=True)
class _Journaled:
    """One call's place in the run's reply journal (see :mod:`mafl_graph.debate.journal`)."""

    journal: ReplyJournal
    thread: str
    key: str

    @classmethod
    def of(
        cls, call: _Call, sent: list[dict[str, Any]], config: RunnableConfig
    ) -> _Journaled | None:
        configurable = config.get("configurable") or {}
        journal = configurable.get(JOURNAL_KEY)
        if not isinstance(journal, ReplyJournal):
            return None
        key = ReplyJournal.call_key(call.role, call.agent, call.round, sent)
        return cls(journal, str(configurable.get("thread_id")), key)

    def reply(self) -> BaseMessage | None:
        return self.journal.get(self.thread, self.key)

    def keep(self, reply: BaseMessage) -> None:
        self.journal.put(self.thread, self.key, reply)


def _node_runnable(run: Callable[..., Any], arun: Callable[..., Any], name: str) -> Runnable:
    """A node with native sync and async paths (graph.invoke and graph.ainvoke each use theirs).

    LangGraph's own RunnableCallable is what ``add_node`` makes of a plain function; it inspects
    the signature once, where RunnableLambda does so on every call (a large share of the
    graph's own overhead per model call: benchmarks/orchestration_overhead.py). It is internal,
    so fall back to RunnableLambda if it ever moves.
    """
    try:
        from langgraph._internal._runnable import RunnableCallable
    except ImportError:  # pragma: no cover - depends on the installed langgraph
        return RunnableLambda(run, afunc=arun, name=name)
    # Untraced: LangGraph traces the node itself under the same name, so a traced runnable
    # would be a second, redundant chain run around every model call.
    return RunnableCallable(run, arun, name=name, trace=False)


def check_input(state: DebateState) -> None:
    """Refuse a debate input without a problem id or a question, naming what is missing."""
    missing = [key for key in ("problem_id", "question") if not state.get(key)]
    if missing:
        given = sorted(k for k, v in state.items() if v not in (None, "", []))
        raise ValueError(
            f"The debate's input has no {' and no '.join(missing)} (it needs problem_id and "
            f"question; reference is optional); it was given {given or 'nothing'}. A host "
            "graph passes them under these names in its state, or calls the debate with them."
        )


def _where(call: _Call) -> str:
    """Which call of which debate: the model, its role, agent, round and problem."""
    return (
        f"{model_label(call.model)} ({call.role} of agent {call.agent}, round {call.round}, "
        f"problem {call.problem_id})"
    )


_CALL = re.compile(r" \((?:generator|critic|summarizer) of agent \d+, round \d+, problem [^()]*\)")


def without_call(error: str) -> str:
    """``error`` without the call it names (see :func:`_where`): the same reason for every call
    that failed alike, e.g. to report a wrong key once for a whole run."""
    return _CALL.sub("", error, count=1)


def _failed(call: _Call, exc: BaseException) -> None:
    """Clean a failed call's exception of keys and say which call failed, in its message.

    In place, so the type (which the retry policy reads) is kept; once per exception.
    """
    scrub_exception(exc)
    if isinstance(exc, GraphBubbleUp) or getattr(exc, "_mafl_where", False):
        return
    where = _where(call)
    if exc.args and isinstance(exc.args[0], str):
        exc.args = (f"{where}: {exc.args[0]}", *exc.args[1:])
    elif not exc.args:
        exc.args = (where,)
    message = getattr(exc, "message", None)
    if isinstance(message, str) and not message.startswith(where):
        with contextlib.suppress(AttributeError):
            exc.message = f"{where}: {message}"  # type: ignore[attr-defined]
    with contextlib.suppress(AttributeError):
        exc._mafl_where = True  # type: ignore[attr-defined]


def _state(turn: AgentTurn, config: RunnableConfig) -> DebateState:
    """The debate state as of this node's step: read from the channels, or carried by the turn."""
    if "state" in turn:
        return turn["state"]
    return ChannelRead.do_read(config, select=_STATE_KEYS)  # type: ignore[no-any-return]


def _append_response(turn: AgentTurn, response: ResponseDelta) -> dict[str, list[ResponseDelta]]:
    return {"responses": [response]}


def _forward_summary(turn: AgentTurn, summary: ResponseDelta) -> Command[Any]:
    """Record the summary and hand it straight to the same agent's critique, which reads it
    from the state (the summary is in it by the critique's step)."""
    critique = AgentTurn(agent=turn["agent"], round=turn["round"])
    if "state" in turn:
        critique["state"], critique["summary"] = turn["state"], summary["text"]
    return Command(update={"summaries": [summary]}, goto=Send("critique", critique))


def _to_turns(messages: list[BaseMessage]) -> list[ChatTurn]:
    roles = {"human": "user", "ai": "assistant", "system": "system"}
    return [ChatTurn(role=roles[m.type], content=m.text) for m in messages]  # type: ignore[typeddict-item]


def _as_input(call: _Call) -> list[dict[str, Any]]:
    return [dict(turn) for turn in call.messages]


class RedactingCallbackHandler(BaseCallbackHandler):
    """Cleans a failed model call's exception before any other handler (a tracer) sees it.

    A chat model reports its error to the callbacks inside ``invoke``, before the caller's
    ``except`` can clean it; LangChain's tracer turns it into the run's uploaded ``error``
    there and then. Handlers run in list order, inline ones first, so this one goes at the
    front (:func:`redacting_callbacks`) and runs inline.
    """

    run_inline = True
    raise_error = False

    def on_chat_model_start(
        self, serialized: dict[str, Any], messages: list[list[BaseMessage]], **kwargs: Any
    ) -> None:
        """Nothing to do; defined so that LangChain does not turn every prompt into one
        string for ``on_llm_start``, as it does for a handler without it."""

    def on_llm_error(self, error: BaseException, **kwargs: Any) -> None:
        scrub_exception(error)
        # What the model made of the failed response (langchain-core keeps the provider's
        # error body in its ``response_metadata``); the tracer uploads it as the run's outputs.
        response = kwargs.get("response")
        for generations in getattr(response, "generations", None) or []:
            for generation in generations:
                generation.generation_info = redact_value(generation.generation_info)
                message = getattr(generation, "message", None)
                if message is not None:
                    message.response_metadata = redact_value(message.response_metadata)
                    message.additional_kwargs = redact_value(message.additional_kwargs)
                    if isinstance(message.content, str):
                        message.content = redact(message.content)
        if response is not None and getattr(response, "llm_output", None):
            response.llm_output = redact_value(response.llm_output)

    def on_chain_error(self, error: BaseException, **kwargs: Any) -> None:
        scrub_exception(error)

    def on_tool_error(self, error: BaseException, **kwargs: Any) -> None:
        scrub_exception(error)

    def on_retriever_error(self, error: BaseException, **kwargs: Any) -> None:
        scrub_exception(error)


_REDACTOR = RedactingCallbackHandler()


def redacting_callbacks(callbacks: Any) -> Any:
    """``callbacks`` (a list, a manager or None) with the redacting handler first."""
    if callbacks is None:
        return [_REDACTOR]
    if isinstance(callbacks, list):
        return [_REDACTOR, *(h for h in callbacks if h is not _REDACTOR)]
    if isinstance(callbacks, BaseCallbackManager):
        manager = callbacks.copy()
        manager.handlers = [_REDACTOR, *(h for h in manager.handlers if h is not _REDACTOR)]
        manager.inheritable_handlers = [
            _REDACTOR,
            *(h for h in manager.inheritable_handlers if h is not _REDACTOR),
        ]
        return manager
    return callbacks
