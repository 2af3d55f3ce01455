"""Every agent's LoRA adapter on one vLLM or SGLang server, over its OpenAI-compatible API.

The local tuner writes one PEFT adapter per agent and role; a server started once on the base
model (``vllm serve BASE --enable-lora`` with ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``, or
``python -m sglang.launch_server --model-path BASE --enable-lora``) takes them at run time:

* registration is ``POST /v1/load_lora_adapter`` (vLLM) or ``POST /load_lora_adapter``
  (SGLang), body ``{"lora_name", "lora_path"}``; ``lora_path`` is the adapter directory as the
  *server* sees it (``--serving-path-map`` when it mounts the run directory elsewhere);
* each agent's chat model is langchain-openai's ``ChatOpenAI`` at the server, whose ``model``
  names its adapter: vLLM takes the adapter's name, SGLang ``base:adapter``;
* ``/v1/models`` lists the base (``parent`` null, ``root`` its path) and, on vLLM, every
  loaded adapter (``parent`` the base, ``root`` its path).

An adapter's name is ``mafl-i<iteration>-agent<i>-<role>-<digest>``, the digest over its
directory's path and files: stable for one adapter (a resumed loop registers nothing twice,
and an "already loaded" answer counts as done) and new for a retrained one (a server never
answers with stale weights). Both servers accept it (no ``:`` or ``/``).

Bad input gets one :class:`~mafl_graph.serving.ServingError` each, naming the server's URL
(never its key) and what to do: a server that is down, one without runtime loading, an
adapter it cannot read, a rank above its ``--max-lora-rank``, another base model. The loop
checks the server before any debate and registers each iteration's adapters before that
iteration debates, so a rerun after the fix resumes where the run stopped.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, ClassVar

from mafl_graph.finetune.tuners.base import TunedModel
from mafl_graph.redact import redact, remember_secret
from mafl_graph.serving.base import Key, ServedModel, ServingBackend, ServingError

if TYPE_CHECKING:
    from typing import Self

    from langchain_core.language_models import BaseChatModel

    from mafl_graph.serving.options import ServingOptions

__all__ = [
    "SMOLLM2_HF",
    "Dialect",
    "OpenAICompatibleServing",
    "SGLangServing",
    "VLLMServing",
    "adapter_name",
    "adapter_rank",
    "parse_path_map",
]

log = logging.getLogger(__name__)

SMOLLM2_HF = "HuggingFaceTB/SmolLM2-135M-Instruct"
"""What the embedded model ("smollm2") is called where a server loads it from the Hub."""
# The adapter files whose content names an adapter (PEFT writes one of the two weight files).
_ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")


@dataclass(frozen=True)
class Dialect:
    """How one server family spells the same operations."""

    name: str
    load: str
    """The registration endpoint, from the server's root."""
    unload: str
    key_env: str
    """The environment variable read for the API key unless ``--serving-api-key-env`` says."""
    start: str
    """The command that starts a server fit for a run, with {base} and {rank} to fill in."""
    no_runtime_loading: str
    """What to do when the registration endpoint does not exist."""
    adapter_in_model: bool
    """True: a request's ``model`` is ``base:adapter``; False: the adapter's name alone."""

    def model_name(self, base: str, adapter: str) -> str:
        return f"{base}:{adapter}" if self.adapter_in_model else adapter


VLLM = Dialect(
    name="vLLM",
    load="/v1/load_lora_adapter",
    unload="/v1/unload_lora_adapter",
    key_env="VLLM_API_KEY",
    start=(
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True vllm serve {base} --enable-lora "
        "--max-lora-rank {rank} --max-loras 8"
    ),
    no_runtime_loading=(
        "start it with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True in its environment and "
        "--enable-lora (or register every adapter at start with --lora-modules NAME=PATH)"
    ),
    adapter_in_model=False,
)
SGLANG = Dialect(
    name="SGLang",
    load="/load_lora_adapter",
    unload="/unload_lora_adapter",
    key_env="SGLANG_API_KEY",
    start=(
        "python -m sglang.launch_server --model-path {base} --enable-lora "
        "--max-lora-rank {rank} --lora-target-modules all --max-loras-per-batch 8"
    ),
    no_runtime_loading=(
        "start it with --enable-lora (and --max-lora-rank and --lora-target-modules, which a "
        "server started without --lora-paths needs to take adapters at run time)"
    ),
    adapter_in_model=True,
)


class OpenAICompatibleServing(ServingBackend):
    """One OpenAI-compatible server holding every agent's LoRA adapter on one base model.

    ``url``: the server's base URL (``http://host:8000/v1``; the ``/v1`` may be left out).
    ``base``: the base model's name on the server (what ``/v1/models`` lists).
    ``api_key_env``: the environment variable holding the server's key (read when a request
    is made, never stored). ``path_map``: (local prefix, server prefix) pairs for adapter paths.
    ``max_lora_rank``: the server's ``--max-lora-rank``, if known: a higher-rank adapter is
    refused before any request. ``timeout``: seconds for a registration request.
    """

    dialect: ClassVar[Dialect]

    def __init__(
        self,
        url: str,
        *,
        base: str,
        api_key_env: str | None = None,
        path_map: tuple[tuple[str, str], ...] = (),
        max_lora_rank: int | None = None,
        timeout: float = 60.0,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"--serving-url must be an http(s) URL; got {url!r}.")
        if max_lora_rank is not None and max_lora_rank < 1:
            raise ValueError(f"--serving-max-lora-rank must be at least 1; got {max_lora_rank}.")
        if not timeout > 0:
            raise ValueError(f"--serving-timeout must be above 0 seconds; got {timeout}.")
        self.url = url.rstrip("/")
        self.root = self.url.removesuffix("/v1")
        self.base_url = self.root + "/v1"
        self.base = base
        self.api_key_env = api_key_env or self.dialect.key_env
        # Longest prefix first, so a nested mount wins over its parent.
        self.path_map = tuple(sorted(path_map, key=lambda pair: -len(pair[0])))
        self.max_lora_rank = max_lora_rank
        self.timeout = timeout
        self._checked = False

    @classmethod
    def from_options(cls, options: ServingOptions, *, model: str, base: str | None = None) -> Self:
        provider, _, name = model.partition(":")
        if provider != "local":
            raise ValueError(
                f"--serving {options.serving} serves the LoRA adapters of a local model on one "
                f"server; {model!r} is served by its provider: leave --serving out, or use a "
                "local: model (e.g. local:smollm2)."
            )
        if not options.serving_url:
            raise ValueError(
                f"--serving {options.serving} needs --serving-url, the server's base URL "
                "(e.g. http://gpu-box:8000/v1); see docs/serving.md for starting one."
            )
        return cls(
            options.serving_url,
            base=options.serving_base or served_base(base or name),
            api_key_env=options.serving_api_key_env,
            path_map=parse_path_map(options.serving_path_map),
            max_lora_rank=options.serving_max_lora_rank,
            timeout=options.serving_timeout,
        )

    def describe(self) -> str:
        return f"{self.dialect.name} at {self.url} (base {self.base})"

    # The society's models ------------------------------------------------------------------

    def society_model(self, model: str) -> tuple[str, dict[str, Any]]:
        return f"openai:{self.base}", {"base_url": self.base_url, "api_key": self._api_key()}

    def chat_model(self, model: ServedModel, **kwargs: Any) -> BaseChatModel:
        from langchain_openai import ChatOpenAI

        settings = {
            "model": model.served_as,
            "base_url": self.base_url,
            "api_key": self._api_key(),
            **kwargs,
        }
        return ChatOpenAI(**settings)

    def _api_key(self) -> str:
        # The OpenAI client wants some key; a server started without --api-key takes any.
        key = os.environ.get(self.api_key_env) or "EMPTY"
        remember_secret(key)
        return key

    # Checking the server -------------------------------------------------------------------

    def check(self) -> None:
        """Refuse a server that is down, refuses the key, or serves another base model."""
        models = self._models()
        bases = [m for m in models if not m.get("parent")]
        if any(m.get("id") == self.base for m in bases):
            self._checked = True
            return
        served = [str(m.get("id")) for m in bases]
        by_root = [str(m.get("id")) for m in bases if self.base in (m.get("root"), m.get("id"))]
        alias = (
            f"; if {served[0]!r} is that model under another name, pass --serving-base {served[0]}"
            if served
            else ""
        )
        if by_root:
            alias = f"; it loaded that model as {by_root[0]!r}: pass --serving-base {by_root[0]}"
        raise ServingError(
            f"The {self.dialect.name} server at {self.url} serves {served or 'no model'}, not "
            f"{self.base!r}, the base model the adapters are tuned from. Start it on that base: "
            f"`{self.start_command()}`{alias}."
        )

    def start_command(self, rank: int | None = None) -> str:
        """The command that starts a server this backend can use."""
        return self.dialect.start.format(base=self.base, rank=rank or self.max_lora_rank or 64)

    def _models(self) -> list[dict[str, Any]]:
        status, body = self._request("GET", "/v1/models")
        if status in (401, 403):
            raise ServingError(
                f"The {self.dialect.name} server at {self.url} refused the API key (HTTP "
                f"{status}): set ${self.api_key_env} to the key it was started with "
                "(--api-key), or choose the variable with --serving-api-key-env."
            )
        data = body.get("data") if isinstance(body, dict) else None
        if status != 200 or not isinstance(data, list):
            raise ServingError(
                f"GET {self.base_url}/models answered HTTP {status}: {_message(body)!r}; is "
                f"{self.url} an OpenAI-compatible {self.dialect.name} server?"
            )
        return [m for m in data if isinstance(m, dict)]

    def _loaded(self) -> dict[str, str]:
        """Adapters the server lists (name -> path as it loaded it); SGLang may list none."""
        loaded: dict[str, str] = {}
        for m in self._models():
            if m.get("parent"):
                name = str(m.get("id")).removeprefix(f"{self.base}:")
                loaded[name] = str(m.get("root"))
        return loaded

    # Registering ---------------------------------------------------------------------------

    def prepare(self, tuned: Mapping[Key, TunedModel]) -> dict[Key, TunedModel]:
        """Register every adapter of ``tuned`` not yet loaded; each served under its name."""
        if not tuned:
            return {}
        if not self._checked:
            self.check()
        loaded = self._loaded()
        served: dict[Key, TunedModel] = {}
        for key, model in tuned.items():
            adapter = self._adapter_dir(model)
            name = adapter_name(model, adapter)
            remote = self.server_path(adapter)
            if loaded.get(name) != remote:
                self._load(model, name, remote, adapter_rank(adapter))
                loaded[name] = remote
            served[key] = ServedModel(
                **model.as_dict(),
                served_as=self.dialect.model_name(self.base, name),
                server=self,
            )
        return served

    def release(
        self, previous: Mapping[Key, TunedModel], *, keep: Mapping[Key, TunedModel]
    ) -> list[str]:
        """Unload the adapters of ``previous`` that ``keep`` does not use; one that is gone
        already (a restarted server) counts as released, one that fails is logged."""
        kept = {self._name_of(m) for m in keep.values()}
        released: list[str] = []
        for model in previous.values():
            name = self._name_of(model)
            if name is None or name in kept or name in released:
                continue
            status, body = self._request("POST", self.dialect.unload, {"lora_name": name})
            message = _message(body)
            if status == 200 or _says_missing(message):
                released.append(name)
                log.info("%s: unloaded %s (%s)", self.describe(), name, model.name)
            else:
                log.warning(
                    "%s: could not unload %s (HTTP %s: %s); it stays loaded until the server "
                    "restarts",
                    self.describe(),
                    name,
                    status,
                    message,
                )
        return released

    def _name_of(self, model: TunedModel) -> str | None:
        adapter = Path(model.model).expanduser()
        return adapter_name(model, adapter) if (adapter / _ADAPTER_FILES[0]).is_file() else None

    def server_path(self, adapter: Path) -> str:
        """``adapter`` as the server sees it (``--serving-path-map``), else its absolute path."""
        local = adapter.expanduser().resolve()
        for prefix, remote in self.path_map:
            try:
                rest = local.relative_to(prefix)
            except ValueError:
                continue
            return str(PurePosixPath(remote, *rest.parts))
        return str(local)

    def _adapter_dir(self, model: TunedModel) -> Path:
        adapter = Path(model.model).expanduser()
        if not (adapter / _ADAPTER_FILES[0]).is_file():
            kind = (
                "an SVF expert (its rank exceeds what a LoRA server takes)"
                if (adapter / "svf_config.json").is_file()
                else "a fully tuned model"
                if model.options.get("full")
                else "no LoRA adapter directory"
            )
            raise ServingError(
                f"({model.name}) {model.model} is {kind}; {self.dialect.name} at {self.url} "
                "serves LoRA adapters on its base. Tune with the local LoRA tuner, or serve "
                "this model in this process (leave --serving out)."
            )
        rank = adapter_rank(adapter)
        if self.max_lora_rank is not None and rank > self.max_lora_rank:
            raise self._rank_error(model, rank, f"--serving-max-lora-rank {self.max_lora_rank}")
        return adapter

    def _rank_error(self, model: TunedModel, rank: int, said: str) -> ServingError:
        return ServingError(
            f"({model.name}) the adapter has LoRA rank {rank}, above the {self.dialect.name} "
            f"server's --max-lora-rank ({said}) at {self.url}. Restart the server with "
            f"--max-lora-rank {rank} or more (`{self.start_command(rank)}`), or tune with a "
            f"lower --lora-r; the tuned adapter is kept."
        )

    def _load(self, model: TunedModel, name: str, path: str, rank: int) -> None:
        status, body = self._request(
            "POST", self.dialect.load, {"lora_name": name, "lora_path": path}
        )
        message = _message(body)
        refused = isinstance(body, dict) and body.get("success") is False
        if status == 200 and not refused:
            log.info("%s: loaded %s (%s) from %s", self.describe(), name, model.name, path)
            return
        if "already" in message and "loaded" in message:
            return  # registered by an earlier run (or a concurrent one): the same adapter
        if "max_lora_rank" in message or "max-lora-rank" in message:
            raise self._rank_error(model, rank, f"the server says: {message}")
        endpoint = f"POST {self.root}{self.dialect.load}"
        if status == 404 and not any(word in message for word in ("adapter", "lora", "LoRA")):
            raise ServingError(
                f"{endpoint} does not exist (HTTP 404: {message!r}): the server takes no "
                f"adapters at run time; {self.dialect.no_runtime_loading}."
            )
        unreadable = ("no adapter found", "not found", "can't find", "no such file")
        if status == 404 or any(words in message.lower() for words in unreadable):
            raise ServingError(
                f"({model.name}) the {self.dialect.name} server at {self.url} cannot read the "
                f"adapter at {path} (HTTP {status}: {message}). The server must see the run "
                "directory: mount it there, or pass --serving-path-map LOCAL=REMOTE with the "
                "server's path to it; the tuned adapter is kept."
            )
        raise ServingError(
            f"({model.name}) {endpoint} refused adapter {name} at {path} (HTTP {status}: "
            f"{message}); the tuned adapter is kept: fix the cause and run again."
        )

    # HTTP ----------------------------------------------------------------------------------

    def _request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """(status, parsed JSON or text) of one request; a transport failure is a ServingError."""
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env)
        if key:
            remember_secret(key)
            headers["Authorization"] = f"Bearer {key}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.root + path, data=data, headers=headers, method=method
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.status, _parse(response.read())
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, _parse(exc.read())
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise ServingError(
                f"The {self.dialect.name} server at {self.url} is not reachable "
                f"({redact(str(reason)) or type(exc).__name__}). Start it (docs/serving.md: "
                f"`{self.start_command()}`) or fix --serving-url, then run the same command "
                "again: finished debates and tuned adapters are kept."
            ) from None


class VLLMServing(OpenAICompatibleServing):
    """vLLM's OpenAI-compatible server (``vllm serve``) with runtime LoRA loading."""

    name = "vllm"
    dialect = VLLM


class SGLangServing(OpenAICompatibleServing):
    """SGLang's server (``python -m sglang.launch_server``): adapters as ``base:adapter``."""

    name = "sglang"
    dialect = SGLANG


# Plain functions ---------------------------------------------------------------------------


def served_base(base: str) -> str:
    """The name a server gives the model the tuner starts from: the embedded model's Hub id for
    "smollm2", any other name or path as it is."""
    from mafl_graph.local.loading import SMOLLM2_ALIAS

    return SMOLLM2_HF if base == SMOLLM2_ALIAS else base


def adapter_name(model: TunedModel, adapter: Path) -> str:
    """The name ``model``'s adapter directory is registered under: its iteration, agent and role,
    and a digest of its absolute path and files (unique per run, new when retrained)."""
    digest = hashlib.sha256(str(adapter.expanduser().resolve()).encode())
    for file in _ADAPTER_FILES:
        path = adapter / file
        if path.is_file():
            with path.open("rb") as handle:
                digest.update(hashlib.file_digest(handle, "sha256").digest())
    return f"mafl-i{model.iteration}-agent{model.agent}-{model.role}-{digest.hexdigest()[:12]}"


def adapter_rank(adapter: Path) -> int:
    """The highest LoRA rank of a PEFT adapter directory (``r``, or a layer's in rank_pattern)."""
    config = json.loads((adapter / _ADAPTER_FILES[0]).read_text())
    ranks = [config.get("r") or 0, *(config.get("rank_pattern") or {}).values()]
    return max(int(r) for r in ranks)


def parse_path_map(spec: str | None) -> tuple[tuple[str, str], ...]:
    """``LOCAL=REMOTE[,LOCAL=REMOTE]`` as (absolute local prefix, server prefix) pairs."""
    pairs: list[tuple[str, str]] = []
    for item in (spec or "").split(","):
        if not item.strip():
            continue
        local, sep, remote = item.partition("=")
        if not sep or not local.strip() or not remote.strip():
            raise ValueError(
                f"--serving-path-map {spec!r}: expected LOCAL=REMOTE[,LOCAL=REMOTE], e.g. "
                f"/home/me/runs=/mnt/runs; got the item {item!r}."
            )
        pairs.append((str(Path(local.strip()).expanduser().resolve()), remote.strip()))
    return tuple(pairs)


def _parse(raw: bytes) -> Any:
    text = raw.decode("utf-8", "replace")
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _message(body: Any) -> str:
    """The error text of a body, in each server's shape: vLLM ``{"error": {"message"}}`` (older
    releases flat ``{"message"}``), SGLang ``{"error_message"}``, FastAPI ``{"detail"}``."""
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return redact(str(error["message"]))
        for key in ("error_message", "message", "detail"):
            if body.get(key):
                return redact(str(body[key]))
        return redact(json.dumps(body))
    return redact(str(body)).strip()


def _says_missing(message: str) -> bool:
    """An unload refused because the adapter is not loaded (vLLM: "cannot be found"; SGLang:
    "does not exist")."""
    return any(words in message for words in ("cannot be found", "does not exist", "not loaded"))
