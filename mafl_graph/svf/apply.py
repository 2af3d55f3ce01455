"""Putting SVF experts into a model: one expert's merged weights, or an expert per batch row.

:func:`use_expert` swaps an expert's merged weights into the target modules and puts the
originals back on exit: the whole model is that expert, as for a REINFORCE rollout or an
evaluation. :func:`mixed_experts` gives each row of a batch its own expert (or the base),
as the engine's mixed LoRA batches do (:mod:`mafl_graph.local.mixed_lora`), in one of three
ways (``m_i`` are row i's :meth:`~mafl_graph.svf.SVFExpert.multipliers`, sigmoid and
sum-preserving rescale included, so each is ``x_i W'ᵀ`` for the row's expert):

``"factors"`` (the default)
    expert rows go through the factors, ``y_i = ((x_i V) ⊙ S ⊙ m_i) Uᵀ``, without the merged
    weight ever being formed; base rows go through ``W`` as usual. Two products over the
    expert rows whatever their number of experts, and ``U`` and ``V`` hold 1.375 times the
    values of an MLP weight of SmolLM2, so a batch of all-expert rows costs about that much
    more than the base.
``"correction"``
    every row gets the base output plus a correction,
    ``y_i = x_i Wᵀ + ((x_i V) ⊙ S ⊙ (m_i − 1)) Uᵀ``: no gathering of rows, and a base row's
    correction is exactly zero, but every row pays for three products.
``"merged"``
    each expert's weights are merged when the context opens (about a second per expert for
    SmolLM2's 90 MLP matrices, and a copy of them per expert: 318 MB in float32), then one
    product per expert present runs over that expert's rows. As cheap as ``"factors"`` for
    long prompts, but a decoding step reads every expert's weights.

``benchmarks/svf_size.py`` measures all three (figures in :mod:`mafl_graph.svf`).

Both context managers change the modules of the model they are given, for every caller of
that model: use a view of your own (:func:`~mafl_graph.local.loading.shared_base` gives one
over the same base weights) rather than a serving engine's model. Weights and per-row tables
are computed when the context opens, under the grad mode of that moment: open it with grad
enabled (once per optimiser step) to train ``z`` through it, under ``torch.no_grad()`` or
``torch.inference_mode()`` otherwise.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Literal

import torch
import torch.nn.functional as F

from mafl_graph.svf.decomposition import Decomposition
from mafl_graph.svf.expert import SVFExpert

Method = Literal["factors", "correction", "merged"]
METHODS: tuple[Method, ...] = ("factors", "correction", "merged")


def merged_weight(
    decomposition: Decomposition,
    expert: SVFExpert,
    name: str,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """``U diag(S ⊙ m) Vᵀ`` for target ``name``, ``m`` the expert's
    :meth:`~mafl_graph.svf.SVFExpert.multipliers`: computed in float32, returned in ``dtype``
    on ``device`` (default: the decomposition's), differentiable in ``z``. Does not
    :meth:`~SVFExpert.check` the expert."""
    u, s, v = decomposition.factors(name, torch.float32, device)
    return ((u * (s * expert.multipliers(name, s))) @ v.T).to(dtype)


def merged_weights(
    decomposition: Decomposition,
    expert: SVFExpert,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> dict[str, torch.Tensor]:
    """Every target's :func:`merged_weight`, keyed by module name (the parameter is
    ``name + ".weight"``), after checking that ``expert`` fits ``decomposition``."""
    expert.check(decomposition)
    return {
        name: merged_weight(decomposition, expert, name, dtype=dtype, device=device)
        for name in decomposition.names
    }


def target_modules(
    model: torch.nn.Module, decomposition: Decomposition
) -> dict[str, torch.nn.Linear]:
    """The ``nn.Linear`` modules of ``model`` that ``decomposition`` covers, by name.

    A ``ValueError`` names a module that is missing, not linear, or of another shape: the
    decomposition is of another model (or of the same model wrapped, e.g. by PEFT, under
    other module names).
    """
    modules = {}
    for name, (out, inp) in decomposition.shapes.items():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            module = None
        weight = getattr(module, "weight", None)
        if not isinstance(module, torch.nn.Linear) or weight is None or weight.shape != (out, inp):
            found = "missing" if module is None else f"{type(module).__name__} {_shape(module)}"
            raise ValueError(
                f"{type(model).__name__} does not fit the decomposition of "
                f"{decomposition.base_name!r}: its {name} should be Linear {(out, inp)}, found "
                f"{found}; decompose this model instead"
            )
        modules[name] = module
    return modules


@contextlib.contextmanager
def use_expert(
    model: torch.nn.Module, decomposition: Decomposition, expert: SVFExpert
) -> Iterator[dict[str, torch.Tensor]]:
    """Run ``model`` as ``expert`` inside the ``with`` block; its own weights come back on exit.

    Each target module's ``weight`` becomes the :func:`merged_weight` (in the module's dtype
    and device) and is yielded by name. The weights are put in the module's parameter table,
    where ``torch.func.functional_call`` puts its own, so they may carry ``z``'s autograd
    graph and ``state_dict()`` inside the block is the expert's. On exit the original
    parameter objects return, so the model is bit for bit what it was.
    """
    expert.check(decomposition)
    modules = target_modules(model, decomposition)
    weights = {
        name: merged_weight(
            decomposition, expert, name, dtype=module.weight.dtype, device=module.weight.device
        )
        for name, module in modules.items()
    }
    originals = {name: module._parameters["weight"] for name, module in modules.items()}
    try:
        for name, module in modules.items():
            module._parameters["weight"] = weights[name]  # type: ignore[assignment]
        yield weights
    finally:
        for name, module in modules.items():
            module._parameters["weight"] = originals[name]


@contextlib.contextmanager
def mixed_experts(
    model: torch.nn.Module,
    decomposition: Decomposition,
    experts: Sequence[SVFExpert | None],
    *,
    method: Method = "factors",
) -> Iterator[None]:
    """Inside the ``with`` block, row ``i`` of every batch through ``model`` uses
    ``experts[i]`` (``None``: the base weights), all rows in one pass per layer.

    Each target module's forward is replaced (on the instance, as ``mixed_lora`` does) and
    restored on exit. A forward whose batch does not have ``len(experts)`` rows raises
    ``ValueError``. The module's docstring describes the three methods and what each costs.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    distinct = list({id(e): e for e in experts if e is not None}.values())
    for expert in distinct:
        expert.check(decomposition)
    modules = target_modules(model, decomposition)
    if not distinct:  # all base: the model as it is
        yield
        return
    build = {
        "factors": _factors_forward,
        "correction": _correction_forward,
        "merged": _merged_forward,
    }[method]
    forwards = {
        name: build(module, decomposition, name, experts) for name, module in modules.items()
    }
    previous = {name: vars(module).get("forward") for name, module in modules.items()}
    try:
        for name, module in modules.items():
            vars(module)["forward"] = forwards[name]
        yield
    finally:
        for name, module in modules.items():
            if previous[name] is None:
                vars(module).pop("forward", None)
            else:
                vars(module)["forward"] = previous[name]


def row_singular_values(
    decomposition: Decomposition,
    name: str,
    experts: Sequence[SVFExpert | None],
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """``[rows, k]``: row ``i`` holds ``S ⊙ m_i``, the singular values of ``experts[i]``'s
    weight for target ``name`` (``S`` itself for a base row, ``None``). Computed once per
    distinct expert in float32, returned in ``dtype`` on ``device``."""
    _, s, _ = decomposition.factors(name, torch.float32, device)
    table = {id(e): s * e.multipliers(name, s) for e in experts if e is not None}
    return torch.stack([s if e is None else table[id(e)] for e in experts]).to(dtype)


def svf_linear(
    x: torch.Tensor,
    u: torch.Tensor,
    v: torch.Tensor,
    values: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """``((x_i V) ⊙ values[i]) Uᵀ (+ bias)`` for each row ``i`` of ``x`` (batch first, any
    middle dimensions): row ``i`` through ``U diag(values[i]) Vᵀ``, with ``values`` from
    :func:`row_singular_values` and ``u``, ``v`` the target's factors in ``x``'s dtype."""
    view = (values.shape[0],) + (1,) * (x.dim() - 2) + (values.shape[1],)
    out = ((x @ v) * values.view(view)) @ u.T
    return out if bias is None else out + bias


def corrected_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    u: torch.Tensor,
    v: torch.Tensor,
    deltas: torch.Tensor,
) -> torch.Tensor:
    """``x Wᵀ (+ bias) + ((x_i V) ⊙ deltas[i]) Uᵀ`` for each row ``i`` of ``x``: with
    ``deltas[i] = S ⊙ (m_i − 1)`` (``row_singular_values(...) - S``), row ``i`` through its
    expert's weight, and a row whose deltas are zero gets exactly ``x Wᵀ``."""
    out = F.linear(x, weight, bias)
    view = (deltas.shape[0],) + (1,) * (x.dim() - 2) + (deltas.shape[1],)
    return out + (((x @ v) * deltas.view(view)) @ u.T).to(out.dtype)


def _factors_forward(
    module: torch.nn.Linear,
    decomposition: Decomposition,
    name: str,
    experts: Sequence[SVFExpert | None],
) -> Callable[[torch.Tensor], torch.Tensor]:
    dtype, device = module.weight.dtype, module.weight.device
    u, _, v = decomposition.factors(name, dtype, device)
    expert_rows = [i for i, e in enumerate(experts) if e is not None]
    base_rows = [i for i, e in enumerate(experts) if e is None]
    values = row_singular_values(
        decomposition, name, [experts[i] for i in expert_rows], dtype=dtype, device=device
    )
    picked = torch.tensor(expert_rows, device=device)
    based = torch.tensor(base_rows, device=device)
    # One gather puts the rows of [base rows; expert rows] back in the batch's order.
    order = torch.argsort(torch.tensor(base_rows + expert_rows, device=device))

    def forward(x: torch.Tensor) -> torch.Tensor:
        _check_rows(x, len(experts), name)
        if not base_rows:
            return svf_linear(x, u, v, values, module.bias)
        out = svf_linear(x.index_select(0, picked), u, v, values, module.bias)
        base = F.linear(x.index_select(0, based), module.weight, module.bias)
        return torch.cat([base, out]).index_select(0, order)

    return forward


def _correction_forward(
    module: torch.nn.Linear,
    decomposition: Decomposition,
    name: str,
    experts: Sequence[SVFExpert | None],
) -> Callable[[torch.Tensor], torch.Tensor]:
    dtype, device = module.weight.dtype, module.weight.device
    u, _, v = decomposition.factors(name, dtype, device)
    _, s, _ = decomposition.factors(name, torch.float32, device)
    # A base row's values are S itself, so its deltas are exact zeros.
    deltas = (row_singular_values(decomposition, name, experts, device=device) - s).to(dtype)

    def forward(x: torch.Tensor) -> torch.Tensor:
        _check_rows(x, len(experts), name)
        return corrected_linear(x, module.weight, module.bias, u, v, deltas)

    return forward


def _merged_forward(
    module: torch.nn.Linear,
    decomposition: Decomposition,
    name: str,
    experts: Sequence[SVFExpert | None],
) -> Callable[[torch.Tensor], torch.Tensor]:
    dtype, device = module.weight.dtype, module.weight.device
    groups: dict[int, list[int]] = {}
    weights: dict[int, torch.Tensor | None] = {}
    for row, expert in enumerate(experts):
        groups.setdefault(id(expert), []).append(row)
        if id(expert) not in weights:
            weights[id(expert)] = (
                None
                if expert is None
                else merged_weight(decomposition, expert, name, dtype=dtype, device=device)
            )
    plan = [(weights[key], torch.tensor(rows, device=device)) for key, rows in groups.items()]

    def forward(x: torch.Tensor) -> torch.Tensor:
        _check_rows(x, len(experts), name)
        if len(plan) == 1:
            return F.linear(x, _or(plan[0][0], module.weight), module.bias)
        out = x.new_empty((*x.shape[:-1], module.out_features))
        for weight, rows in plan:
            out[rows] = F.linear(x[rows], _or(weight, module.weight), module.bias)
        return out

    return forward


def _or(weight: torch.Tensor | None, base: torch.Tensor) -> torch.Tensor:
    return base if weight is None else weight


def _check_rows(x: torch.Tensor, rows: int, name: str) -> None:
    if x.shape[0] != rows:
        raise ValueError(
            f"{name} got a batch of {x.shape[0]} rows but mixed_experts was given {rows} "
            "experts (one per row, None for the base): pass one per row of this batch"
        )


def _shape(module: torch.nn.Module) -> str:
    weight = getattr(module, "weight", None)
    return str(tuple(weight.shape)) if isinstance(weight, torch.Tensor) else "without a weight"
