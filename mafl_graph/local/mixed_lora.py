"""Mixed-adapter LoRA batches in one pass per layer instead of one pass per adapter.

A tuned society puts up to six adapters (each agent's generator and critic) plus the untuned
summarizer into every batch. PEFT's mixed-batch path (``adapter_names=``) loops, in each of the
model's 210 LoRA layers, over the adapters present: a Python scan of the rows, a gather of the
adapter's rows, two small matmuls and a scatter back, for each. On a CPU those thousands of
small operations cost more than the model's own forward pass (a 7-row batch of 7 adapters took
3.6× the base-only batch).

Here each layer stacks the A matrices of the adapters present into one ``[R, in]`` matrix and
their (scaled) B matrices into one ``[out, R]``, and a 0/1 mask keeps each row to its own
adapter's columns: ``((x @ A.T) * mask) @ B.T``. That is three operations per layer whatever
the number of adapters, for a few more multiply-adds than the per-adapter loop. PEFT still
loads, names and holds the adapters; only its mixed-batch forward is replaced, on the modules
of the engine's own model (never PEFT's class), and only for plain LoRA (DoRA and other
variants keep PEFT's path).
"""

from __future__ import annotations

import types
from typing import Any

import torch

BASE = "__base__"


def use_fused_mixed_batches(model: torch.nn.Module) -> int:
    """Route every plain-LoRA linear layer of ``model`` through :func:`fused_mixed_forward`.

    Idempotent; call it again after loading another adapter. Returns the layers routed.
    """
    routed = 0
    for module in model.modules():
        if not _is_plain_lora_linear(module):
            continue
        # Instance attributes, so PEFT's class (and any other model using it) is untouched.
        vars(module)["_mixed_batch_forward"] = types.MethodType(fused_mixed_forward, module)
        vars(module)["_mafl_fused"] = None  # rebuilt with the new adapter
        routed += 1
    return routed


def fused_mixed_forward(
    self: Any, x: torch.Tensor, *args: Any, adapter_names: list[str], **kwargs: Any
) -> torch.Tensor:
    """PEFT's ``_mixed_batch_forward`` contract: row i of ``x`` uses ``adapter_names[i]``."""
    from peft.tuners.lora.layer import VARIANT_KWARG_KEYS

    for key in VARIANT_KWARG_KEYS:  # for LoRA variants only, which never come here
        kwargs.pop(key, None)
    result = self.base_layer(x, *args, **kwargs)
    present = {a for a in adapter_names if a != BASE and a in self.lora_A}
    if not present:
        return result
    names, a, b, owner = _stacked(self, present)
    index = {name: i for i, name in enumerate(names)}
    rows = torch.tensor([index.get(name, -1) for name in adapter_names], device=a.device)
    mask = (rows[:, None] == owner[None, :]).to(a.dtype)  # [batch, R]: a row's own columns
    hidden = (x.to(a.dtype) @ a.T) * mask.view(mask.shape[0], *([1] * (x.dim() - 2)), -1)
    return result + (hidden @ b.T).to(result.dtype)


def _stacked(self: Any, present: set[str]) -> tuple[Any, ...]:
    """Names, stacked A, scaled B and column owners covering ``present``; one set is kept.

    Rows join and leave a batch at every step, so the set of adapters in it changes often.
    A kept set that covers the present adapters with at most two spare ones is reused (a
    spare adapter's columns are masked out: a few wasted multiply-adds, no copy); a new
    adapter, or too many spare ones, rebuilds it.
    """
    cached = self._mafl_fused
    if cached is not None and present <= set(cached[0]) and len(cached[0]) <= len(present) + 2:
        return cached  # type: ignore[no-any-return]
    names = tuple(sorted(present))
    a = torch.cat([self.lora_A[n].weight for n in names])
    b = torch.cat([self.lora_B[n].weight * self.scaling[n] for n in names], dim=1)
    owner = torch.cat(
        [
            torch.full((self.lora_A[n].weight.shape[0],), i, device=a.device)
            for i, n in enumerate(names)
        ]
    )
    self._mafl_fused = (names, a, b, owner)
    return self._mafl_fused  # type: ignore[no-any-return]


def _is_plain_lora_linear(module: torch.nn.Module) -> bool:
    from peft.tuners.lora.layer import Linear

    # Dropout is the identity in eval mode, which is the only mode the engine runs in.
    return isinstance(module, Linear) and not module.lora_variant
