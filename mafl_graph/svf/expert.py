"""SVF experts: one vector ``z`` per target matrix, rescaling its singular values.

An expert turns the base weight ``W = U diag(S) Vᵀ`` into

    W' = U diag(S ⊙ σ(z)) Vᵀ · ΣS / Σ(S ⊙ σ(z))

(σ the sigmoid), as the reference code's ``compose_new_params`` does: the sigmoid keeps every
scale in (0, 1) and the rescaling keeps the sum of the singular values, so an expert reweighs
the base's directions without growing or shrinking the matrix. The rescaling also means that
any *constant* ``z`` gives back ``W`` exactly (up to float rounding): σ(z) is never 1, but equal
scales cancel. :meth:`SVFExpert.identity` builds such an expert and :meth:`SVFExpert.is_identity`
recognises one.

On disk an expert is a directory of two small files, next to which PEFT's adapters would have
``adapter_model.safetensors`` and ``adapter_config.json``: ``svf_expert.safetensors`` (the z
vectors, float32, keyed by module name) and ``svf_config.json`` (the base's name and weight
fingerprint, the targets, layers and shapes, and free-form training settings).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from mafl_graph.svf.decomposition import Decomposition

EXPERT_FILE = "svf_expert.safetensors"
CONFIG_FILE = "svf_config.json"
FORMAT = "mafl-svf-expert/1"
Z_MEAN = 0.1
"""The reference's ``init_val``: z starts at 0.1 + 0.01·N(0, 1), scales near σ(0.1) = 0.52."""
Z_STD = 0.01


@dataclass(eq=False)
class SVFExpert:
    """The ``z`` vectors of one expert over a :class:`~mafl_graph.svf.Decomposition`'s targets.

    ``z`` maps each target module name to a float32 vector of its number of singular values.
    The vectors are leaf tensors that require grad, as a module's parameters do: pass
    :meth:`parameters` to an optimiser, and run inference under ``torch.no_grad()`` or
    ``torch.inference_mode()``.
    """

    z: dict[str, torch.Tensor]
    base_name: str
    """The readable name of the base the expert was made for (:attr:`Decomposition.base_name`)."""
    fingerprint: str
    """That base's weight fingerprint (:attr:`Decomposition.fingerprint`)."""
    targets: tuple[str, ...]
    layers: tuple[int, ...] | None
    shapes: dict[str, tuple[int, int]]
    """Each target weight's ``(out, in)``."""
    settings: dict[str, Any] = field(default_factory=dict)
    """Free-form, JSON-serialisable: how the expert was made (initialisation, training)."""

    @classmethod
    def init(
        cls,
        decomposition: Decomposition,
        *,
        seed: int = 0,
        mean: float = Z_MEAN,
        std: float = Z_STD,
        settings: Mapping[str, Any] | None = None,
    ) -> SVFExpert:
        """A new expert with ``z = mean + std·N(0, 1)``, drawn from its own generator seeded
        with ``seed`` (the global RNG is neither used nor advanced), target by target."""
        generator = torch.Generator().manual_seed(seed)
        z = {
            name: (torch.randn(decomposition.rank(name), generator=generator) * std + mean)
            for name in decomposition.names
        }
        init = {"seed": seed, "mean": mean, "std": std}
        return cls._over(decomposition, z, {"init": init, **(settings or {})})

    @classmethod
    def identity(cls, decomposition: Decomposition, *, value: float = Z_MEAN) -> SVFExpert:
        """An expert whose weights are the base's: every ``z`` equal to ``value``."""
        z = {name: torch.full((decomposition.rank(name),), value) for name in decomposition.names}
        return cls._over(decomposition, z, {"init": {"constant": value}})

    @classmethod
    def _over(
        cls, decomposition: Decomposition, z: dict[str, torch.Tensor], settings: dict[str, Any]
    ) -> SVFExpert:
        return cls(
            {name: t.float().requires_grad_() for name, t in z.items()},
            decomposition.base_name,
            decomposition.fingerprint,
            decomposition.targets,
            decomposition.layers,
            decomposition.shapes,
            settings,
        )

    @property
    def names(self) -> tuple[str, ...]:
        """The target module names, in model order."""
        return tuple(self.z)

    @property
    def num_parameters(self) -> int:
        """The number of values in all z vectors together."""
        return sum(t.numel() for t in self.z.values())

    def parameters(self) -> list[torch.Tensor]:
        """The z vectors, for an optimiser."""
        return list(self.z.values())

    def scales(self, name: str) -> torch.Tensor:
        """``σ(z)``: the factor on each singular value of ``name`` before the rescaling."""
        return torch.sigmoid(self.z[name])

    def multipliers(self, name: str, s: torch.Tensor) -> torch.Tensor:
        """The factor on each of the singular values ``s`` of ``name``, rescaling included:
        ``σ(z) · ΣS / Σ(S ⊙ σ(z))``, so that ``W' = U diag(S ⊙ multipliers) Vᵀ``. Float32,
        on ``s``'s device, differentiable in ``z``."""
        s = s.float()
        scale = torch.sigmoid(self.z[name].to(s.device))
        return scale * (s.sum() / (s * scale).sum())

    def is_identity(self, *, atol: float = 1e-6) -> bool:
        """Whether every target's scales are equal (within ``atol``), so the weights are the
        base's."""
        with torch.no_grad():
            return all(bool((s.max() - s.min()) <= atol) for s in map(self.scales, self.z))

    def check(self, decomposition: Decomposition) -> None:
        """Raise ``ValueError`` unless this expert fits ``decomposition``: the same target
        matrices, of the same shapes, of the same base weights."""
        mine, theirs = set(self.z), set(decomposition.names)
        if mine != theirs:
            raise ValueError(
                f"The SVF expert covers targets {list(self.targets)} in layers "
                f"{_layers(self.layers)} ({len(mine)} matrices) but the decomposition covers "
                f"targets {list(decomposition.targets)} in layers {_layers(decomposition.layers)} "
                f"({len(theirs)} matrices; e.g. {_example(mine, theirs)}): decompose the base "
                f"with targets={list(self.targets)} and layers={_layers(self.layers)}"
            )
        for name, shape in decomposition.shapes.items():
            if tuple(self.shapes[name]) != tuple(shape):
                raise ValueError(
                    f"The SVF expert's {name} is {tuple(self.shapes[name])} but the base's is "
                    f"{tuple(shape)}: the expert was made for another model "
                    f"({self.base_name!r}, not {decomposition.base_name!r})"
                )
        if self.fingerprint != decomposition.fingerprint:
            raise ValueError(
                f"The SVF expert was made for base {self.base_name!r} (weights "
                f"{self.fingerprint[:12]}) but the decomposition is of {decomposition.base_name!r} "
                f"(weights {decomposition.fingerprint[:12]}): an expert only rescales the "
                "singular values of the weights it was trained on; use that base model"
            )

    def config(self) -> dict[str, Any]:
        """What ``svf_config.json`` holds."""
        return {
            "format": FORMAT,
            "base": {"name": self.base_name, "fingerprint": self.fingerprint},
            "targets": list(self.targets),
            "layers": None if self.layers is None else list(self.layers),
            "shapes": {name: list(shape) for name, shape in self.shapes.items()},
            "num_parameters": self.num_parameters,
            "settings": self.settings,
        }

    def save(self, directory: str | Path) -> Path:
        """Write the expert into ``directory`` (created if needed; its files replaced, each
        atomically) and return the directory."""
        try:
            config = json.dumps(self.config(), indent=2) + "\n"
        except TypeError as error:  # refused before anything is written
            raise ValueError(
                f"The SVF expert's settings must be JSON-serialisable ({error}): "
                f"convert them to numbers, strings, lists and dicts; got {self.settings!r}"
            ) from error
        directory = Path(directory).expanduser()
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {name: t.detach().float().cpu().contiguous() for name, t in self.z.items()}
        _atomic(directory / EXPERT_FILE, lambda path: save_file(tensors, path))
        _atomic(directory / CONFIG_FILE, lambda path: Path(path).write_text(config))
        return directory

    @classmethod
    def load(cls, directory: str | Path, decomposition: Decomposition | None = None) -> SVFExpert:
        """Read an expert saved by :meth:`save` (the directory, or a file in it); with
        ``decomposition``, also :meth:`check` it against that.

        A missing directory raises ``FileNotFoundError``; a file that is not a complete
        expert (missing, truncated, corrupt, or z vectors not matching the config) raises
        ``ValueError`` naming the file.
        """
        directory = Path(directory).expanduser()
        if directory.is_file():
            directory = directory.parent
        if not directory.is_dir():
            raise FileNotFoundError(f"No SVF expert at {str(directory)!r}: no such directory")
        config = _read_config(directory / CONFIG_FILE)
        z = _read_z(directory / EXPERT_FILE)
        try:
            shapes = {name: (int(o), int(i)) for name, (o, i) in config["shapes"].items()}
            base = config["base"]
            layers = config["layers"]
            base_name, fingerprint = str(base["name"]), str(base["fingerprint"])
            targets = tuple(str(t) for t in config["targets"])
            layers = None if layers is None else tuple(int(i) for i in layers)
            settings = dict(config.get("settings") or {})
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise ValueError(
                f"{directory / CONFIG_FILE} is not a complete SVF expert config ({error!r}); "
                "save the expert again"
            ) from error
        for name, shape in shapes.items():
            if name not in z or z[name].shape != (min(shape),):
                found = tuple(z[name].shape) if name in z else "missing"
                raise ValueError(
                    f"{directory / EXPERT_FILE} does not match its config: {name} should have "
                    f"{min(shape)} values (weight {shape}), found {found}; save the expert again"
                )
        if extra := set(z) - set(shapes):
            raise ValueError(
                f"{directory / EXPERT_FILE} holds vectors its config does not name "
                f"(e.g. {sorted(extra)[0]}); save the expert again"
            )
        # safetensors keeps its keys sorted; the config keeps the model's order.
        ordered = {name: z[name].float().requires_grad_() for name in shapes}
        expert = cls(ordered, base_name, fingerprint, targets, layers, shapes, settings)
        if decomposition is not None:
            expert.check(decomposition)
        return expert

    def __repr__(self) -> str:
        return (
            f"SVFExpert(base={self.base_name!r}, targets={list(self.targets)}, "
            f"layers={_layers(self.layers)}, matrices={len(self.z)}, "
            f"parameters={self.num_parameters})"
        )


def _read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(
            f"{str(path.parent)!r} is not an SVF expert: it has no {CONFIG_FILE}"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(
            f"{path} is unreadable or corrupt ({error}); save the expert again"
        ) from error
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        found = config.get("format") if isinstance(config, dict) else type(config).__name__
        raise ValueError(f"{path} is not an SVF expert config: format {found!r}, not {FORMAT!r}")
    return config


def _read_z(path: Path) -> dict[str, torch.Tensor]:
    try:
        with safe_open(path, framework="pt") as handle:
            return {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except FileNotFoundError:
        raise ValueError(
            f"{str(path.parent)!r} is not a complete SVF expert: it has no {EXPERT_FILE}"
        ) from None
    except (SafetensorError, OSError, ValueError) as error:
        raise ValueError(
            f"{path} is truncated or corrupt ({error}); save the expert again or load another "
            "checkpoint"
        ) from error


def _atomic(path: Path, write: Any) -> None:
    """Run ``write(staging_path)`` and rename the result onto ``path``: a reader sees the old
    file or the new one, never half of one."""
    handle, staging = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(handle)
    try:
        write(staging)
        os.replace(staging, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staging)


def _layers(layers: tuple[int, ...] | None) -> str:
    if layers is None:
        return "None"
    if len(layers) > 2 and list(layers) == list(range(layers[0], layers[-1] + 1)):
        return f"range({layers[0]}, {layers[-1] + 1})"
    return str(list(layers))


def _example(mine: set[str], theirs: set[str]) -> str:
    if only := sorted(theirs - mine):
        return f"{only[0]} is not in the expert"
    return f"{sorted(mine - theirs)[0]} is not in the decomposition"
