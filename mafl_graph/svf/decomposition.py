"""Singular value decompositions of a causal LM's weight matrices, computed once and cached.

SVF (Transformer², Sun et al. 2025) writes each target weight as ``W = U diag(S) Vᵀ`` and
learns only a rescaling of ``S``. The decomposition depends on nothing but the base weights, so
it is computed once per base (``torch.linalg.svd`` in float32; about 11 s for the 90 MLP
matrices of SmolLM2-135M on 2 cores) and kept on disk as safetensors under
``<cache>/svf/``. A later call finds the file by a hash of the very weights it decomposes, so a
fine-tuned or merged model never picks up another model's factors, and the same weights loaded
in bfloat16 or float32 (bf16 widens to float32 exactly) share one file.

The targets default to the reference code's: the MLP projections (``gate_proj``, ``up_proj``,
``down_proj``) of every layer. Any other ``nn.Linear`` short names (``q_proj``, ``o_proj`` …)
and a subset of layers can be chosen instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import tempfile
import threading
import weakref
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from mafl_graph.cache import default_cache_dir

log = logging.getLogger(__name__)

DEFAULT_TARGETS: tuple[str, ...] = ("gate_proj", "up_proj", "down_proj")
"""The reference code's targets: every MLP projection."""

FORMAT = "mafl-svf-decomposition/1"
_LAYER_INDEX = re.compile(r"\.(\d+)\.")


@dataclass(eq=False)
class Decomposition:
    """``W = U diag(S) Vᵀ`` for each target linear module of one base model (float32, CPU).

    Keys are module names as in ``model.named_modules()`` (``"model.layers.3.mlp.gate_proj"``;
    the weight's parameter name adds ``".weight"``). For a module with weight ``[out, in]`` and
    ``k = min(out, in)``: ``u[name]`` is ``[out, k]``, ``s[name]`` is ``[k]`` (descending) and
    ``v[name]`` is ``[in, k]``, the reference code's layout (``torch.svd``'s ``V``, not ``Vᵀ``).
    """

    base_name: str
    """A readable name of the base (its model directory's name, else its class)."""
    fingerprint: str
    """SHA-256 of the target weights (names, shapes, float32 values): the base's identity."""
    targets: tuple[str, ...]
    layers: tuple[int, ...] | None
    """The layer indices decomposed, or ``None`` for every module matching :attr:`targets`."""
    u: dict[str, torch.Tensor]
    s: dict[str, torch.Tensor]
    v: dict[str, torch.Tensor]
    path: Path | None = None
    """The cache file it was read from or written to (``None`` when not cached)."""
    _cast: dict[tuple[str, torch.dtype, torch.device], tuple[torch.Tensor, ...]] = field(
        default_factory=dict, repr=False, init=False
    )

    @property
    def names(self) -> tuple[str, ...]:
        """The target module names, in model order."""
        return tuple(self.s)

    @property
    def shapes(self) -> dict[str, tuple[int, int]]:
        """Each target weight's ``(out, in)`` shape."""
        return {n: (self.u[n].shape[0], self.v[n].shape[0]) for n in self.s}

    def rank(self, name: str) -> int:
        """The number of singular values of ``name`` (``min(out, in)``): its expert's z length."""
        return int(self.s[name].shape[0])

    def weight(self, name: str) -> torch.Tensor:
        """``U diag(S) Vᵀ``: the base weight as reconstructed from its factors (float32)."""
        return (self.u[name] * self.s[name]) @ self.v[name].T

    def factors(
        self, name: str, dtype: torch.dtype, device: torch.device | str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(U, S, V)`` of ``name`` in ``dtype`` on ``device`` (default: where they are
        kept), converted once and kept.

        A bfloat16 or GPU model multiplies by factors of its own dtype and device at every
        forward pass: converting them each time would cost more than the product.
        """
        kept = self.u[name]
        device = kept.device if device is None else torch.device(device)
        if dtype == kept.dtype and device == kept.device:
            return self.u[name], self.s[name], self.v[name]
        key = (name, dtype, device)
        if key not in self._cast:
            self._cast[key] = tuple(
                t.to(device=device, dtype=dtype) for t in (self.u[name], self.s[name], self.v[name])
            )
        u, s, v = self._cast[key]
        return u, s, v

    def __repr__(self) -> str:
        layers = "all" if self.layers is None else _span(self.layers)
        return (
            f"Decomposition({self.base_name!r}, targets={list(self.targets)}, layers={layers}, "
            f"matrices={len(self.s)}, fingerprint={self.fingerprint[:12]!r})"
        )


def decompose(
    model: torch.nn.Module,
    *,
    targets: Sequence[str] = DEFAULT_TARGETS,
    layers: Iterable[int] | None = None,
    cache_dir: str | Path | None = None,
    cache: bool = True,
    progress: bool = True,
    threads: int | None = 1,
) -> Decomposition:
    """The :class:`Decomposition` of ``model``'s target weights, from the cache when it can be.

    ``targets`` are short names of ``nn.Linear`` modules (the last part of their module name).
    ``layers`` picks layer indices (the first ``.N.`` in a module name, as in
    ``model.layers.N``); negative ones count from the end, so ``range(-6, 0)`` is the last six
    layers. ``None`` takes every matching module. See :func:`select_targets` for the errors.

    The factors live in ``<cache_dir or default_cache_dir()>/svf/<base>-<hash>.safetensors``,
    written atomically; ``cache=False`` neither reads nor writes it. Within one process, a
    decomposition still held by someone is returned again instead of being read twice.
    ``threads`` is torch's thread count while computing the SVDs: one is fastest for matrices
    of SmolLM2's size, ``None`` keeps torch's own (for large models on an idle machine).
    """
    modules = select_targets(model, targets, layers)
    targets = tuple(sorted(set(targets)))
    chosen = None if layers is None else _layers_of(modules)
    fingerprint = weights_fingerprint(modules)
    with _memo_lock:
        held = _memo.get(fingerprint)
    if held is not None:
        return held
    base_name = model_name(model)
    path = None
    if cache:
        root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        path = root / "svf" / f"{_safe(base_name)}-{fingerprint[:16]}.safetensors"
    factors = _read_cache(path, fingerprint, modules) if path is not None else None
    if factors is None:
        factors = _svd_all(modules, progress=progress, threads=threads)
        if path is not None:
            _write_cache(path, base_name, fingerprint, targets, chosen, *factors)
    u, s, v = factors
    result = Decomposition(base_name, fingerprint, targets, chosen, u, s, v, path)
    with _memo_lock:
        _memo[fingerprint] = result
    return result


_memo: weakref.WeakValueDictionary[str, Decomposition] = weakref.WeakValueDictionary()
_memo_lock = threading.Lock()


def select_targets(
    model: torch.nn.Module, targets: Sequence[str], layers: Iterable[int] | None = None
) -> dict[str, torch.nn.Linear]:
    """``model``'s ``nn.Linear`` modules named one of ``targets``, in ``layers``, in model order.

    Raises ``ValueError`` for a target that names no linear module (listing the names there
    are), a layer index outside the model, or a target with no module in the chosen layers.
    """
    if isinstance(targets, str) or not targets:
        raise ValueError(
            f"targets must be a non-empty list of module names such as {list(DEFAULT_TARGETS)}; "
            f"got {targets!r}"
        )
    linear = {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
    }
    short = {name.rsplit(".", 1)[-1] for name in linear}
    unknown = [t for t in targets if t not in short]
    if unknown:
        raise ValueError(
            f"No linear module of {type(model).__name__} is named {', '.join(map(repr, unknown))}; "
            f"its linear modules are named: {', '.join(sorted(short))}"
        )
    chosen = None if layers is None else set(normalize_layers(layers, layer_count(model)))
    selected: dict[str, torch.nn.Linear] = {}
    for target in targets:
        found = {
            name: module
            for name, module in linear.items()
            if name.rsplit(".", 1)[-1] == target
            and (chosen is None or _layer_index(name) in chosen)
        }
        if not found:
            assert chosen is not None  # a known target matches something when all are taken
            raise ValueError(
                f"Target {target!r} has no module in layers {_span(sorted(chosen))} of "
                f"{type(model).__name__} (it is outside every layer, or absent from these): "
                "pick other layers, or layers=None"
            )
        selected.update(found)
    order = {name: i for i, name in enumerate(linear)}
    return dict(sorted(selected.items(), key=lambda item: order[item[0]]))


def normalize_layers(layers: Iterable[int], count: int) -> tuple[int, ...]:
    """``layers`` as sorted, distinct indices in ``range(count)``; negative ones count from
    the end. A ``ValueError`` names an index out of range, or an empty selection."""
    result: set[int] = set()
    for index in layers:
        if isinstance(index, bool) or not isinstance(index, int):
            raise ValueError(f"Layer indices must be integers; got {index!r}")
        if not -count <= index < count:
            raise ValueError(
                f"Layer {index} is out of range: the model has {count} layers (0 to {count - 1}; "
                "negative indices count from the end, e.g. range(-6, 0) for the last six)"
            )
        result.add(index % count)
    if not result:
        raise ValueError("layers is empty: pass None for every layer, or some layer indices")
    return tuple(sorted(result))


def layer_count(model: torch.nn.Module) -> int:
    """The number of layers: ``config.num_hidden_layers``, else one more than the largest
    layer index among the module names."""
    config = getattr(model, "config", None)
    count = getattr(config, "num_hidden_layers", None)
    if isinstance(count, int):
        return count
    indices = [_layer_index(name) for name, _ in model.named_modules()]
    return max((i for i in indices if i is not None), default=-1) + 1


def model_name(model: torch.nn.Module) -> str:
    """A readable name of ``model``: its model directory's (or hub id's) last part, else its
    class name."""
    config = getattr(model, "config", None)
    source = getattr(model, "name_or_path", None) or getattr(config, "_name_or_path", None)
    return Path(str(source)).name if source else type(model).__name__


def weights_fingerprint(modules: dict[str, torch.nn.Linear]) -> str:
    """SHA-256 over each module's name, shape and float32 weight values (0.2 s for the 318 MB
    of SmolLM2's MLP weights in float32): any change to a weight changes it."""
    digest = hashlib.sha256()
    for name, module in modules.items():
        weight = module.weight.detach().to("cpu", torch.float32).contiguous()
        digest.update(f"{name}:{tuple(weight.shape)};".encode())
        digest.update(weight.numpy().data)
    return digest.hexdigest()


def _svd_all(
    modules: dict[str, torch.nn.Linear], *, progress: bool, threads: int | None
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    u: dict[str, torch.Tensor] = {}
    s: dict[str, torch.Tensor] = {}
    v: dict[str, torch.Tensor] = {}
    bar = tqdm(modules.items(), desc="SVD of target weights", leave=False, disable=not progress)
    with torch.no_grad(), _intra_op_threads(threads):
        for name, module in bar:
            weight = module.weight.detach().to("cpu", torch.float32)
            left, s[name], vh = torch.linalg.svd(weight, full_matrices=False)
            # LAPACK hands back column-major factors; safetensors stores row-major ones.
            u[name], v[name] = left.contiguous(), vh.T.contiguous()
    return u, s, v


@contextlib.contextmanager
def _intra_op_threads(threads: int | None) -> Iterator[None]:
    """torch's intra-op thread count set to ``threads`` (``None``: left alone), then restored.

    A 1536x576 SVD takes 0.06 s on one thread, and 2 to 8 s on two when another process keeps
    one of two cores busy: LAPACK's threads wait on each other at every step.
    """
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _read_cache(
    path: Path, fingerprint: str, modules: dict[str, torch.nn.Linear]
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]] | None:
    """The cached ``(u, s, v)`` at ``path``, or ``None`` when absent or unusable
    (an unreadable or mismatching file is computed again and overwritten: it is only a cache)."""
    if not path.is_file():
        return None
    try:
        with safe_open(path, framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as error:
        log.warning("Ignoring unreadable SVD cache %s (%s); computing it again", path, error)
        return None
    u, s, v = {}, {}, {}
    try:
        if metadata.get("fingerprint") != fingerprint or metadata.get("format") != FORMAT:
            raise KeyError("fingerprint or format")
        for name, module in modules.items():
            out, inp = module.weight.shape
            k = min(out, inp)
            u[name], s[name], v[name] = (tensors[f"{name}.{p}"] for p in "USV")
            if (u[name].shape, s[name].shape, v[name].shape) != ((out, k), (k,), (inp, k)):
                raise KeyError(name)
    except KeyError as error:
        log.warning("SVD cache %s does not match the model (%s); computing it again", path, error)
        return None
    return u, s, v


def _write_cache(
    path: Path,
    base_name: str,
    fingerprint: str,
    targets: tuple[str, ...],
    layers: tuple[int, ...] | None,
    u: dict[str, torch.Tensor],
    s: dict[str, torch.Tensor],
    v: dict[str, torch.Tensor],
) -> None:
    """Write the factors to ``path`` through a temporary file renamed into place, so a crash
    never leaves half a file and two processes writing at once are harmless."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name in s:
        tensors[f"{name}.U"], tensors[f"{name}.S"], tensors[f"{name}.V"] = u[name], s[name], v[name]
    metadata = {
        "format": FORMAT,
        "base": base_name,
        "fingerprint": fingerprint,
        "targets": json.dumps(list(targets)),
        "layers": json.dumps(None if layers is None else list(layers)),
    }
    handle, staging = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(handle)
    try:
        save_file(tensors, staging, metadata=metadata)
        os.replace(staging, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staging)


def _layer_index(name: str) -> int | None:
    match = _LAYER_INDEX.search(f".{name}.")
    return int(match.group(1)) if match else None


def _layers_of(modules: dict[str, torch.nn.Linear]) -> tuple[int, ...]:
    return tuple(sorted({i for i in map(_layer_index, modules) if i is not None}))


def _span(layers: Sequence[int]) -> str:
    """``[24..29]`` for a run of consecutive indices, else the list."""
    if len(layers) > 2 and list(layers) == list(range(layers[0], layers[-1] + 1)):
        return f"[{layers[0]}..{layers[-1]}]"
    return str(list(layers))


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "model"
