"""Few-shot adaptation by the cross-entropy method (Transformer²'s third strategy).

The experts' scales are mixed layer by layer: with ``K`` experts and weights ``α[k, l]``,
each target matrix of layer ``l`` gets the scales

    m = Σ_k α[k, l] · σ(z_k)

The expert's rescaling keeps the sum of the singular values (:mod:`mafl_graph.svf.expert`),
so scales can be multiplied by any positive constant without changing the weights: a mixture
is stored as an ordinary :class:`~mafl_graph.svf.SVFExpert` with ``z = logit(m / (c·max m))``
(``c`` slightly above 1), exact wherever ``m > 0``. Scales a negative weight pushes to zero or
below are floored at 1e-7 of the largest.

The search: ``α`` drawn from independent normals, starting at mean ``1/K`` and standard
deviation ``init_std``; each generation scores ``population`` samples on the few examples and
refits mean and deviation to the ``elites`` best. Fitness is the accuracy on the examples
(greedy replies), ties broken by the mean log-likelihood of the replies that were right. The
defaults are the paper's (population 32, 6 elites, 50 generations, 10 examples); on a CPU
that is 16,000 replies, so smaller settings are what the tests and examples use.

A search runs in a directory (``cem_state.json`` after each generation, every candidate and
its fitness recorded; ``expert/``, the best mixture) and resumes there; the directory is the
cache per task: the same task, examples and experts return the finished mixture at once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mafl_graph.rundir import write_json
from mafl_graph.svf.config import CEMConfig
from mafl_graph.tasks.base import Problem, Task

if TYPE_CHECKING:
    import torch

    from mafl_graph.svf.decomposition import Decomposition
    from mafl_graph.svf.expert import SVFExpert

STATE_FILE = "cem_state.json"
EXPERT_DIR = "expert"
FLOOR = 1e-7


def layer_of(name: str) -> int:
    """The decoder layer index in a module name (``model.layers.3.mlp.up_proj`` -> 3)."""
    from mafl_graph.svf.decomposition import _layer_index

    index = _layer_index(name)
    if index is None:
        raise ValueError(f"{name} is in no numbered layer: CEM mixes experts layer by layer")
    return index


def mix_experts(experts: Sequence[SVFExpert], alphas: torch.Tensor) -> SVFExpert:
    """The expert whose scales are ``Σ_k alphas[k, l] σ(z_k)`` in layer ``l`` (``alphas``:
    ``[K, L]`` over the experts' layers in order)."""
    import torch

    from mafl_graph.svf.expert import SVFExpert

    if not experts:
        raise ValueError("CEM mixes experts: give at least one")
    first = experts[0]
    for other in experts[1:]:
        if set(other.z) != set(first.z) or other.fingerprint != first.fingerprint:
            raise ValueError(
                "The experts to mix cover other matrices or another base "
                f"({other.base_name!r} vs {first.base_name!r}): mix experts of one library"
            )
    layers = sorted({layer_of(n) for n in first.z})
    if tuple(alphas.shape) != (len(experts), len(layers)):
        raise ValueError(
            f"alphas must be [experts, layers] = [{len(experts)}, {len(layers)}]; "
            f"got {list(alphas.shape)}"
        )
    column = {layer: i for i, layer in enumerate(layers)}
    z = {}
    with torch.no_grad():
        for name in first.z:
            weights = alphas[:, column[layer_of(name)]].float()
            m = sum(w * e.scales(name) for w, e in zip(weights, experts, strict=True))
            m = torch.as_tensor(m)
            top = m.max()
            if not top > 0:  # every scale at or below zero: fall back to equal scales
                m = torch.ones_like(m)
                top = m.max()
            m = torch.clamp(m, min=FLOOR * float(top)) / (float(top) * (1 + 1e-3))
            z[name] = torch.logit(m).float()
    return SVFExpert(
        z={n: t.requires_grad_() for n, t in z.items()},
        base_name=first.base_name,
        fingerprint=first.fingerprint,
        targets=first.targets,
        layers=first.layers,
        shapes=dict(first.shapes),
        settings={},
    )


@dataclass
class CEMResult:
    expert_path: Path
    labels: list[str]
    alphas: list[list[float]]
    """``[K][L]``: the best mixture's weights."""
    fitness: float
    """The best mixture's accuracy on the examples."""
    likelihood: float
    history: list[dict[str, Any]]
    """Per generation: mean and best fitness, the deviations' mean."""


def few_shot_cem(
    experts: Mapping[str, str | Path],
    task: Task,
    examples: Sequence[Problem],
    *,
    out_dir: str | Path,
    model_path: str = "smollm2",
    config: CEMConfig | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> CEMResult:
    """Search mixture weights of ``experts`` (``{label: directory}``) on ``examples`` of
    ``task``; the best mixture is saved in ``out_dir/expert`` (serve it as any expert)."""
    import torch
    from tqdm.auto import tqdm

    from mafl_graph.svf.adapt import ExpertLibrary
    from mafl_graph.svf.config import ReinforceConfig
    from mafl_graph.svf.expert import SVFExpert
    from mafl_graph.svf.reinforce import load_policy

    config = config or CEMConfig()
    library = ExpertLibrary(experts)  # refuses no experts, or experts of different bases
    examples = list(examples)[: config.examples]
    if not examples:
        raise ValueError("Few-shot CEM needs at least one example of the task")
    out = Path(out_dir).expanduser()
    first = json.loads((Path(library.paths[library.labels[0]]) / "svf_config.json").read_text())
    settings = {
        "task": task.name,
        "experts": library.paths,
        "examples": [p.id for p in examples],
        "model_path": model_path,
        "config": dataclasses.asdict(config),
    }
    state_path = out / STATE_FILE
    state: dict[str, Any] = json.loads(state_path.read_text()) if state_path.is_file() else {}
    if state and state.get("settings") != settings:
        raise ValueError(
            f"{out} holds a CEM search with other settings: pass another directory, or the "
            "same experts, task, examples and settings to resume it"
        )
    if state.get("done"):
        return _result(out, state)

    policy_config = ReinforceConfig(
        targets=tuple(first["targets"]),
        layers=None if first["layers"] is None else tuple(first["layers"]),
        max_new_tokens=config.max_new_tokens,
    )
    model, tokenizer, decomposition = load_policy(model_path, policy_config, cache_dir=cache_dir)
    loaded = [SVFExpert.load(library.paths[label], decomposition) for label in library.labels]
    n_layers = len({layer_of(n) for n in decomposition.names})
    k = len(loaded)
    if not state:
        state = {
            "settings": settings,
            "mean": [[1.0 / k] * n_layers for _ in range(k)],
            "std": [[config.init_std] * n_layers for _ in range(k)],
            "generation": 0,
            "best": None,
            "history": [],
            "candidates": [],
        }
    with tqdm(
        total=config.generations,
        initial=state["generation"],
        desc=f"CEM {task.name}",
        disable=not progress,
    ) as bar:
        while state["generation"] < config.generations:
            generation = state["generation"] + 1
            generator = torch.Generator().manual_seed(config.seed * 1_000_003 + generation)
            mean, std = torch.tensor(state["mean"]), torch.tensor(state["std"])
            samples = mean + std * torch.randn(
                (config.population, k, n_layers), generator=generator
            )
            scored = []
            for alphas in samples:
                fitness = _fitness(
                    model,
                    tokenizer,
                    decomposition,
                    mix_experts(loaded, alphas),
                    task,
                    examples,
                    config,
                )
                scored.append((fitness, alphas))
                state["candidates"].append(
                    {"generation": generation, "alphas": alphas.tolist(), "fitness": list(fitness)}
                )
            scored.sort(key=lambda item: item[0], reverse=True)
            elite = torch.stack([a for _, a in scored[: config.elites]])
            state["mean"] = elite.mean(0).tolist()
            state["std"] = elite.std(0, unbiased=False).clamp(min=config.min_std).tolist()
            best_fitness, best_alphas = scored[0]
            if state["best"] is None or list(best_fitness) > state["best"]["fitness"]:
                state["best"] = {"fitness": list(best_fitness), "alphas": best_alphas.tolist()}
                mixture = mix_experts(loaded, best_alphas)
                mixture.settings = {
                    "cem": {
                        **settings,
                        "labels": list(library.labels),
                        "alphas": best_alphas.tolist(),
                        "fitness": list(best_fitness),
                    }
                }
                mixture.save(out / EXPERT_DIR)
            fits = [f[0] for f, _ in scored]
            state["history"].append(
                {
                    "generation": generation,
                    "mean_accuracy": sum(fits) / len(fits),
                    "best_accuracy": fits[0],
                    "mean_std": float(torch.tensor(state["std"]).mean()),
                }
            )
            state["generation"] = generation
            write_json(state_path, state)
            bar.set_postfix(best=f"{state['best']['fitness'][0]:.2f}", refresh=False)
            bar.update()
    state["done"] = True
    state["labels"] = list(library.labels)
    write_json(state_path, state)
    return _result(out, state)


def _fitness(
    model: Any,
    tokenizer: Any,
    decomposition: Decomposition,
    expert: SVFExpert,
    task: Task,
    examples: Sequence[Problem],
    config: CEMConfig,
) -> tuple[float, float]:
    """(accuracy on ``examples``, mean log-likelihood per token of the right replies, or −inf
    when none is right)."""
    import torch

    from mafl_graph.svf.reinforce import generate, policy_loss, prompt_ids, reward

    rollouts = generate(
        model,
        tokenizer,
        decomposition,
        expert,
        [prompt_ids(tokenizer, task, p) for p in examples],
        max_new_tokens=config.max_new_tokens,
    )
    rewards = [reward(task, p, r.text) for p, r in zip(examples, rollouts, strict=True)]
    right = [i for i, value in enumerate(rewards) if value > 0]
    accuracy = len(right) / len(examples)
    if not right:
        return accuracy, -math.inf
    kept = [rollouts[i] for i in right]
    with torch.no_grad():
        _, likelihood, _ = policy_loss(model, decomposition, expert, kept, [1.0] * len(kept))
    tokens = sum(len(r.completion) for r in kept)
    return accuracy, float(likelihood.sum()) / max(tokens, 1)


def _result(out: Path, state: Mapping[str, Any]) -> CEMResult:
    best = state["best"]
    return CEMResult(
        expert_path=out / EXPERT_DIR,
        labels=list(state["labels"]),
        alphas=best["alphas"],
        fitness=best["fitness"][0],
        likelihood=best["fitness"][1],
        history=list(state["history"]),
    )


def cache_key(task: Task, examples: Sequence[Problem], experts: Mapping[str, str | Path]) -> str:
    """A directory name for one task's search: the same task, examples and experts share it."""
    text = json.dumps(
        [task.name, [p.id for p in examples], {k: str(v) for k, v in sorted(experts.items())}]
    )
    return f"{task.name}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"
