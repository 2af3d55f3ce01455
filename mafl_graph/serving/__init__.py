"""Where the society's models are served: one interface, and a registry.

``in-process`` (the default: the embedded engine, or each tuner's own ``serve``), ``vllm`` and
``sglang`` (every agent's LoRA adapter on one OpenAI-compatible server) are
:class:`ServingBackend` subclasses registered by name; a new backend is one module plus one
:func:`register_serving`. ``mafl loop --serving vllm --serving-url http://host:8000/v1``
picks one (:class:`ServingOptions`); docs/serving.md has the servers' start commands.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mafl_graph._lazy import lazy_getattr

if TYPE_CHECKING:
    from mafl_graph.serving.base import ServedModel, ServingBackend, ServingError
    from mafl_graph.serving.inprocess import InProcessServing
    from mafl_graph.serving.options import ServingOptions
    from mafl_graph.serving.registry import register_serving, serving_class, serving_names
    from mafl_graph.serving.vllm import (
        OpenAICompatibleServing,
        SGLangServing,
        VLLMServing,
        adapter_name,
    )

_EXPORTS = {
    "ServedModel": "mafl_graph.serving.base",
    "ServingBackend": "mafl_graph.serving.base",
    "ServingError": "mafl_graph.serving.base",
    "InProcessServing": "mafl_graph.serving.inprocess",
    "ServingOptions": "mafl_graph.serving.options",
    "register_serving": "mafl_graph.serving.registry",
    "serving_class": "mafl_graph.serving.registry",
    "serving_names": "mafl_graph.serving.registry",
    "OpenAICompatibleServing": "mafl_graph.serving.vllm",
    "SGLangServing": "mafl_graph.serving.vllm",
    "VLLMServing": "mafl_graph.serving.vllm",
    "adapter_name": "mafl_graph.serving.vllm",
}
__all__ = [
    "InProcessServing",
    "OpenAICompatibleServing",
    "SGLangServing",
    "ServedModel",
    "ServingBackend",
    "ServingError",
    "ServingOptions",
    "VLLMServing",
    "adapter_name",
    "register_serving",
    "serving_class",
    "serving_names",
]
__getattr__ = lazy_getattr(__name__, _EXPORTS, globals())
