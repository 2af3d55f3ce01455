"""The paper's debate prompts (Du et al. 2023; Subramaniam, Du et al. 2025).

Round 1 asks the task's own question prompt. Later rounds show an agent the other agents'
latest answers, or the summarizer's summary of them, and ask for an updated answer. A task
may override any of these by carrying a ``prompts: DebatePrompts`` attribute.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

from langchain_core.prompts import ChatPromptTemplate

_FINAL = "Put your final answer in the form \\boxed{{answer}} at the end of your response."


def _human(text: str) -> ChatPromptTemplate:
    return ChatPromptTemplate.from_messages([("human", text)])


@dataclass(frozen=True)
class DebatePrompts:
    """Templates for the debate turns; each renders to exactly one user message.

    ``instruction`` tells every agent how the agents collaborate; it opens each agent's
    conversation as a system message, followed by the agent's own role (``Agent.role``).
    """

    instruction: str = ""

    debate: ChatPromptTemplate = field(
        default_factory=lambda: _human(
            "These are the solutions to the problem from other agents:{answers}\n\n"
            "Using the reasoning from other agents as additional advice, can you give an "
            "updated answer? Examine your solution and that of the other agents step by step. "
            + _FINAL
        )
    )
    debate_with_summary: ChatPromptTemplate = field(
        default_factory=lambda: _human(
            "Here is a summary of responses from other agents: ```{summary}```\n\n"
            "Use this summarization carefully as additional advice, can you provide an updated "
            "answer? Examine your solution step by step. " + _FINAL
        )
    )
    summarize: ChatPromptTemplate = field(
        default_factory=lambda: _human(
            "Here are a list of opinions from different agents:{answers}\n\n"
            "Write a summary of the different opinions from each of the individual agents and "
            "explain the reasoning in each solution."
        )
    )
    answer_item: str = "\n\nOne agent solution: ```{text}```"


def merge_prompts(base: DebatePrompts, override: DebatePrompts) -> DebatePrompts:
    """``base`` with every field that ``override`` sets to other than the paper's default."""
    default = DebatePrompts()
    changed = {
        f.name: getattr(override, f.name)
        for f in fields(DebatePrompts)
        if getattr(override, f.name) != getattr(default, f.name)
    }
    return replace(base, **changed)


def system_message(prompts: DebatePrompts, role: str) -> str:
    """The system message that opens an agent's conversation: the instruction, then its role
    (empty when both are)."""
    return "\n\n".join(part.strip() for part in (prompts.instruction, role) if part.strip())


def format_answers(prompts: DebatePrompts, texts: list[str]) -> str:
    return "".join(prompts.answer_item.format(text=text) for text in texts)
