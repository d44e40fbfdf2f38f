"""``--engine ray`` of ``faceflow analyze`` and ``faceflow enroll``: the CLI side of :mod:`faceflow.distributed`.

``faceflow.cli`` and ``faceflow.gallery_cli`` call these when asked for the Ray engine; Ray itself
is imported only then (through :func:`faceflow.extras.require`, extra ``ray``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from faceflow.cli_base import console, progress
from faceflow.errors import ConfigError

ENGINES = ("local", "ray")
"""Values of ``--engine``: in this process (threads), or on a Ray cluster (actors)."""


def check_engine(engine: str, address: str | None) -> bool:
    """True for the Ray engine; a :class:`ConfigError` for an unknown engine or an --address without Ray."""
    if engine not in ENGINES:
        raise ConfigError(f"unknown engine {engine!r}; choose from: {', '.join(ENGINES)}")
    if address and engine != "ray":
        raise ConfigError("--address needs --engine ray")
    return engine == "ray"


def analyze_on_ray(paths: list[Path], out: Path, stages: str, stage_values: dict[str, Any], *, embeddings: bool,
                   annotate: bool, workers: int | None, threads: int | None, address: str | None,
                   content_hash: bool, batch_size: int) -> None:
    """``faceflow analyze --engine ray``: run the job, print the summary, exit 1 when an input failed."""
    from faceflow.distributed.engine import analyze_job
    from faceflow.outputs import check_out_dir, display_path, prepare_out_dir, safe_text
    from faceflow.pipeline import AnalyzerOptions
    from faceflow.stage import registry

    options = AnalyzerOptions(stages=tuple(s for s in stages.split(",") if s.strip()),
                              threads=threads).with_values(stage_values)
    registry().plan(options.stages, dict(options.stage_options))  # an unknown stage is a usage error here
    if annotate:
        console.print("note: the Ray engine writes no annotated images (faces.jsonl and Parquet shards only)")
    check_out_dir(out)
    prepare_out_dir(out)
    with progress() as bar:
        task = bar.add_task("analysing (ray)", total=None)
        summary = analyze_job([str(p) for p in paths], out, options, embeddings=embeddings, address=address,
                              workers=workers, batch_size=batch_size, content_hash=content_hash,
                              progress=lambda done, total: bar.update(task, completed=done, total=total))
    for path, error in summary.failures:
        message = safe_text(error)
        if not message.startswith(path):
            message = f"{path}: {message}"
        console.print(f"[yellow]failed:[/yellow] {escape(message)}")
    console.print(escape(
        f"{summary.total - summary.errors} of {summary.total} images analysed, {summary.faces} faces, "
        f"{summary.errors} failed ({summary.analysed} analysed now, {summary.skipped} done before"
        + (f", {summary.dropped_shards} incomplete or outdated shards redone" if summary.dropped_shards else "")
        + f"). Results: {display_path(out / 'faces.jsonl')}, Parquet shards in {display_path(out / 'shards')}"))
    raise typer.Exit(1 if summary.errors else 0)


def enroll_on_ray(store_url: str, gallery: str, items: list[tuple[str, Path]], *, largest: bool, batch: int,
                  min_quality: float | None, address: str | None, workers: int | None) -> None:
    """``faceflow enroll --engine ray``: enrol on the cluster, print the summary, exit 1 when a photo failed."""
    from faceflow.distributed.engine import enroll_job

    with progress() as bar:
        task = bar.add_task("enrolling (ray)", total=len(items))
        summary = enroll_job(store_url, gallery, items, largest=largest, min_quality=min_quality, address=address,
                             workers=workers, batch_size=batch,
                             progress=lambda done, total: bar.update(task, completed=done, total=total))
    for path, reason in summary.failed:
        console.print(f"[yellow]failed:[/yellow] {escape(reason if reason.startswith(path) else f'{path}: {reason}')}")
    console.print(f"enrolled {summary.enrolled} of {summary.photos} photos into {gallery!r} "
                  f"({summary.skipped} already there)", markup=False)
    raise typer.Exit(1 if summary.failed else 0)
