"""``faceflow bench``: where the time goes, per stage, on a folder of images.

Reports the median milliseconds per image of each stage (decode, detect, then every configured
stage), end-to-end images per second, peak resident memory and the threads in use.
"""

from __future__ import annotations

import os
import resource
import statistics
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from faceflow.errors import FaceflowError
from faceflow.io import iter_image_files, load_image
from faceflow.pipeline import Analyzer


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_bench(analyzer: Analyzer, paths: Sequence[str | os.PathLike[str]], *, limit: int | None = None,
              warmup: int = 1) -> dict[str, Any]:
    """Time ``analyzer`` over the images under ``paths``; the first ``warmup`` images are not counted."""
    files = iter_image_files([Path(p) for p in paths])
    if limit:
        files = files[:limit]
    timings: dict[str, list[float]] = {}
    errors = faces = counted = 0
    start = None
    for i, path in enumerate(files):
        if i == warmup:
            start = time.perf_counter()
            timings.clear()
        t0 = time.perf_counter()
        try:
            image = load_image(path, max_pixels=analyzer.options.max_pixels)
        except FaceflowError:
            errors += 1
            continue
        timings.setdefault("decode", []).append(time.perf_counter() - t0)
        faces += len(analyzer.analyze_array(image, timings))
        counted += i >= warmup
    elapsed = time.perf_counter() - start if start is not None else 0.0
    return {
        "images": counted,
        "errors": errors,
        "faces": faces,
        "median_ms": {k: round(1000 * statistics.median(v), 2) for k, v in timings.items()},
        "images_per_second": round(counted / elapsed, 3) if elapsed > 0 else None,
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "threads": threading.active_count(),
        "cpu_count": os.cpu_count(),
        "threads_per_model": analyzer.runtime.threads,
        "stages": list(analyzer.options.stages),
        "detector": analyzer.options.options_for("detect").detector,
    }
