"""REINFORCE training of an SVF expert on a task's own grader (Transformer², Sun et al. 2025).

Each step draws ``batch_size`` training problems, lets the current expert answer each one
``rollouts`` times (greedy by default, as the reference does; sampled with ``temperature``),
grades every reply with the task (+1 right, −1 wrong or unparseable, 0 undecided) and takes
one Adam step on the z vectors of

    loss = mean over rollouts of ( −reward · Σ_t log p(y_t)  +  β · Σ_t KL(p_expert ‖ p_base) )

over the generated tokens ``y_t`` (the reference's ``Reinforce.step_optimization``: no
baseline, β = ``kl_coefficient`` = 0 by default, the gradient norm clipped to 1e-3). Its KL is
``F.kl_div(expert, base)``, i.e. KL(base ‖ expert); here it is KL(expert ‖ base), the penalty
of KL-regularised policy gradients, and zero when the expert is the base either way.

Both passes put the expert into a view of the shared base through the factors
(:func:`~mafl_graph.svf.mixed_experts`, the fast path): rollouts under ``torch.no_grad()``,
the loss with grad, the context opened once per optimiser step so what it builds from z is
rebuilt after each update. Every ``validate_every`` steps the expert answers the validation
problems greedily; the most accurate expert so far is saved to ``<out_dir>/best`` and the
learning curve to ``curve.json``, and training stops after ``patience`` validations without
improvement. The latest expert and Adam's state are saved at each validation, so an
interrupted run resumes from its last validation, and a finished run returns its result at
once.

The step cost, from ``python benchmarks/svf_reinforce_step.py`` (SmolLM2-135M-Instruct in
float32, an expert on all 90 MLP matrices; Intel Xeon, 2 cores shared with two other jobs,
1 torch thread; 2026-12-03, commit c033336): on 8 sums, greedy replies of 14 tokens on
average, a REINFORCE step (rollouts and update) takes 23.0 s against 15.9 s for a PEFT LoRA
r=16 SFT step on the same tokens, 1.44x. The update costs what an SFT step costs; the
rollouts, one decoding step per new token, grow with ``max_new_tokens`` and are what makes
REINFORCE dearer. ``dtype="float16"`` runs on this CPU (torch 2's CPU kernels cover its ops)
at about the same speed, so it is not refused.

``tests/test_svf_reinforce.py`` runs the algorithm on the last two layers' MLPs with 6 new
tokens: about 1.1 s a step.
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mafl_graph.rundir import write_json
from mafl_graph.svf.config import ReinforceConfig
from mafl_graph.tasks.base import Problem, Task, task_for

if TYPE_CHECKING:
    import torch

    from mafl_graph.svf.decomposition import Decomposition
    from mafl_graph.svf.expert import SVFExpert

CONFIG_FILE = "reinforce_config.json"
CURVE_FILE = "curve.json"
RESULT_FILE = "result.json"
STATE_FILE = "optimizer.pt"
BEST_DIR = "best"
LATEST_DIR = "latest"


@dataclass
class Rollout:
    """One reply: the prompt's token ids, the generated ids (through the first end-of-turn
    token, which is part of what the policy chose), and the decoded text."""

    prompt: list[int]
    completion: list[int]
    text: str


@dataclass
class StepResult:
    """What one :func:`reinforce_step` did."""

    reward: float
    """Mean reward over the step's rollouts."""
    kl: float
    """Mean KL(expert ‖ base) per rollout (0.0 when ``kl_coefficient`` is 0: not computed)."""
    loss: float
    seconds: float
    rollouts: list[Rollout]
    rewards: list[float]


@dataclass
class ReinforceResult:
    """The outcome of :func:`train_reinforce`."""

    expert_path: Path
    """The best expert's directory (``SVFExpert.load`` or ``LocalChatModel(adapter=...)``)."""
    validation_accuracy: float
    best_step: int
    curve: list[dict[str, Any]]
    """Per step: ``step``, ``train_reward``, ``kl``, ``seconds``, ``validation_accuracy``
    (None between validations)."""
    seconds_per_step: float
    """Mean over the steps of :attr:`curve`, resumed ones included (rollouts and update;
    validations excluded)."""
    stopped_early: bool

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "expert_path": str(self.expert_path)}


# The policy ---------------------------------------------------------------------------------


def prompt_ids(tokenizer: Any, task: Task, problem: Problem) -> list[int]:
    """``problem``'s question as the engine renders it: the task's user message through the
    chat template with the generation prompt."""
    message = task_for(task, problem).question_prompt(problem)
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": message}],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=False,
    )
    return list(ids)


def generate(
    model: Any,
    tokenizer: Any,
    decomposition: Decomposition,
    expert: SVFExpert | None,
    prompts: Sequence[list[int]],
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
) -> list[Rollout]:
    """One reply per prompt from ``model`` as ``expert`` (None: the base), without grad."""
    import torch

    from mafl_graph.svf.apply import mixed_experts

    pad = _pad_id(tokenizer)
    stops = _eos_ids(model, tokenizer)
    width = max(len(p) for p in prompts)
    # Left padding keeps every row's last prompt token in the last column, where generation
    # continues from.
    ids = torch.tensor([[pad] * (width - len(p)) + list(p) for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    sampling: dict[str, Any] = (
        {"do_sample": True, "temperature": temperature, "top_p": 1.0, "top_k": 0}
        if temperature > 0
        else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    )
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), mixed_experts(model, decomposition, [expert] * len(prompts)):
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                pad_token_id=pad,
                eos_token_id=sorted(stops),
                use_cache=True,
                **sampling,
            )
    finally:
        model.train(was_training)
    rollouts = []
    for prompt, row in zip(prompts, out[:, width:].tolist(), strict=True):
        completion = []
        for token in row:
            completion.append(token)
            if token in stops:
                break
        rollouts.append(
            Rollout(
                list(prompt), completion, tokenizer.decode(completion, skip_special_tokens=True)
            )
        )
    return rollouts


def reward(task: Task, problem: Problem, text: str) -> float:
    """+1 if the task grades ``text``'s answer right, −1 if wrong or unparseable, 0 if its
    grading is undecided (it ran out of time: no evidence either way)."""
    from mafl_graph.svf.runs import grade_reply

    return {True: 1.0, False: -1.0, None: 0.0}[grade_reply(task, problem, text)]


def policy_loss(
    model: Any,
    decomposition: Decomposition,
    expert: SVFExpert,
    rollouts: Sequence[Rollout],
    rewards: Sequence[float],
    *,
    kl_coefficient: float = 0.0,
    backward: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, each rollout's log-likelihood, each rollout's KL(expert ‖ base)), detached.

    The loss is the mean over rollouts of ``−reward · log-likelihood + kl_coefficient · KL``,
    both summed over the rollout's generated tokens; the KL is zeros, not computed, when
    ``kl_coefficient`` is 0. ``backward``: under grad, also accumulate the loss's gradient
    into z. The backward pass runs inside the factors' context, because activation
    checkpointing recomputes each layer's forward then and must see the same expert; the
    context is opened here, so call this again after every optimiser step.
    """
    import torch

    from mafl_graph.svf.apply import mixed_experts

    ids, mask, targets = _batch(rollouts, model)
    base_logprobs = None
    if kl_coefficient > 0:
        with torch.no_grad():
            base = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
            base_logprobs = torch.log_softmax(base[:, :-1][targets].float(), dim=-1)
            del base
    row = torch.arange(len(rollouts), device=ids.device).unsqueeze(1).expand_as(targets)[targets]
    weights = torch.tensor(list(rewards), dtype=torch.float32, device=ids.device)
    with mixed_experts(model, decomposition, [expert] * len(rollouts)):
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        # Only the generated positions: the full vocabulary over every prompt token is most
        # of a step's memory and none of its gradient.
        logprobs = torch.log_softmax(logits[:, :-1][targets].float(), dim=-1)
        del logits
        chosen = logprobs.gather(1, ids[:, 1:][targets].unsqueeze(1)).squeeze(1)
        likelihood = chosen.new_zeros(len(rollouts)).index_add(0, row, chosen)
        kl = chosen.new_zeros(len(rollouts))
        if base_logprobs is not None:
            per_token = (logprobs.exp() * (logprobs - base_logprobs)).sum(-1)
            kl = kl.index_add(0, row, per_token)
        loss = (-weights * likelihood + kl_coefficient * kl).mean()
        if backward:
            loss.backward()
    return loss.detach(), likelihood.detach(), kl.detach()


def reinforce_step(
    model: Any,
    tokenizer: Any,
    decomposition: Decomposition,
    expert: SVFExpert,
    optimizer: Any,
    task: Task,
    problems: Sequence[Problem],
    config: ReinforceConfig,
) -> StepResult:
    """One step of the algorithm: rollouts of ``problems`` by ``expert``, their rewards, and
    one clipped Adam step on its z vectors."""
    import torch

    started = time.perf_counter()
    prompts = [prompt_ids(tokenizer, task, p) for p in problems for _ in range(config.rollouts)]
    rollouts = generate(
        model,
        tokenizer,
        decomposition,
        expert,
        prompts,
        max_new_tokens=config.max_new_tokens,
        temperature=config.temperature,
    )
    asked = [p for p in problems for _ in range(config.rollouts)]
    rewards = [reward(task, p, r.text) for p, r in zip(asked, rollouts, strict=True)]
    model.train()  # activation checkpointing runs only in training mode
    try:
        with torch.enable_grad():
            loss, _, kl = policy_loss(
                model,
                decomposition,
                expert,
                rollouts,
                rewards,
                kl_coefficient=config.kl_coefficient,
                backward=True,
            )
    finally:
        model.eval()
    torch.nn.utils.clip_grad_norm_(expert.parameters(), config.max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return StepResult(
        reward=sum(rewards) / len(rewards),
        kl=float(kl.mean()),
        loss=float(loss),
        seconds=time.perf_counter() - started,
        rollouts=rollouts,
        rewards=rewards,
    )


def accuracy(
    model: Any,
    tokenizer: Any,
    decomposition: Decomposition,
    expert: SVFExpert | None,
    task: Task,
    problems: Sequence[Problem],
    *,
    batch_size: int,
    max_new_tokens: int,
) -> float:
    """The share of ``problems`` that ``expert`` answers right, greedily, ``batch_size`` at a
    time (undecided grades count as not right)."""
    right = 0
    for start in range(0, len(problems), batch_size):
        chunk = problems[start : start + batch_size]
        rollouts = generate(
            model,
            tokenizer,
            decomposition,
            expert,
            [prompt_ids(tokenizer, task, p) for p in chunk],
            max_new_tokens=max_new_tokens,
        )
        right += sum(reward(task, p, r.text) > 0 for p, r in zip(chunk, rollouts, strict=True))
    return right / len(problems)


# The run ------------------------------------------------------------------------------------


def load_policy(
    model_path: str | Path, config: ReinforceConfig, *, cache_dir: str | Path | None = None
) -> tuple[Any, Any, Decomposition]:
    """A view of the shared base of ``model_path`` in ``config.dtype`` ready to train an
    expert (activation checkpointing on), its tokenizer, and the decomposition of its
    targets (cached under ``cache_dir``)."""
    from mafl_graph.local.loading import load_tokenizer, prepare_model_dir, shared_base
    from mafl_graph.svf.decomposition import decompose

    model_dir = prepare_model_dir(model_path)
    model = shared_base(model_dir, config.dtype)
    # Each decoder layer's activations are recomputed in the backward pass instead of kept
    # for all layers at once, as in the SFT tuner; the factors' context stays open until the
    # backward pass is done, so the recomputation sees the same expert.
    model.activation_checkpointing_enable()
    decomposition = decompose(
        model, targets=config.targets, layers=config.layers, cache_dir=cache_dir, progress=False
    )
    return model, load_tokenizer(model_dir), decomposition


def train_reinforce(
    task: Task,
    train_problems: Sequence[Problem],
    validation_problems: Sequence[Problem],
    *,
    out_dir: str | Path,
    model_path: str | Path = "smollm2",
    config: ReinforceConfig | None = None,
    expert: SVFExpert | str | Path | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> ReinforceResult:
    """Train an SVF expert of ``model_path`` with REINFORCE on ``task``'s grader.

    ``expert`` is where to start (an expert or its directory; None: a new one seeded with
    ``config.seed``); a resumed run continues its own latest expert instead. Everything goes
    to ``out_dir``: ``best/`` (the expert of the best validation accuracy, its step and
    accuracy in its settings), ``curve.json``, ``reinforce_config.json``, and while running
    ``latest/`` with Adam's state, from which an interrupted run resumes; a finished run's
    ``result.json`` is returned as is. A directory made with other settings is refused.
    ``cache_dir`` holds the decomposition (default: the package's cache).
    """
    import torch
    from tqdm.auto import tqdm

    from mafl_graph.svf.expert import SVFExpert

    config = config or ReinforceConfig()
    if not train_problems or not validation_problems:
        raise ValueError(
            f"REINFORCE needs training and validation problems; got {len(train_problems)} "
            f"and {len(validation_problems)}"
        )
    out = Path(out_dir).expanduser()
    settings = {
        "task": task.name,
        "model_path": str(model_path),
        "start": str(expert) if isinstance(expert, str | Path) else None,
        "config": config.to_json(),
    }
    claim_settings(out / CONFIG_FILE, settings)
    if (out / RESULT_FILE).is_file():
        return _read_result(out)

    model, tokenizer, decomposition = load_policy(model_path, config, cache_dir=cache_dir)
    if isinstance(expert, str | Path):
        expert = SVFExpert.load(expert, decomposition)
    elif expert is None:
        expert = SVFExpert.init(decomposition, seed=config.seed)
    else:
        expert.check(decomposition)
    optimizer = torch.optim.Adam(expert.parameters(), lr=config.learning_rate)
    curve: list[dict[str, Any]] = []
    best, best_step, since_best, start = -1.0, 0, 0, 0
    if (out / STATE_FILE).is_file():
        state = torch.load(out / STATE_FILE, weights_only=True)
        expert = SVFExpert.load(out / LATEST_DIR, decomposition)
        optimizer = torch.optim.Adam(expert.parameters(), lr=config.learning_rate)
        optimizer.load_state_dict(state["optimizer"])
        curve = json.loads((out / CURVE_FILE).read_text())["curve"]
        start, best, best_step, since_best = (
            int(state["step"]),
            float(state["best"]),
            int(state["best_step"]),
            int(state["since_best"]),
        )
    checks = dict(batch_size=config.batch_size, max_new_tokens=config.max_new_tokens)
    stopped = False
    with tqdm(
        total=config.steps, initial=start, desc=f"REINFORCE {task.name}", disable=not progress
    ) as bar:
        for step in range(start + 1, config.steps + 1):
            # Sampled rollouts draw from a stream of (seed, step) alone, as the batches do,
            # so a resumed run samples what the uninterrupted one would have.
            torch.manual_seed(config.seed * 1_000_003 + step)
            batch = _batch_of(train_problems, config, step)
            result = reinforce_step(
                model, tokenizer, decomposition, expert, optimizer, task, batch, config
            )
            entry: dict[str, Any] = {
                "step": step,
                "train_reward": result.reward,
                "kl": result.kl,
                "seconds": result.seconds,
                "validation_accuracy": None,
            }
            curve.append(entry)
            if step % config.validate_every == 0 or step == config.steps:
                acc = accuracy(
                    model, tokenizer, decomposition, expert, task, validation_problems, **checks
                )
                entry["validation_accuracy"] = acc
                if acc > best:
                    best, best_step, since_best = acc, step, 0
                    expert.settings = {
                        **expert.settings,
                        "reinforce": {**settings, "step": step, "validation_accuracy": acc},
                    }
                    expert.save(out / BEST_DIR)
                else:
                    since_best += 1
                stopped = config.patience is not None and since_best >= config.patience
                _checkpoint(out, expert, optimizer, curve, step, best, best_step, since_best)
                bar.set_postfix(reward=f"{result.reward:+.2f}", val=f"{acc:.2f}", refresh=False)
            else:
                bar.set_postfix(reward=f"{result.reward:+.2f}", refresh=False)
            bar.update()
            if stopped:
                break
    seconds = [e["seconds"] for e in curve]
    final = ReinforceResult(
        expert_path=out / BEST_DIR,
        validation_accuracy=best,
        best_step=best_step,
        curve=curve,
        seconds_per_step=sum(seconds) / len(seconds),
        stopped_early=stopped,
    )
    (out / RESULT_FILE).write_text(json.dumps(final.to_json(), indent=2) + "\n")
    (out / STATE_FILE).unlink(missing_ok=True)
    return final


def _batch_of(problems: Sequence[Problem], config: ReinforceConfig, step: int) -> list[Problem]:
    """Step ``step``'s problems: drawn without replacement, as the reference does, from a
    generator of (seed, step) alone, so a resumed run draws what the first one would have."""
    rng = random.Random(f"{config.seed}:{step}")
    return rng.sample(list(problems), min(config.batch_size, len(problems)))


def claim_settings(path: Path, settings: dict[str, Any], *, what: str = "REINFORCE run") -> None:
    """Write a run's ``settings`` to ``path``, or check that they are the ones already there
    (a run resumes only with the settings it started with)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_file():
        found = json.loads(path.read_text())
        if found != settings:
            differ = sorted(
                k for k in {**found, **settings} if found.get(k) != settings.get(k)
            ) or ["config"]
            raise ValueError(
                f"{path.parent} holds a {what} with other settings ({', '.join(differ)}: "
                f"{ {k: found.get(k) for k in differ} } there, "
                f"{ {k: settings.get(k) for k in differ} } now): pass another directory, or "
                "the same settings to resume it"
            )
        return
    write_json(path, settings)


def _checkpoint(
    out: Path,
    expert: SVFExpert,
    optimizer: Any,
    curve: list[dict[str, Any]],
    step: int,
    best: float,
    best_step: int,
    since_best: int,
) -> None:
    import torch

    expert.save(out / LATEST_DIR)
    state = {
        "optimizer": optimizer.state_dict(),
        "step": step,
        "best": best,
        "best_step": best_step,
        "since_best": since_best,
    }
    torch.save(state, out / STATE_FILE)
    (out / CURVE_FILE).write_text(json.dumps({"curve": curve}, indent=2) + "\n")


def _read_result(out: Path) -> ReinforceResult:
    data = json.loads((out / RESULT_FILE).read_text())
    data["expert_path"] = Path(data["expert_path"])
    return ReinforceResult(**data)


def _batch(rollouts: Sequence[Rollout], model: Any) -> tuple[Any, Any, Any]:
    """Right-padded ``prompt + completion`` ids, their attention mask, and which positions
    of ``logits[:, :-1]`` predict a generated token."""
    import torch

    width = max(len(r.prompt) + len(r.completion) for r in rollouts)
    ids = torch.zeros((len(rollouts), width), dtype=torch.long)
    mask = torch.zeros((len(rollouts), width), dtype=torch.long)
    targets = torch.zeros((len(rollouts), width - 1), dtype=torch.bool)
    for i, r in enumerate(rollouts):
        row = r.prompt + r.completion
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
        targets[i, len(r.prompt) - 1 : len(row) - 1] = True
    return ids.to(model.device), mask.to(model.device), targets.to(model.device)


def _pad_id(tokenizer: Any) -> int:
    pad = tokenizer.pad_token_id
    return int(pad if pad is not None else tokenizer.eos_token_id)


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    found = getattr(model.generation_config, "eos_token_id", None)
    ids = set(found if isinstance(found, list) else [] if found is None else [found])
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return ids
