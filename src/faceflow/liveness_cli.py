"""Liveness commands: ``faceflow liveness PATH...`` (photos: score and decision per face; videos: per
track, with temporal cues) and ``faceflow eval antispoof`` (the protocols of
:mod:`faceflow.eval.antispoof`). Registered in :mod:`faceflow.cli`."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from faceflow.cli_base import console, fail_usage
from faceflow.errors import FaceflowError
from faceflow.liveness.models import names

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
    from faceflow.io import iter_image_files, load_image
    from faceflow.liveness import LivenessOptions, LivenessStage
    from faceflow.liveness.video import file_liveness
    from faceflow.models.runtime import Runtime
    from faceflow.video import is_video, iter_video_files

    if model not in names():
        raise fail_usage(f"unknown --model {model!r}; choose from: {', '.join(names())}")
    if fps <= 0:
        raise fail_usage("--fps must be positive")
    options = LivenessOptions(model=model, threshold=threshold)
    images = [f for f in iter_image_files([str(p) for p in paths], unreadable=True) if not is_video(f)]
    files = images + iter_video_files(paths)
    if not files:
        raise fail_usage("no photos or videos found")
    out = Console()
    records: list[dict[str, Any]] = []
    failed = 0
    with Runtime() as rt:
        from faceflow.detect import create_detector

        detector = create_detector(None, None, rt)
        stage = LivenessStage(options, rt)
        for path in files:
            try:
                if is_video(path):
                    tracks = file_liveness(path, fps=fps, options=options, runtime=rt)
                    if not tracks:
                        out.print(f"{path}: no face tracked", markup=False)
                    for tr in tracks:
                        assert tr.result is not None
                        out.print(f"{path} track {tr.track_id} ({tr.frames} frames, {tr.first_time:.1f}-"
                                  f"{tr.last_time:.1f} s): {tr.result.decision} {tr.result.score:.2f} "
                                  f"(threshold {tr.result.threshold:.2f}; {tr.result.reason})", markup=False)
                    records.append({"path": str(path), "tracks": [tr.to_dict() for tr in tracks], "error": None})
                else:
                    image = load_image(path)
                    faces = stage.run(image, detector.detect(image))
                    if not faces:
                        out.print(f"{path}: no face", markup=False)
                    for i, face in enumerate(faces):
                        assert face.liveness is not None
                        box = ",".join(f"{v:.0f}" for v in face.box)
                        out.print(f"{path} face {i} [{box}]: {face.liveness.decision} {face.liveness.score:.2f} "
                                  f"(threshold {face.liveness.threshold:.2f}, {face.liveness.model})", markup=False)
                    records.append({"path": str(path), "faces": [f.to_dict() for f in faces], "error": None})
            except FaceflowError as exc:
                failed += 1
                console.print(f"error: {path}: {exc}", markup=False)
                records.append({"path": str(path), "error": str(exc)})
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text("".join(json.dumps(r) + "\n" for r in records))
    raise typer.Exit(1 if failed else 0)


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
    = "human_antispoof,human_liveness,deeptree,cdcn128,cdcn",
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

    if not root.is_dir():
        raise fail_usage(f"--root {root} is not a folder")
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
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(public(result), indent=1) + "\n")
    if plot:
        console.print(f"plot: {plot_det(result, plot)}", markup=False)
    console.print(f"wall time {time.perf_counter() - t0:.1f} s", markup=False)
