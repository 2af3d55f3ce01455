"""The debate as a LangGraph state machine.

    START ─Send×n─► generate ─► next_round ─Send×n─► summarize ─Send─► critique ─► next_round …
                                     └──────────────────────────────► vote ─► END

A society with self-adaptive agents (:mod:`mafl_graph.svf.adapt`) starts with ``adapt``, the
first pass that picks each such agent's expert for the problem: ``START ─► adapt ─Send×n─►
generate …``.

``next_round`` is the barrier between rounds: it runs once after all agents answered and
fans the next round out (``Send`` cannot be issued from a node that ran n times in parallel
without issuing it n times).
"""

from __future__ import annotations

from langgraph.graph import END, START, StateGraph
from langgraph.types import RetryPolicy

from mafl_graph.debate.nodes import DebateNodes
from mafl_graph.debate.prompts import DebatePrompts
from mafl_graph.debate.size import DebateShape
from mafl_graph.debate.state import DebateInput, DebateState, output_schema
from mafl_graph.models import is_transient
from mafl_graph.society import Society
from mafl_graph.tasks.base import Task


def transient_retry(
    *,
    max_attempts: int = 5,
    initial_interval: float = 1.0,
    backoff_factor: float = 2.0,
    max_interval: float = 60.0,
    jitter: bool = True,
) -> RetryPolicy:
    """LangGraph's RetryPolicy for model nodes: back off and retry transient failures only.

    This sits above the SDK's own retries (which handle 429/5xx/timeouts at the HTTP level and
    honour Retry-After): it catches what they give up on, or cannot see (a 200 whose body is
    cut off, garbage or empty), and leaves a bad key or an unknown model to fail at once.
    Five attempts, because the SDK-invisible faults get no other retry: at a 10% rate of such
    faults, 5 attempts lose one call in 10^5 where 3 lose one in 10^3 (a 500-problem,
    9-call debate run would lose about four problems).
    """
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be at least 1; got {max_attempts}.")
    return RetryPolicy(
        initial_interval=initial_interval,
        backoff_factor=backoff_factor,
        max_interval=max_interval,
        max_attempts=max_attempts,
        jitter=jitter,
        retry_on=is_transient,
    )


DEFAULT_RETRY = transient_retry()


def create_debate_graph(
    society: Society,
    task: Task,
    *,
    rounds: int = 2,
    summarize: bool = True,
    prompts: DebatePrompts | None = None,
    seed: int = 0,
    retry_policy: RetryPolicy | None = DEFAULT_RETRY,
    output_key: str | None = None,
) -> StateGraph:
    """An uncompiled debate graph: compile it with the checkpointer, store and cache you want.

    Round 1 asks each agent's generator; rounds ≥ 2 ask each agent's critic with the other
    agents' answers (or, with ``summarize``, the summarizer's summary of them); ``vote`` takes
    the equivalence-clustered majority of the final round, ties broken by ``seed``.
    ``retry_policy``: how model nodes retry (default :func:`transient_retry`; None: never).

    ``output_key``: for a graph embedded in another one. The graph's output (what ``invoke``
    returns, and what a parent graph that adds it as a node receives) is then only
    ``{output_key: DebateRecord}`` (consensus, correctness, the transcript), so the debate never
    writes the host's own keys, whatever their names. Its input stays ``problem_id``,
    ``question`` and ``reference``. Without it the output is the whole debate state
    (:class:`DebateState`), which :func:`run_debates` and Studio show.

    Tag a debate for reading back with ``config={"metadata": {"mafl_run_id": run_id}}`` when the
    app is invoked: every checkpoint and traced run of the debate carries it, and
    :func:`mafl_graph.read_traces` / :func:`mafl_graph.langsmith.read_traces_langsmith` find
    the debates of ``run_id`` wherever they sit in the app.
    """
    if not isinstance(task, Task):
        raise TypeError(f"task must implement mafl_graph.Task; got {type(task).__name__}.")
    if not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be at least 1; got {rounds!r}.")
    if rounds > 1 and len(society) < 2:
        raise ValueError(
            f"A debate of {rounds} rounds needs at least 2 agents (one has nobody to debate); "
            "use more agents or rounds=1."
        )
    if output_key is not None and (
        not isinstance(output_key, str)
        or not output_key
        or output_key in DebateState.__annotations__
    ):
        raise ValueError(
            f"output_key must be a name that is not one of the debate's own keys "
            f"({', '.join(DebateState.__annotations__)}); got {output_key!r}."
        )
    nodes = DebateNodes(
        society,
        task,
        rounds=rounds,
        summarize=summarize,
        prompts=prompts,
        seed=seed,
        output_key=output_key,
    )
    if output_key is None:
        builder = StateGraph(DebateState, input_schema=DebateInput)
    else:
        builder = StateGraph(
            DebateState, input_schema=DebateInput, output_schema=output_schema(output_key)
        )
    if nodes.adapts:
        # The first pass of self-adaptation, its own node (and checkpoint) before round 1.
        builder.add_node(
            "adapt",
            nodes.adapt_node(),
            retry_policy=retry_policy,
        )
    builder.add_node("generate", nodes.generate, retry_policy=retry_policy)
    builder.add_node("next_round", nodes.next_round, destinations=("summarize", "critique", "vote"))
    builder.add_node(
        "summarize", nodes.summarize, retry_policy=retry_policy, destinations=("critique",)
    )
    builder.add_node("critique", nodes.critique, retry_policy=retry_policy)
    builder.add_node("vote", nodes.vote)
    if nodes.adapts:
        builder.add_edge(START, "adapt")
        builder.add_conditional_edges("adapt", nodes.fan_out, ["generate"])
    else:
        builder.add_conditional_edges(START, nodes.fan_out, ["generate"])
    builder.add_edge("generate", "next_round")
    builder.add_edge("critique", "next_round")
    builder.add_edge("vote", END)
    builder.debate_shape = DebateShape(len(society), rounds, summarize, task)  # type: ignore[attr-defined]
    return builder
