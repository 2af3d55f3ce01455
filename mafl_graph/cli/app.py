"""The Typer app, its consoles, the one path every error takes, and options from dataclasses.

Every command module imports only this module and the light settings classes at import time,
so ``mafl --help`` imports no model, task or tuner code.
"""

from __future__ import annotations

import functools
import inspect
import os
import sqlite3
import typing
from collections.abc import Callable, Mapping
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from mafl_graph.config import flat_fields, from_flat
from mafl_graph.redact import redact

console = Console()
# Errors: to stderr, each one line however narrow the terminal or pipe, so a script can grep it.
errors = Console(stderr=True, soft_wrap=True, highlight=False)

# What a command may meet in the files and folders it is pointed at, or in its options: each is
# a bad input, answered by one line and exit 2, never a traceback.
_BAD_INPUT = (ValueError, TypeError, KeyError, ImportError, OSError, sqlite3.Error)


class _Commands(typer.Typer):
    """A Typer app whose every command answers a failure through :func:`fail`."""

    def command(self, *args: Any, **kwargs: Any) -> Callable[[Callable[..., Any]], Any]:
        register = super().command(*args, **kwargs)

        def decorator(function: Callable[..., Any]) -> Any:
            @functools.wraps(function)
            def guarded(*a: Any, **kw: Any) -> Any:
                try:
                    return function(*a, **kw)
                except (typer.Exit, typer.Abort, KeyboardInterrupt):
                    raise
                except _BAD_INPUT as exc:
                    fail(exc)
                except Exception as exc:
                    # A failure while running (a tuning job, the loop, a checkpoint): one
                    # redacted line and exit 1; the traceback only on request, since it may
                    # carry what redaction removes from the message.
                    if os.environ.get("MAFL_DEBUG"):
                        raise
                    fail(exc, code=1, hint=" (MAFL_DEBUG=1 shows the traceback)")

            return register(guarded)

        return decorator


app = _Commands(help="Multiagent fine-tuning on LangGraph.", no_args_is_help=True)


def fail(exc: BaseException, *, code: int = 2, hint: str = "") -> NoReturn:
    """One line on stderr (keys redacted, brackets kept), then exit ``code``."""
    error(message(exc) + hint)
    raise typer.Exit(code) from exc


def error(text: str, *, label: str = "error") -> None:
    """Print ``text`` on stderr as one redacted line under ``label``."""
    errors.print(f"[red]{label}:[/red] {escape(redact(' '.join(text.split())))}")


def message(exc: BaseException) -> str:
    """What went wrong, in one line; a file system error names its file and what failed."""
    if isinstance(exc, OSError) and exc.strerror:
        files = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f is not None)
        return f"{files}: {exc.strerror}" if files else exc.strerror
    if isinstance(exc, sqlite3.Error):
        return f"SQLite: {exc}"
    return " ".join(str(exc).split())


def with_options(
    *,
    exclude: tuple[str, ...] = (),
    defaults: Mapping[str, Any] | None = None,
    **groups: type[Any],
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a command every option of the settings dataclasses ``groups`` (name -> class).

    The command receives one instance per group under its name; each leaf field is one
    option with the field's default and help, except those in ``exclude`` (which keep their
    defaults); ``defaults`` changes a default for this command (a sweep's one iteration).
    Typer reads a command's signature and has no way to share a group of options between
    commands, so the wrapper's signature is the command's own parameters plus the fields.
    Called from Python, omitted options take their defaults.
    """

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        hints = typing.get_type_hints(command, include_extras=True)
        own = [
            p.replace(annotation=hints[p.name])
            for p in inspect.signature(command).parameters.values()
            if p.name not in groups
        ]
        leaves = {
            name: [leaf for leaf in flat_fields(cls) if leaf.name not in exclude]
            for name, cls in groups.items()
        }
        shared = [
            inspect.Parameter(
                leaf.name,
                inspect.Parameter.KEYWORD_ONLY,
                default=(defaults or {}).get(leaf.name, leaf.default),
                annotation=Annotated[leaf.type, typer.Option(help=leaf.help)],
            )
            for fields in leaves.values()
            for leaf in fields
        ]

        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> Any:
            built = {
                name: from_flat(
                    groups[name], {f.name: kwargs.pop(f.name) for f in fields if f.name in kwargs}
                )
                for name, fields in leaves.items()
            }
            return command(**built, **kwargs)

        wrapper.__signature__ = inspect.Signature(own + shared)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in own + shared}
        return wrapper

    return decorate


def show_progress_logs() -> None:
    """Step messages of the loop on the console, next to tqdm's progress bars.

    One handler on the root logger (replacing any), which prints each record's message once
    under rich's own time and level columns; the loop's and comparison's steps at INFO, the
    rest of the process (libraries included) at WARNING.
    """
    import logging

    from rich.logging import RichHandler
    from tqdm.auto import tqdm

    class BarSafeHandler(RichHandler):
        """Clears tqdm's bars before a line and redraws them after it: a bar drawn without a
        newline would otherwise run into the line, and the line into the next redraw."""

        def emit(self, record: logging.LogRecord) -> None:
            with tqdm.external_write_mode(file=self.console.file):
                super().emit(record)

    handler = BarSafeHandler(console=console, show_path=False)
    # Only the message: rich prints the time and the level itself, and basicConfig would give a
    # handler without a formatter its "LEVEL:logger:message" format, printing the level twice.
    handler.setFormatter(logging.Formatter("%(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler], force=True)
    for name in ("mafl_graph.loop", "mafl_graph.compare"):
        logging.getLogger(name).setLevel(logging.INFO)
