"""Milliseconds the ``quality`` stage adds per face (component measures + unified score, which runs the
QualityFace network and one SFace pass for the embedding's norm), on LFW.

The faces are detected and meshed first (not timed); then the quality stage runs on each image's
faces and its time is divided by the number of faces. Two runs are reported: with the expression
model (what the stage does when no attributes stage gave an expression) and without it (faces that
already carry an expression). The mesh stage, which the quality stage needs and which ``analyze``
runs anyway for landmarks and pose, is timed apart (``mesh_stage``). Usage:

    FACEFLOW_THREADS=1 .venv/bin/python benchmarks/bench_quality.py --root ../shared/datasets/lfw \\
        [--images 300] [--json out.json]
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
from faceflow.landmarks import MeshStage
from faceflow.quality import QualityStage


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--root", type=Path, required=True, help="a folder of face images (walked recursively)")
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    with Analyzer(stages=("detect", "mesh")) as analyzer:
        stage = QualityStage(runtime=analyzer.runtime)
        items = faces_in_spread(analyzer, args.root, args.images)
        stage.run(*items[0])  # warm-up: loads the models
        figures: dict[str, object] = {"images": len(items), "faces": sum(len(f) for _, f in items)}
        mesh = MeshStage(runtime=analyzer.runtime)
        mesh_ms = []
        for image, faces in items:
            t0 = time.perf_counter()
            mesh.run(image, faces)
            mesh_ms.append((time.perf_counter() - t0) / len(faces))
        figures["mesh_stage"] = {"median_ms_per_face": round(1000 * statistics.median(mesh_ms), 2)}
        for label, keep_expression in (("with_expression_model", False), ("expression_given", True)):
            per_face = []
            for image, faces in items:
                if not keep_expression:
                    for f in faces:
                        f.expression = None
                t0 = time.perf_counter()
                stage.run(image, faces)
                per_face.append((time.perf_counter() - t0) / len(faces))
            figures[label] = {"median_ms_per_face": round(1000 * statistics.median(per_face), 2),
                              "p95_ms_per_face": round(1000 * sorted(per_face)[int(0.95 * len(per_face))], 2)}
            if not keep_expression:  # give every face an expression for the second run
                from faceflow.attributes import ExpressionStage

                expr = ExpressionStage(runtime=analyzer.runtime)
                for image, faces in items:
                    expr.run(image, faces)
    emit_json(figures, args.json)


if __name__ == "__main__":
    main()
