"""Liveness commands: ``faceflow liveness PATH...`` (photos: score and decision per face; videos: per
track, with temporal cues) and ``faceflow eval antispoof`` (the protocols of
:mod:`faceflow.eval.antispoof`). Registered in :mod:`faceflow.cli`."""

from __future__ import annotations

import json
import time
from contextlib import nullcontext, suppress
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from faceflow.cli_base import INPUT_FAILED, OK, console, fail_usage, report_item_errors
from faceflow.errors import FaceflowError
from faceflow.liveness.candidates import NETWORKS, names

ModelOpt = Annotated[str, typer.Option("--model", help=f"Liveness model: {', '.join(names())}.")]


def liveness(
    paths: Annotated[list[Path], typer.Argument(help="Photos, videos and/or folders (walked recursively).")],
    model: ModelOpt = "texture",
    threshold: Annotated[float | None, typer.Option(help="Live when the score is at least this "
                                                    "(default: the model's own).")] = None,
    fps: Annotated[float, typer.Option(help="Video frames sampled per second.")] = 10.0,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write every result as JSON lines here.")] = None,
) -> None:
    """Is each face live, or a photo or screen? Prints the score (1 = live) and the decision per face of
    each photo, and per track of each video (frame scores, blinks, non-rigid motion)."""
    from faceflow.io import iter_image_files
    from faceflow.liveness import LivenessOptions
    from faceflow.liveness.video import file_liveness
    from faceflow.models.runtime import Runtime
    from faceflow.outputs import display_path, item_error, json_line, open_for_writing
    from faceflow.pipeline import Analyzer
    from faceflow.video import is_video, iter_video_files

    if fps <= 0:
        raise fail_usage("--fps must be positive")
    options = LivenessOptions(model=model, threshold=threshold)  # refuses an unknown model or threshold
    images = [f for f in iter_image_files([str(p) for p in paths], unreadable=True) if not is_video(f)]
    videos = iter_video_files(paths)
    if not images and not videos:
        raise fail_usage("no photos or videos found")
    out = Console(soft_wrap=True)  # one line per face or track, however long the path
    if json_out:
        with suppress(OSError):  # a parent that cannot be made: open_for_writing names the problem
            json_out.parent.mkdir(parents=True, exist_ok=True)
    fh = open_for_writing(json_out) if json_out else None  # before any model runs: a bad --json fails first
    failed = 0

    def record(entry: dict[str, Any]) -> None:
        if fh is not None:
            fh.write(json_line(entry))
            fh.flush()

    with Runtime() as rt, fh or nullcontext():
        # Photos go through the Analyzer's batch (decoding, limits, an error per photo), as analyze's do.
        analyzer = Analyzer(stages=("detect", "liveness"), runtime=rt, liveness=options)
        for result in analyzer.analyze_batch(images):
            shown = display_path(result.path)
            if result.error:
                failed += 1
                console.print(f"error: {item_error(result.path, result.error)}", markup=False)
            elif not result.faces:
                out.print(f"{shown}: no face", markup=False)
            for i, face in enumerate(result.faces):
                assert face.liveness is not None
                box = ",".join(f"{v:.0f}" for v in face.box)
                out.print(f"{shown} face {i} [{box}]: {face.liveness.decision} {face.liveness.score:.2f} "
                          f"(threshold {face.liveness.threshold:.2f}, {face.liveness.model})", markup=False)
            record(result.to_dict())
        for path in videos:
            shown = display_path(path)
            try:
                tracks = file_liveness(path, fps=fps, options=options, runtime=rt)
            except FaceflowError as exc:
                failed += 1
                console.print(f"error: {item_error(path, str(exc))}", markup=False)
                record({"path": str(path), "error": str(exc)})
                continue
            if not tracks:
                out.print(f"{shown}: no face tracked", markup=False)
            for tr in tracks:
                assert tr.result is not None
                out.print(f"{shown} track {tr.track_id} ({tr.frames} frames, {tr.first_time:.1f}-"
                          f"{tr.last_time:.1f} s): {tr.result.decision} {tr.result.score:.2f} "
                          f"(threshold {tr.result.threshold:.2f}; {tr.result.reason})", markup=False)
            record({"path": str(path), "tracks": [tr.to_dict() for tr in tracks], "error": None})
    raise typer.Exit(INPUT_FAILED if failed else OK)


def eval_antispoof(
    root: Annotated[Path, typer.Option("--root", help="An antispoof folder (sources with labels.csv) or one "
                                                      "source folder.")],
    intra: Annotated[list[str] | None, typer.Option("--intra", help="Source for the intra-dataset protocol "
                                                    "(repeatable; with no protocol given, every source).")] = None,
    cross: Annotated[tuple[str, str] | None, typer.Option("--cross", help="Train on source A, test on B: "
                                                          "--cross nuaa msu_mfsd.")] = None,
    both_ways: Annotated[bool, typer.Option("--both-ways", help="With --cross A B, also B -> A.")] = False,
    networks: Annotated[str, typer.Option(help="Packaged networks scored beside the texture and fused "
                                          "models (comma-separated; '' for none).")]
    = ",".join(NETWORKS),
    splits: Annotated[int, typer.Option(help="Subject-disjoint splits of the intra protocol.")] = 10,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the figures as JSON here.")] = None,
    plot: Annotated[Path | None, typer.Option(help="Write the DET curves (PNG) here (needs matplotlib: the "
                                                   "plots extra).")] = None,
    cache: Annotated[bool, typer.Option("--cache/--no-cache", help="Reuse per-image results.")] = True,
) -> None:
    """Presentation-attack detection: APCER, BPCER, ACER at the training side's threshold, HTER, AUC,
    BPCER at APCER = 5 %, with subject-bootstrap 95 % intervals and image counts, every candidate side by
    side with its ms per face."""
    from faceflow.eval.antispoof import eval_antispoof as run
    from faceflow.eval.antispoof import find_sources, plot_det, public
    from faceflow.outputs import open_for_writing

    if not root.is_dir():
        raise fail_usage(f"--root {root} is not a folder")
    if plot is not None and plot.is_dir():
        raise fail_usage(f"--plot {plot} is a folder; name the PNG file")
    nets = tuple(n.strip() for n in networks.split(",") if n.strip())
    for n in nets:
        if n not in names() or n == "texture":
            raise fail_usage(f"unknown network {n!r}")
    pairs: list[tuple[str, str]] = []
    if cross:
        pairs.append((cross[0], cross[1]))
        if both_ways:
            pairs.append((cross[1], cross[0]))
    sources = tuple(intra or ())
    if not sources and not pairs:
        sources = tuple(find_sources(root))
    if json_out:
        with suppress(OSError):  # a parent that cannot be made: open_for_writing names the problem
            json_out.parent.mkdir(parents=True, exist_ok=True)
    fh = open_for_writing(json_out) if json_out else None  # before the run: a bad --json fails first
    t0 = time.perf_counter()
    result = run(root, intra=sources, cross=pairs, networks=nets, splits=splits, use_cache=cache)
    out = Console()
    ms = result["ms_per_face"]
    for r in result["runs"]:
        if r["protocol"] == "intra":
            title = (f"intra {r['source']}: {r['images']} images, {r['subjects']} subjects, {r['splits']} "
                     f"subject-disjoint halves (~{r['test_images_per_split']} test images each)")
        else:
            title = f"cross {r['train']} -> {r['test']}: train {r['train_images']} images, test {r['images']} images"
        table = Table("model", "APCER", "BPCER", "ACER", "HTER", "AUC", "BPCER@APCER5", "ms/face", title=title)

        def pct(m: dict[str, Any]) -> str:
            return f"{100 * m['value']:.1f} [{100 * m['ci95'][0]:.1f}, {100 * m['ci95'][1]:.1f}]"

        for name, c in r["candidates"].items():
            table.add_row(name, pct(c["apcer"]), pct(c["bpcer"]), pct(c["acer"]), pct(c["hter"]),
                          f"{c['auc']['value']:.3f}", pct(c["bpcer_at_apcer5"]),
                          f"{ms[name]:.1f}" if name in ms else "")
        out.print(table)
    console.print(f"percentages with subject-bootstrap 95 % intervals ({result['bootstrap_draws']} draws); "
                  f"detection {ms.get('detect', 0):.1f} ms per image on top", markup=False)
    if fh is not None:
        with fh:
            fh.write(json.dumps(public(result), indent=1) + "\n")
    if plot:
        console.print(f"plot: {plot_det(result, plot)}", markup=False)
    console.print(f"wall time {time.perf_counter() - t0:.1f} s", markup=False)

    if report_item_errors(result):  # figures without the broken images: say so, and exit 1
        raise typer.Exit(1)
