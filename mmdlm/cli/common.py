"""Helpers shared by the CLI commands and `python -m mmdlm.training`: logging setup and turning config
errors into one readable line per problem (no traceback for a user's typo)."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import yaml
from pydantic import ValidationError

T = TypeVar("T")


def setup_logging(level: int = logging.INFO) -> None:
    """Rank 0 logs at `level` (through rich on a terminal); other torchrun ranks only warnings."""
    rank = int(os.environ.get("RANK", 0))
    root = logging.getLogger()
    if any(getattr(h, "_mmdlm", False) for h in root.handlers):
        return
    handler: logging.Handler
    if sys.stderr.isatty():
        from rich.logging import RichHandler

        handler = RichHandler(show_path=False, rich_tracebacks=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        prefix = f"[rank {rank}] " if "RANK" in os.environ else ""
        handler.setFormatter(logging.Formatter(f"%(asctime)s {prefix}%(levelname)s %(name)s: %(message)s"))
    handler._mmdlm = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level if rank == 0 else logging.WARNING)


def format_validation_error(exc: ValidationError) -> str:
    """`field.path: message` per error; union members are named by their tag (model.mdlm.process...)."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(part) for part in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"{loc}: {msg}")
    return "\n".join(lines)


def config_error_message(exc: BaseException) -> str | None:
    """A user-facing message for errors that come from a bad config file or override; None otherwise."""
    if isinstance(exc, ValidationError):
        return "invalid config:\n" + format_validation_error(exc)
    if isinstance(exc, yaml.YAMLError):
        return f"config is not valid YAML: {yaml_problem(exc)}"
    if isinstance(exc, FileNotFoundError | ValueError | KeyError):
        return str(exc).strip("'\"")
    return None


def yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML parser error as one line, what and where (line, column), without the quoted source."""
    problem = getattr(exc, "problem", None)
    mark = getattr(exc, "problem_mark", None)
    if problem is None:
        return " ".join(str(exc).split())
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    context = getattr(exc, "context", None)
    return f"{where}{problem}" + (f" ({context})" if context else "")


def set_options(data: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    """Write the CLI flags that were given (dotted keys, `None` = not given) into a config mapping, so
    flags override the config file and `--set` overrides both."""
    for key, value in options.items():
        if value is None:
            continue
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[leaf] = value
    return data


def fail(message: str, code: int = 2) -> NoReturn:
    """Print `error: message` to stderr and exit with `code` (2: bad input)."""
    import typer

    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def run_guarded(fn: Callable[[], T]) -> T:
    """Run `fn`, turning config/input errors into `fail(...)`; anything else propagates."""
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - classified below, unknown errors re-raised
        message = config_error_message(exc)
        if message is None:
            raise
        fail(message)
