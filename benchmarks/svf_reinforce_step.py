"""The cost of one SVF REINFORCE step (rollouts + update) against one LoRA SFT step on the
same batch of prompt and reply tokens, on SmolLM2-135M.

    python benchmarks/svf_reinforce_step.py [--threads 1] [--batch 8] [--new-tokens 32]

The REINFORCE step is :func:`mafl_graph.svf.reinforce.reinforce_step` with an expert on the
90 MLP matrices: greedy rollouts of ``--batch`` Arithmetic problems (a+b, 0–50), their
rewards, one Adam step on z. The LoRA step is a PEFT LoRA (r=16 on every linear layer,
activation checkpointing) forward and backward with AdamW on the very sequences the rollouts
produced, the loss on the reply tokens: what an SFT step on that batch costs. The two are
interleaved, ``--repeats`` times after one warm-up each; medians are printed. Nothing is
asserted.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time
from datetime import UTC, datetime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--batch", type=int, default=8, help="problems per step")
    parser.add_argument("--new-tokens", type=int, default=32, help="longest rollout")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from mafl_graph.local.loading import prepare_model_dir
    from mafl_graph.svf import ReinforceConfig, SVFExpert
    from mafl_graph.svf.reinforce import _batch, load_policy, reinforce_step
    from mafl_graph.tasks import Arithmetic

    torch.set_num_threads(args.threads)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    from svf_size import cpu_name  # a sibling script: its directory is on sys.path

    print(f"{cpu_name()}, {args.threads} thread(s), torch {torch.__version__}")
    print(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, commit {commit or '?'}")

    config = ReinforceConfig(batch_size=args.batch, max_new_tokens=args.new_tokens)
    model, tokenizer, decomposition = load_policy("smollm2", config)
    expert = SVFExpert.init(decomposition, seed=0)
    optimizer = torch.optim.Adam(expert.parameters(), lr=config.learning_rate)
    task = Arithmetic(terms=2, low=0, high=50, operators="+")
    problems = task.load("train", args.batch * (args.repeats + 1))

    lora = get_peft_model(
        AutoModelForCausalLM.from_pretrained(prepare_model_dir("smollm2"), dtype=torch.float32),
        LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"),
    )
    lora.gradient_checkpointing_enable()
    lora.enable_input_require_grads()
    lora.train()
    lora_optimizer = torch.optim.AdamW([p for p in lora.parameters() if p.requires_grad], lr=3e-4)

    def lora_step(rollouts: list) -> float:
        ids, mask, targets = _batch(rollouts, lora)
        labels = torch.full_like(ids, -100)
        labels[:, 1:][targets] = ids[:, 1:][targets]
        start = time.perf_counter()
        loss = lora(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        lora_optimizer.step()
        lora_optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    svf_times, rollout_tokens, lora_times = [], [], []
    for i in range(args.repeats + 1):
        batch = problems[i * args.batch : (i + 1) * args.batch]
        result = reinforce_step(
            model, tokenizer, decomposition, expert, optimizer, task, batch, config
        )
        seconds = lora_step(result.rollouts)
        if i:  # the first of each is a warm-up
            svf_times.append(result.seconds)
            lora_times.append(seconds)
            rollout_tokens.append(sum(len(r.completion) for r in result.rollouts))
    svf, sft = statistics.median(svf_times), statistics.median(lora_times)
    print(
        f"batch {args.batch}, replies of {statistics.mean(rollout_tokens) / args.batch:.0f} "
        f"tokens on average (at most {args.new_tokens})"
    )
    print(f"SVF REINFORCE step (rollouts + update): {svf:.2f} s")
    print(f"LoRA r=16 SFT step on the same tokens:  {sft:.2f} s")
    print(f"ratio: {svf / sft:.2f}x")


if __name__ == "__main__":
    main()
