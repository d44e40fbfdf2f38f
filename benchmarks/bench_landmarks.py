"""Milliseconds per face of each 68-point source (the ``landmarks`` stage alone, mirror on), on 300-W.

The faces are detected first (not timed; the face nearest the annotation's centre); then each source
reads every face once to warm up and once timed, one source after the other on the same faces.
Usage:

    FACEFLOW_THREADS=1 .venv/bin/python benchmarks/bench_landmarks.py \\
        --root ../shared/datasets/300w/helen/testset [--images 100] [--json out.json]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
from _emit import emit_json

from faceflow import load_image
from faceflow.detect import create_detector
from faceflow.eval.w300 import load_300w
from faceflow.landmarks import Landmarks68Stage
from faceflow.models.runtime import Runtime, thread_budget

SOURCES = ("fused", "landmarker", "pfld", "faceapi", "mesh", "dlib")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--root", type=Path, required=True, help="a folder of .pts files beside their images")
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    detector = create_detector("yunet")
    faces = []
    for item in load_300w(args.root)[: args.images]:
        image = load_image(item.path)
        found = detector.detect(image)
        if found:
            centre = item.points.mean(axis=0)
            faces.append((image, min(found, key=lambda f: float(np.hypot(*(np.asarray(f.center) - centre))))))
    figures: dict[str, object] = {"faces": len(faces), "threads": thread_budget()}
    with Runtime() as runtime:
        for source in SOURCES:
            stage = Landmarks68Stage(source, runtime)
            for image, face in faces[:3]:
                stage.predict(image, face)  # warm-up: loads the models
            ms = []
            for image, face in faces:
                t0 = time.perf_counter()
                stage.predict(image, face)
                ms.append(1000 * (time.perf_counter() - t0))
            figures[source] = {"median_ms_per_face": round(statistics.median(ms), 2),
                               "p95_ms_per_face": round(sorted(ms)[int(0.95 * len(ms))], 2)}
    emit_json(figures, args.json)


if __name__ == "__main__":
    main()
