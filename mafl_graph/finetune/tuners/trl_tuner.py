"""LoRA (or full) fine-tuning of a local model with TRL's ``SFTTrainer``, on one device or, under
``accelerate launch``, on many (data parallel, FSDP or DeepSpeed ZeRO-3).

TRL honours no per-message weight, and SmolLM2's chat template has no ``{% generation %}``
markers for ``assistant_only_loss``; so the trainer gets pre-tokenised examples whose labels
are the local tuner's own (:func:`~mafl_graph.finetune.tuners.local.encode`): -100 on every
prompt token and on weight-0 turns, the reply and its end-of-turn token learned. The model is
the local tuner's too (:meth:`LocalTuner.load <mafl_graph.finetune.tuners.local.LocalTuner.load>`:
the same LoRA on the same seed), so on the same batch the first step's loss is the local
tuner's. The ledger, the run directory's layout, resuming and serving are the local tuner's:
``LocalChatModel(adapter=dir)`` serves what it writes, and a finished adapter is never trained
twice.

Without an accelerate config the trainer runs in this process, on the device accelerate picks
(CUDA when present). With one (:data:`ACCELERATE_CONFIGS` names the shipped ones, or a path),
the encoded dataset and a job spec are written to the job's work directory under
:meth:`~mafl_graph.rundir.RunLayout.tuning_dir` and ``accelerate launch --config_file <config>
-m mafl_graph.finetune.tuners.trl_train <spec>`` trains in as many processes as the config
asks for. A config asking for more GPUs than this machine has is refused before anything is
written, so the same command runs once the config is fixed.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mafl_graph.finetune.tuners.base import JobLedger, TuningError
from mafl_graph.finetune.tuners.local import (
    Encoded,
    LocalTuneConfig,
    LocalTuner,
    encode,
    peak_rss_mb,
    publish_run,
    run_metrics,
)
from mafl_graph.finetune.tuners.options import TuneOptions
from mafl_graph.local.loading import (
    SMOLLM2_ALIAS,
    load_tokenizer,
    prepare_model_dir,
    release_memory,
)

ACCELERATE_DIR = Path(__file__).resolve().parent.parent / "accelerate"
"""Where the shipped accelerate configs live (inside the package, so a wheel carries them)."""
ACCELERATE_CONFIGS = ("multi_gpu", "fsdp", "deepspeed_zero3")
"""The shipped configs' names: ``accelerate_config="fsdp"`` means ``ACCELERATE_DIR/fsdp.yaml``."""
WORKER = "mafl_graph.finetune.tuners.trl_train"
"""The module ``accelerate launch`` runs in every process."""
SPEC = "spec.json"
RESULT = "result.json"
# Distributed types that put one process on each GPU (accelerate's names).
_GPU_TYPES = ("MULTI_GPU", "FSDP", "DEEPSPEED", "MEGATRON_LM")


@dataclass(frozen=True)
class TRLTuneConfig(LocalTuneConfig):
    """Every setting of one TRL tuning run; saved as ``tune_config.json`` by the adapter.

    The local tuner's settings mean the same here; ``batch_size`` counts the examples of one
    optimizer step over all processes and accumulation steps together.
    """

    accelerate_config: str | None = None
    """An accelerate config file, or a shipped one's name (:data:`ACCELERATE_CONFIGS`): train
    in ``accelerate launch`` processes; None: in this process, on the device accelerate picks."""
    num_processes: int | None = None
    """Processes (one per GPU) to launch instead of the config's ``num_processes``."""
    gradient_accumulation_steps: int = 1
    max_grad_norm: float = 0.0
    """Clip the gradient norm to this; 0 does not clip (as the local tuner)."""
    save_steps: int | None = None
    """Save a trainer checkpoint every this many steps in the work directory, which a rerun
    resumes from; None saves none (a rerun of an unfinished job starts over)."""


def require_trl() -> None:
    """Raise one clear ImportError when TRL is not installed (looked up, not imported)."""
    if importlib.util.find_spec("trl") is None:
        raise ImportError(
            "trl is not installed; the trl tuner needs the trl extra: pip install 'mafl-graph[trl]'"
        )


def resolve_accelerate_config(config: str | Path) -> Path:
    """The accelerate config file ``config`` names: a shipped name or a path."""
    if str(config) in ACCELERATE_CONFIGS:
        return ACCELERATE_DIR / f"{config}.yaml"
    path = Path(config).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"No accelerate config at {str(config)!r}: pass a file written by `accelerate "
            f"config`, or one of the shipped configs {', '.join(ACCELERATE_CONFIGS)}."
        )
    return path.resolve()


def launch_processes(config: str | Path, num_processes: int | None = None) -> int:
    """How many processes ``config`` launches; raise ValueError if they need more GPUs than
    this machine has (``torch.cuda.device_count()``), naming both numbers."""
    import torch
    import yaml

    path = resolve_accelerate_config(config)
    settings = yaml.safe_load(path.read_text()) or {}
    if not isinstance(settings, Mapping):
        raise ValueError(f"{path} is not an accelerate config (a YAML mapping).")
    processes = int(num_processes or settings.get("num_processes") or 1)
    kind = str(settings.get("distributed_type", "NO")).upper()
    on_gpus = kind in _GPU_TYPES and not settings.get("use_cpu", False)
    available = torch.cuda.device_count()
    if on_gpus and processes > available:
        raise ValueError(
            f"The accelerate config {path} launches {processes} processes, one per GPU "
            f"({kind}), but this machine has {available} GPU{'s' * (available != 1)}. Lower "
            f"num_processes to at most {available} (the config, or num_processes), or run where "
            "the GPUs are; nothing was written, so the same command resumes once it fits."
        )
    return processes


class TRLTuner(LocalTuner):
    """Tunes the local model (``model``: "smollm2", a GGUF or an HF directory) per agent and
    role with TRL's SFTTrainer, in this process or under ``accelerate launch``.

    Datasets, the ledger, iterations (k+1 continues k's adapter), the output layout and serving
    are the local tuner's; only the training loop is TRL's.
    """

    backend = "trl"
    provider_note = "hosted models have no weights; TRL tunes a local model"
    config_type: type[Any] = TRLTuneConfig
    detail_column = "s/step · peak RSS"

    def __init__(
        self,
        run_dir: str | Path,
        *,
        model: str = SMOLLM2_ALIAS,
        iteration: int = 1,
        config: TRLTuneConfig | None = None,
        retry: bool = False,
        base: str | None = None,
        progress: bool = True,
    ) -> None:
        require_trl()
        super().__init__(
            run_dir,
            model=model,
            iteration=iteration,
            config=config,
            retry=retry,
            base=base,
            progress=progress,
        )
        check_config(self.config)

    @classmethod
    def _config_from_options(cls, options: TuneOptions, seed: int) -> TRLTuneConfig:
        local = LocalTuner._config_from_options(options, seed)
        return TRLTuneConfig(
            **dataclasses.asdict(local),
            accelerate_config=options.accelerate_config,
            num_processes=options.num_processes,
        )

    def _run(
        self, ledger: JobLedger, facts: dict[str, Any], dataset: Any, cfg: LocalTuneConfig
    ) -> None:
        # A config given to this one call is checked too, before the ledger records a start.
        check_config(cfg)
        super()._run(ledger, facts, dataset, cfg)

    def load(self, start: str, cfg: LocalTuneConfig) -> tuple[Any, Any]:
        """The local tuner's tokenizer and trainable model, on the device accelerate trains on.

        A LoRA's model is a view of the process-wide base; the trainer moves a model to its
        device by moving each parameter in place, which would carry the shared base (and the
        serving engine with it) along. So a view whose base lives on another device (say
        ``MAFL_DEVICE`` put it there) trains as a copy of its own.
        """
        import copy

        import torch
        from accelerate import PartialState

        tokenizer, model = super().load(start, cfg)
        # A tensor made there names the device with its index, as a parameter's device does.
        device = torch.empty(0, device=PartialState().device).device
        if not cfg.full and next(model.parameters()).device != device:
            model = copy.deepcopy(model).to(device)
        return tokenizer, model

    def work_dir(self, out: Path) -> Path:
        """The job's work directory (its spec, encoded dataset, checkpoints, result)."""
        return self.layout.tuning_dir(self.iteration) / f"{out.name}.trl"

    def train(
        self,
        conversations: Sequence[Sequence[Mapping[str, Any]]],
        start: str,
        out: Path,
        cfg: LocalTuneConfig,
    ) -> dict[str, Any]:
        """Encode, train (here or under accelerate) and save to ``out`` via a staging
        directory; return the metrics."""
        cfg = as_trl_config(cfg)
        tokenizer = load_tokenizer(prepare_model_dir(self._base_of(start)))
        encoded = [e for c in conversations if (e := encode(tokenizer, c, cfg.max_length))]
        if not encoded:
            raise ValueError(
                f"No trainable example for {out.name}: every conversation lacks a weight-1 "
                "assistant turn within max_length tokens."
            )
        staging = out.with_name(out.name + ".staging")
        work = self.work_dir(out)
        shutil.rmtree(staging, ignore_errors=True)
        spec = {
            "run_dir": str(self.run_dir),
            "model_path": self.model_path,
            "start": start,
            "staging": str(staging),
            "work": str(work),
            "config": dataclasses.asdict(cfg),
            "desc": f"tuning {out.name} (trl)",
            "progress": self.progress,
        }
        work.mkdir(parents=True, exist_ok=True)
        previous = work / SPEC
        if previous.is_file() and _job(json.loads(previous.read_text())) != _job(spec):
            # Checkpoints of another config or start would resume the wrong job.
            shutil.rmtree(work / "checkpoints", ignore_errors=True)
        previous.write_text(json.dumps(spec, indent=2))
        if cfg.accelerate_config is None:
            result = train_job(spec, encoded, tuner=self)
        else:
            result = self.launch(spec, encoded, cfg.accelerate_config, cfg.num_processes)
        metrics = run_metrics(
            conversations,
            encoded,
            result["losses"],
            result["seconds"],
            base=start,
            processes=result["processes"],
            device=result["device"],
            peak_rss_mb=max(result["peak_rss_mb"], peak_rss_mb()),
        )
        published = publish_run(staging, out, cfg, metrics)
        # Checkpoints are only for resuming this job, which is finished now.
        shutil.rmtree(work / "checkpoints", ignore_errors=True)
        return published

    def launch(
        self,
        spec: dict[str, Any],
        encoded: Sequence[Encoded],
        accelerate_config: str,
        num_processes: int | None = None,
    ) -> dict[str, Any]:
        """Write the dataset next to the spec in the work directory and train under
        ``accelerate launch`` with ``accelerate_config``; return the result the main process
        wrote."""
        config = resolve_accelerate_config(accelerate_config)
        processes = launch_processes(config, num_processes)
        work = Path(spec["work"])
        (work / RESULT).unlink(missing_ok=True)
        write_examples(work / "dataset.jsonl", encoded)
        command = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--config_file",
            str(config),
            "--num_processes",
            str(processes),
            "-m",
            WORKER,
            str(work / SPEC),
        ]
        done = subprocess.run(command, check=False)
        if done.returncode != 0 or not (work / RESULT).is_file():
            raise TuningError(
                f"`{' '.join(command)}` exited with {done.returncode} without a result; its "
                f"output says why. The job's files are in {work}; run the same command again "
                "to retry (it resumes from the last checkpoint if save_steps is set)."
            )
        result: dict[str, Any] = json.loads((work / RESULT).read_text())
        return result


def check_config(cfg: Any) -> None:
    """Refuse, before anything is written, an accelerate config that cannot run here."""
    if isinstance(cfg, TRLTuneConfig) and cfg.accelerate_config is not None:
        launch_processes(cfg.accelerate_config, cfg.num_processes)


def as_trl_config(cfg: LocalTuneConfig) -> TRLTuneConfig:
    """``cfg`` as a TRL config: a local tuner's config keeps its settings, with TRL's
    defaults for the rest."""
    if isinstance(cfg, TRLTuneConfig):
        return cfg
    return TRLTuneConfig(**dataclasses.asdict(cfg))


def write_examples(path: Path, encoded: Sequence[Encoded]) -> None:
    """The encoded examples as JSONL of ``input_ids`` and ``labels``."""
    lines = (json.dumps({"input_ids": ids, "labels": labels}) for ids, labels in encoded)
    path.write_text("".join(line + "\n" for line in lines))


def read_examples(path: Path) -> list[Encoded]:
    """What :func:`write_examples` wrote."""
    records = (json.loads(line) for line in path.read_text().splitlines() if line.strip())
    return [(r["input_ids"], r["labels"]) for r in records]


# One step of the algorithm each --------------------------------------------------------------


def train_job(
    spec: Mapping[str, Any], encoded: Sequence[Encoded], *, tuner: TRLTuner | None = None
) -> dict[str, Any]:
    """Train the job ``spec`` describes on ``encoded`` in this process (one of accelerate's,
    or the only one) and save the model to ``spec["staging"]``; return the losses, seconds
    per step, peak RSS, process count and device (the main process also writes them to
    ``RESULT`` in the work directory)."""
    import torch

    cfg = TRLTuneConfig(**_tuples(spec["config"]))
    if tuner is None:
        tuner = TRLTuner(
            spec["run_dir"], model=spec["model_path"], config=cfg, progress=spec["progress"]
        )
    work = Path(spec["work"])
    args = sft_args(cfg, work, steps(cfg, len(encoded)))  # before the model: DeepSpeed reads it
    torch.manual_seed(cfg.seed)  # the LoRA starts as the local tuner's does, from this seed
    tokenizer, model = tuner.load(spec["start"], cfg)
    try:
        trainer, timer = sft_trainer(model, tokenizer, encoded, args, spec)
        checkpoint = last_checkpoint(work / "checkpoints")
        trainer.train(resume_from_checkpoint=checkpoint)
        trainer.save_model(spec["staging"])
        losses = [float(e["loss"]) for e in trainer.state.log_history if "loss" in e]
        result = {
            "losses": losses,
            "seconds": timer.seconds or [0.0],
            "peak_rss_mb": peak_rss_mb(),
            "processes": trainer.accelerator.num_processes,
            "device": str(trainer.args.device),
        }
        if trainer.is_world_process_zero():
            work.mkdir(parents=True, exist_ok=True)
            (work / RESULT).write_text(json.dumps(result, indent=2))
    finally:
        # The LoRA layers, gradients and optimizer state die with this view of the base.
        del model
        release_memory()
    return result


def steps(cfg: TRLTuneConfig, examples: int) -> int:
    """Optimizer steps: ``max_steps``, or ``epochs`` passes of ``batch_size`` examples each."""
    return cfg.max_steps or max(1, math.ceil(cfg.epochs * examples / cfg.batch_size))


def sft_args(cfg: TRLTuneConfig, work: Path, max_steps: int) -> Any:
    """The SFTConfig of ``cfg``: pre-tokenised data as given, no mixed precision unless the
    launching accelerate config asks for it, the device left to accelerate."""
    import torch
    from accelerate import PartialState
    from trl import SFTConfig

    world = PartialState().num_processes
    per_device = math.ceil(cfg.batch_size / (world * cfg.gradient_accumulation_steps))
    precision = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    return SFTConfig(
        output_dir=str(work / "checkpoints"),
        # The examples are tokenised and labelled already (per-message weights included):
        # TRL's preparation would add nothing and must not re-tokenise.
        dataset_kwargs={"skip_prepare_dataset": True},
        max_length=cfg.max_length,
        per_device_train_batch_size=per_device,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        max_steps=max_steps,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.schedule,
        warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        optim="adamw_torch",
        seed=cfg.seed,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        # The model comes with activation checkpointing on (non-reentrant), as the local
        # tuner's: the trainer leaves it as it is.
        activation_checkpointing=False,
        ddp_find_unused_parameters=False,
        logging_steps=1,
        save_strategy="steps" if cfg.save_steps else "no",
        save_steps=cfg.save_steps or 500,
        report_to="none",
        disable_tqdm=True,
        dataloader_pin_memory=torch.cuda.is_available(),  # page-locked memory serves CUDA copies
    )


def sft_trainer(
    model: Any, tokenizer: Any, encoded: Sequence[Encoded], args: Any, spec: Mapping[str, Any]
) -> tuple[Any, Any]:
    """An SFTTrainer on ``encoded`` (input ids and labels; the collator pads labels with -100
    and masks padding out of attention), with a progress bar and a step timer."""
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import SFTTrainer
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    dataset = Dataset.from_list([{"input_ids": i, "labels": lab} for i, lab in encoded])
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    timer = _steps_callback(spec.get("desc", "tuning"), bool(spec.get("progress")))

    class Trainer(SFTTrainer):  # type: ignore[misc]
        def _send_telemetry(self) -> None:
            """Nothing: local tuning contacts no hub (TRL's trainer pings one at start)."""

    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        data_collator=DataCollatorForLanguageModeling(pad_token_id=pad),
        callbacks=[timer],
    )
    trainer.remove_callback(PrinterCallback)  # the bar shows the loss; no dict per step
    return trainer, timer


def _steps_callback(desc: str, progress: bool) -> Any:
    """A TrainerCallback timing each step, with a tqdm bar of steps and the last loss (on the
    main process) as the local tuner's."""
    from tqdm.auto import tqdm
    from transformers import TrainerCallback

    class Steps(TrainerCallback):  # type: ignore[misc]
        def __init__(self) -> None:
            self.seconds: list[float] = []
            self.started = 0.0
            self.bar: Any = None

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            show = progress and state.is_world_process_zero
            bar = {"desc": desc, "unit": "step", "disable": not show}
            self.bar = tqdm(total=state.max_steps, initial=state.global_step, **bar)

        def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.started = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.seconds.append(time.perf_counter() - self.started)
            self.bar.update()

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            if logs and "loss" in logs:
                self.bar.set_postfix(loss=f"{logs['loss']:.4f}", refresh=False)

        def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.bar.close()

    return Steps()


def last_checkpoint(directory: Path) -> str | None:
    """The newest trainer checkpoint in ``directory`` (a job interrupted after one), if any."""
    if not directory.is_dir():
        return None
    from transformers.trainer_utils import get_last_checkpoint

    found: str | None = get_last_checkpoint(str(directory))
    return found


def _job(spec: Mapping[str, Any]) -> tuple[Any, ...]:
    """What identifies a job's training in its spec (its checkpoints are that training's)."""
    return (spec.get("model_path"), spec.get("start"), spec.get("config"))


def _tuples(config: Mapping[str, Any]) -> dict[str, Any]:
    """A config read back from JSON: its lists as the tuples the dataclass holds."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}


__all__ = [
    "ACCELERATE_CONFIGS",
    "ACCELERATE_DIR",
    "TRLTuneConfig",
    "TRLTuner",
    "launch_processes",
    "resolve_accelerate_config",
    "train_job",
]
