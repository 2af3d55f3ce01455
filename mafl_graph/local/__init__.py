"""The embedded local model: SmolLM2-135M-Instruct from a pip-installed GGUF, as a chat model.

Nothing here imports torch until a model is actually loaded.
"""

from mafl_graph.local.chat_model import LocalChatModel
from mafl_graph.local.engine import Generation, LocalEngine, load_local_model
from mafl_graph.local.loading import prepare_model_dir, smollm2_gguf_path

__all__ = [
    "Generation",
    "LocalChatModel",
    "LocalEngine",
    "load_local_model",
    "prepare_model_dir",
    "smollm2_gguf_path",
]
