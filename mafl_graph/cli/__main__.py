"""``python -m mafl_graph.cli``."""

from mafl_graph.cli import main

main()
