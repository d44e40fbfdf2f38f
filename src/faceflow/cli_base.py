"""What every ``faceflow`` command shares: the stderr console, progress bars, and the one table that
turns errors into exit codes.

Commands raise :class:`~faceflow.errors.FaceflowError`; the command group (:class:`ErrorExitGroup`)
prints the message and exits with :func:`exit_code`. No command maps errors to exits itself. The
command modules (``faceflow.cli`` and its ``*_cli`` modules) import this one, and it imports none of them.
"""

from __future__ import annotations

from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from typer.core import TyperGroup

from faceflow.errors import (
    ConfigError,
    DatasetError,
    FaceflowError,
    GalleryError,
    ImageError,
    LowQuality,
    ModelMismatch,
    ModelUnavailable,
    MultipleFaces,
    NoFaceFound,
    StoreUnavailable,
)
from faceflow.outputs import item_error

console = Console(stderr=True, soft_wrap=True)  # messages keep paths whole (no wrapping mid-path)

OK = 0
INPUT_FAILED = 1
"""Some inputs failed (each reported), or the one input had no usable face."""
USAGE_ERROR = 2
"""Bad options or names: unknown option, model, gallery or subject; an invalid name; a missing extra."""
MODEL_UNAVAILABLE = 3
"""A model file is missing and could not be fetched, or its checksum is wrong."""
STORE_UNAVAILABLE = 4
"""The gallery store cannot be reached (PostgreSQL down) or is damaged (a corrupt SQLite file)."""
MODEL_MISMATCH = 5
"""A gallery holds embeddings of a model this faceflow cannot make: re-embed it."""

EXIT_CODES: tuple[tuple[type[FaceflowError], int], ...] = (
    (ModelMismatch, MODEL_MISMATCH),
    (StoreUnavailable, STORE_UNAVAILABLE),  # and StoreDamaged
    (ModelUnavailable, MODEL_UNAVAILABLE),  # and ChecksumMismatch
    (ConfigError, USAGE_ERROR),  # and MissingExtra
    (GalleryError, USAGE_ERROR),  # unknown gallery or subject, InvalidName
    (NoFaceFound, INPUT_FAILED),
    (MultipleFaces, INPUT_FAILED),
    (LowQuality, INPUT_FAILED),
    (ImageError, INPUT_FAILED),
    (DatasetError, INPUT_FAILED),
    (FaceflowError, INPUT_FAILED),
)
"""Error class -> exit code; the first row the error is an instance of wins (subclasses first)."""


def exit_code(exc: FaceflowError) -> int:
    """The exit code of a command stopped by ``exc`` (see :data:`EXIT_CODES`)."""
    return next(code for cls, code in EXIT_CODES if isinstance(exc, cls))


class ErrorExitGroup(TyperGroup):
    """A command group that prints a :class:`FaceflowError` escaping any command and exits by the table."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except FaceflowError as exc:
            console.print(f"[red]error:[/red] {escape(str(exc))}")
            raise typer.Exit(exit_code(exc)) from None


def fail_usage(message: str) -> typer.Exit:
    """Print a usage error (one the command found itself, not a raised error) and return its exit."""
    console.print(f"[red]error:[/red] {escape(message)}")
    return typer.Exit(USAGE_ERROR)


def warn(message: str) -> None:
    """A warning on stderr."""
    console.print(f"[yellow]warning:[/yellow] {escape(message)}")


def progress() -> Progress:
    """A progress bar on stderr, shown only on a terminal."""
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=console, transient=False, disable=not console.is_terminal,
    )


def report_item_errors(result: dict[str, Any], shown: int = 5) -> int:
    """Name the items a protocol could not evaluate (the first ``shown`` of them) on stderr and return how
    many there were: a batch with failed items exits 1 instead of passing them off as faces not found."""
    errors = result.get("errors") or []
    if errors:
        total = result.get("images")
        of = f" of {total}" if isinstance(total, int) else ""
        console.print(f"[red]{len(errors)}{of} items failed[/red] (all listed under \"errors\" in --json):")
        for e in errors[:shown]:
            console.print(f"  {escape(item_error(e['path'], e['error']))}")
        if len(errors) > shown:
            console.print(f"  ... and {len(errors) - shown} more")
    return len(errors)
