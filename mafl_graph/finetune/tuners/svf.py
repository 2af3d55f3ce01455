"""Singular Value Fine-tuning of the local model: each agent's expert is a few z vectors.

An SVF expert (:mod:`mafl_graph.svf`) rescales the singular values of the base's MLP weights;
its z vectors, 51,840 values for SmolLM2-135M against LoRA's 4.9 million, are all that trains.
They train here with supervised cross-entropy on the same conversations, masked the same way,
as the LoRA tuner's (:mod:`~mafl_graph.finetune.tuners.local`): only assistant turns of
weight 1 are learned. The optimiser is the Transformer² reference's, Adam at 2e-3 with the
gradient norm clipped to 1e-3; its REINFORCE objective gives way to the debate's SFT datasets.

Each step puts the expert into a view of the process-wide base
(:func:`~mafl_graph.local.loading.shared_base`) for its forward and backward pass, through the
factors (:func:`~mafl_graph.svf.mixed_experts`, the default) or as merged weights
(:func:`~mafl_graph.svf.use_expert`): what goes in is built from z when the block opens and
carries its autograd graph, so it is rebuilt after every optimiser step, and the base's own
weights and forwards are back in place when the block closes. The two give the same losses.
Measured on SmolLM2-135M in float32 (2 cores shared with other work, so within about 2x;
2026-12-03): on two short conversations (batch 2, 22 trained tokens) a step takes 0.48 s
through the factors, 13.2 s merging the 90 MLP matrices, 0.54 s for LoRA r=16 on every linear
layer; on four of about 270 tokens, all three take about 32 s. Iteration k+1 loads iteration
k's expert and keeps training it. The expert directory goes to the run directory's
:meth:`~mafl_graph.rundir.RunLayout.adapter`, with ``tune_config.json`` and the metrics of
the LoRA tuner next to it, and ``LocalChatModel(adapter=dir)`` serves it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from mafl_graph.finetune.tuners.base import TunedModel
from mafl_graph.finetune.tuners.local import (
    LocalTuner,
    batch_stream,
    causal_lm_loss,
    collate,
    encode,
    publish_run,
    run_metrics,
)
from mafl_graph.finetune.tuners.options import TuneOptions
from mafl_graph.local.loading import (
    load_tokenizer,
    prepare_model_dir,
    release_memory,
    shared_base,
)

if TYPE_CHECKING:
    from mafl_graph.svf import Decomposition, SVFExpert

EXPERT_CONFIG = "svf_config.json"
"""The file that makes a directory an SVF expert (:meth:`~mafl_graph.svf.SVFExpert.save`)."""


@dataclass(frozen=True)
class SVFTuneConfig:
    """Every setting of one SVF tuning run; saved as ``tune_config.json`` by the expert.

    ``learning_rate`` and ``max_grad_norm`` are the Transformer² reference's; the number of
    steps follows ``epochs`` and ``batch_size`` as in the LoRA tuner.
    """

    epochs: float = 2.0
    max_steps: int | None = None
    """Stop after this many optimizer steps (overrides ``epochs``)."""
    learning_rate: float = 2e-3
    batch_size: int = 8
    max_grad_norm: float = 1e-3
    """The gradient norm over all z vectors is clipped to this (Adam rescales the step, so a
    small norm bounds the influence of one outlying batch rather than the step size)."""
    targets: tuple[str, ...] = ("gate_proj", "up_proj", "down_proj")
    """Short names of the linear modules that get a z vector (the reference: the MLP's)."""
    layers: tuple[int, ...] | None = None
    """Layer indices that get z vectors (negative ones count from the end); None: all."""
    max_length: int = 1024
    """Longer conversations are cut on the right; one with no trained token left is skipped."""
    seed: int = 0
    """Seeds the z initialisation and the order of examples."""
    dtype: str = "float32"
    method: Literal["factors", "merged"] = "factors"
    """How each step puts the expert into the model: ``"factors"`` runs every target through
    ``((x V) ⊙ S ⊙ m) Uᵀ`` (:func:`~mafl_graph.svf.mixed_experts`), a cost per token of about
    1.4 times the base weight's; ``"merged"`` builds ``U diag(S ⊙ m) Vᵀ`` of all targets each
    step (:func:`~mafl_graph.svf.use_expert`), about 3 GFLOP per MLP matrix forward and
    backward whatever the batch, as cheap only from about a thousand tokens a step."""


class SVFTuner(LocalTuner):
    """Trains an SVF expert of the local model (``model``: "smollm2", a GGUF or an HF
    directory) per agent and role.

    Datasets are OpenAI chat JSONL with weights (or records); iteration 1 starts a new expert
    on ``base`` (default ``model``), later ones continue a previous :class:`TunedModel`'s
    expert. The ledger, the run directory's layout, resuming and serving are the LoRA tuner's
    (``LocalChatModel(adapter=dir)`` serves an expert directory as it serves an adapter); only
    what is trained, and how, differs.
    """

    backend = "svf"
    provider_note = "hosted models have no weights; SVF needs a local model"
    config_type = SVFTuneConfig

    @classmethod
    def _config_from_options(cls, options: TuneOptions, seed: int) -> SVFTuneConfig:  # type: ignore[override]
        default = SVFTuneConfig()
        return SVFTuneConfig(
            epochs=options.epochs if options.epochs is not None else default.epochs,
            max_steps=options.max_steps,
            learning_rate=options.learning_rate
            if options.learning_rate is not None
            else default.learning_rate,
            batch_size=options.batch_size if options.batch_size is not None else default.batch_size,
            seed=seed,
        )

    @classmethod
    def check_options(cls, options: TuneOptions) -> None:
        if options.full:
            raise ValueError(
                "--full (full fine-tuning) does not apply to SVF, which trains only singular-value "
                "scales; drop --full, or tune with the local backend"
            )

    @classmethod
    def serving(cls, options: TuneOptions) -> dict[str, Any]:
        """An SVF expert as ``--base`` (a base boosted before multiagent fine-tuning, e.g. by
        `mafl svf train`) is what the untuned society answers with, and what iteration 1
        continues training."""
        return {"adapter": options.base} if options.base and _is_expert(options.base) else {}

    @classmethod
    def check_served(cls, tuned: TunedModel) -> None:
        if not (Path(tuned.model).expanduser() / EXPERT_CONFIG).is_file():
            raise FileNotFoundError(
                f"({tuned.name}): the SVF expert directory {tuned.model!r} does not exist or "
                f"lacks {EXPERT_CONFIG}; restore it, or tune iteration {tuned.iteration} again."
            )

    def _options(self, start: str, cfg: SVFTuneConfig) -> dict[str, Any]:  # type: ignore[override]
        return {"model_path": self._base_of(start)}

    def train(  # type: ignore[override]
        self,
        conversations: Sequence[Sequence[Mapping[str, Any]]],
        start: str,
        out: Path,
        cfg: SVFTuneConfig,
    ) -> dict[str, Any]:
        """Train an expert from ``start`` and save it to ``out`` (via a staging directory);
        return the metrics."""
        import torch

        torch.manual_seed(cfg.seed)
        base_dir = prepare_model_dir(self._base_of(start))
        tokenizer = load_tokenizer(base_dir)
        encoded = [e for c in conversations if (e := encode(tokenizer, c, cfg.max_length))]
        if not encoded:
            raise ValueError(
                f"No trainable example for {out.name}: every conversation lacks a weight-1 "
                "assistant turn within max_length tokens."
            )
        model = shared_base(base_dir, cfg.dtype)
        staging = out.with_name(out.name + ".staging")
        try:
            model.config.use_cache = False
            # Each decoder layer's activations are recomputed in the backward pass instead of
            # kept for all layers at once, as in the LoRA tuner; the merged weights stay in the
            # modules until the backward pass is done, so the recomputation sees the same ones.
            model.activation_checkpointing_enable()
            expert, decomposition = self.load_expert(model, start, cfg)
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
            steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * len(encoded) / cfg.batch_size))
            batches = (collate(b, pad) for b in batch_stream(encoded, cfg.batch_size, cfg.seed))
            losses, seconds = fit_expert(
                model,
                decomposition,
                expert,
                batches,
                steps,
                cfg,
                desc=f"tuning {out.name} (SVF)",
                progress=self.progress,
            )
            trained = [*expert.settings.get("sft", []), dataclasses.asdict(cfg)]
            expert.settings = {**expert.settings, "sft": trained}
            shutil.rmtree(staging, ignore_errors=True)
            expert.save(staging)
            parameters = expert.num_parameters
        finally:
            # The merged weights' graph and the optimizer state die with this view of the base.
            del model
            release_memory()
        metrics = run_metrics(
            conversations, encoded, losses, seconds, trainable_parameters=parameters, base=start
        )
        return publish_run(staging, out, cfg, metrics)

    def load_expert(
        self, model: Any, start: str, cfg: SVFTuneConfig
    ) -> tuple[SVFExpert, Decomposition]:
        """The expert to train and the decomposition of ``model`` it rescales: ``start``'s
        expert (its own targets and layers), or a new one seeded with ``cfg.seed``."""
        from mafl_graph.svf import SVFExpert, decompose

        if _is_expert(start):
            expert = SVFExpert.load(start)
            decomposition = decompose(
                model, targets=expert.targets, layers=expert.layers, progress=self.progress
            )
            expert.check(decomposition)
            return expert, decomposition
        decomposition = decompose(
            model, targets=cfg.targets, layers=cfg.layers, progress=self.progress
        )
        return SVFExpert.init(decomposition, seed=cfg.seed), decomposition

    def _base_of(self, start: str) -> str:
        """The model under the expert: ours when continuing an expert, else ``start`` itself."""
        return self.model_path if _is_expert(start) else start


def _is_expert(start: str) -> bool:
    return (Path(start).expanduser() / EXPERT_CONFIG).is_file()


# One step of the algorithm each --------------------------------------------------------------


def fit_expert(
    model: Any,
    decomposition: Decomposition,
    expert: SVFExpert,
    batches: Iterator[dict[str, Any]],
    steps: int,
    cfg: SVFTuneConfig,
    *,
    desc: str = "tuning",
    progress: bool = False,
) -> tuple[list[float], list[float]]:
    """Adam over ``expert``'s z vectors for ``steps`` steps; (loss, seconds) of each step.

    ``progress``: a tqdm bar named ``desc`` counts the steps, with the last loss beside it.
    """
    import torch
    from tqdm.auto import tqdm

    optimizer = torch.optim.Adam(expert.parameters(), lr=cfg.learning_rate)
    model.train()
    losses, seconds = [], []
    with tqdm(total=steps, desc=desc, unit="step", disable=not progress, leave=True) as bar:
        for _ in range(steps):
            started = time.perf_counter()
            loss = expert_step(model, decomposition, expert, optimizer, next(batches), cfg)
            seconds.append(time.perf_counter() - started)
            losses.append(loss)
            bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            bar.update()
    model.eval()
    return losses, seconds


def expert_step(
    model: Any,
    decomposition: Decomposition,
    expert: SVFExpert,
    optimizer: Any,
    batch: dict[str, Any],
    cfg: SVFTuneConfig,
) -> float:
    """One optimizer step of ``expert`` on one batch (mean loss over its trained tokens)."""
    import torch

    from mafl_graph.svf import mixed_experts, use_expert

    # What the expert puts into the model (merged weights, or each row's singular values) is
    # built from z when the block opens: once per step, after the last step's update, and
    # kept through the backward pass that reaches z through it.
    rows = batch["input_ids"].shape[0]
    with torch.enable_grad(), contextlib.ExitStack() as stack:
        if cfg.method == "merged":
            stack.enter_context(use_expert(model, decomposition, expert))
        else:
            stack.enter_context(mixed_experts(model, decomposition, [expert] * rows))
        loss = causal_lm_loss(model, batch)
        loss.backward()
    torch.nn.utils.clip_grad_norm_(expert.parameters(), cfg.max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())
