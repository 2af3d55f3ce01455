"""SVF experts served per batch row, in the same batches as base and LoRA rows.

The engine names each row of a batch by the adapter it asked for. An SVF expert
(:class:`~mafl_graph.svf.SVFExpert`) changes only the singular values of its target weights,
so a target layer computes its expert rows through the factors,
``y_i = ((x_i V) ⊙ S ⊙ m_i) Uᵀ`` (:func:`~mafl_graph.svf.svf_linear`), and its other rows
through ``W`` as usual: two products over the expert rows whatever the number of experts
(``benchmarks/svf_decode.py`` measures the cost against base and LoRA rows).

Each target ``nn.Linear`` of the engine's model gets an instance ``forward`` (its class, and
every other model sharing the weights, are untouched). When PEFT injects LoRA layers into the
same modules, the wrapped ``nn.Linear`` becomes their ``base_layer`` and PEFT's mixed forward
calls it for the whole batch before adding the LoRA rows' deltas; an SVF row is a base row for
PEFT, and a LoRA row is a base row here, so each row gets exactly its own adapter.

Each expert's ``S ⊙ m`` is computed once per target when it is loaded and kept in one
``[experts, k]`` table per layer: a decoding step only gathers the rows' entries.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mafl_graph.svf.apply import svf_linear
from mafl_graph.svf.decomposition import Decomposition, decompose
from mafl_graph.svf.expert import SVFExpert

BASE = "__base__"

_Plan = tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor]
"""``(expert rows, base rows or None, order or None, each expert row's table index)``."""


@dataclass(eq=False)
class _Layer:
    """One target layer: its module, factors and the loaded experts' singular values."""

    module: torch.nn.Linear
    u: torch.Tensor
    v: torch.Tensor
    names: tuple[str, ...] = ()
    table: torch.Tensor | None = None  # [len(names), k], in the module's dtype


class MixedSVF:
    """The SVF experts loaded into one model, and the per-row names of the running batch.

    Not thread-safe: the engine calls :meth:`add` and runs the model under its model lock.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self._model = model
        self._layers: dict[str, _Layer] = {}
        self._names: set[str] = set()
        self._rows: tuple[str, ...] | None = None
        self._plans: dict[tuple[str, ...], _Plan | None] = {}

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def decomposition(self, expert: SVFExpert) -> Decomposition:
        """The cached decomposition of the model's base weights over ``expert``'s targets and
        layers, then :meth:`~mafl_graph.svf.SVFExpert.check`: an expert of another base, other
        shapes or other targets raises the expert's ``ValueError``.

        PEFT may have wrapped the target modules (under other names), so the base linear
        modules are decomposed through a module tree of their own with the plain names.
        """
        decomposition = decompose(
            base_view(self._model),
            targets=expert.targets,
            layers=expert.layers,
            progress=False,
        )
        expert.check(decomposition)
        return decomposition

    def add(self, name: str, expert: SVFExpert, decomposition: Decomposition) -> None:
        """Serve ``expert`` to the rows named ``name`` (``decomposition`` from
        :meth:`decomposition`); its target layers are wrapped on first use."""
        if name in self._names:
            raise ValueError(f"An SVF expert named {name!r} is already loaded; pick another name")
        with torch.no_grad():
            for target in decomposition.names:
                layer = self._layers.get(target) or self._wrap(target, decomposition)
                _, s, _ = decomposition.factors(target, torch.float32, layer.u.device)
                values = (s * expert.multipliers(target, s)).to(layer.u.dtype)[None]
                layer.table = values if layer.table is None else torch.cat([layer.table, values])
                layer.names = (*layer.names, name)
        self._names.add(name)
        self._plans.clear()

    @contextlib.contextmanager
    def rows(self, names: Sequence[str]) -> Iterator[list[str]]:
        """Inside the block, row ``i`` of every batch uses ``names[i]`` (an SVF expert's name,
        or any other name for the base weights in the target layers). Yields the names for
        PEFT: an SVF row is a base row there."""
        self._rows, self._plans = tuple(names), {}
        try:
            yield [BASE if n in self._names else n for n in names]
        finally:
            self._rows, self._plans = None, {}

    def _wrap(self, target: str, decomposition: Decomposition) -> _Layer:
        module = _base_linear(self._model.get_submodule(target))
        u, _, v = decomposition.factors(target, module.weight.dtype, module.weight.device)
        layer = _Layer(module, u, v)

        def forward(x: torch.Tensor) -> torch.Tensor:
            plan = self._plan(layer.names, x, target)
            if plan is None:
                return F.linear(x, module.weight, module.bias)
            picked, based, order, which = plan
            assert layer.table is not None
            values = layer.table.index_select(0, which)
            if based is None:
                return svf_linear(x, layer.u, layer.v, values, module.bias)
            assert order is not None
            out = svf_linear(x.index_select(0, picked), layer.u, layer.v, values, module.bias)
            base = F.linear(x.index_select(0, based), module.weight, module.bias)
            return torch.cat([base, out]).index_select(0, order)

        # An instance attribute: nn.Linear's class and the other views of the base are untouched.
        vars(module)["forward"] = forward
        self._layers[target] = layer
        return layer

    def _plan(self, names: tuple[str, ...], x: torch.Tensor, target: str) -> _Plan | None:
        """Which rows of the running batch use which of ``names``; ``None`` when none does.

        Built once per forward pass for all the layers that serve the same experts (all of
        them, when every expert has the same targets), not at each layer.
        """
        rows = self._rows
        if rows is None:
            return None
        if x.shape[0] != len(rows):
            raise ValueError(
                f"{target} got a batch of {x.shape[0]} rows but the engine named {len(rows)}: "
                "every row of a batch needs one adapter name"
            )
        if names in self._plans:
            return self._plans[names]
        index = {name: i for i, name in enumerate(names)}
        which = [index.get(name, -1) for name in rows]
        picked = [i for i, w in enumerate(which) if w >= 0]
        based = [i for i, w in enumerate(which) if w < 0]
        plan: _Plan | None = None
        if picked:
            device = x.device
            plan = (
                torch.tensor(picked, device=device),
                torch.tensor(based, device=device) if based else None,
                # One gather puts [base rows; expert rows] back in the batch's order.
                torch.argsort(torch.tensor(based + picked, device=device)) if based else None,
                torch.tensor([which[i] for i in picked], device=device),
            )
        self._plans[names] = plan
        return plan


def base_view(model: torch.nn.Module) -> torch.nn.Module:
    """A module tree holding ``model``'s own ``nn.Linear`` modules under their plain names,
    with ``model``'s config: what ``model`` was before PEFT wrapped any of them.

    A PEFT layer at ``name`` contributes its ``base_layer`` as ``name``; the LoRA matrices
    inside it are left out. No weight is copied.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    view = torch.nn.Module()
    wrapped: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(prefix) for prefix in wrapped):
            continue
        if isinstance(module, BaseTunerLayer):
            wrapped.append(name + ".")
            module = module.get_base_layer()
        if isinstance(module, torch.nn.Linear):
            _place(view, name, module)
    # decompose names the base and counts its layers from the config.
    vars(view)["config"] = getattr(model, "config", None)
    return view


def _place(root: torch.nn.Module, name: str, module: torch.nn.Module) -> None:
    *path, last = name.split(".")
    parent = root
    for part in path:
        child = parent._modules.get(part)
        if child is None:
            child = torch.nn.Module()
            parent.add_module(part, child)
        parent = child
    parent.add_module(last, module)


def _base_linear(module: torch.nn.Module) -> torch.nn.Linear:
    base = getattr(module, "base_layer", module)  # PEFT's layer holds the original
    if not isinstance(base, torch.nn.Linear):
        raise ValueError(
            f"An SVF target must be a linear layer, found {type(base).__name__}: "
            "decompose this model's nn.Linear modules only"
        )
    return base
