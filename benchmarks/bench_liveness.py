"""Milliseconds the ``liveness`` stage adds per face, for each liveness model, on the antispoof images.

Faces are detected first (not timed); then each model's stage runs on each image's faces and its time
is divided by the number of faces (median and 95th percentile over images, after one warm-up call).
The default model's budget is 30 ms per face; the others are opt-in and their cost is what
``faceflow models list`` shows. Usage:

    FACEFLOW_THREADS=1 .venv/bin/python benchmarks/bench_liveness.py --root ../shared/datasets/antispoof \\
        [--images 40] [--models texture,human_antispoof,human_liveness,deeptree,deeptree_int8,cdcn128,cdcn] \\
        [--json out.json]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _emit import emit_json
from _samples import faces_in_spread

from faceflow import Analyzer
from faceflow.liveness import DEFAULT_MODEL, LivenessOptions, LivenessStage


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--root", type=Path, required=True, help="a folder of face images (walked recursively)")
    ap.add_argument("--images", type=int, default=40)
    ap.add_argument("--models", default=DEFAULT_MODEL, help="comma-separated liveness models")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    with Analyzer(stages=("detect",)) as analyzer:
        items = faces_in_spread(analyzer, args.root, args.images)
        figures: dict[str, object] = {"images": len(items), "faces": sum(len(f) for _, f in items),
                                      "threads": analyzer.runtime.threads, "default": DEFAULT_MODEL}
        for name in args.models.split(","):
            stage = LivenessStage(LivenessOptions(model=name), analyzer.runtime)
            stage.run(*items[0])  # warm-up: loads the model
            per_face = []
            for image, faces in items:
                t0 = time.perf_counter()
                stage.run(image, faces)
                per_face.append((time.perf_counter() - t0) / len(faces))
            figures[name] = {"median_ms_per_face": round(1000 * statistics.median(per_face), 2),
                             "p95_ms_per_face": round(1000 * sorted(per_face)[int(0.95 * len(per_face))], 2)}
    emit_json(figures, args.json)


if __name__ == "__main__":
    main()
