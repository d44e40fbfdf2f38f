"""Gallery commands: ``faceflow gallery create|list|delete|export|import|calibrate|cluster``, ``faceflow enroll``,
``faceflow identify``, ``faceflow cluster``, and ``faceflow eval identification|clustering`` runners.

``faceflow.cli`` mounts :data:`gallery_app` and the command functions; ``python -m faceflow.gallery_cli``
runs them on their own (:data:`standalone`). The store is ``--store`` (a URL or path), else
``$FACEFLOW_GALLERY``, else ``$FACEFLOW_HOME/galleries.db``. Errors become exit codes by the one
table in :mod:`faceflow.cli_base` (0 all done, 1 some photos failed, each reported, 2 usage, 3 model
unavailable, 4 store unavailable or damaged, 5 model mismatch).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from faceflow import distributed_cli
from faceflow.cli_base import ErrorExitGroup, console, fail_usage, progress
from faceflow.errors import ConfigError
from faceflow.gallery.backends import open_gallery_store
from faceflow.gallery.workflows import DEFAULT_GALLERY_MODEL
from faceflow.outputs import display_path, inside, open_for_writing

gallery_app = typer.Typer(cls=ErrorExitGroup, no_args_is_help=True,
                          help="Create, list, delete, export, import, calibrate and re-embed galleries.")

Store = Annotated[str | None, typer.Option(
    "--store", envvar="FACEFLOW_GALLERY", help="Gallery store: a SQLite path or sqlite:/// URL, or postgresql://...",
    show_default="$FACEFLOW_HOME/galleries.db")]
Paths = Annotated[list[Path], typer.Argument(help="Photos and/or folders (walked recursively).")]
ModelOpt = Annotated[str, typer.Option(help="Recognition model: sface, dlib, fused, "
                                                  "or an int8 build: sface_int8, dlib_int8, fused_int8.")]
FlipOpt = Annotated[bool | None, typer.Option("--flip/--no-flip", help="Average each embedding with the mirrored "
                                              "face's (default: the model's own choice).")]
LfwRootOpt = Annotated[Path, typer.Option(help="LFW folder (<Person>/<image>.jpg).")]


@gallery_app.command("create")
def gallery_create(
    name: Annotated[str, typer.Argument(help="Gallery name.")],
    model: ModelOpt = DEFAULT_GALLERY_MODEL,
    flip: FlipOpt = None,
    threshold: Annotated[float | None, typer.Option(help="Open-set threshold (default: the model's).")] = None,
    store: Store = None,
) -> None:
    """Create an empty gallery bound to one recognition model."""
    from faceflow.gallery.workflows import create_gallery

    with open_gallery_store(store) as s:
        g = create_gallery(s, name, model, flip=flip, threshold=threshold)
        console.print(f"created gallery {g.name!r} ({g.model}, {g.dim}-d) in {s.shown_url}")


@gallery_app.command("list")
def gallery_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines instead of a table.")] = False,
    store: Store = None,
) -> None:
    """List the galleries with their model and sizes."""
    from rich.table import Table

    with open_gallery_store(store) as s:
        galleries = s.galleries()
    if as_json:
        for g in galleries:
            print(json.dumps(g.to_dict()))
        return
    table = Table("gallery", "model", "subjects", "faces", "threshold")
    for g in galleries:
        table.add_row(g.name, g.model, str(g.subjects), str(g.faces), "model default" if g.threshold is None
                      else f"{g.threshold:.4f}")
    console.print(table)


@gallery_app.command("delete")
def gallery_delete(
    name: Annotated[str, typer.Argument(help="Gallery name.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
    store: Store = None,
) -> None:
    """Delete a gallery with all its subjects and faces."""
    with open_gallery_store(store) as s:
        g = s.gallery(name)
        if not yes and not typer.confirm(f"Delete gallery {name!r} ({g.subjects} subjects, {g.faces} faces)?"):
            raise typer.Exit(1)
        s.delete_gallery(name)
    console.print(f"deleted gallery {name!r}")


@gallery_app.command("export")
def gallery_export(
    name: Annotated[str, typer.Argument(help="Gallery name.")],
    out: Annotated[Path, typer.Argument(help="Folder to write (JSONL + npy).")],
    overwrite: Annotated[bool, typer.Option(help="Replace a non-empty folder.")] = False,
    store: Store = None,
) -> None:
    """Export a gallery losslessly (gallery.json, subjects.jsonl, faces.jsonl, embeddings/*.npy)."""
    from faceflow.gallery.io import export_gallery

    with open_gallery_store(store) as s:
        s.gallery(name)
        path = export_gallery(s, name, out, overwrite=overwrite)
    console.print(f"exported {name!r} to {path}")


@gallery_app.command("import")
def gallery_import(
    src: Annotated[Path, typer.Argument(help="A folder written by `faceflow gallery export`.")],
    name: Annotated[str | None, typer.Option(help="Import under this name (default: the exported one).")] = None,
    store: Store = None,
) -> None:
    """Import an exported gallery (all or nothing)."""
    from faceflow.gallery.io import import_gallery

    with open_gallery_store(store) as s:
        g = import_gallery(s, src, name=name)
    console.print(f"imported gallery {g.name!r}: {g.subjects} subjects, {g.faces} faces ({g.model})")


@gallery_app.command("calibrate")
def gallery_calibrate(
    name: Annotated[str, typer.Argument(help="Gallery name.")],
    fpir: Annotated[float, typer.Option(help="Target false-positive identification rate.")] = 0.01,
    store: Store = None,
) -> None:
    """Set the open-set threshold at FPIR from the gallery's own subjects (leave-one-subject-out)."""
    from faceflow.gallery.search import Searcher

    with open_gallery_store(store) as s:
        s.gallery(name)
        t = Searcher(s, name).calibrate(fpir)
    console.print(f"{name!r}: threshold {t:.4f} at FPIR {fpir:g}")


@gallery_app.command("reembed")
def gallery_reembed(
    name: Annotated[str, typer.Argument(help="Gallery name.")],
    model: Annotated[str, typer.Option(help="The new recognition model: sface, dlib, "
                                                  "fused, or an int8 build: sface_int8, dlib_int8, fused_int8.")],
    flip: FlipOpt = None,
    store: Store = None,
) -> None:
    """Re-embed every face from its source photo with another model, then switch the gallery to it."""
    from faceflow.gallery.workflows import reembed

    with open_gallery_store(store) as s:
        g = s.gallery(name)
        with progress() as bar:
            task = bar.add_task("re-embedding", total=g.faces)
            report = reembed(s, name, model, flip=flip, tick=lambda: bar.advance(task))
        g = s.gallery(name)
    for item in report.failed:
        _failed(f"face {item.face_id}: {item.path}: {item.reason}")
    console.print(f"{report.reembedded} faces re-embedded; gallery {name!r} now holds {g.model} embeddings"
                  + ("" if report.switched else " (not switched: fix or delete the failed faces and run again)"))
    raise typer.Exit(1 if report.failed else 0)


gallery_app.command("cluster")(distributed_cli.gallery_cluster)


def _failed(message: str) -> None:
    from rich.markup import escape

    console.print(f"[yellow]failed:[/yellow] {escape(message)}")


def _photos(paths: list[Path]) -> list[Path]:
    from faceflow.io import iter_image_files

    files = iter_image_files(paths)
    if not files:
        raise fail_usage("no image files found in " + ", ".join(map(str, paths)))
    return files


def enroll(
    gallery: Annotated[str, typer.Argument(help="Gallery name (created with the default model if new).")],
    name: Annotated[str, typer.Argument(help="Subject name; '-' takes each photo's folder name instead.")],
    paths: Paths,
    largest: Annotated[bool, typer.Option("--largest", help="Enrol the largest face of a photo with several "
                                          "(by default such a photo is refused).")] = False,
    batch: Annotated[int, typer.Option(help="Photos per transaction.")] = 64,
    min_quality: Annotated[float | None, typer.Option(
        help="Refuse faces whose unified quality score (0-100, see `faceflow quality`) is lower, naming "
             "the weakest components.")] = None,
    live_only: Annotated[bool, typer.Option("--live-only", help="Refuse faces the liveness stage judges a "
                                            "photo or screen (see `faceflow liveness`).")] = False,
    store: Store = None,
    engine: Annotated[str, typer.Option(help="local (this process) or ray (a Ray cluster; photos already in the "
                                             "gallery are skipped, so a rerun never duplicates).")] = "local",
    address: Annotated[str | None, typer.Option(help="Ray cluster address (default: start a local one).")] = None,
    workers: Annotated[int | None, typer.Option(help="Ray engine: actors (default: the cluster's CPUs).")] = None,
) -> None:
    """Enrol the face of each photo as NAME (or as its folder's name with '-').

    A photo must show one face: one with several is refused, naming how many, unless --largest.
    Names are trimmed; empty names, control characters and names over 200 characters are refused.
    """
    from faceflow.gallery.store import check_name
    from faceflow.gallery.workflows import analyzer_for, create_gallery
    from faceflow.gallery.workflows import enroll as do_enroll

    if name != "-":
        name = check_name(name)  # one bad NAME is a usage error, before any photo is analysed
    files = _photos(paths)
    with open_gallery_store(store) as s:
        g = create_gallery(s, gallery, exist_ok=True)  # safe when another enroll creates it meanwhile
        if distributed_cli.check_engine(engine, address):
            if live_only:
                raise ConfigError("--engine ray does not check liveness yet: drop --live-only or use --engine local")
            distributed_cli.enroll_on_ray(s.url, gallery, [(f.parent.name if name == "-" else name, f) for f in files],
                                          largest=largest, batch=batch, min_quality=min_quality, address=address,
                                          workers=workers)
        analyzer = analyzer_for(g, quality=min_quality is not None, liveness=live_only)
        items = [(f.parent.name if name == "-" else name, f) for f in files]
        with progress() as bar:
            task = bar.add_task("enrolling", total=len(items))
            report = do_enroll(s, gallery, items, analyzer, largest=largest, batch=batch,
                               tick=lambda: bar.advance(task), min_quality=min_quality, live_only=live_only)
    for item in report.failed:
        _failed(item.reason if item.reason.startswith(item.path) else f"{item.path}: {item.reason}")
    for item in report.notes:
        console.print(f"note: {item.path}: {item.reason}", markup=False)
    console.print(f"enrolled {report.enrolled} of {len(items)} photos into {gallery!r} ({g.model})", markup=False)
    raise typer.Exit(1 if report.failed else 0)


def identify(
    gallery: Annotated[str, typer.Argument(help="Gallery name.")],
    paths: Paths,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write JSONL here instead of stdout.")] = None,
    top: Annotated[int, typer.Option(help="Candidates per face.")] = 5,
    threshold: Annotated[float | None, typer.Option(help="Open-set threshold (default: the gallery's).")] = None,
    aggregate: Annotated[str, typer.Option(help="Subject score from its faces: max or mean.")] = "max",
    store: Store = None,
) -> None:
    """Identify every face of each photo: one JSON line per photo (subject or null when unknown)."""
    from faceflow.gallery.workflows import analyzer_for
    from faceflow.gallery.workflows import identify as do_identify

    if aggregate not in ("max", "mean"):
        raise fail_usage(f"--aggregate must be max or mean, got {aggregate!r}")
    files = _photos(paths)
    if out is not None and (clash := next((f for f in files if inside(f, out)), None)) is not None:
        raise ConfigError(f"--out {display_path(out)} is one of the photos ({display_path(clash)}): "
                          "writing it would destroy the photo")
    failed = 0
    with open_gallery_store(store) as s:
        analyzer = analyzer_for(s.gallery(gallery))
        sink = open_for_writing(out) if out else sys.stdout
        try:
            with progress() as bar:
                task = bar.add_task("identifying", total=len(files))
                for photo in do_identify(s, gallery, files, analyzer, top=top, threshold=threshold,
                                         aggregate=aggregate, tick=lambda: bar.advance(task)):  # type: ignore[arg-type]
                    sink.write(json.dumps(photo.to_dict()) + "\n")
                    sink.flush()
                    if photo.error:
                        failed += 1
                        _failed(photo.error)
        finally:
            if out:
                sink.close()
    console.print(f"{len(files) - failed} of {len(files)} photos identified" + (f"; results: {out}" if out else ""))
    raise typer.Exit(1 if failed else 0)


def cluster(
    folder: Annotated[list[Path], typer.Argument(help="Photo folders and/or files.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (kept between runs: incremental).")],
    threshold: Annotated[float | None, typer.Option(help="Average-linkage cosine threshold (default: the model's).")]
    = None,
    min_face: Annotated[float, typer.Option(help="Leave faces smaller than this (pixels) unassigned.")] = 32.0,
    min_score: Annotated[float, typer.Option(help="Leave faces of lower quality/score unassigned.")] = 0.0,
    min_size: Annotated[int, typer.Option(help="Smallest cluster reported as a person.")] = 2,
    model: ModelOpt = "sface",
) -> None:
    """Cluster the faces of a photo library into persons: OUT/clusters.json and OUT/index.html.

    Faces of one photo never share a cluster. Run again after adding photos: only the new ones are
    analysed, and they join the existing clusters.
    """
    from faceflow.gallery.cluster import cluster_threshold
    from faceflow.gallery.folders import ClusterOptions, cluster_folder
    from faceflow.gallery.workflows import make_analyzer
    from faceflow.recognize import embedding_identity

    analyzer = make_analyzer(model)
    threshold = cluster_threshold(model) if threshold is None else threshold
    opts = ClusterOptions(threshold=threshold,
                          min_face=min_face, min_score=min_score, min_cluster_size=min_size)
    with progress() as bar:
        task = bar.add_task("analysing", total=None)
        summary = cluster_folder(folder, out, analyzer, model=embedding_identity(model).key, options=opts,
                                 tick=lambda: bar.advance(task), on_photos=lambda n: bar.update(task, total=n))
    for e in summary.errors:
        _failed(e.reason)
    console.print(f"{summary.clusters} persons, {summary.faces} faces ({summary.unassigned} unassigned) "
                  f"in {summary.photos} photos ({summary.analysed_now} analysed now). "
                  f"Results: {summary.json_path}, {summary.html_path}", markup=False)
    raise typer.Exit(1 if summary.errors else 0)


# -- evaluation runners (the lead mounts them under `faceflow eval`) -----------------------------------


def _run_lfw(run: Callable[..., dict[str, Any]], root: Path, model: str, flip: bool | None,
             **kwargs: Any) -> tuple[Any, dict[str, Any]]:
    """Run one LFW gallery protocol with a progress bar; returns the console and the figures."""
    from faceflow.eval.tasks import lfw_gallery_embedder

    with progress() as bar:
        task = bar.add_task("embedding", total=None)
        result = run(root, lfw_gallery_embedder(model, flip),
                     progress=lambda i, n: bar.update(task, completed=i, total=n), **kwargs)
    return console, result


def eval_identification(
    root: LfwRootOpt,
    model: ModelOpt = DEFAULT_GALLERY_MODEL,
    aggregate: Annotated[str, typer.Option(help="Subject score: max or mean.")] = "max",
    flip: FlipOpt = None,
    out: Annotated[Path, typer.Option(help="Folder for identification.json and det.png.")] = Path("faceflow-eval"),
) -> None:
    """Open-set identification on LFW: rank-1, FNIR at FPIR 1 % and 0.1 %, DET plot."""
    from faceflow.eval.identification import run_identification

    console, result = _run_lfw(run_identification, root, model, flip, aggregate=aggregate, det_plot=out / "det.png")
    _report(console, out / "identification.json", result, ("rank1", "fnir_at_fpir_0.01", "fnir_at_fpir_0.001"),
            ("threshold_at_fpir_0.01", "no_face"))


def eval_clustering(
    root: LfwRootOpt,
    model: ModelOpt = "sface",
    threshold: Annotated[float | None, typer.Option(help="Average-linkage threshold (default: the model's).")] = None,
    flip: FlipOpt = None,
    people: Annotated[str, typer.Option(help="People scored: held-out (the half the model's threshold was not "
                                              "fitted on), tuning or all.")] = "held-out",
    out: Annotated[Path, typer.Option(help="Folder for clustering.json.")] = Path("faceflow-eval"),
) -> None:
    """Cluster LFW (people with 2+ images, one-image people as distractors): pairwise and BCubed F.

    By default only the half of LFW's people that the clustering thresholds were not fitted on is
    clustered and scored (``training/fit_cluster_threshold.py`` fitted them on the other half).
    """
    from faceflow.eval.clustering import PEOPLE_NOTES, run_clustering
    from faceflow.gallery.cluster import cluster_threshold

    if people not in PEOPLE_NOTES:
        raise fail_usage(f"--people must be one of {', '.join(PEOPLE_NOTES)}, not {people!r}")
    threshold = cluster_threshold(model) if threshold is None else threshold
    console, result = _run_lfw(run_clustering, root, model, flip, threshold=threshold, people=people)
    _report(console, out / "clustering.json", result,
            ("pairwise_precision", "pairwise_recall", "pairwise_f", "bcubed_f"),
            ("clusters", "threshold", "people_note"))


def _report(console: Any, path: Path, result: dict[str, Any], rates: tuple[str, ...], plain: tuple[str, ...]) -> None:
    """Write the figures as JSON (fractions) and print the main ones (rates as percentages)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    for k in rates:
        console.print(f"{k}: {result[k] * 100:.2f} %")
    for k in plain:
        console.print(f"{k}: {result[k]}")
    console.print(f"written: {path}")


standalone = typer.Typer(cls=ErrorExitGroup, no_args_is_help=True, add_completion=False,
                         help="faceflow gallery commands.")
standalone.add_typer(gallery_app, name="gallery")
for _fn in (enroll, identify, cluster):
    standalone.command()(_fn)
_eval = typer.Typer(no_args_is_help=True, help="Gallery evaluations.")
_eval.command("identification")(eval_identification)
_eval.command("clustering")(eval_clustering)
standalone.add_typer(_eval, name="eval")

if __name__ == "__main__":
    standalone()
