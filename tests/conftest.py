import os
import sys
from pathlib import Path

import pytest

# The fakes module is shared by the tests and by the subprocess worker.
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def engine():
    """The embedded model, loaded once per session (skipped only outside CI if not installed)."""
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401

        from mafl_graph.local import load_local_model, smollm2_gguf_path

        smollm2_gguf_path()
    except (ImportError, FileNotFoundError) as error:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"embedded model unavailable: {error}")
    return load_local_model()
