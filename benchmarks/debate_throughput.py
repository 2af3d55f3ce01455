"""P1: a whole debate through the graph on the embedded model, against the same requests sent
one at a time and against raw batched ``model.generate`` — measured side by side in one run.

    python benchmarks/debate_throughput.py [--problems 32] [--max-tokens 64]

(a) "one at a time" is how the reference implementations call a local model (no kept
replies: the prefix cache is emptied first, and these requests keep nothing); (b) raw
``generate`` in batches of the scheduler's size is the ceiling for plain batching (it computes
every row until the longest ends; only tokens up to each row's EOS are counted as useful).
Throughput is generated tokens per second; (a) and (b) replay a sample of the very prompts the
debate sent, with the same sampling settings and token budget. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
from langchain_core.callbacks import UsageMetadataCallbackHandler

from mafl_graph import Arithmetic, Society, create_debate_graph, run_debates
from mafl_graph.local import load_local_model

SAMPLING = {"temperature": 0.7, "top_p": 0.95}


def debate(problems: int, max_tokens: int) -> tuple[list[list[dict]], int, float]:
    """Run the debate; return every prompt it sent, the tokens generated and the seconds."""
    task = Arithmetic(terms=2, low=0, high=20, operators="+")
    society = Society.from_model("local:smollm2", n_agents=3, max_tokens=max_tokens, **SAMPLING)
    graph = create_debate_graph(society, task, rounds=2, summarize=True)
    usage = UsageMetadataCallbackHandler()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        results = run_debates(
            graph,
            task.load("test", problems),
            run_id="p1",
            db_path=Path(tmp) / "p1.sqlite",
            max_concurrency=problems,
            callbacks=[usage],
            progress=False,
        )
        seconds = time.perf_counter() - start
    prompts = [r["messages"] for res in results for r in [*res.responses, *res.summaries]]
    tokens = sum(u["output_tokens"] for u in usage.usage_metadata.values())
    return prompts, tokens, seconds


def one_at_a_time(prompts: list[list[dict]], max_tokens: int) -> tuple[int, float]:
    engine = load_local_model()
    start, tokens = time.perf_counter(), 0
    for i, messages in enumerate(prompts):
        tokens += engine.generate(
            messages, max_new_tokens=max_tokens, seed=i, **SAMPLING
        ).output_tokens
    return tokens, time.perf_counter() - start


def raw_generate(prompts: list[list[dict]], max_tokens: int, batch: int) -> tuple[int, float]:
    engine = load_local_model()
    tok, model = engine.tokenizer, engine.model
    tok.padding_side = "left"
    eos = model.generation_config.eos_token_id
    eos_ids = {eos} if isinstance(eos, int) else set(eos)
    start, useful = time.perf_counter(), 0
    for i in range(0, len(prompts), batch):
        texts = [
            tok.apply_chat_template(m, add_generation_prompt=True, tokenize=False)
            for m in prompts[i : i + batch]
        ]
        inputs = tok(texts, return_tensors="pt", padding=True)
        with torch.inference_mode():
            out = model.generate(
                **inputs,
                max_new_tokens=max_tokens,
                do_sample=True,
                pad_token_id=tok.pad_token_id,
                **SAMPLING,
            )
        for row in out[:, inputs["input_ids"].shape[1] :].tolist():
            useful += next((j for j, t in enumerate(row) if t in eos_ids), len(row))
    return useful, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problems", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--sequential-sample", type=int, default=16)
    args = parser.parse_args()

    engine = load_local_model()
    engine.generate([{"role": "user", "content": "Hi"}], max_new_tokens=4)  # load + warm up
    prompts, tokens, seconds = debate(args.problems, args.max_tokens)
    scheduler = engine.scheduler
    mean_batch = scheduler.decode_rows / max(1, scheduler.decode_steps)
    batch = scheduler.max_batch_size
    graph_rate = tokens / seconds
    prefixes = scheduler.prefixes
    assert prefixes is not None
    hits, reused = prefixes.hits, prefixes.reused_tokens
    prefixes.clear()
    seq_tokens, seq_seconds = one_at_a_time(prompts[: args.sequential_sample], args.max_tokens)
    raw_tokens, raw_seconds = raw_generate(prompts[: 2 * batch], args.max_tokens, batch)
    seq_rate, raw_rate = seq_tokens / seq_seconds, raw_tokens / raw_seconds

    print(
        f"\ncpus={os.cpu_count()} torch threads={torch.get_num_threads()} "
        f"load average={os.getloadavg()[0]:.2f} max batch={batch}"
    )
    print(
        f"debate: {args.problems} problems x 3 agents x 2 rounds + summaries = {len(prompts)} "
        f"calls, {args.max_tokens} new tokens at most; mean batch "
        f"{mean_batch:.1f} rows per decode step, {scheduler.joined} joined a running batch; "
        f"{hits} prompts reused kept keys and values, {reused} prompt tokens not run again; "
        f"{scheduler.shared_prompts} prompts started from an earlier prompt of their batch, "
        f"{scheduler.shared_tokens} more prompt tokens not run\n"
    )
    print("| path | requests | tokens | seconds | tokens/s | graph ÷ path |")
    print("|---|---|---|---|---|---|")
    print(
        f"| debate graph, batching scheduler | {len(prompts)} | {tokens} | {seconds:.0f} | "
        f"{graph_rate:.1f} | 1.00 |"
    )
    print(
        f"| (a) same requests one at a time | {args.sequential_sample} | {seq_tokens} | "
        f"{seq_seconds:.0f} | {seq_rate:.1f} | {graph_rate / seq_rate:.2f}x |"
    )
    print(
        f"| (b) raw batched model.generate | {min(len(prompts), 2 * batch)} | {raw_tokens} | "
        f"{raw_seconds:.0f} | {raw_rate:.1f} | {graph_rate / raw_rate:.2f}x |"
    )


if __name__ == "__main__":
    main()
