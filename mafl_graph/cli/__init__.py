"""`mafl`: the command line. Each command parses its options, calls the library, renders.

The command modules import only Typer, rich and the settings classes at import time; the
library is imported inside each command, so ``mafl --help`` stays fast.
"""

from __future__ import annotations

from mafl_graph.cli import (  # noqa: F401 - registers
    datasets,
    debate,
    evaluate,
    experts,
    experts_cooperate,
    experts_evolve,
    experts_mixer,
    loop,
    svf,
    svf_compare,
    tune,
)
from mafl_graph.cli.app import app

__all__ = ["app", "main"]


def main() -> None:  # pragma: no cover - console entry point
    app()
