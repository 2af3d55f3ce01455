"""Runs a small multiagent fine-tuning loop against an OpenAI-compatible loopback server.

Used in-process by tests/test_loop.py, and as a subprocess that the server kills mid-run:
``python loop_worker.py RUN_DIR BASE_URL`` prints the metrics as JSON when it finishes.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from openai_world import KEY

from mafl_graph import Arithmetic, Society
from mafl_graph.finetune.tuners import Backoff, OpenAITuneConfig
from mafl_graph.loop import MultiagentFinetuning, TunerFactory


def run_loop(run_dir: Path, url: str, **options: Any) -> list[dict[str, Any]]:
    import openai
    from langchain_openai import ChatOpenAI

    os.environ["OPENAI_API_KEY"] = KEY  # how tuned chat models authenticate, as in real use
    base = ChatOpenAI(model="gpt-4o-mini", base_url=url + "/v1", seed=0, max_retries=0)
    client = openai.OpenAI(base_url=url + "/v1", max_retries=0)
    config = OpenAITuneConfig(backoff=Backoff(initial=0.01, factor=1.5, maximum=0.02))

    loop = MultiagentFinetuning(
        Society.from_model(base, 3),
        Arithmetic(terms=2, low=0, high=30, operators="+", seed=0),
        TunerFactory("openai", client=client, config=config),
        **{
            "iterations": 2,
            "n_train": 6,
            "n_test": 4,
            "concurrency": 2,
            "progress": False,
            **options,
        },
    )
    return loop.run(run_dir)


if __name__ == "__main__":
    metrics = run_loop(Path(sys.argv[1]), sys.argv[2])
    print(json.dumps(metrics))
