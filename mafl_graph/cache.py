"""Where mafl_graph caches what it can rebuild: converted models, generated problems."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """``$MAFL_CACHE_DIR``, else ``$XDG_CACHE_HOME/mafl_graph``, else ``~/.cache/mafl_graph``."""
    if explicit := os.environ.get("MAFL_CACHE_DIR"):
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "mafl_graph"
