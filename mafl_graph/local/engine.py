"""One local model in memory serving every agent: batched generation and per-agent adapters.

All agents of a society (and every copy of a chat model) share one :class:`LocalEngine` per
model and dtype. Requests from any thread or event loop go to its :class:`BatchScheduler`;
LoRA adapters are loaded into the same base with PEFT (the base is not copied) and rows naming
different adapters share a batch, each layer applying all of them at once (``mixed_lora``).
SVF experts (:mod:`mafl_graph.svf`) are served the same way, one per row, in the same batches
(``mixed_svf``).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

from mafl_graph.local.batching import BASE_ADAPTER, BatchScheduler, Request
from mafl_graph.local.loading import (
    SMOLLM2_ALIAS,
    check_dtype,
    load_tokenizer,
    peft_quietly,
    prepare_model_dir,
    require_local,
    resolve_source,
    shared_base,
)
from mafl_graph.local.prefix_cache import PrefixCache

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from mafl_graph.local.mixed_svf import MixedSVF

FinishReason = Literal["stop", "length"]
DEFAULT_BATCH_SIZE = 64
DEFAULT_PREFIX_CACHE_MB = 1024
"""Room for the turns a debate continues: 32 problems x 3 agents of ~130 tokens take 575 MB
with SmolLM2-135M in float32 (46 KB of keys and values a token)."""


@dataclass(frozen=True)
class Generation:
    """What one call to :meth:`LocalEngine.generate` produced."""

    text: str
    input_tokens: int
    output_tokens: int
    finish_reason: FinishReason


class LocalEngine:
    """A tokenizer and a causal LM in eval mode, served through a batching scheduler."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        model: PreTrainedModel,
        *,
        name: str,
        max_batch_size: int = DEFAULT_BATCH_SIZE,
        prefix_cache_mb: int = DEFAULT_PREFIX_CACHE_MB,
    ) -> None:
        self.tokenizer = tokenizer
        self.model = model.eval()
        self.name = name
        self._model_lock = threading.Lock()  # held around forward passes and adapter loads
        self._tokenizer_lock = threading.Lock()  # the fast tokenizer is not thread-safe
        self._peft: Any = None
        self._svf: MixedSVF | None = None
        # transformers 5.x renamed the forward's ``past_key_values`` to ``cache`` (the old name
        # goes in 5.40): use whichever this version takes.
        forward = inspect.signature(model.forward).parameters
        self._cache_kwarg = "cache" if "cache" in forward else "past_key_values"
        self._adapters: dict[Path, str] = {}
        pad = tokenizer.pad_token_id
        self.scheduler = BatchScheduler(
            self._forward,
            self._decode,
            eos_ids=self._eos_ids(),
            pad_id=int(pad if pad is not None else min(self._eos_ids())),
            lock=self._model_lock,
            max_batch_size=max_batch_size,
            prefixes=PrefixCache(prefix_cache_mb * 2**20 // self._kv_bytes_per_token()),
        )

    @classmethod
    def from_dir(cls, model_dir: str | Path, *, dtype: str = "float32") -> LocalEngine:
        """Serve a local Hugging Face model directory (never the hub) in ``dtype``.

        The weights are the process-wide :func:`~mafl_graph.local.loading.shared_base`, which
        the local tuner trains LoRA adapters over as well; adapters loaded here go into this
        engine's own view of it.
        """
        model_dir = Path(model_dir)
        model = shared_base(model_dir, check_dtype(dtype))
        return cls(load_tokenizer(model_dir), model, name=model_dir.name)

    @property
    def device(self) -> torch.device:
        """Where the model's weights are (see :func:`~mafl_graph.local.loading.torch_device`)."""
        return next(self.model.parameters()).device

    @property
    def context_window(self) -> int:
        """Most tokens (prompt + reply) the model was trained to attend over."""
        return int(self.model.config.max_position_embeddings)

    def generate(self, messages: list[dict[str, str]], **options: Any) -> Generation:
        """Reply to ChatML ``messages`` (``{"role", "content"}`` dicts); see :meth:`request`."""
        request = self.request(messages, **options)
        try:
            ids, reason = self.scheduler.submit(request).result()
        except BaseException:
            request.abandoned = True
            raise
        return self._finish(request, ids, reason)

    async def agenerate(self, messages: list[dict[str, str]], **options: Any) -> Generation:
        """:meth:`generate` without tying up a thread while the batch decodes."""
        request = self.request(messages, **options)
        try:
            ids, reason = await asyncio.wrap_future(self.scheduler.submit(request))
        except BaseException:  # cancelled: the row leaves its batch at the next step
            request.abandoned = True
            raise
        return self._finish(request, ids, reason)

    def request(
        self,
        messages: list[dict[str, str]],
        *,
        max_new_tokens: int = 256,
        temperature: float = 0.7,
        top_p: float = 0.95,
        seed: int | None = None,
        stop: list[str] | None = None,
        adapter: str | Path | None = None,
        keep: bool = False,
    ) -> Request:
        """Validate and tokenize one generation request.

        Samples iff ``temperature > 0``, from the request's own generator seeded with ``seed``,
        so the same (seed, prompt) gives the same draws whatever else shares the batch. When the
        prompt leaves fewer than ``max_new_tokens`` of context, the reply is capped at what is
        left; a prompt that fills the window raises ``ValueError`` (for this request alone).
        ``keep``: the caller will send this conversation again with the reply and more turns
        appended (a debate agent's next round); its keys and values are kept so that the next
        prompt runs only the new turns. Reuse changes float32 logits by about 1e-5 (the same
        kind of difference as batching), so a greedy reply can, rarely, differ from a fresh one.
        """
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        if temperature < 0 or not 0 < top_p <= 1:
            raise ValueError(
                f"need temperature >= 0 and 0 < top_p <= 1, got {temperature=} and {top_p=}"
            )
        with self._tokenizer_lock:
            ids = cast(
                list[int],
                self.tokenizer.apply_chat_template(
                    messages, add_generation_prompt=True, tokenize=True, return_dict=False
                ),
            )
        room = self.context_window - len(ids)
        if room < 1:
            raise ValueError(
                f"The prompt is {len(ids)} tokens but {self.name} has a context window of "
                f"{self.context_window} tokens: shorten the messages."
            )
        return Request(
            prompt_ids=list(ids),
            max_new_tokens=min(max_new_tokens, room),
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            stop=[s for s in stop or [] if s],
            adapter=self.adapter_name(adapter) if adapter is not None else BASE_ADAPTER,
            keep=keep,
        )

    def next_token_logprobs(
        self, messages: list[dict[str, str]], reply: str, adapter: str | Path | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probabilities over the vocabulary before each token of ``reply``, and its ids.

        What the model (with ``adapter``) would say at each step of a given answer: the raw
        material of the likelihood and KL diversity measures. Shapes: ``[T, vocab]``, ``[T]``.
        """
        import torch

        with self._tokenizer_lock:
            prompt = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=True, return_dict=False
            )
            answer = self.tokenizer(reply, add_special_tokens=False)["input_ids"]
        room = self.context_window - len(prompt)
        answer = list(answer)[: max(room, 0)] or [min(self._eos_ids())]
        ids = torch.tensor([list(prompt) + answer], device=self.device)
        name = self.adapter_name(adapter) if adapter is not None else BASE_ADAPTER
        with self._model_lock, torch.inference_mode(), self._rows([name]) as names:
            model, extra = self.model, {}
            if self._peft is not None:
                model, extra = self._peft, {"adapter_names": names}
            logits = model(input_ids=ids, **extra).logits[0, len(prompt) - 1 : -1].float()
        return torch.log_softmax(logits, dim=-1).cpu(), torch.tensor(answer)

    def adapter_name(self, path: str | Path) -> str:
        """Load the adapter at ``path`` into the shared base (once) and return its name.

        ``path`` is a PEFT LoRA adapter directory (``adapter_config.json``) or an SVF expert
        directory (``svf_config.json``, written by :meth:`mafl_graph.svf.SVFExpert.save`). An
        SVF expert must have been made over this engine's base: one of another base, or of
        target shapes this model does not have, raises ``ValueError``. Its first load
        decomposes the base's target weights (cached on disk: seconds the first time ever).
        """
        directory = Path(path).expanduser().resolve()
        if directory in self._adapters:
            return self._adapters[directory]
        if (directory / "svf_config.json").is_file():
            return self._load_svf(directory)
        if not (directory / "adapter_config.json").is_file():
            raise FileNotFoundError(
                f"No LoRA adapter at {str(path)!r} (expected adapter_config.json there, or "
                "svf_config.json for an SVF expert); pass a directory written by PEFT's "
                "save_pretrained or by SVFExpert.save."
            )
        from peft import PeftModel

        from mafl_graph.local.mixed_lora import use_fused_mixed_batches

        with self._model_lock, peft_quietly():
            if directory not in self._adapters:
                name = f"adapter{len(self._adapters)}"
                if self._peft is None:
                    # Injects LoRA layers into the base's modules in place: no copy of the base.
                    self._peft = PeftModel.from_pretrained(self.model, directory, adapter_name=name)
                else:
                    self._peft.load_adapter(directory, adapter_name=name)
                self._peft.eval()
                use_fused_mixed_batches(self._peft)
                self._adapters[directory] = name
        return self._adapters[directory]

    def _load_svf(self, directory: Path) -> str:
        from mafl_graph.local.mixed_svf import MixedSVF
        from mafl_graph.svf.expert import SVFExpert

        expert = SVFExpert.load(directory)
        with self._model_lock:
            if directory in self._adapters:
                return self._adapters[directory]
            if self._svf is None:
                self._svf = MixedSVF(self.model)
            # Reads the weights, and checks the expert against them, before any layer changes.
            decomposition = self._svf.decomposition(expert)
            name = f"svf{len(self._adapters)}"
            self._svf.add(name, expert, decomposition)
            self._adapters[directory] = name
        return name

    def forward_rows(
        self,
        ids: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        cache: Any,
        adapters: list[str],
    ) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """One forward pass over rows that each name an adapter, for callers that decode
        themselves (the token-level mixer, :mod:`mafl_graph.experts.mixer`).

        ``adapters``: a name from :meth:`adapter_name` (or ``"__base__"``) per row; ``ids``,
        ``mask`` and ``positions`` are ``[rows, tokens]``, left-padded; ``cache`` is ``None`` to
        start, then what the previous call returned. Returns the next-token logits
        ``[rows, vocab]``, the final hidden state of every position ``[rows, tokens, hidden]``
        (what the LM head reads) and the cache. Takes the model lock for the pass alone, so the
        engine's own batches run between a caller's steps. The inputs may be on the CPU and the
        logits and hidden states come back there; the cache stays where the model is.
        """
        import torch

        with self._model_lock, torch.inference_mode():
            out, cache = self._run(ids, mask, positions, cache, adapters, hidden=True)
        return out.logits[:, -1, :].cpu(), out.hidden_states[-1].cpu(), cache

    @contextlib.contextmanager
    def _rows(self, adapters: list[str]) -> Iterator[list[str]]:
        """Name each row's SVF expert to the target layers while the block runs the model;
        yields the names PEFT takes (an SVF row is a base row there)."""
        if self._svf is None:
            yield adapters
            return
        with self._svf.rows(adapters) as names:
            yield names

    def _forward(
        self,
        ids: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        cache: Any,
        adapters: list[str],
    ) -> tuple[torch.Tensor, Any]:
        out, cache = self._run(ids, mask, positions, cache, adapters)
        # Sampling draws from each row's own CPU generator: the logits go back to the CPU.
        return out.logits[:, -1, :].cpu(), cache

    def _run(
        self,
        ids: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        cache: Any,
        adapters: list[str],
        *,
        hidden: bool = False,
    ) -> tuple[Any, Any]:
        """The model's forward over rows that each name an adapter: its output, and the cache."""
        from mafl_graph.local.growing_cache import GrowingCache

        # Callers keep their bookkeeping on the CPU; the model runs where it was loaded.
        ids, mask, positions = (t.to(self.device) for t in (ids, mask, positions))
        with self._rows(adapters) as names:
            model, extra = self.model, {}
            if self._peft is not None:
                # Once adapters are injected, every row names one ("__base__" for none).
                model, extra = self._peft, {"adapter_names": names}
            out = model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                use_cache=True,
                logits_to_keep=1,
                output_hidden_states=hidden,
                **{self._cache_kwarg: cache if cache is not None else GrowingCache()},
                **extra,
            )
        # Only the name this version returns is read: the old one warns when read.
        return out, out.get("cache" if "cache" in out else "past_key_values")

    def _decode(self, ids: list[int]) -> str:
        with self._tokenizer_lock:
            return cast(str, self.tokenizer.decode(ids, skip_special_tokens=True))

    def _finish(self, request: Request, ids: list[int], reason: str) -> Generation:
        text = self._decode(ids)
        cut = min((i for i in (text.find(s) for s in request.stop) if i >= 0), default=-1)
        if cut >= 0:
            text = text[:cut]
        finish: FinishReason = "length" if reason == "length" else "stop"
        return Generation(text, len(request.prompt_ids), len(ids), finish)

    def _kv_bytes_per_token(self) -> int:
        config = self.model.config
        head_dim = getattr(config, "head_dim", None) or (
            config.hidden_size // config.num_attention_heads
        )
        heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        element = next(self.model.parameters()).element_size()
        return int(2 * config.num_hidden_layers * heads * head_dim * element)

    def _eos_ids(self) -> set[int]:
        eos = self.model.generation_config.eos_token_id
        return {eos} if isinstance(eos, int) else set(eos or [])


_engines: dict[tuple[Path, str], LocalEngine] = {}
_engines_lock = threading.Lock()


def load_local_model(source: str | Path = SMOLLM2_ALIAS, dtype: str = "float32") -> LocalEngine:
    """The process-wide :class:`LocalEngine` for ``source`` in ``dtype`` (loaded on first use).

    Every chat model, agent and copy asking for the same model shares one base in memory;
    ``"smollm2"`` and the path of its GGUF are the same model.
    """
    require_local()
    key = (resolve_source(source), check_dtype(dtype))
    with _engines_lock:
        if key not in _engines:
            _engines[key] = LocalEngine.from_dir(prepare_model_dir(key[0]), dtype=dtype)
        return _engines[key]
