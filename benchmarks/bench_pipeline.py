"""Median milliseconds per image for each detector, and for the full ``analyze`` pipeline.

Runs on scikit-image's astronaut (one face, 512x512) and, when present, on the insightface group
photo t1.jpg (6 faces). Usage:

    .venv/bin/python benchmarks/bench_pipeline.py [--repeats 20] [--json out.json]

Set FACEFLOW_THREADS=1 to measure on one thread (the peers' figures in PEERS.md are one-thread).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

from faceflow import Analyzer, create_detector, load_image
from faceflow.detect import DETECTORS

T1 = Path(__file__).resolve().parents[1].parent / "shared/datasets/samples/insightface_data/t1.jpg"


def median_ms(fn, image: np.ndarray, repeats: int) -> tuple[float, int]:  # type: ignore[no-untyped-def]
    n = len(fn(image))  # warm-up: loads the model
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(image)
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times), n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    from skimage import data

    images = {"astronaut": np.ascontiguousarray(data.astronaut())}
    if T1.exists():
        images["t1"] = load_image(T1)
    rows = []
    for name in DETECTORS:
        det = create_detector(name)
        for img_name, img in images.items():
            ms, n = median_ms(det.detect, img, args.repeats)
            rows.append({"what": f"detect:{name}", "image": img_name, "median_ms": round(ms, 2), "faces": n})
    for stages in ("detect,landmarks,pose,attributes", "detect,landmarks,pose,embed,attributes"):
        analyzer = Analyzer(stages=stages)
        for img_name, img in images.items():
            ms, n = median_ms(analyzer.analyze_array, img, args.repeats)
            rows.append({"what": f"analyze:{stages}", "image": img_name, "median_ms": round(ms, 2), "faces": n})
    threads = os.environ.get("FACEFLOW_THREADS", "all cores")
    print(f"threads per model: {threads}; cpu_count {os.cpu_count()}; repeats {args.repeats}")
    print(f"{'what':55} {'image':10} {'median ms':>10} {'faces':>6}")
    for r in rows:
        print(f"{r['what']:55} {r['image']:10} {r['median_ms']:10.2f} {r['faces']:6d}")
    if args.json:
        args.json.write_text(json.dumps({"threads": threads, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
