"""Which chat model plays which role.

Each agent has a generator (round 1) and a critic (rounds ≥ 2). They start as the same base
model and diverge once fine-tuning gives each agent and role its own tuned model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from langchain_core.language_models import BaseChatModel

from mafl_graph.models import resolve_model


@dataclass(frozen=True)
class Agent:
    """One debater: the model that answers first and the model that revises.

    ``role`` describes what this agent is good at; the debate sends it (after the prompts'
    global ``instruction``) as the system message of the agent's conversation.
    """

    name: str
    generator: BaseChatModel
    critic: BaseChatModel
    role: str = ""


@dataclass(frozen=True)
class Society:
    """The debating agents plus the summarizer that condenses the others' answers."""

    agents: tuple[Agent, ...]
    summarizer: BaseChatModel

    def __post_init__(self) -> None:
        if not self.agents:
            raise ValueError("A Society needs at least one agent; got none.")
        names = [agent.name for agent in self.agents]
        if len(set(names)) != len(names):
            raise ValueError(f"Agent names must be unique; got {names}.")

    @classmethod
    def from_model(
        cls,
        model: str | BaseChatModel,
        n_agents: int = 3,
        summarizer: str | BaseChatModel | None = None,
        **model_kwargs: Any,
    ) -> Society:
        """A society of ``n_agents`` agents that all start from one base model.

        Where the model has a ``seed`` (the embedded model, OpenAI), agent ``i`` gets
        ``seed + i``: identical round-1 prompts would otherwise give identical answers,
        and a debate among clones has nothing to debate.
        """
        if n_agents < 1:
            raise ValueError(f"n_agents must be at least 1; got {n_agents}.")
        base = resolve_model(model, **model_kwargs)
        agent_models = [_with_seed_offset(base, i) for i in range(n_agents)]
        agents = tuple(
            Agent(name=f"agent{i}", generator=m, critic=m) for i, m in enumerate(agent_models)
        )
        summary_model = base if summarizer is None else resolve_model(summarizer)
        return cls(agents=agents, summarizer=summary_model)

    def __len__(self) -> int:
        return len(self.agents)

    def with_roles(self, roles: Sequence[str]) -> Society:
        """A new society where agent ``i`` has role description ``roles[i]``."""
        if len(roles) != len(self.agents):
            raise ValueError(
                f"Got {len(roles)} role description(s) for a society of {len(self.agents)} "
                "agents; give one per agent."
            )
        agents = tuple(replace(a, role=r) for a, r in zip(self.agents, roles, strict=True))
        return Society(agents=agents, summarizer=self.summarizer)

    def replace(
        self,
        generators: Mapping[int, BaseChatModel] | None = None,
        critics: Mapping[int, BaseChatModel] | None = None,
        summarizer: BaseChatModel | None = None,
    ) -> Society:
        """A new society where the given agents' (by index) models are swapped, e.g. tuned ones."""
        generators, critics = dict(generators or {}), dict(critics or {})
        for index in [*generators, *critics]:
            if not 0 <= index < len(self.agents):
                raise ValueError(f"No agent {index} in a society of {len(self.agents)}.")
        agents = tuple(
            replace(
                agent,
                generator=generators.get(i, agent.generator),
                critic=critics.get(i, agent.critic),
            )
            for i, agent in enumerate(self.agents)
        )
        return Society(agents=agents, summarizer=summarizer or self.summarizer)


def _with_seed_offset(model: BaseChatModel, offset: int) -> BaseChatModel:
    seed = getattr(model, "seed", None)
    if offset == 0 or not isinstance(seed, int) or "seed" not in type(model).model_fields:
        return model
    return model.model_copy(update={"seed": seed + offset})
