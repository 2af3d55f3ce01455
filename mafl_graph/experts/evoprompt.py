"""EvoPrompt (Guo et al., ICLR 2024) for a debating Society: each agent's role description and
the global instruction evolve, with an LLM as the crossover and mutation operator.

A *prompt set* is (instruction, role of agent 0, …, role of agent k-1). Each element is a
*track* with its own population, as the issue asks: one per role, one for the instruction.
Tracks evolve in turn, each with the other tracks held at their current best (coordinate
ascent), because a role is only judged by the debate it serves in, and scores are only
comparable among candidates debated beside the same partners. A track's population is
therefore re-scored whenever another track's best has changed since it was last scored; the
cache makes that free when nothing changed.

- GA: parents by roulette on fitness; the optimizer model crosses two parents over and mutates
  the result (answer in ``<prompt></prompt>``); the best N of parents and children survive.
- DE: for each member, the optimizer model finds where two other members differ, mutates those
  parts, merges them into the population's best, and crosses the result over with the member;
  the child replaces the member only if it scores higher. The best is the one at the start of
  the generation, so that a generation's requests go out together (one batch).

Fitness: accuracy of the whole debate on development problems (never the test split), plus
``agreement_weight`` × the mean fraction of agents agreeing with the consensus. A prompt set's
debate of a problem is paid for once: its result is cached per (prompt set, problem).

The run directory (every file written atomically or append-only; a rerun resumes):

    manifest.json       the settings, the society's agents and models, the dev problem ids
    dev.jsonl           the development problems
    initial.json        each track's initial population and where each member came from
    optimizer.jsonl     every optimizer (and drafting) call: request, reply, tokens
    candidates.jsonl    every candidate: track, iteration, origin, parents, text or the failure
                        (a reply without a prompt), its score and the prompt set it was scored in
    generations.jsonl   each step's population with scores and the best prompt set's score
    scores/<set>.json   a prompt set's texts and its result per dev problem (calls, tokens)
    debates.sqlite      the checkpoints of every fitness debate (their full transcripts)
    state.json          where the evolution stands (resume point), rewritten after each step
    result.json         the evolved prompts, their dev scores and the calls spent
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mafl_graph.experts.corpus import write_text_atomic
from mafl_graph.finetune.tuners.options import option

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel

    from mafl_graph.debate.prompts import DebatePrompts
    from mafl_graph.society import Society
    from mafl_graph.tasks.base import Problem, Task

log = logging.getLogger(__name__)

OPTIMIZERS = ("ga", "de")
EVOLVABLE = ("roles", "instruction")
INSTRUCTION = "instruction"

SEEDROLE_KINDS: tuple[str, ...] = (
    "You are a careful problem solver: you work step by step and check every calculation.",
    "You are an expert in arithmetic and algebra, and you state your final answer clearly.",
    "You are a sceptical reviewer: you look for mistakes in every solution, your own included.",
    "You are good at word problems: you turn the story into equations before solving them.",
    "You are a precise mathematician and programmer who explains each step briefly.",
    "You are a patient teacher who solves problems by breaking them into small steps.",
    "You are fast at mental arithmetic and double-check each result before answering.",
)
"""Hand-written role descriptions that seed every role's population (after the drafts)."""

SEED_INSTRUCTIONS: tuple[str, ...] = (
    "You are one of several agents solving the same problem. Answer on your own first; later, "
    "weigh the other agents' reasoning, keep what is right and correct what is wrong.",
    "Several agents with different specialties solve this problem together. When you see the "
    "others' answers, check them step by step and change your answer only for a good reason.",
    "Work with the other agents to reach the correct answer. Be concise, show your reasoning "
    "and always end with your final answer.",
    "You are part of a debate among experts. Trust the agent whose specialty fits the problem "
    "best, but verify its reasoning before you agree.",
    "Solve the problem carefully. The team's answer is the majority's, so give the answer you "
    "can justify, not the one most agents gave.",
)
"""Hand-written global instructions: the instruction's initial population."""


@dataclass(frozen=True)
class EvoPromptConfig:
    """Every setting of one EvoPrompt run (written to its manifest)."""

    optimizer: str = option(
        "ga",
        "evoprompt: ga (roulette parents, crossover + mutation, best N survive) or de "
        "(differential evolution: a child replaces its member only if it scores higher)",
    )
    population: int = option(10, "evoprompt: prompts per population (each role, the instruction)")
    iterations: int = option(
        10, "evoprompt: generations of every population (a rerun with more continues)"
    )
    temperature: float = option(
        0.5, "evoprompt: the optimizer model's temperature (where the model has one)"
    )
    optimizer_max_tokens: int = option(
        512, "evoprompt: tokens per optimizer reply (where the model has such a setting)"
    )
    agreement_weight: float = option(
        0.0, "evoprompt: fitness = dev accuracy + this x mean agreement with the consensus"
    )
    evolve: str = option(
        "roles,instruction", "evoprompt: what evolves: roles, instruction or both (commas)"
    )
    drafts: int = option(3, "evoprompt: role drafts each expert writes from samples of its pile")
    examples: int = option(5, "evoprompt: pile problems shown to an expert per draft")
    rounds: int = option(2, "evoprompt: debate rounds of each fitness evaluation")
    summarize: bool = option(True, "evoprompt: the summarizer condenses the others' answers")
    concurrency: int = option(4, "evoprompt: dev debates run at once")
    max_prompt_chars: int = option(
        1200, "evoprompt: a longer evolved prompt is recorded as failed and skipped"
    )
    seed: int = option(0, "seed of every random choice (parents, pile samples, vote ties)")

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(
                f"optimizer must be one of {', '.join(OPTIMIZERS)}; got {self.optimizer!r}"
            )
        if self.population < 1:
            raise ValueError(f"population must be at least 1; got {self.population}")
        if self.optimizer == "de" and self.population < 3:
            raise ValueError(
                f"de needs a population of at least 3 (a member and two others); got "
                f"{self.population}"
            )
        for name in ("iterations", "drafts"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative; got {getattr(self, name)}")
        for name in ("examples", "rounds", "concurrency", "max_prompt_chars"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1; got {getattr(self, name)}")
        if self.optimizer_max_tokens < 1:
            raise ValueError(
                f"optimizer_max_tokens must be at least 1; got {self.optimizer_max_tokens}"
            )
        if not self.temperature >= 0:
            raise ValueError(f"temperature must not be negative; got {self.temperature}")
        if not self.agreement_weight >= 0:
            raise ValueError(f"agreement_weight must not be negative; got {self.agreement_weight}")
        self.evolved()  # refuses an unknown name early

    def evolved(self) -> tuple[str, ...]:
        """What evolves: ``roles``, ``instruction`` or both, from :attr:`evolve`."""
        names = tuple(n.strip() for n in self.evolve.split(",") if n.strip())
        if not names or any(n not in EVOLVABLE for n in names):
            raise ValueError(
                f"evolve must name roles, instruction or both (commas); got {self.evolve!r}"
            )
        return names


@dataclass(frozen=True)
class Scored:
    """A member of a population: its text and its fitness in the current prompt set."""

    text: str
    score: float


@dataclass(frozen=True)
class Child:
    """One offspring request's outcome: the new prompt and its score, or why it failed."""

    parents: tuple[str, ...]
    reply: str
    text: str | None = None
    score: float | None = None
    failure: str | None = None


@dataclass(frozen=True)
class PromptSet:
    """What a debate is run with: the global instruction and one role per agent."""

    instruction: str
    roles: tuple[str, ...]

    @property
    def texts(self) -> tuple[str, ...]:
        """Track by track: the instruction, then each role."""
        return (self.instruction, *self.roles)

    def with_track(self, track: int, text: str) -> PromptSet:
        """This set with track ``track`` (0: the instruction, i + 1: agent i's role) replaced."""
        texts = list(self.texts)
        texts[track] = text
        return PromptSet(texts[0], tuple(texts[1:]))

    def digest(self) -> str:
        """SHA-256 of the texts: the cache key of this set."""
        return hashlib.sha256(json.dumps(self.texts).encode()).hexdigest()


@dataclass(frozen=True)
class EvolvedPrompts:
    """The best prompt set found, its dev scores and what the run spent.

    Apply it with :meth:`society` (roles) and :attr:`prompts` (instruction), e.g.
    ``create_debate_graph(result.society(society), task, prompts=result.prompts)``.
    """

    instruction: str
    roles: tuple[str, ...]
    fitness: float
    accuracy: float
    agreement: float
    usage: Mapping[str, int] = field(default_factory=dict)
    run_dir: str = ""

    @property
    def prompts(self) -> DebatePrompts:
        """The default debate prompts with the evolved global instruction (to keep templates of
        your own: ``dataclasses.replace(yours, instruction=result.instruction)``)."""
        from mafl_graph.debate.prompts import DebatePrompts

        return DebatePrompts(instruction=self.instruction)

    def society(self, society: Society) -> Society:
        """``society`` with each agent's evolved role description."""
        return society.with_roles(self.roles)

    @classmethod
    def load(cls, run_dir: str | Path) -> EvolvedPrompts:
        """The result an EvoPrompt run wrote to ``run_dir``."""
        path = Path(run_dir) / "result.json"
        if not path.is_file():
            raise FileNotFoundError(f"no EvoPrompt result at {path}; run evolve_prompts first")
        record = json.loads(path.read_text())
        return cls(**{**record, "roles": tuple(record["roles"])})


# Prompts of the optimizer model ----------------------------------------------------------


@dataclass(frozen=True)
class PromptKind:
    """What a track's prompts are, as the optimizer model is told, with a worked example."""

    noun: str
    about: str
    example: tuple[str, str, str, str]
    """Two parents, their crossover, the mutated final prompt."""


ROLE_KIND = PromptKind(
    "role description",
    "It tells one agent of a team of AI agents that solve problems together by debate what "
    "that agent is good at.",
    (
        "You are good at arithmetic.",
        "You check every step of a calculation.",
        "You are good at arithmetic and check every step.",
        "You are an arithmetic specialist who verifies each step of a calculation.",
    ),
)
INSTRUCTION_KIND = PromptKind(
    "instruction",
    "It tells every agent of a team of AI agents how they solve problems together by debate.",
    (
        "Answer the problem, then improve your answer using the other agents' answers.",
        "Work as a team and explain your reasoning.",
        "Work as a team: explain your reasoning and improve it with the others' answers.",
        "Explain your reasoning, then check the other agents' reasoning and correct your own.",
    ),
)


def _kind(track: int) -> PromptKind:
    return INSTRUCTION_KIND if track == 0 else ROLE_KIND


def ga_request(first: str, second: str, kind: PromptKind = ROLE_KIND) -> str:
    """The GA request: cross over two parents, mutate the result, answer in <prompt> tags."""
    noun, (a, b, crossed, final) = kind.noun, kind.example
    return (
        f"Each prompt below is a {noun}. {kind.about}\n"
        f"Follow the steps to write a better {noun}.\n\n"
        "Example:\n"
        f"1. Cross over the two prompts into a new one.\nPrompt 1: {a}\nPrompt 2: {b}\n"
        f"New prompt: {crossed}\n"
        f"2. Mutate the new prompt and give the final prompt in prompt tags.\n"
        f"Final prompt: <prompt>{final}</prompt>\n\n"
        "Now:\n"
        f"1. Cross over the two prompts into a new one.\nPrompt 1: {first}\nPrompt 2: {second}\n"
        "2. Mutate the new prompt and give the final prompt, starting with <prompt> and ending "
        "with </prompt>."
    )


def de_request(
    member: str, first: str, second: str, best: str, kind: PromptKind = ROLE_KIND
) -> str:
    """The DE request: where two prompts differ, mutate those parts, merge them into the best,
    cross over with the member; answer in <prompt> tags."""
    noun, (a, b, _, final) = kind.noun, kind.example
    return (
        f"Each prompt below is a {noun}. {kind.about}\n"
        f"Follow the steps to write a better {noun}.\n\n"
        "Example:\n"
        f"1. Identify the parts where Prompt 1 and Prompt 2 differ.\nPrompt 1: {a}\n"
        f"Prompt 2: {b}\n"
        'Different parts: "good at arithmetic" vs "check every step of a calculation"\n'
        '2. Randomly mutate the different parts: "specialist in arithmetic", "verify each step"\n'
        "3. Merge the mutated parts into Prompt 3, replacing parts of it, to make a new prompt.\n"
        f"Prompt 3: {b}\n"
        "4. Cross over the new prompt with the basic prompt and give the final prompt in "
        f"prompt tags.\nBasic prompt: {a}\nFinal prompt: <prompt>{final}</prompt>\n\n"
        "Now:\n"
        f"1. Identify the parts where Prompt 1 and Prompt 2 differ.\nPrompt 1: {first}\n"
        f"Prompt 2: {second}\n"
        "2. Randomly mutate the different parts.\n"
        "3. Merge the mutated parts into Prompt 3, replacing parts of it, to make a new prompt.\n"
        f"Prompt 3: {best}\n"
        "4. Cross over the new prompt with the basic prompt and give the final prompt, starting "
        f"with <prompt> and ending with </prompt>.\nBasic prompt: {member}"
    )


def draft_request(problems: Sequence[str]) -> str:
    """What an expert is asked to describe its own role from problems of its pile."""
    shown = "\n\n".join(f"Problem {i}: {_excerpt(p)}" for i, p in enumerate(problems, 1))
    return (
        "You are one member of a team of AI agents that solve problems together by debate. "
        f"You were trained on problems like these:\n\n{shown}\n\n"
        "In one or two sentences, describe what you are good at, as your role in the team, "
        'starting with "You are". Write it between <prompt> and </prompt>.'
    )


def _excerpt(text: str, limit: int = 400) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


_TAGGED = re.compile(r"<prompt>(.*?)</prompt>", re.S | re.I)
_OPEN = re.compile(r"<prompt>", re.I)
_QUOTES = "\"'“”‘’`"


def parse_prompt(reply: str, request: str = "") -> str | None:
    """The prompt between the reply's last ``<prompt>`` and ``</prompt>``, or None.

    Text that ``request`` itself shows in prompt tags (its worked example, or the instruction
    "between <prompt> and </prompt>" echoed back) is not an answer and is passed over. An
    opening tag whose closing tag never came (a reply cut off by its token limit) gives the
    text after it. Surrounding quotes and whitespace are removed.
    """
    shown = {t.strip() for t in _TAGGED.findall(request)}
    shown |= {"and", ""}
    found = [t.strip() for t in _TAGGED.findall(reply) if t.strip() not in shown]
    if found:
        text = found[-1]
    else:
        opens = list(_OPEN.finditer(reply))
        if not opens or "</prompt>" in reply[opens[-1].end() :].lower():
            return None
        tail = reply[opens[-1].start() :]
        if request and " ".join(tail.lower().split()[:4]) in " ".join(request.lower().split()):
            return None  # the request's own words, echoed and cut off
        text = reply[opens[-1].end() :].strip()
    text = text.strip().strip(_QUOTES).strip()
    return text if text and text not in shown else None


# The steps of the algorithms --------------------------------------------------------------


def best_of(population: Sequence[Scored]) -> Scored:
    """The member with the highest score; the earliest one on a tie."""
    if not population:
        raise ValueError("the population is empty: there is no best member")
    return max(population, key=lambda m: m.score)


def roulette(population: Sequence[Scored], k: int, rng: random.Random) -> list[Scored]:
    """``k`` members drawn with replacement, each with probability proportional to its score
    (negative scores count as 0; all zero: uniform)."""
    if not population:
        raise ValueError("roulette selection needs a non-empty population")
    weights = [max(m.score, 0.0) for m in population]
    return rng.choices(list(population), weights=weights if sum(weights) > 0 else None, k=k)


def ga_parents(
    population: Sequence[Scored], n: int, rng: random.Random
) -> list[tuple[Scored, Scored]]:
    """``n`` pairs of parents: a pool of the population's size drawn by roulette, and two
    different places of the pool per pair (the same prompt where the pool holds one)."""
    pool = roulette(population, len(population), rng)
    if len(pool) < 2:
        return [(pool[0], pool[0]) for _ in range(n)]
    return [(a, b) for a, b in (rng.sample(pool, 2) for _ in range(n))]


def survivors(parents: Sequence[Scored], children: Sequence[Scored], n: int) -> list[Scored]:
    """The best ``n`` of parents and children, each text once; a tie keeps the parent (and the
    earlier one)."""
    seen: set[str] = set()
    pool = []
    for member in [*parents, *children]:
        if member.text not in seen:
            seen.add(member.text)
            pool.append(member)
    return sorted(pool, key=lambda m: -m.score)[:n]  # stable: earlier first on a tie


def de_donors(population: Sequence[Scored], index: int, rng: random.Random) -> tuple[str, str]:
    """Two members other than ``index``, drawn without replacement: the prompts whose
    differences are mutated."""
    others = [m.text for i, m in enumerate(population) if i != index]
    if len(others) < 2:
        raise ValueError(
            f"de needs at least 3 members in a population (a member and two others); got "
            f"{len(population)}"
        )
    first, second = rng.sample(others, 2)
    return first, second


def de_select(member: Scored, child: Scored | None) -> Scored:
    """The child where it scores strictly higher than the member, else the member."""
    return child if child is not None and child.score > member.score else member


Ask = Callable[[list[str]], list[str]]
"""Sends requests to the optimizer model (journalled), returns the replies in order."""
Score = Callable[[str], float]
"""The fitness of a track's candidate text in the current prompt set."""


def _child(
    reply: str, request: str, parents: tuple[str, ...], score: Score, max_chars: int
) -> Child:
    text = parse_prompt(reply, request)
    if text is None:
        return Child(parents, reply, failure="no <prompt>...</prompt> in the reply")
    if len(text) > max_chars:
        return Child(parents, reply, failure=f"longer than {max_chars} characters")
    return Child(parents, reply, text=text, score=score(text))


def ga_generation(
    population: Sequence[Scored],
    *,
    n: int,
    ask: Ask,
    score: Score,
    rng: random.Random,
    kind: PromptKind = ROLE_KIND,
    max_chars: int = 1200,
) -> tuple[list[Scored], list[Child]]:
    """One GA generation: ``n`` children of roulette-chosen parents, then the best ``n`` of
    parents and children survive. A reply without a prompt gives no child."""
    pairs = ga_parents(population, n, rng)
    requests = [ga_request(a.text, b.text, kind) for a, b in pairs]
    children = [
        _child(reply, request, (a.text, b.text), score, max_chars)
        for (a, b), request, reply in zip(pairs, requests, ask(requests), strict=True)
    ]
    born = [Scored(c.text, c.score) for c in children if c.text is not None and c.score is not None]
    return survivors(population, born, n), children


def de_generation(
    population: Sequence[Scored],
    *,
    ask: Ask,
    score: Score,
    rng: random.Random,
    kind: PromptKind = ROLE_KIND,
    max_chars: int = 1200,
) -> tuple[list[Scored], list[Child]]:
    """One DE generation: one child per member, from two other members and the best; each child
    replaces its member only if it scores higher. A reply without a prompt changes nothing."""
    best = best_of(population).text
    donors = [de_donors(population, i, rng) for i in range(len(population))]
    requests = [
        de_request(m.text, a, b, best, kind) for m, (a, b) in zip(population, donors, strict=True)
    ]
    children, next_population = [], []
    for member, (a, b), request, reply in zip(
        population, donors, requests, ask(requests), strict=True
    ):
        child = _child(reply, request, (member.text, a, b, best), score, max_chars)
        children.append(child)
        born = Scored(child.text, child.score) if child.score is not None and child.text else None
        next_population.append(de_select(member, born))
    return next_population, children


def fitness(results: Sequence[Mapping[str, Any]], agreement_weight: float = 0.0) -> float:
    """Dev accuracy (a debate without a correct consensus counts as wrong) plus
    ``agreement_weight`` × the mean fraction of agents agreeing with the consensus."""
    if not results:
        raise ValueError("no dev results to score")
    accuracy = sum(r.get("correct") is True for r in results) / len(results)
    agreement = sum(float(r.get("consensus_fraction") or 0.0) for r in results) / len(results)
    return accuracy + agreement_weight * agreement


# Durable records --------------------------------------------------------------------------


class _Records:
    """An append-only JSONL file of records with unique keys: a key already there is not
    written again, so a replayed step records nothing twice. A line torn by a killed process
    is dropped when the file is opened."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.by_key: dict[str, dict[str, Any]] = {}
        if path is None or not path.is_file():
            return
        text = path.read_text()
        lines = text.splitlines()
        kept = []
        for line in lines:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            kept.append(line)
            self.by_key[record["key"]] = record
        if len(kept) != len(lines) or (text and not text.endswith("\n")):
            write_text_atomic(path, "".join(line + "\n" for line in kept))

    def add(self, record: dict[str, Any]) -> None:
        if record["key"] in self.by_key:
            return
        self.by_key[record["key"]] = record
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as out:
                out.write(json.dumps(record) + "\n")


class _Journal:
    """The optimizer's (and drafting) calls by key: a request asked once is never asked again.

    A key names the request's place (step, slot) and hashes its text, so a replayed step
    that asks the same thing gets the saved reply, and anything else is asked afresh.
    """

    def __init__(self, path: Path | None) -> None:
        self.records = _Records(path)

    def ask(
        self,
        model: BaseChatModel,
        requests: Sequence[tuple[str, str]],
        metadata: Mapping[str, Any],
    ) -> list[str]:
        """Replies to ``(place, request)`` pairs, in order; the new ones asked as one batch.

        Every reply that arrived is journalled before a failed call's error is raised.
        """
        from langchain_core.messages import HumanMessage

        keys = [f"{place}:{_short(request)}" for place, request in requests]
        todo = [i for i, key in enumerate(keys) if key not in self.records.by_key]
        if todo:
            configs: Any = [
                {
                    "run_name": "evoprompt",
                    "tags": ["evoprompt", f"step:{requests[i][0]}"],
                    "metadata": {**metadata, "evoprompt_place": requests[i][0]},
                }
                for i in todo
            ]
            replies = model.batch(
                [[HumanMessage(requests[i][1])] for i in todo],
                config=configs,
                return_exceptions=True,
            )
            failed: BaseException | None = None
            for i, reply in zip(todo, replies, strict=True):
                if isinstance(reply, BaseException):
                    failed = failed or reply
                    continue
                usage = getattr(reply, "usage_metadata", None) or {}
                self.records.add(
                    {
                        "key": keys[i],
                        "request": requests[i][1],
                        "reply": reply.text if hasattr(reply, "text") else str(reply.content),
                        "tokens": int(usage.get("total_tokens", 0)),
                    }
                )
            if failed is not None:
                raise RuntimeError(
                    f"the optimizer model failed ({type(failed).__name__}: {failed}); the "
                    "replies that arrived are saved: rerun to resume"
                ) from failed
        return [str(self.records.by_key[key]["reply"]) for key in keys]


def _short(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class FitnessCache:
    """Dev results per prompt set, one JSON file per set (``scores/<digest>.json``).

    Only the problems a set has no result for are debated, and those debates are checkpointed
    in ``debates.sqlite`` under a run id of the set: a scored (set, problem) is never paid for
    again, and an interrupted debate resumes from its last saved call.
    """

    def __init__(
        self,
        run_dir: str | Path,
        society: Society,
        task: Task,
        problems: Sequence[Problem],
        config: EvoPromptConfig,
        *,
        base_prompts: DebatePrompts | None = None,
        progress: bool = False,
    ) -> None:
        self.root = Path(run_dir)
        self.society, self.task, self.problems = society, task, list(problems)
        self.config, self.progress = config, progress
        self.base_prompts = base_prompts
        self.debated = 0
        """Debates run (or resumed) by this object: 0 when everything came from the cache."""

    def path(self, prompt_set: PromptSet) -> Path:
        return self.root / "scores" / f"{prompt_set.digest()}.json"

    def results(self, prompt_set: PromptSet, label: str = "") -> list[dict[str, Any]]:
        """The set's result on every dev problem, debating only those not yet cached.

        A debate that failed (after its retries) is not cached: the error is raised once the
        others are saved, and a rerun resumes it from its checkpoint.
        """
        path = self.path(prompt_set)
        record: dict[str, Any] = (
            json.loads(path.read_text())
            if path.is_file()
            else {"instruction": prompt_set.instruction, "roles": list(prompt_set.roles)}
        )
        cached: dict[str, Any] = record.setdefault("problems", {})
        missing = [p for p in self.problems if p.id not in cached]
        if missing:
            failures = self._debate(prompt_set, missing, cached, label)
            write_text_atomic(path, json.dumps(record, indent=1) + "\n")
            if failures:
                raise RuntimeError(
                    f"{len(failures)} dev debate(s) failed for prompt set "
                    f"{prompt_set.digest()[:12]} (first: {failures[0]}); the others are saved: "
                    "rerun to resume"
                )
        return [cached[p.id] for p in self.problems]

    def score(self, prompt_set: PromptSet, label: str = "") -> float:
        """The set's fitness (see :func:`fitness`)."""
        return fitness(self.results(prompt_set, label), self.config.agreement_weight)

    def _debate(
        self,
        prompt_set: PromptSet,
        problems: list[Problem],
        into: dict[str, Any],
        label: str,
    ) -> list[str]:
        from dataclasses import replace

        from mafl_graph.debate import create_debate_graph
        from mafl_graph.debate.prompts import DebatePrompts
        from mafl_graph.debate.run import run_debates

        prompts = replace(self.base_prompts or DebatePrompts(), instruction=prompt_set.instruction)
        graph = create_debate_graph(
            self.society.with_roles(prompt_set.roles),
            self.task,
            rounds=self.config.rounds,
            summarize=self.config.summarize,
            prompts=prompts,
            seed=self.config.seed,
        )
        digest = prompt_set.digest()
        results = run_debates(
            graph,
            problems,
            run_id=f"evo-{digest[:16]}",
            db_path=self.root / "debates.sqlite",
            max_concurrency=self.config.concurrency,
            metadata={"split": f"evoprompt {label}".strip(), "evoprompt_set": digest[:16]},
            progress=self.progress,
        )
        self.debated += len(problems)
        failures = []
        for result in results:
            if not result.ok:
                failures.append(f"{result.problem_id}: {result.error}")
                continue
            calls = [*result.responses, *result.summaries]
            into[result.problem_id] = {
                "correct": result.correct,
                "consensus_fraction": result.consensus_fraction,
                "consensus": result.consensus,
                "calls": len(calls),
                "tokens": sum(int(c.get("tokens", 0)) for c in calls),
            }
        return failures


# Initial populations ----------------------------------------------------------------------


def draft_roles(
    society: Society,
    piles: Sequence[Sequence[str]],
    *,
    drafts: int = 3,
    examples: int = 5,
    seed: int = 0,
    run_dir: str | Path | None = None,
) -> list[list[str]]:
    """Each agent's own drafts of its role description, from samples of its training pile.

    Agent ``i``'s generator (the expert itself) is shown ``examples`` problems drawn (seeded)
    from ``piles[i]`` (their texts), ``drafts`` times with a different sample each, and asked
    what it is good at, answering in ``<prompt></prompt>``. A reply without one is recorded
    (in ``run_dir``'s ``candidates.jsonl``) and skipped. With ``run_dir`` the calls are
    journalled there, and a rerun asks nothing twice.
    """
    if len(piles) != len(society.agents):
        raise ValueError(
            f"got {len(piles)} pile(s) for a society of {len(society.agents)} agents; give "
            "one pile (a list of problem texts) per agent"
        )
    root = Path(run_dir) if run_dir is not None else None
    journal = _Journal(root / "optimizer.jsonl" if root else None)
    ledger = _Records(root / "candidates.jsonl" if root else None)
    return _draft(society, piles, journal, ledger, drafts=drafts, examples=examples, seed=seed)


def _draft(
    society: Society,
    piles: Sequence[Sequence[str]],
    journal: _Journal,
    ledger: _Records,
    *,
    drafts: int,
    examples: int,
    seed: int,
) -> list[list[str]]:
    drafted: list[list[str]] = []
    for index, (agent, pile) in enumerate(zip(society.agents, piles, strict=True)):
        texts_of_pile = [text for text in pile if text.strip()]
        if not texts_of_pile or drafts < 1:
            drafted.append([])
            continue
        requests = []
        for d in range(drafts):
            rng = random.Random(f"evoprompt-draft:{seed}:{index}:{d}")
            sample = rng.sample(texts_of_pile, min(examples, len(texts_of_pile)))
            requests.append((f"draft:{agent.name}:{d}", draft_request(sample)))
        replies = journal.ask(agent.generator, requests, {"agent": agent.name, "step": "draft"})
        texts: list[str] = []
        for (place, request), reply in zip(requests, replies, strict=True):
            text = parse_prompt(reply, request)
            ledger.add(
                {
                    "key": place,
                    "track": f"role:{agent.name}",
                    "iteration": 0,
                    "origin": "draft",
                    "parents": [],
                    "text": text,
                    "score": None,
                    "set": None,
                    "failure": None if text else "no <prompt>...</prompt> in the reply",
                    "reply": reply if text is None else None,
                }
            )
            if text is None:
                log.info("%s: a role draft without <prompt> in its reply; skipped", place)
            elif text not in texts:
                texts.append(text)
        drafted.append(texts)
    return drafted


def _unique(texts: Sequence[tuple[str, str]], n: int) -> list[tuple[str, str]]:
    seen: set[str] = set()
    out = []
    for text, origin in texts:
        text = text.strip()
        if text and text not in seen:
            seen.add(text)
            out.append((text, origin))
    return out[:n]


# The evolution ----------------------------------------------------------------------------


def evolve_prompts(
    society: Society,
    task: Task,
    dev_problems: Sequence[Problem],
    run_dir: str | Path,
    config: EvoPromptConfig | None = None,
    optimizer_model: BaseChatModel | None = None,
    *,
    piles: Sequence[Sequence[str]] | None = None,
    seed_roles: Sequence[str] = SEEDROLE_KINDS,
    seed_instructions: Sequence[str] = SEED_INSTRUCTIONS,
    base_prompts: DebatePrompts | None = None,
    progress: bool = False,
) -> EvolvedPrompts:
    """Evolve the agents' role descriptions and the global instruction with EvoPrompt.

    ``dev_problems``: what fitness is measured on (never the test split), each with a
    reference answer. ``optimizer_model``: the LLM that crosses over and mutates prompts
    (default: the society's summarizer); its temperature and reply length are set from
    ``config`` where the model has those fields. ``piles``: per agent, texts of its training
    problems, from which each agent drafts its own role (:func:`draft_roles`); the drafts,
    then the agent's current role, then ``seed_roles`` make a role's initial population, and
    ``base_prompts.instruction`` then ``seed_instructions`` the instruction's, each cut to
    ``config.population``. ``progress``: a bar per batch of dev debates.

    Everything is recorded in ``run_dir`` (see the module's docstring); a rerun resumes where
    the last one stopped and pays for nothing twice. Returns the best prompt set, also written
    to ``run_dir/result.json``.
    """
    return _Evolution(
        society,
        task,
        dev_problems,
        Path(run_dir),
        config or EvoPromptConfig(),
        optimizer_model,
        piles=piles,
        seed_roles=seed_roles,
        seed_instructions=seed_instructions,
        base_prompts=base_prompts,
        progress=progress,
    ).run()


def experts_dev_problems(run_dir: str | Path, n: int) -> list[Problem]:
    """The dev split of an experts run: ``n`` problems of the corpus's own split (train) that
    neither the corpus (the experts' training piles) nor the held-out test documents hold.

    They are the problems after the corpus's in the task's fixed order, so the dev split is
    the same on every call and never touches the test split.
    """
    from mafl_graph.experts.corpus import Corpus
    from mafl_graph.experts.runs import build_task, load_run

    if n < 1:
        raise ValueError(f"the dev split needs at least 1 problem; got {n}")
    layout, settings, corpus = load_run(run_dir)
    split = settings.get("split", "train")
    if split == "test":
        raise ValueError(
            f"the corpus of {layout.root} was drawn from the test split; a dev split beside it "
            "would tune prompts on test problems: make a corpus from the train split"
        )
    used = set(corpus.ids)
    if layout.test.is_file():
        used |= set(Corpus.load(layout.test).ids)
    wanted = int(settings.get("n", len(corpus))) + n
    problems = build_task(settings).load(split, wanted)
    fresh = [p for p in problems if p.id not in used][:n]
    if len(fresh) < n:
        raise ValueError(
            f"the {split} split has only {len(fresh)} problem(s) beyond the corpus's "
            f"{len(corpus)}; ask for a dev split of at most {len(fresh)}"
        )
    return fresh


def evolve_experts(
    run_dir: str | Path,
    method: str,
    config: EvoPromptConfig | None = None,
    *,
    dev: int = 20,
    optimizer_model: str | BaseChatModel | None = None,
    temperature: float = 0.7,
    max_tokens: int = 256,
    out_dir: str | Path | None = None,
    progress: bool = False,
) -> EvolvedPrompts:
    """EvoPrompt on the society of ``method``'s trained experts in an experts run directory.

    Each expert drafts its role from its own pile; fitness is the debate's accuracy on
    :func:`experts_dev_problems` (``dev`` of them). ``temperature`` and ``max_tokens``: the
    experts' and summarizer's sampling; ``optimizer_model``: a model or ``"provider:model"``
    (default: the summarizer). Written to ``out_dir`` (default
    ``<run_dir>/evoprompt/<method>-<optimizer>``); a rerun resumes.
    """
    from mafl_graph.experts.clustering import read_result
    from mafl_graph.experts.corpus import pile_members
    from mafl_graph.experts.runs import build_task, load_run, trained_experts
    from mafl_graph.experts.train import experts_society
    from mafl_graph.finetune.tuners.registry import tuner_class
    from mafl_graph.models import resolve_model

    config = config or EvoPromptConfig()
    layout, settings, corpus = load_run(run_dir)
    experts = [e for e in trained_experts(run_dir, method) if e.tuned is not None]
    if not experts:
        raise ValueError(f"{method} has no trained expert (every pile was empty)")
    first = experts[0].tuned
    assert first is not None
    length = "max_new_tokens" if tuner_class(first.backend).provider == "local" else "max_tokens"
    chat: dict[str, Any] = {"temperature": temperature, length: max_tokens}
    society = experts_society(experts, **chat)
    result = read_result(layout.result(method))
    members = pile_members(result.labels, result.k)
    documents = corpus.documents
    piles = [[documents[i].question or documents[i].text for i in members[e.pile]] for e in experts]
    if isinstance(optimizer_model, str):
        optimizer_model = resolve_model(optimizer_model)
    out = Path(out_dir) if out_dir else layout.root / "evoprompt" / f"{method}-{config.optimizer}"
    return evolve_prompts(
        society,
        build_task(settings),
        experts_dev_problems(run_dir, dev),
        out,
        config,
        optimizer_model,
        piles=piles,
        progress=progress,
    )


def optimizer_copy(model: BaseChatModel, temperature: float, max_tokens: int) -> BaseChatModel:
    """``model`` with this temperature and reply length where it has such fields (the local
    model, OpenAI, Gemini); any other model as it is."""
    fields = getattr(type(model), "model_fields", {})
    update: dict[str, Any] = {}
    if "temperature" in fields:
        update["temperature"] = temperature
    for name in ("max_new_tokens", "max_tokens", "max_output_tokens"):
        if name in fields:
            update[name] = max_tokens
            break
    return model.model_copy(update=update) if update else model


class _Evolution:
    """One EvoPrompt run over the tracks of a society's prompt set, in its run directory."""

    def __init__(
        self,
        society: Society,
        task: Task,
        dev_problems: Sequence[Problem],
        run_dir: Path,
        config: EvoPromptConfig,
        optimizer_model: BaseChatModel | None,
        *,
        piles: Sequence[Sequence[str]] | None,
        seed_roles: Sequence[str],
        seed_instructions: Sequence[str],
        base_prompts: DebatePrompts | None,
        progress: bool,
    ) -> None:
        from mafl_graph.models import model_label

        problems = list(dev_problems)
        if not problems:
            raise ValueError("dev_problems is empty: fitness needs at least one dev problem")
        ids = [p.id for p in problems]
        if len(set(ids)) != len(ids):
            raise ValueError("dev problem ids must be unique; got duplicates")
        if no_reference := [p.id for p in problems if p.answer is None]:
            raise ValueError(
                f"{len(no_reference)} dev problem(s) have no reference answer (e.g. "
                f"{no_reference[0]!r}); fitness is accuracy, so each needs one"
            )
        if piles is not None and len(piles) != len(society.agents):
            raise ValueError(
                f"got {len(piles)} pile(s) for a society of {len(society.agents)} agents; give "
                "one per agent"
            )
        self.society, self.task, self.problems, self.config = society, task, problems, config
        self.root = run_dir
        self.piles, self.progress = piles, progress
        self.seed_roles, self.seed_instructions = list(seed_roles), list(seed_instructions)
        self.base_prompts = base_prompts
        base = optimizer_model if optimizer_model is not None else society.summarizer
        self.optimizer = optimizer_copy(base, config.temperature, config.optimizer_max_tokens)
        self.names = [INSTRUCTION, *(f"role:{a.name}" for a in society.agents)]
        evolved = config.evolved()
        self.evolved = [
            t
            for t in range(len(self.names))
            if ("instruction" in evolved if t == 0 else "roles" in evolved)
        ]
        settings = {
            "kind": "evoprompt",
            # iterations and concurrency change no result: a rerun may continue further
            **{k: v for k, v in asdict(config).items() if k not in ("iterations", "concurrency")},
            "task": getattr(task, "name", type(task).__name__),
            "agents": [a.name for a in society.agents],
            "models": [model_label(a.generator) for a in society.agents],
            "summarizer": model_label(society.summarizer),
            "optimizer_model": model_label(self.optimizer),
            "dev": ids,
            # what the initial populations were made from: a rerun reads initial.json back
            "seeds": _short(
                json.dumps(
                    [
                        self.seed_roles,
                        self.seed_instructions,
                        base_prompts.instruction if base_prompts else "",
                        [a.role for a in society.agents],
                        [list(p) for p in piles] if piles is not None else None,
                    ]
                )
            ),
        }
        self.settings = settings

    # Paths -------------------------------------------------------------------------------
    def _file(self, name: str) -> Path:
        return self.root / name

    # The run -----------------------------------------------------------------------------
    def run(self) -> EvolvedPrompts:
        from mafl_graph.rundir import prepare_run_dir

        prepare_run_dir(self.root, self.settings)
        dev = self._file("dev.jsonl")
        if not dev.is_file():
            lines = [
                json.dumps({"id": p.id, "question": p.question, "answer": p.answer})
                for p in self.problems
            ]
            write_text_atomic(dev, "".join(line + "\n" for line in lines))
        self.journal = _Journal(self._file("optimizer.jsonl"))
        self.ledger = _Records(self._file("candidates.jsonl"))
        self.steps = _Records(self._file("generations.jsonl"))
        self.cache = FitnessCache(
            self.root,
            self.society,
            self.task,
            self.problems,
            self.config,
            base_prompts=self.base_prompts,
            progress=self.progress,
        )
        populations, origins = self._initial()
        state = self._read_state()
        if state is None:
            context = PromptSet(populations[0][0][0], tuple(p[0][0] for p in populations[1:]))
            scored: list[list[Scored] | None] = [None] * len(populations)
            iteration, position = 0, 0
        else:
            context = PromptSet(state["context"][0], tuple(state["context"][1:]))
            scored = [
                None if p is None else [Scored(t, s) for t, s in p] for p in state["populations"]
            ]
            iteration, position = state["iteration"], state["position"]
        while iteration <= self.config.iterations:
            while position < len(self.evolved):
                track = self.evolved[position]
                members = scored[track] or [Scored(t, 0.0) for t, _ in populations[track]]
                population, context = self._step(track, iteration, members, context, origins)
                scored[track] = population
                position += 1
                self._write_state(iteration, position, context, scored)
            iteration, position = iteration + 1, 0
            self._write_state(iteration, position, context, scored)
        return self._finish(context)

    def _initial(self) -> tuple[list[list[tuple[str, str]]], dict[str, str]]:
        """Each track's initial population as (text, origin), made once and read back after."""
        path = self._file("initial.json")
        if path.is_file():
            record = json.loads(path.read_text())
            populations = [[(t, o) for t, o in p] for p in record["populations"]]
        else:
            n = self.config.population
            drafted: list[list[str]] = [[] for _ in self.society.agents]
            if self.piles is not None and any(t > 0 for t in self.evolved):
                drafted = _draft(
                    self.society,
                    self.piles,
                    self.journal,
                    self.ledger,
                    drafts=self.config.drafts,
                    examples=self.config.examples,
                    seed=self.config.seed,
                )
            instruction = self.base_prompts.instruction if self.base_prompts else ""
            populations = []
            for track in range(len(self.names)):
                if track == 0:
                    given = [(instruction, "given")]
                    pool = [*given, *((s, "seed") for s in self.seed_instructions)]
                else:
                    agent = self.society.agents[track - 1]
                    given = [(agent.role, "given")]
                    pool = [
                        *((d, "draft") for d in drafted[track - 1]),
                        *given,
                        *((s, "seed") for s in self.seed_roles),
                    ]
                if track not in self.evolved:
                    populations.append([(given[0][0].strip(), "given")])
                    continue
                population = _unique(pool, n)
                if not population:
                    raise ValueError(
                        f"the initial population of {self.names[track]} is empty: give seed "
                        "prompts (seed_roles / seed_instructions), piles to draft roles from, "
                        "or a current role / instruction"
                    )
                if self.config.optimizer == "de" and len(population) < 3:
                    raise ValueError(
                        f"de needs at least 3 distinct prompts in each population; "
                        f"{self.names[track]} has {len(population)}: add seed prompts or drafts"
                    )
                populations.append(population)
            write_text_atomic(
                path,
                json.dumps({"tracks": self.names, "populations": populations}, indent=1) + "\n",
            )
        origins = {f"{track}:{t}": o for track, p in enumerate(populations) for t, o in p}
        return populations, origins

    def _step(
        self,
        track: int,
        iteration: int,
        members: list[Scored],
        context: PromptSet,
        origins: Mapping[str, str],
    ) -> tuple[list[Scored], PromptSet]:
        """One step of one track: its population scored beside the current best of the other
        tracks, then (after iteration 0) one generation; the context takes the new best."""
        name = self.names[track]
        label = f"{name} iter {iteration}"

        def score(text: str) -> float:
            return self.cache.score(context.with_track(track, text), label)

        population = [Scored(m.text, score(m.text)) for m in members]
        if iteration == 0:
            for slot, member in enumerate(population):
                self._record(
                    track,
                    iteration,
                    f"initial:{slot}",
                    origins.get(f"{track}:{member.text}", ""),
                    Child((), "", member.text, member.score),
                    context,
                )
        else:
            rng = random.Random(f"evoprompt:{self.config.seed}:{iteration}:{track}")
            place = f"{iteration}:{name}"

            def ask(requests: list[str]) -> list[str]:
                pairs = [(f"{place}:{i}", r) for i, r in enumerate(requests)]
                return self.journal.ask(
                    self.optimizer, pairs, {"iteration": iteration, "track": name}
                )

            kind, max_chars = _kind(track), self.config.max_prompt_chars
            if self.config.optimizer == "ga":
                population, children = ga_generation(
                    population,
                    n=self.config.population,
                    ask=ask,
                    score=score,
                    rng=rng,
                    kind=kind,
                    max_chars=max_chars,
                )
            else:
                population, children = de_generation(
                    population, ask=ask, score=score, rng=rng, kind=kind, max_chars=max_chars
                )
            for slot, child in enumerate(children):
                self._record(
                    track, iteration, f"child:{slot}", self.config.optimizer, child, context
                )
        best = best_of(population)
        context = context.with_track(track, best.text)
        self.steps.add(
            {
                "key": f"{iteration}:{name}",
                "iteration": iteration,
                "track": name,
                "population": [[m.text, m.score] for m in population],
                "best": best.score,
                "set": context.digest(),
            }
        )
        log.info("EvoPrompt iteration %d, %s: best %.3f", iteration, name, best.score)
        return population, context

    def _record(
        self, track: int, iteration: int, slot: str, origin: str, child: Child, context: PromptSet
    ) -> None:
        name = self.names[track]
        scored_in = context.with_track(track, child.text).digest() if child.text else None
        self.ledger.add(
            {
                "key": f"{iteration}:{name}:{slot}",
                "track": name,
                "iteration": iteration,
                "origin": origin,
                "parents": list(child.parents),
                "text": child.text,
                "score": child.score,
                "set": scored_in,
                "failure": child.failure,
                "reply": child.reply if child.failure else None,
            }
        )

    def _read_state(self) -> dict[str, Any] | None:
        path = self._file("state.json")
        return json.loads(path.read_text()) if path.is_file() else None

    def _write_state(
        self,
        iteration: int,
        position: int,
        context: PromptSet,
        scored: Sequence[Sequence[Scored] | None],
    ) -> None:
        state = {
            "iteration": iteration,
            "position": position,
            "context": list(context.texts),
            "populations": [None if p is None else [[m.text, m.score] for m in p] for p in scored],
        }
        write_text_atomic(self._file("state.json"), json.dumps(state, indent=1) + "\n")

    def _finish(self, context: PromptSet) -> EvolvedPrompts:
        results = self.cache.results(context, "result")
        n = len(results)
        result = EvolvedPrompts(
            instruction=context.instruction,
            roles=context.roles,
            fitness=fitness(results, self.config.agreement_weight),
            accuracy=sum(r.get("correct") is True for r in results) / n,
            agreement=sum(float(r.get("consensus_fraction") or 0.0) for r in results) / n,
            usage=self.usage(),
            run_dir=str(self.root),
        )
        record = {**asdict(result), "roles": list(result.roles)}
        write_text_atomic(self._file("result.json"), json.dumps(record, indent=1) + "\n")
        return result

    def usage(self) -> dict[str, int]:
        """The model calls (and tokens, where reported) the run directory records."""
        journal = self.journal.records.by_key.values()
        sets = list((self.root / "scores").glob("*.json"))
        debates = [
            r for path in sets for r in json.loads(path.read_text()).get("problems", {}).values()
        ]
        candidates = list(self.ledger.by_key.values())
        return {
            "optimizer_calls": len(journal),
            "optimizer_tokens": sum(int(r.get("tokens", 0)) for r in journal),
            "prompt_sets": len(sets),
            "debates": len(debates),
            "debate_calls": sum(int(r.get("calls", 0)) for r in debates),
            "debate_tokens": sum(int(r.get("tokens", 0)) for r in debates),
            "candidates": len(candidates),
            "failed_candidates": sum(1 for c in candidates if c.get("failure")),
        }
