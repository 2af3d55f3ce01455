"""LoRA (or full) fine-tuning of the local model, in a lean PEFT loop.

The loss sees only assistant turns of weight 1: prompts, and a critic's earlier (weight-0)
answers, are labelled -100. Every conversation is rendered with the tokenizer's own chat
template, exactly as :class:`~mafl_graph.local.LocalEngine` renders prompts at inference (the
reference code trains with one template and infers with another). Iteration k+1 loads
iteration k's adapter as trainable and keeps going. Adapters are saved with PEFT's
``save_pretrained`` to the run directory's :meth:`~mafl_graph.rundir.RunLayout.adapter`, with
the config and
the measured seconds per step and peak RSS next to them, so ``LocalChatModel(adapter=dir)``
serves them on the shared base.

The base weights are loaded once per process and shared with the serving engine
(:func:`~mafl_graph.local.loading.shared_base`): each run injects its LoRA into a fresh view of
them, so the next agent starts from the clean base, and what a run allocated is released when
it ends. Full fine-tuning changes every weight and loads a copy of its own.

A lean loop rather than TRL's SFTTrainer: it is a few dozen lines, adds no dependency, and the
benchmark (``benchmarks/lora_step.py``) holds it against a bare PEFT loop.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import resource
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

from mafl_graph.finetune.tuners.base import Dataset, JobLedger, TunedModel, TunerBackend
from mafl_graph.finetune.tuners.options import TuneOptions
from mafl_graph.local.loading import (
    SMOLLM2_ALIAS,
    check_dtype,
    load_tokenizer,
    load_weights,
    peft_quietly,
    prepare_model_dir,
    release_memory,
    require_local,
    shared_base,
)

if TYPE_CHECKING:
    import torch
    from langchain_core.language_models import BaseChatModel

IGNORE = -100
ADAPTER_METRICS = "metrics.json"
"""Written next to each adapter: seconds per step, peak RSS, losses (and read back on resume)."""
Encoded = tuple[list[int], list[int]]


@dataclass(frozen=True)
class LocalTuneConfig:
    """Every setting of one local tuning run; saved as ``tune_config.json`` by the adapter.

    The defaults are those of ``mafl tune`` and ``mafl loop`` alike.
    """

    epochs: float = 2.0
    max_steps: int | None = None
    """Stop after this many optimizer steps (overrides ``epochs``)."""
    learning_rate: float = 3e-4
    batch_size: int = 8
    lora_r: int = 16
    lora_alpha: int = 32
    """LoRA's scale is alpha / r: twice the rank keeps it at 2 whatever the rank."""
    lora_dropout: float = 0.0
    target_modules: str | tuple[str, ...] = "all-linear"
    full: bool = False
    """Full fine-tuning (every weight; saves a whole model directory) instead of LoRA."""
    max_length: int = 1024
    """Longer conversations are cut on the right; one with no trained token left is skipped."""
    schedule: Literal["linear", "constant"] = "linear"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    seed: int = 0
    dtype: str = "float32"


class LocalTuner(TunerBackend):
    """Tunes the local model (``model``: "smollm2", a GGUF or an HF directory) per agent and role.

    Datasets are OpenAI chat JSONL with weights (or records); iteration 1 tunes ``base``
    (default ``model``), later ones continue a previous :class:`TunedModel`'s adapter. A
    finished adapter directory is reused on a rerun (the ledger checks it was trained on the
    same data from the same base), so an interrupted ``mafl tune`` only redoes what is missing.
    """

    backend = "local"
    provider = "local"
    dataset_format = "openai"
    config_type: type[Any] = LocalTuneConfig
    default_base = SMOLLM2_ALIAS
    detail_column = "s/step · peak RSS"

    def __init__(
        self,
        run_dir: str | Path,
        *,
        model: str = SMOLLM2_ALIAS,
        iteration: int = 1,
        config: LocalTuneConfig | None = None,
        retry: bool = False,
        base: str | None = None,
        progress: bool = True,
    ) -> None:
        require_local()
        super().__init__(
            run_dir, iteration=iteration, config=config, retry=retry, base=base or model
        )
        self.model_path = model
        self.progress = progress
        """A tqdm bar per run: steps, rate, ETA and the last loss."""
        check_dtype(self.config.dtype)

    @classmethod
    def check_options(cls, options: TuneOptions) -> None:
        if options.base and (Path(options.base).expanduser() / "svf_config.json").is_file():
            raise ValueError(
                f"--base {options.base} is an SVF expert: LoRA and full fine-tuning start from "
                "a model, and the engine serves one adapter per request; continue an "
                "SVF-boosted base with --tuner svf"
            )

    @classmethod
    def _config_from_options(cls, options: TuneOptions, seed: int) -> LocalTuneConfig:
        default = LocalTuneConfig()
        return LocalTuneConfig(
            epochs=options.epochs if options.epochs is not None else default.epochs,
            max_steps=options.max_steps,
            learning_rate=options.learning_rate
            if options.learning_rate is not None
            else default.learning_rate,
            batch_size=options.batch_size if options.batch_size is not None else default.batch_size,
            lora_r=options.lora_r,
            lora_alpha=options.lora_alpha if options.lora_alpha is not None else 2 * options.lora_r,
            full=options.full,
            seed=seed,
        )

    @classmethod
    def _settings_from(cls, options: TuneOptions, *, model: str) -> dict[str, Any]:
        return {"model": model or SMOLLM2_ALIAS, "base": options.base}

    @classmethod
    def serve(cls, tuned: TunedModel, **kwargs: Any) -> BaseChatModel:
        require_local()
        from mafl_graph.local import LocalChatModel

        if tuned.options.get("full"):
            return LocalChatModel(**{"model_path": tuned.model, **kwargs})
        settings = {"model_path": tuned.options.get("model_path", SMOLLM2_ALIAS)}
        return LocalChatModel(**{**settings, "adapter": tuned.model, **kwargs})

    @classmethod
    def check_served(cls, tuned: TunedModel) -> None:
        if not Path(tuned.model).expanduser().is_dir():
            kind = "model" if tuned.options.get("full") else "adapter"
            raise FileNotFoundError(
                f"({tuned.name}): the {kind} directory {tuned.model!r} does not exist; "
                f"restore it, or tune iteration {tuned.iteration} again."
            )

    @classmethod
    def detail(cls, tuned: TunedModel) -> str:
        """Seconds per step and peak RSS, from the metrics saved next to the adapter."""
        metrics = Path(tuned.model) / ADAPTER_METRICS
        if not metrics.is_file():
            return ""
        m = json.loads(metrics.read_text())
        return f"{m['seconds_per_step']:.2f} s · {m['peak_rss_mb'] / 1024:.1f} GB"

    def output_dir(self, agent: int, role: str) -> Path:
        return self.layout.adapter(self.iteration, agent, role)

    def _finished(self, ledger: JobLedger, agent: int, role: str) -> bool:
        done = self.output_dir(agent, role) / ADAPTER_METRICS
        return ledger.get("status") == "succeeded" and done.is_file()

    def _model(self, ledger: JobLedger, agent: int, role: str) -> str:
        return str(self.output_dir(agent, role))

    def _run(
        self, ledger: JobLedger, facts: dict[str, Any], dataset: Dataset, cfg: LocalTuneConfig
    ) -> None:
        ledger.update(**facts, config=dataclasses.asdict(cfg), status="running")
        out = self.output_dir(facts["agent"], facts["role"])
        metrics = self.train(load_conversations(dataset), facts["base"], out, cfg)
        ledger.update(status="succeeded", model=str(out), metrics=metrics)

    def _options(self, start: str, cfg: LocalTuneConfig) -> dict[str, Any]:
        options: dict[str, Any] = {"model_path": self._base_of(start)}
        if cfg.full:
            options["full"] = True
        return options

    def train(
        self,
        conversations: Sequence[Sequence[Mapping[str, Any]]],
        start: str,
        out: Path,
        cfg: LocalTuneConfig,
    ) -> dict[str, Any]:
        """Load, train and save to ``out`` (via a staging directory); return the metrics."""
        import torch

        torch.manual_seed(cfg.seed)
        tokenizer, model = self.load(start, cfg)
        staging = out.with_name(out.name + ".staging")
        try:
            encoded = [e for c in conversations if (e := encode(tokenizer, c, cfg.max_length))]
            if not encoded:
                raise ValueError(
                    f"No trainable example for {out.name}: every conversation lacks a weight-1 "
                    "assistant turn within max_length tokens."
                )
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
            steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * len(encoded) / cfg.batch_size))
            batches = (collate(b, pad) for b in batch_stream(encoded, cfg.batch_size, cfg.seed))
            losses, seconds = fit(
                model, batches, steps, cfg, desc=f"tuning {out.name}", progress=self.progress
            )
            shutil.rmtree(staging, ignore_errors=True)
            model.save_pretrained(staging)
            if cfg.full:
                tokenizer.save_pretrained(staging)
        finally:
            # The LoRA layers, gradients and optimizer state die with this view of the base
            # (the PEFT model holds reference cycles): collect them before the next run.
            del model
            release_memory()
        metrics = run_metrics(conversations, encoded, losses, seconds, base=start)
        return publish_run(staging, out, cfg, metrics)

    def load(self, start: str, cfg: LocalTuneConfig) -> tuple[Any, Any]:
        """Tokenizer and trainable model: a fresh LoRA on the base, or ``start``'s weights."""
        start_dir = Path(start).expanduser()
        is_adapter = _is_adapter(start)
        if cfg.full and is_adapter:
            raise ValueError(f"{start} is a LoRA adapter; full fine-tuning needs a model.")
        base_dir = prepare_model_dir(self._base_of(start))
        tokenizer = load_tokenizer(base_dir)
        # Every weight trains in full fine-tuning: a copy of its own, never the shared base.
        model = load_weights(base_dir, cfg.dtype) if cfg.full else shared_base(base_dir, cfg.dtype)
        model.config.use_cache = False
        # Each decoder layer's activations (its attention weights above all: batch x heads x
        # length² floats) are recomputed in the backward pass instead of kept for all 30
        # layers at once. The recomputation is deterministic: the gradients are the same.
        model.activation_checkpointing_enable()
        if cfg.full:
            return tokenizer, model
        from peft import LoraConfig, PeftModel, get_peft_model

        if is_adapter:  # the paper keeps tuning the tuned model: the same adapter, trainable
            with peft_quietly():
                return tokenizer, PeftModel.from_pretrained(model, start_dir, is_trainable=True)
        lora = LoraConfig(
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=cfg.target_modules
            if isinstance(cfg.target_modules, str)
            else list(cfg.target_modules),
            task_type="CAUSAL_LM",
        )
        with peft_quietly():
            return tokenizer, get_peft_model(model, lora)

    def _base_of(self, start: str) -> str:
        """The model under the adapter: ours when continuing an adapter, else ``start`` itself
        (e.g. a fully fine-tuned model directory that a LoRA now goes on top of)."""
        return self.model_path if _is_adapter(start) else start


def run_metrics(
    conversations: Sequence[Any],
    encoded: Sequence[Encoded],
    losses: Sequence[float],
    seconds: Sequence[float],
    **extra: Any,
) -> dict[str, Any]:
    """What a tuning run measured, saved next to what it trained (``ADAPTER_METRICS``)."""
    return {
        "steps": len(losses),
        "examples": len(encoded),
        "skipped": len(conversations) - len(encoded),
        "trained_tokens": sum(sum(t != IGNORE for t in labels) for _, labels in encoded),
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "losses": list(losses),
        # the first step (allocator and kernel warm-up) is left out, as in the benchmark
        "seconds_per_step": sum(seconds[1:]) / max(1, len(seconds) - 1)
        if len(seconds) > 1
        else seconds[0],
        "seconds": sum(seconds),
        "peak_rss_mb": peak_rss_mb(),
        **extra,
    }


def publish_run(staging: Path, out: Path, cfg: Any, metrics: dict[str, Any]) -> dict[str, Any]:
    """Write the config and metrics into ``staging`` and move it to ``out`` in one rename, so
    ``out`` is either a whole run's result or absent; the metrics without the loss curve."""
    (staging / "tune_config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
    (staging / ADAPTER_METRICS).write_text(json.dumps(metrics, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staging, out)
    return {k: v for k, v in metrics.items() if k != "losses"}


def _is_adapter(start: str) -> bool:
    return (Path(start).expanduser() / "adapter_config.json").is_file()


# One step of the algorithm each --------------------------------------------------------------


def load_conversations(dataset: Dataset) -> list[list[dict[str, Any]]]:
    """The ``messages`` of each record of an OpenAI chat JSONL file (or of records)."""
    if isinstance(dataset, str | Path):
        path = Path(dataset)
        if not path.is_file():
            raise FileNotFoundError(
                f"No dataset at {path}; write it with `mafl datasets --format openai`."
            )
        records: Sequence[Mapping[str, Any]] = [
            json.loads(line) for line in path.read_text().splitlines() if line.strip()
        ]
    else:
        records = dataset
    return [list(r["messages"]) for r in records]


def encode(
    tokenizer: Any, messages: Sequence[Mapping[str, Any]], max_length: int
) -> Encoded | None:
    """(input ids, labels) of one conversation; labels are -100 except weight-1 assistant turns.

    Each trained turn's span is found by rendering the conversation up to it with
    ``add_generation_prompt=True`` (the exact prompt inference sends) and up to and including
    it; the reply and its end-of-turn token are learned, the template's trailing newline not.
    """
    chat = [{"role": m["role"], "content": m["content"]} for m in messages]
    ids = _render(tokenizer, chat, generation_prompt=False)
    labels = [IGNORE] * len(ids)
    eos = tokenizer.eos_token_id
    for i, m in enumerate(messages):
        if m["role"] != "assistant" or m.get("weight", 1) != 1:
            continue
        prompt = _render(tokenizer, chat[:i], generation_prompt=True)
        through = _render(tokenizer, chat[: i + 1], generation_prompt=False)
        if ids[: len(through)] != through or through[: len(prompt)] != prompt:
            raise ValueError(
                "The chat template does not render conversations prefix by prefix; the trained "
                "spans cannot be located (is this a chat model's tokenizer?)."
            )
        end = len(through)
        if eos in through[len(prompt) :]:
            end = len(prompt) + through[len(prompt) :].index(eos) + 1
        labels[len(prompt) : end] = through[len(prompt) : end]
    ids, labels = ids[:max_length], labels[:max_length]
    return (ids, labels) if any(t != IGNORE for t in labels) else None


def _render(tokenizer: Any, chat: list[dict[str, str]], *, generation_prompt: bool) -> list[int]:
    return cast(
        list[int],
        tokenizer.apply_chat_template(
            chat, add_generation_prompt=generation_prompt, tokenize=True, return_dict=False
        ),
    )


def batch_stream(
    examples: Sequence[Encoded], batch_size: int, seed: int
) -> Iterator[list[Encoded]]:
    """Batches forever, reshuffled each epoch with ``seed`` (the step count says when to stop)."""
    rng = random.Random(seed)
    order = list(range(len(examples)))
    while True:
        rng.shuffle(order)
        for i in range(0, len(order), batch_size):
            yield [examples[j] for j in order[i : i + batch_size]]


def collate(batch: Sequence[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded tensors; padding is masked out of attention and labelled -100."""
    import torch

    width = max(len(ids) for ids, _ in batch)
    ids = [ids + [pad_id] * (width - len(ids)) for ids, _ in batch]
    labels = [lab + [IGNORE] * (width - len(lab)) for _, lab in batch]
    mask = [[1] * len(i) + [0] * (width - len(i)) for i, _ in batch]
    return {
        "input_ids": torch.tensor(ids),
        "attention_mask": torch.tensor(mask),
        "labels": torch.tensor(labels),
    }


def fit(
    model: Any,
    batches: Iterator[dict[str, Any]],
    steps: int,
    cfg: LocalTuneConfig,
    *,
    desc: str = "tuning",
    progress: bool = False,
) -> tuple[list[float], list[float]]:
    """AdamW over the trainable weights for ``steps`` steps; (loss, seconds) of each step.

    ``progress``: a tqdm bar named ``desc`` counts the steps, with the last loss beside it.
    """
    import torch
    from tqdm.auto import tqdm

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)

    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "constant":
            return 1.0
        return max(0.0, (steps - step) / max(1, steps - cfg.warmup_steps))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    model.train()
    losses, seconds = [], []
    with tqdm(total=steps, desc=desc, unit="step", disable=not progress, leave=True) as bar:
        for _ in range(steps):
            started = time.perf_counter()
            loss = train_step(model, optimizer, next(batches))
            scheduler.step()
            seconds.append(time.perf_counter() - started)
            losses.append(loss)
            bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            bar.update()
    model.eval()
    return losses, seconds


def train_step(model: Any, optimizer: Any, batch: dict[str, Any]) -> float:
    """One optimizer step on one batch (mean loss over its trained tokens)."""
    loss = causal_lm_loss(model, batch)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def causal_lm_loss(model: Any, batch: dict[str, Any]) -> torch.Tensor:
    """The mean next-token cross-entropy over the trained tokens of ``batch``.

    The loss transformers computes with ``labels``, with the vocabulary projection applied
    only at the positions whose next token is trained: the full logits (batch x length x
    49k vocabulary, float32, kept for the backward pass with their softmax and gradient) are
    most of a step's memory, while a debate's trained replies are a small part of its tokens.
    """
    import torch

    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    # Batches are built on the CPU (:func:`collate`); the model may be on a GPU.
    device = lm.get_output_embeddings().weight.device
    batch = {k: v.to(device) for k, v in batch.items()}
    hidden = lm.base_model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
    ).last_hidden_state
    targets = torch.nn.functional.pad(batch["labels"], (0, 1), value=IGNORE)[:, 1:]
    trained = targets != IGNORE
    logits = lm.get_output_embeddings()(hidden[trained]).float()
    return torch.nn.functional.cross_entropy(logits, targets[trained])


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MB (Linux reports KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
