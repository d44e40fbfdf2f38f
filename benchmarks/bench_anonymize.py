"""faceflow anonymize and deface side by side, in one run: WIDER coverage and video checks and speed.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_anonymize.py [--check-every 5] [--skip-wider]

* WIDER (the val subset): deface's CenterFace boxes (``peers/deface_run.py`` in deface's own venv,
  ``benchmarks/setup_peers.sh deface``, threshold 0.05 so that any threshold can be scored) and
  faceflow's photo detections (``faceflow.eval.tasks.eval_anonymize``, cached), both scored by
  :func:`faceflow.eval.anonymize.evaluate_anonymize`: deface with its own covered shape (ellipse, box
  grown by ``mask_scale - 1`` = 0.3 per side) at its default threshold 0.2 and at the lowest threshold
  of a sweep whose needless share does not exceed faceflow's; on the ``report`` half of the events
  (where faceflow's threshold was not chosen) and on all images.
* Video: every sample clip, and the Hamilton clip upscaled to 1280x720 with the ffmpeg binary
  (scale filter, libx264 crf 18, audio copied): faceflow's video defaults (``Anonymizer(video=True)
  .anonymize_video``) and the ``deface`` command (defaults, ``--keep-audio``), each timed as frames
  per second of the whole file (decode, detect, cover, encode). Check: the ``thorough`` detector (score
  >= 0.5) on every ``--check-every``-th frame of the original and of each output; a face found in the
  output at IoU >= 0.3 with one found in the original counts as a face left behind. faceflow's frames
  also report tracked faces left uncovered (a detected face with a track id whose box is not >= 99 %
  inside the covered area), on every frame.

Writes ``benchmarks/results/anonymize.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Container, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

HERE = Path(__file__).resolve().parent
DATA = Path(os.environ.get("FACEFLOW_DATASETS", HERE.parent.parent / "shared" / "datasets"))
DEFACE = HERE / ".venvs" / "deface" / "bin"
DEFACE_SHAPE, DEFACE_MARGIN, DEFACE_DEFAULT = "ellipse", 0.3, 0.2
"""deface's covered shape (an ellipse over its box grown by ``mask_scale - 1`` per side) and default threshold."""


def read_deface(path: Path, keys: Container[str] | None = None) -> dict[str, npt.NDArray[np.float64]]:
    """deface's ``(N, 5)`` rows per WIDER image key from ``peers/deface_run.py``'s JSONL (header skipped),
    only those of ``keys`` when given (so that the other half's are never kept)."""
    boxes: dict[str, npt.NDArray[np.float64]] = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        if "path" in row and (keys is None or row["path"] in keys):
            boxes[row["path"]] = np.asarray(row["boxes"], np.float64).reshape(-1, 5)
    return boxes


def score_deface(boxes: Mapping[str, npt.NDArray[np.float64]], sizes: Mapping[str, tuple[int, int]],
                 gt: Sequence[Any], threshold: float) -> dict[str, Any]:
    """WIDER coverage of deface's boxes at ``threshold``, covered as deface covers them."""
    from faceflow.eval.anonymize import evaluate_anonymize

    return evaluate_anonymize(boxes, sizes, gt, threshold, DEFACE_SHAPE, DEFACE_MARGIN)


def matched_needless(sweep: Sequence[dict[str, Any]], needless: float) -> dict[str, Any] | None:
    """The row of ``sweep`` (deface at several thresholds) with the lowest threshold whose needless
    share is no larger than ``needless``: deface at its best recall for the same needless area."""
    fair = [r for r in sweep if r["needless"] <= needless]
    return min(fair, key=lambda r: r["threshold"]) if fair else None


def deface_wider(out: Path) -> Path:
    target = out / "deface_wider.jsonl"
    subprocess.run([str(DEFACE / "python"), str(HERE / "peers" / "deface_run.py"), "--task", "wider",
                    "--root", str(DATA / "wider"), "--out", str(target), "--thresh", "0.05"], check=True)
    return target


def wider(out: Path) -> dict:
    from faceflow.anonymize import IMAGE_THRESHOLD
    from faceflow.eval.anonymize import half_of
    from faceflow.eval.tasks import ANONYMIZE_SWEEP, eval_anonymize
    from faceflow.eval.wider import load_wider

    t0 = time.perf_counter()
    boxes = read_deface(deface_wider(out))
    deface_seconds = time.perf_counter() - t0
    gt_all = load_wider(DATA / "wider")
    from PIL import Image

    sizes = {}
    for im in gt_all:
        with Image.open(im.path) as p:
            sizes[im.key] = (p.height, p.width)
    result: dict = {"deface_seconds_wider": round(deface_seconds, 1)}
    for half in ("report", "all"):
        t0 = time.perf_counter()
        ff = eval_anonymize(DATA / "wider", half=half, thresholds=(IMAGE_THRESHOLD,), progress=False)
        ff_row = ff["by_threshold"][0]
        gt = [im for im in gt_all if half == "all" or half_of(im.key) == half]
        default = score_deface(boxes, sizes, gt, DEFACE_DEFAULT)
        sweep = [score_deface(boxes, sizes, gt, t) for t in ANONYMIZE_SWEEP]
        matched = matched_needless(sweep, ff_row["needless"])
        result[half] = {"faceflow": ff_row, "faceflow_seconds": round(time.perf_counter() - t0, 1),
                        "deface_default": default, "deface_matched_needless": matched, "deface_sweep": sweep}
    return result


def accurate_faces(frames: list[np.ndarray], det) -> list[np.ndarray]:  # type: ignore[no-untyped-def]
    return [np.array([f.box for f in det.detect(img)], np.float64).reshape(-1, 4) for img in frames]


def left_behind(original: Path, output: Path, every: int, det) -> dict:  # type: ignore[no-untyped-def]
    from faceflow.detect.base import iou_matrix
    from faceflow.video import iter_frames

    a = [f.image for f in iter_frames(original, every=every)]
    b = [f.image for f in iter_frames(output, every=every)]
    fa, fb = accurate_faces(a, det), accurate_faces(b, det)
    found = sum(len(x) for x in fa)
    behind = frames_with = 0
    for x, y in zip(fa, fb, strict=False):
        n = int((iou_matrix(y, x) >= 0.3).any(axis=1).sum()) if len(x) and len(y) else 0
        behind += n
        frames_with += n > 0
    return {"frames_checked": len(a), "output_frames": len(b), "faces_in_original": found,
            "faces_left_behind": behind, "frames_with_a_face_left_behind": frames_with}


def video(out: Path, every: int) -> dict:
    from faceflow.anonymize import Anonymizer, box_coverage, coverage_mask
    from faceflow.detect import DetectorOptions, create_detector
    from faceflow.video import probe

    det = create_detector("thorough", DetectorOptions(score_threshold=0.5))
    clips = sorted((DATA / "samples" / "videos").glob("*.mp4"))
    tmp = Path(tempfile.mkdtemp())
    big = tmp / "short_hamilton_clip_1280x720.mp4"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(clips[-1]), "-vf", "scale=1280:720",
                    "-c:v", "libx264", "-crf", "18", "-c:a", "copy", str(big)], check=True)
    results = {}
    for clip in [*clips, big]:
        info = probe(clip)
        uncovered = 0

        def check(frame) -> None:  # type: ignore[no-untyped-def]
            nonlocal uncovered
            if frame.tracked:
                mask = coverage_mask(frame.image.shape[:2], frame.regions, "ellipse", 0.25)
                uncovered += int((box_coverage([r.box for r in frame.tracked], mask) < 0.99).sum())

        ff_out = out / f"faceflow_{clip.name}"
        with Anonymizer(video=True) as a:
            summary = a.anonymize_video(clip, ff_out, on_frame=check)
        row = {"size": f"{info.width}x{info.height}", "frames": summary.frames,
               "faceflow": {"frames_per_second": round(summary.frames / summary.seconds, 1), **summary.to_dict(),
                            "tracked_faces_uncovered": uncovered}}
        df_out = out / f"deface_{clip.name}"
        t0 = time.perf_counter()
        proc = subprocess.run([str(DEFACE / "deface"), str(clip), "-o", str(df_out), "--keep-audio"],
                              capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        row["deface"] = {"frames_per_second": round(summary.frames / seconds, 1), "wall_seconds": round(seconds, 1),
                         "returncode": proc.returncode}
        row["faceflow"]["check"] = left_behind(clip, ff_out, every, det)
        if proc.returncode == 0:
            row["deface"]["check"] = left_behind(clip, df_out, every, det)
        results[clip.name] = row
        print(clip.name, json.dumps(row), flush=True)
    shutil.rmtree(tmp, ignore_errors=True)
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check-every", type=int, default=5)
    p.add_argument("--skip-wider", action="store_true")
    p.add_argument("--skip-video", action="store_true")
    p.add_argument("--json", type=Path, default=HERE / "results" / "anonymize.json")
    args = p.parse_args()
    out = Path(tempfile.mkdtemp(prefix="bench-anonymize-"))
    load = os.getloadavg()
    result: dict = {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0],
                                "load_average_before": [round(x, 2) for x in load]},
                    "upscaled": "short_hamilton_clip at 1280x720 made with the ffmpeg binary (scale filter, "
                                "libx264 crf 18, audio copied)", "check_every": args.check_every}
    if not args.skip_wider:
        result["wider"] = wider(out)
        print(json.dumps(result["wider"], indent=1), flush=True)
    if not args.skip_video:
        result["video"] = video(out, args.check_every)
    result["machine"]["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    print(f"written {args.json}")


if __name__ == "__main__":
    main()
