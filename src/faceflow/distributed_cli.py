"""``--engine ray`` of ``faceflow analyze`` and ``faceflow enroll``, and ``faceflow gallery cluster``: the CLI
side of :mod:`faceflow.distributed`.

``faceflow.cli`` and ``faceflow.gallery_cli`` call these when asked for the Ray engine; Ray itself
is imported only then (through :func:`faceflow.extras.require`, extra ``ray``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

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
    from faceflow.outputs import ANNOTATED_DIR, check_out_dir, display_path, prepare_out_dir, safe_text
    from faceflow.pipeline import AnalyzerOptions
    from faceflow.stage import registry

    options = AnalyzerOptions(stages=tuple(s for s in stages.split(",") if s.strip()),
                              threads=threads).with_values(stage_values)
    registry().plan(options.stages, dict(options.stage_options))  # an unknown stage is a usage error here
    check_out_dir(out)
    prepare_out_dir(out)
    with progress() as bar:
        task = bar.add_task("analysing (ray)", total=None)
        summary = analyze_job([str(p) for p in paths], out, options, embeddings=embeddings, annotate=annotate,
                              address=address,
                              workers=workers, batch_size=batch_size, content_hash=content_hash,
                              progress=lambda done, total: bar.update(task, completed=done, total=total))
    if summary.stale_annotated:
        console.print(f"removed {summary.stale_annotated} annotated image(s) of an earlier run that this one "
                      "does not rewrite")
    for path, error in summary.failures:
        message = safe_text(error)
        if not message.startswith(path):
            message = f"{path}: {message}"
        console.print(f"[yellow]failed:[/yellow] {escape(message)}")
    console.print(escape(
        f"{summary.total - summary.errors} of {summary.total} images analysed, {summary.faces} faces, "
        f"{summary.errors} failed ({summary.analysed} analysed now, {summary.skipped} done before"
        + (f", {summary.dropped_shards} incomplete or outdated shards redone" if summary.dropped_shards else "")
        + f"). Results: {display_path(out / 'faces.jsonl')}, Parquet shards in {display_path(out / 'shards')}"
        + (f"; annotated images: {display_path(out / ANNOTATED_DIR)}" if annotate else "")))
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


def gallery_cluster(
    name: Annotated[str, typer.Argument(help="Gallery name.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for clusters.json and clusters.parquet.")],
    threshold: Annotated[float | None, typer.Option(
        help="Average-linkage cosine threshold (default: the gallery model's).")] = None,
    min_size: Annotated[int, typer.Option(help="Smallest cluster reported as a person.")] = 2,
    engine: Annotated[str, typer.Option(help="local (threads in this process) or ray (Ray tasks on a cluster; "
                                             "each opens its own connection to the store).")] = "local",
    address: Annotated[str | None, typer.Option(help="Ray cluster address (default: start a local one).")] = None,
    workers: Annotated[int, typer.Option(help="local engine: threads; ray: CPUs of a local runtime.")] = 2,
    store: Annotated[str | None, typer.Option(
        "--store", envvar="FACEFLOW_GALLERY", help="Gallery store: postgresql://... (the graph from pgvector's "
        "HNSW index, scales) or a SQLite path (the graph in memory).", show_default="$FACEFLOW_HOME/galleries.db")]
    = None,
) -> None:
    """Cluster a gallery's faces into persons: OUT/clusters.json and OUT/clusters.parquet.

    The same clusters as `faceflow cluster`'s average linkage (faces of one source photo never share
    a cluster), computed per connected component of the graph of face pairs at or above the
    threshold; on PostgreSQL the pairs come from pgvector's HNSW index, page by page, and only a
    component's own vectors are ever fetched (see faceflow.distributed.clustering).
    """
    import time

    from faceflow.distributed.clustering import cluster_gallery, ray_map, thread_map, write_gallery_report
    from faceflow.gallery.backends import open_gallery_store
    from faceflow.gallery.cluster import check_threshold, cluster_threshold
    from faceflow.gallery.store import model_name

    ray_engine = check_engine(engine, address)
    if min_size < 1 or workers < 1:
        raise ConfigError("--min-size and --workers must be at least 1")
    if threshold is not None:
        check_threshold(threshold)
    with open_gallery_store(store) as s:
        g = s.gallery(name, counts=False)
        url = s.url
    if threshold is None:
        threshold = cluster_threshold(str(g.metadata.get("embedder") or model_name(g.model)))
    t0 = time.perf_counter()
    if ray_engine:
        from faceflow.distributed.engine import ray_session

        with ray_session(address, num_cpus=workers) as ray:
            result = cluster_gallery(url, name, threshold, map_fn=ray_map(ray))
    else:
        result = cluster_gallery(url, name, threshold, map_fn=thread_map(workers))
    seconds = time.perf_counter() - t0
    with open_gallery_store(url) as s:
        report = write_gallery_report(out, s, name, result, threshold=threshold, min_size=min_size)
    console.print(f"{report['clusters']} persons of {min_size}+ faces, {report['alone']} faces alone, "
                  f"{report['faces']} faces in {name!r} (threshold {threshold:g}; graph from {result.route}: "
                  f"{result.edges} pairs, {result.components} components, the largest {result.largest_component} "
                  f"faces; {seconds:.1f} s: graph {result.seconds_graph:.1f} s, agglomeration "
                  f"{result.seconds_agglomeration:.1f} s). Results: {report['json']}, {report['parquet']}",
                  markup=False)
