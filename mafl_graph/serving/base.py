"""What every serving backend shares: the interface, the error, and the served-model record.

A serving backend decides where the society's models answer: in this process (the embedded
engine, or each tuner's own ``serve``), or on a server that holds every agent's adapter on one
base model (vLLM, SGLang). The loop asks it three things, each a plain call:

* :meth:`ServingBackend.society_model`: the untuned society's model, served where the tuned
  ones will be;
* :meth:`ServingBackend.check`: whether the server can serve this run at all (reachable, the
  right base model), before any debate;
* :meth:`ServingBackend.prepare` / :meth:`ServingBackend.release`: register one iteration's
  tuned models (idempotently: a resumed loop registers nothing twice), and unload those of an
  iteration that no longer plays.

A new backend is one module plus one :func:`~mafl_graph.serving.register_serving`.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mafl_graph.finetune.tuners.base import TunedModel

if TYPE_CHECKING:
    from typing import Self

    from langchain_core.language_models import BaseChatModel

    from mafl_graph.serving.options import ServingOptions

Key = tuple[int, str]
"""(agent index, role), as in :func:`~mafl_graph.finetune.tuners.tune_run`."""

__all__ = ["Key", "ServedModel", "ServingBackend", "ServingError"]


class ServingError(RuntimeError):
    """A server cannot serve the run: unreachable, wrong base model, an adapter refused.

    The message names the server's URL (never its key) and what to do; nothing the run
    finished is lost, and a rerun resumes once the cause is fixed.
    """


@dataclass(frozen=True)
class ServedModel(TunedModel):
    """A :class:`TunedModel` as a serving backend serves it: ``served_as`` is the name the
    server knows it by, and :meth:`chat_model` asks the backend (not the tuner) for a chat
    model. Recorded (``as_dict``) it is the TunedModel it serves."""

    served_as: str = ""
    server: ServingBackend | None = field(default=None, compare=False, repr=False)

    def chat_model(self, **kwargs: Any) -> BaseChatModel:
        """The chat model that sends this model's requests to its server (``kwargs`` win)."""
        if self.server is None:
            return super().chat_model(**kwargs)
        return self.server.chat_model(self, **kwargs)

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(TunedModel)}

    def tuned(self) -> TunedModel:
        """The TunedModel this serves, as the tuner recorded it."""
        return TunedModel.from_dict(self.as_dict())


class ServingBackend(ABC):
    """Where the society's models are served; one instance per run (settings, no state that
    a resumed run would need: what is registered is asked of the server)."""

    name: str
    """The name the backend is registered under (``--serving``)."""

    @classmethod
    @abstractmethod
    def from_options(cls, options: ServingOptions, *, model: str, base: str | None = None) -> Self:
        """This backend for ``options``, serving a society of ``model`` ("provider:name") whose
        tuner starts from ``base``; options it cannot use are refused here (ValueError)."""

    def society_model(self, model: str) -> tuple[str, dict[str, Any]]:
        """The untuned society's model (a "provider:name" string) and the keywords its chat
        models need besides the run's sampling settings (a base URL, a key)."""
        return model, {}

    def check(self) -> None:
        """Raise :class:`ServingError` if the run cannot be served (checked before any debate)."""
        return None

    @abstractmethod
    def prepare(self, tuned: Mapping[Key, TunedModel]) -> dict[Key, TunedModel]:
        """Make every model of ``tuned`` servable; the same keys, each with a ``chat_model``
        that reaches where it is served. Calling it again with the same models is harmless."""

    def release(
        self, previous: Mapping[Key, TunedModel], *, keep: Mapping[Key, TunedModel]
    ) -> list[str]:
        """Stop serving the models of ``previous`` that ``keep`` does not hold; the names
        released (none by default: nothing is held)."""
        return []

    def chat_model(self, model: ServedModel, **kwargs: Any) -> BaseChatModel:
        """The chat model of a model this backend prepared (``kwargs`` win)."""
        return model.tuned().chat_model(**kwargs)

    def describe(self) -> str:
        """One line for logs: the backend and where it serves (no credentials)."""
        return self.name
