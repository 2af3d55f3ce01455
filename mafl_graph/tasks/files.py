"""Reading task data from local JSON Lines files (or the hub) through ``datasets``.

Local files come first, so an offline machine never reaches for the network.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import datasets
from datasets.exceptions import DatasetGenerationError

DATA_DIR_ENV = "MAFL_DATA_DIR"


def local_file(
    split: str, data_files: Mapping[str, str] | None, data_dir: str | None, subdir: str
) -> str | None:
    """The local JSONL file for ``split``, or None to use the hub.

    A file that was asked for (through ``data_files``, ``data_dir`` or ``$MAFL_DATA_DIR``) but
    is missing is an error, not a silent trip to the network.
    """
    if data_files is not None:
        if split not in data_files:
            raise ValueError(
                f"no data file for split {split!r}: data_files has {sorted(data_files)}; "
                f"add {split!r}: 'path/to/{split}.jsonl'"
            )
        path = Path(data_files[split])
    else:
        root = data_dir or os.environ.get(DATA_DIR_ENV)
        if not root:
            return None
        path = Path(root) / subdir / f"{split}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist; pass data_files={{{split!r}: 'path/to/{split}.jsonl'}}, "
            f"point data_dir or ${DATA_DIR_ENV} at a folder with {subdir}/{split}.jsonl, "
            "or leave all three unset to load from the Hugging Face hub"
        )
    return str(path)


def read_rows(path: str, n: int | None) -> list[dict[str, Any]]:
    """The first ``n`` rows of a local JSON Lines file, read through ``datasets``.

    ``Dataset.from_json`` rather than ``load_dataset("json", ...)``: the latter sends a
    download-count request to the hub on every call, even for local files.
    """
    if _line_of_row(path, 0) is None:  # ``datasets`` fails on it with StopIteration
        raise ValueError(f"{path} holds no rows; every line should be one JSON object")
    try:
        with _quiet_datasets():
            table = datasets.Dataset.from_json(path)
    except DatasetGenerationError as error:
        raise ValueError(f"{path}: {_first_bad_line(path)}; fix or remove that line") from error
    return first_rows(table, n)


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    """No progress bar or log line of ``datasets`` (or the hub client) while it reads: a bad
    line or an unreachable hub is reported once, by the caller, in one line."""
    from datasets import utils

    level = utils.logging.get_verbosity()
    bars_were_off = utils.are_progress_bars_disabled()
    # The hub client logs each of its retries; the one error that follows says it all.
    hub = logging.getLogger("huggingface_hub")
    hub_level = hub.level
    utils.logging.set_verbosity(utils.logging.CRITICAL + 10)
    hub.setLevel(logging.CRITICAL + 10)
    utils.disable_progress_bars()
    try:
        yield
    finally:
        utils.logging.set_verbosity(level)
        hub.setLevel(hub_level)
        if not bars_were_off:
            utils.enable_progress_bars()


_OFFLINE = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


def hub_rows(
    repo: str, split: str, n: int | None, *, config: str | None = None, subdir: str
) -> list[dict[str, Any]]:
    """The first ``n`` rows of ``split`` of the hub dataset ``repo``, read quietly.

    An unreachable hub is a ValueError saying what to pass instead: at once when the user
    has said they are offline, else after the hub client's own retries.
    """
    instead = (
        f"pass --data-dir DIR (data_dir=) with {subdir}/{split}.jsonl in it, or set ${DATA_DIR_ENV}"
    )
    if offline := [v for v in _OFFLINE if os.environ.get(v, "").lower() in ("1", "true", "yes")]:
        raise ValueError(f"{repo} is on the Hugging Face hub and {offline[0]} is set; {instead}")
    try:
        with _quiet_datasets():
            table = datasets.load_dataset(repo, config, split=split)
    except (OSError, ConnectionError) as exc:  # requests' and httpx's errors are OSErrors
        reason = " ".join(str(exc).split())[:200]
        raise ValueError(
            f"could not read {repo} from the Hugging Face hub ({type(exc).__name__}: {reason}); "
            f"{instead}"
        ) from exc
    return first_rows(table, n)


def row_name(source: str, index: int) -> str:
    """Where row ``index`` of ``source`` is: its line in a local file, else its row number."""
    line = _line_of_row(source, index) if Path(source).is_file() else None
    return f"{source}, line {line}, row {index}" if line else f"{source}, row {index}"


def _line_of_row(path: str, index: int) -> int | None:
    """The 1-based line of the ``index``-th row: ``datasets`` skips blank lines."""
    with open(path, encoding="utf-8") as handle:
        rows = (i + 1 for i, line in enumerate(handle) if line.strip())
        return next(itertools.islice(rows, index, None), None)


def require_fields(
    row: Mapping[str, Any], fields: tuple[str, str], source: str, index: int
) -> tuple[str, str]:
    """The two text fields of ``row``, or an error naming the file, row and missing field."""
    values = []
    for field in fields:
        value = row.get(field)
        if not isinstance(value, str) or not value.strip():
            raise ValueError(
                f"{row_name(source, index)}: field {field!r} is missing or not text "
                f"(got {value!r}); every row needs string fields {list(fields)}"
            )
        values.append(value)
    return values[0], values[1]


def first_rows(table: datasets.Dataset, n: int | None) -> list[dict[str, Any]]:
    """The first ``n`` rows (all when ``n`` is None) as plain dicts."""
    if n is not None:
        table = table.select(range(min(n, len(table))))
    return list(table)


def _first_bad_line(path: str) -> str:
    """Why ``datasets`` could not read ``path``, found by parsing it line by line."""
    with open(path, encoding="utf-8") as handle:
        for i, line in enumerate(handle):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                return f"line {i + 1} is not valid JSON ({error})"
            if not isinstance(row, dict):
                return f"line {i + 1} is not a JSON object"
    return "the rows do not share one schema (a field changes type between rows)"
