"""Clustering as Monte Carlo EM by perplexity: k LoRA experts on one base split the corpus.

All k experts start as the base (a fresh LoRA's B matrix is zero), so the first choices are
uniform. For each document, in a seeded order, one forward pass over k rows (the document
under each expert, PEFT's mixed-adapter batch) gives its perplexity under every expert; an
expert e* is drawn with probability proportional to (ppl_e / min ppl)^(-1/temperature), and
e* alone takes a training step on the document. An expert that happens to see a domain gets
better at it, sees more of it, and so specialises (the E step is the draw, the M step the
training step). ``docs_per_step`` documents are scored together and each expert then takes one
step on the documents it drew.

The draw is a softmax over mean token NLLs: (ppl_e / min ppl)^(-1/T) = exp(-(nll_e - min nll)/T),
so temperature 1 is the plan's "inversely proportional", lower sharpens it, and the
normalisation by the smallest perplexity changes nothing but the numbers' range.

Everything a run decides is in its directory: ``assignments.jsonl`` (every document's expert,
perplexities and probabilities at every epoch) and ``checkpoint.pt`` (the adapters, their
optimizers and the position), both written every ``checkpoint_every`` documents; a rerun
resumes from the checkpoint and reproduces what an uninterrupted run would have drawn (each
draw has its own seed: seed, epoch, position). At the end each expert is saved as a PEFT
adapter, ``experts/expert<i>``, servable by ``LocalChatModel(adapter=...)``.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from mafl_graph.experts.clustering import ClusterResult, Cost
from mafl_graph.experts.config import MCEMConfig
from mafl_graph.experts.corpus import Corpus, check_k, corpus_digest, write_text_atomic
from mafl_graph.rundir import prepare_run_dir

ASSIGNMENTS = "assignments.jsonl"
CHECKPOINT = "checkpoint.pt"
EXPERTS = "experts"


def choice_probabilities(nlls: Sequence[float], temperature: float) -> list[float]:
    """P(expert e) ∝ (ppl_e / min ppl)^(-1/T), from the mean token NLLs (log perplexities)."""
    best = min(nlls)
    weights = [math.exp(-(nll - best) / temperature) for nll in nlls]
    total = sum(weights)
    return [w / total for w in weights]


def draw_expert(probabilities: Sequence[float], seed: int, epoch: int, position: int) -> int:
    """The expert drawn for the document at ``position`` of ``epoch``: its own seeded draw."""
    rng = random.Random(f"mc-em:{seed}:{epoch}:{position}")
    return rng.choices(range(len(probabilities)), weights=probabilities)[0]


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    order = list(range(n))
    random.Random(f"mc-em-order:{seed}:{epoch}").shuffle(order)
    return order


def mc_em_clusters(
    corpus: Corpus, out_dir: str | Path, config: MCEMConfig, *, progress: bool = True
) -> ClusterResult:
    """Run (or resume) Monte Carlo EM over ``corpus`` in ``out_dir``; the last epoch's piles."""
    check_k(config.k, len(corpus))
    out = Path(out_dir)
    prepare_run_dir(
        out, {"method": "mc-em", **asdict(config), "corpus_sha256": corpus_digest(corpus)}
    )
    run = _Run(corpus, out, config)
    return run.run(progress=progress)


class _Run:
    """One MC-EM run: the model with k adapters, their optimizers, the journal."""

    def __init__(self, corpus: Corpus, out: Path, config: MCEMConfig) -> None:
        self.corpus, self.out, self.config = corpus, out, config
        self.names = [f"expert{i}" for i in range(config.k)]

    def run(self, *, progress: bool) -> ClusterResult:
        import torch
        from tqdm.auto import tqdm

        cfg = self.config
        torch.manual_seed(cfg.seed)
        self._load()
        state = self._resume()
        n = len(self.corpus)
        total = cfg.epochs * n
        with tqdm(
            total=total,
            initial=state["epoch"] * n + state["position"],
            desc=f"mc-em k={cfg.k}",
            unit="doc",
            disable=not progress,
        ) as bar:
            for epoch in range(state["epoch"], cfg.epochs):
                order = epoch_order(n, cfg.seed, epoch)
                start = state["position"] if epoch == state["epoch"] else 0
                pending: list[dict[str, Any]] = []
                since = 0
                for position in range(start, n, cfg.docs_per_step):
                    started = time.perf_counter()
                    chunk = order[position : position + cfg.docs_per_step]
                    pending += self._step(epoch, position, chunk, state)
                    state["seconds"] += time.perf_counter() - started
                    since += len(chunk)
                    bar.update(len(chunk))
                    end = position + len(chunk)
                    if since >= cfg.checkpoint_every or end >= n:
                        done_epoch = end >= n
                        state["epoch"], state["position"] = (
                            (epoch + 1, 0) if done_epoch else (epoch, end)
                        )
                        self._checkpoint(state, pending)
                        pending, since = [], 0
        self._save_experts()
        return self._result(state)

    # Model ---------------------------------------------------------------------------------

    def _load(self) -> None:
        import torch
        from peft import LoraConfig, get_peft_model

        from mafl_graph.local.loading import (
            load_tokenizer,
            peft_quietly,
            prepare_model_dir,
            require_local,
            shared_base,
        )

        require_local()
        cfg = self.config
        model_dir = prepare_model_dir(cfg.model)
        self.tokenizer = load_tokenizer(model_dir)
        base = shared_base(model_dir, cfg.dtype)
        base.config.use_cache = False
        lora = LoraConfig(
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=0.0,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        )
        with peft_quietly():
            model = get_peft_model(base, lora, adapter_name=self.names[0])
            for name in self.names[1:]:
                model.add_adapter(name, lora)
        self.model = model.eval()
        self.optimizers = {
            name: torch.optim.AdamW(self._parameters(name), lr=cfg.learning_rate)
            for name in self.names
        }
        start = self.tokenizer.bos_token_id
        if start is None:
            start = self.tokenizer.eos_token_id
        # A start token before each document, so its first token is predicted too.
        self.encoded = [
            [start, *self.tokenizer(text, add_special_tokens=False)["input_ids"]]
            for text in self.corpus.texts
        ]
        pad = self.tokenizer.pad_token_id
        self.pad = pad if pad is not None else 0

    def _parameters(self, name: str) -> list[Any]:
        marker = f".{name}."
        found = [p for n, p in self.model.named_parameters() if marker in n]
        for p in found:
            p.requires_grad_(True)
        return found

    def _nlls(self, chunk: Sequence[int]) -> list[list[float]]:
        """Mean token NLL of each document of ``chunk`` under each expert: one forward."""
        import torch

        rows = [(doc, name) for doc in chunk for name in self.names]
        batch = _padded([self.encoded[doc] for doc, _ in rows], self.pad)
        with torch.no_grad():
            logits = self.model(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                adapter_names=[name for _, name in rows],
            ).logits
        targets = batch["input_ids"][:, 1:]
        mask = batch["attention_mask"][:, 1:].bool()
        nll = torch.nn.functional.cross_entropy(
            logits[:, :-1].float().transpose(1, 2), targets, reduction="none"
        )
        per_row = (nll * mask).sum(1) / mask.sum(1).clamp(min=1)
        k = len(self.names)
        values = per_row.tolist()
        self.forwarded_tokens += int(batch["attention_mask"].sum())
        return [values[i * k : (i + 1) * k] for i in range(len(chunk))]

    def _train(self, name: str, docs: Sequence[int]) -> float:
        from mafl_graph.finetune.tuners.local import causal_lm_loss

        batch = _padded([self.encoded[d] for d in docs], self.pad, labels=True)
        self.model.set_adapter(name)
        self.model.train()
        loss = causal_lm_loss(self.model, batch)
        loss.backward()
        self.optimizers[name].step()
        self.optimizers[name].zero_grad(set_to_none=True)
        self.model.eval()
        return float(loss.detach())

    # One step of the algorithm -------------------------------------------------------------

    def _step(
        self, epoch: int, position: int, chunk: Sequence[int], state: dict[str, Any]
    ) -> list[dict[str, Any]]:
        cfg = self.config
        nlls = self._nlls(chunk)
        state["forward_passes"] += 1
        records: list[dict[str, Any]] = []
        drawn: dict[int, list[int]] = {}
        for offset, (doc, doc_nlls) in enumerate(zip(chunk, nlls, strict=True)):
            probabilities = choice_probabilities(doc_nlls, cfg.temperature)
            expert = draw_expert(probabilities, cfg.seed, epoch, position + offset)
            drawn.setdefault(expert, []).append(doc)
            records.append(
                {
                    "epoch": epoch,
                    "position": position + offset,
                    "id": self.corpus.ids[doc],
                    "expert": expert,
                    "perplexities": [round(math.exp(x), 4) for x in doc_nlls],
                    "probabilities": [round(p, 4) for p in probabilities],
                }
            )
        for expert in sorted(drawn):
            loss = self._train(self.names[expert], drawn[expert])
            state["training_steps"] += 1
            for r in records:
                if r["expert"] == expert:
                    r["loss"] = round(loss, 4)
        return records

    # Resuming ------------------------------------------------------------------------------

    def _resume(self) -> dict[str, Any]:
        import torch
        from peft import set_peft_model_state_dict

        self.forwarded_tokens = 0
        fresh = {
            "epoch": 0,
            "position": 0,
            "assignments": 0,
            "forward_passes": 0,
            "training_steps": 0,
            "seconds": 0.0,
            "forwarded_tokens": 0,
        }
        path = self.out / CHECKPOINT
        journal = self.out / ASSIGNMENTS
        if not path.is_file():
            journal.unlink(missing_ok=True)
            return fresh
        saved = torch.load(path, weights_only=False)
        for name in self.names:
            set_peft_model_state_dict(self.model, saved["adapters"][name], adapter_name=name)
            self.optimizers[name].load_state_dict(saved["optimizers"][name])
        state = {key: saved["state"][key] for key in fresh}
        self.forwarded_tokens = state["forwarded_tokens"]
        # Draws journalled after the checkpoint are drawn again, identically: drop them.
        lines = journal.read_text().splitlines(keepends=True) if journal.is_file() else []
        if len(lines) < state["assignments"]:
            raise ValueError(
                f"{journal} has {len(lines)} assignments, its checkpoint counts "
                f"{state['assignments']}; the run directory is damaged: start a new one"
            )
        write_text_atomic(journal, "".join(lines[: state["assignments"]]))
        return state

    def _checkpoint(self, state: dict[str, Any], records: Sequence[dict[str, Any]]) -> None:
        import torch
        from peft import get_peft_model_state_dict

        journal = self.out / ASSIGNMENTS
        with journal.open("a") as handle:
            handle.writelines(json.dumps(r) + "\n" for r in records)
            handle.flush()
            os.fsync(handle.fileno())
        state["assignments"] += len(records)
        state["forwarded_tokens"] = self.forwarded_tokens
        saved = {
            "state": dict(state),
            "adapters": {
                name: get_peft_model_state_dict(self.model, adapter_name=name)
                for name in self.names
            },
            "optimizers": {name: opt.state_dict() for name, opt in self.optimizers.items()},
        }
        tmp = self.out / (CHECKPOINT + ".tmp")
        torch.save(saved, tmp)
        os.replace(tmp, self.out / CHECKPOINT)

    def _save_experts(self) -> None:
        import shutil

        target = self.out / EXPERTS
        staging = self.out / (EXPERTS + ".staging")
        shutil.rmtree(staging, ignore_errors=True)
        self.model.save_pretrained(str(staging), selected_adapters=self.names)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)

    def _result(self, state: dict[str, Any]) -> ClusterResult:
        records = read_assignments(self.out)
        last = self.config.epochs - 1
        by_id = {r["id"]: r["expert"] for r in records if r["epoch"] == last}
        labels = tuple(by_id[i] for i in self.corpus.ids)
        cost = Cost(
            input_tokens=state["forwarded_tokens"],
            forward_passes=state["forward_passes"],
            training_steps=state["training_steps"],
            seconds=state["seconds"],
        )
        details = {
            "config": asdict(self.config),
            "experts": [str(self.out / EXPERTS / name) for name in self.names],
            "assignments": str(self.out / ASSIGNMENTS),
        }
        return ClusterResult("mc-em", self.config.k, labels, tuple(self.corpus.ids), cost, details)


def read_assignments(out_dir: str | Path) -> list[dict[str, Any]]:
    """Every recorded draw of a run: epoch, position, document id, expert, perplexities."""
    path = Path(out_dir) / ASSIGNMENTS
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _padded(rows: Sequence[Sequence[int]], pad: int, *, labels: bool = False) -> dict[str, Any]:
    from mafl_graph.finetune.tuners.local import collate

    return collate([(list(r), list(r)) for r in rows], pad) if labels else _ids(rows, pad)


def _ids(rows: Sequence[Sequence[int]], pad: int) -> dict[str, Any]:
    import torch

    width = max(len(r) for r in rows)
    return {
        "input_ids": torch.tensor([list(r) + [pad] * (width - len(r)) for r in rows]),
        "attention_mask": torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows]),
    }
