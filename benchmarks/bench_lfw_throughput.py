"""Detect + align + embed throughput on LFW at equal resources: faceflow's configurations and the
peers on the same images, in one run, reported per CPU-second and as wall time on the same cores.

Every contender is measured twice, the runs interleaved (contender by contender, each faceflow
configuration right before the peer it is compared with, so both meet similar load):

* ``one_core``: one process, one thread. ``cpu_ms_per_image`` is the process CPU time per image
  (decoding included; start-up and model loading excluded) -- the load-independent figure that the
  per-CPU-second ratios use (``ratio_cpu`` = the peer's CPU ms per image / faceflow's).
* ``same_cores``: every contender gets the same ``--cores`` cores: faceflow a pool of that many
  worker processes with one intra-op thread each; a peer its runner with ``--threads`` set to that
  count (OpenCV's and dlib's own parallelism; ``cv2.setNumThreads`` and the BLAS/OMP variables).
  ``ratio_wall`` compares images per wall second. On a machine shared with other work the wall
  figures depend on that load; the CPU figures do not.

faceflow: every image is decoded, the configuration's detector finds its faces, the face nearest the
centre (a centre box when none) is aligned and embedded, ``--chunk`` images per task. Models are
loaded and warmed up before the clock starts. Peers (``benchmarks/.venvs/<peer>``, built by
``benchmarks/setup_peers.sh``; skipped with a note when absent) run their runners in
``benchmarks/peers/`` on the first ``--limit`` images; their images/s = images / the sum of their
per-image times (decoding excluded, which favours them slightly), as ``benchmarks/peers/score.py``
computes it; their CPU time per image subtracts a one-image run so that start-up and model loading
are left out.

* ``fast``: the ``fast`` detector (YuNet in ONNX Runtime, decoded in numpy) + SFace int8 (``sface_int8``:
  static quantisation calibrated on UTKFace, its PRelus in uint8; no flip): the fast configuration.
* ``fast_fp32``: OpenCV's YuNet + SFace fp32 (``sface``, no flip): the fast configuration before issue
  22, for reference.
* ``accurate``: the ``fast`` detector + ``fused_int8`` (SFace int8 and dlib int8 fused, with flip): the
  accurate configuration.
* ``accurate_fp32``: OpenCV's YuNet + ``fused`` (SFace fp32 and dlib's ResNet in fp32, flip): the
  accurate configuration before, for reference.

Targets (issue 22): fast >= 2x OpenCV YuNet+SFace and accurate >= 3x face_recognition per CPU-second.

    nice -n 5 .venv/bin/python benchmarks/bench_lfw_throughput.py --limit 500 --json benchmarks/results/throughput.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from _emit import emit_json  # benchmarks/_emit.py

REPO = Path(__file__).resolve().parents[1]
PEERS = REPO / "benchmarks" / "peers"
VENVS = REPO / "benchmarks" / ".venvs"
CONFIGS: dict[str, tuple[str, str, bool | None]] = {
    "fast": ("fast", "sface_int8", False),
    "fast_fp32": ("yunet", "sface", False),
    "accurate": ("fast", "fused_int8", None),
    "accurate_fp32": ("yunet", "fused", None),
}
"""Configuration name -> (detector, embedder, flip; ``None`` = the embedder's default)."""
TARGETS = {
    "fast": ("opencv", 2.0), "fast_fp32": ("opencv", 2.0),
    "accurate": ("face_recognition", 3.0), "accurate_fp32": ("face_recognition", 3.0),
}
"""Each configuration's peer and the factor it must reach per CPU-second."""

_worker: dict[str, Any] = {}


def lfw_images(root: Path, limit: int) -> list[Path]:
    """The first ``limit`` LFW images in sorted order: the same ones the peer runners take."""
    paths = sorted(root.glob("*/*.jpg"))
    if not paths:
        raise SystemExit(f"no LFW images under {root}")
    return paths[:limit] if limit > 0 else paths


def _init_worker(detector: str, model: str, flip: bool | None, warmup: str) -> None:
    """Load the detector and the embedder in this worker (one thread each) and run them once."""
    import cv2

    from faceflow.detect import create_detector
    from faceflow.models.runtime import Runtime
    from faceflow.recognize import create_embedder

    cv2.setNumThreads(1)
    runtime = Runtime(threads=1)
    _worker["detector"] = create_detector(detector, runtime=runtime)
    _worker["embedder"] = create_embedder(model, flip=flip, runtime=runtime)
    _process([warmup])


def _process(paths: list[str]) -> tuple[int, float]:
    """Detect, align and embed each image's centre face -> (faces embedded, CPU seconds used)."""
    from faceflow.eval.tasks import centre_face
    from faceflow.io import load_image
    from faceflow.types import nearest_face

    start = time.process_time()
    items = []
    for path in paths:
        image = load_image(path)
        faces = _worker["detector"].detect(image)
        h, w = image.shape[:2]
        items.append((image, [nearest_face(faces, (w / 2, h / 2)) or centre_face(image)]))
    n = len(_worker["embedder"].embed_many(items))
    return n, time.process_time() - start


def _ready(seconds: float) -> bool:
    time.sleep(seconds)  # keeps a worker busy, so that every worker of the pool gets started
    return True


def run_faceflow(name: str, paths: list[Path], workers: int, chunk: int) -> dict[str, Any]:
    """Images/s of one configuration over ``paths`` with a pool of ``workers`` processes."""
    detector, model, flip = CONFIGS[name]
    chunks = [[str(p) for p in paths[i : i + chunk]] for i in range(0, len(paths), chunk)]
    ctx = get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                             initargs=(detector, model, flip, str(paths[0]))) as pool:
        list(pool.map(_ready, [0.5] * workers))  # all workers up, models loaded and warmed
        load_before = os.getloadavg()[0]
        t0 = time.perf_counter()
        results = list(pool.map(_process, chunks))
        wall = time.perf_counter() - t0
    faces = sum(n for n, _ in results)
    cpu_ms = 1000 * sum(s for _, s in results) / len(paths)
    return {
        "config": name, "detector": detector, "embedder": model, "flip": flip if flip is not None else "model default",
        "images": len(paths), "faces": faces, "workers": workers, "chunk": chunk,
        "wall_s": round(wall, 2), "images_per_second": round(len(paths) / wall, 2),
        "cpu_ms_per_image": round(cpu_ms, 2),
        "loadavg_1min_before": round(load_before, 2), "loadavg_1min_after": round(os.getloadavg()[0], 2),
    }


def _peer_args(peer: str) -> list[str]:
    """Model-file arguments of a peer runner (OpenCV takes YuNet and SFace int8 from faceflow's store)."""
    if peer != "opencv":
        return []
    from faceflow.models import default_store, registry
    from faceflow.models.runtime import model_path

    return ["--yunet", str(model_path("yunet")), "--sface", str(default_store().fetch_file(registry.SFACE_INT8_FILE))]


def _run_runner(peer: str, root: Path, limit: int, tmp: Path, threads: int) -> tuple[list[dict[str, Any]], float]:
    """One run of a peer's LFW runner -> (its JSONL lines, the CPU seconds its process used)."""
    out = tmp / f"{peer}_lfw_{limit}.jsonl"
    cmd = [str(VENVS / peer / "bin" / "python"), str(PEERS / f"{peer}_run.py"), "--task", "lfw", "--root", str(root),
           "--out", str(out), "--limit", str(limit), "--threads", str(threads), *_peer_args(peer)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return [json.loads(line) for line in out.read_text().splitlines()], cpu


def run_peer(peer: str, root: Path, limit: int, threads: int) -> dict[str, Any]:
    """Run one peer's LFW runner with ``threads`` threads and read its per-image times.

    Its CPU time per image is (CPU of the full run - CPU of a one-image run) / (images - 1), so that
    starting Python and loading the models are left out, as they are from faceflow's figure.
    """
    if not (VENVS / peer / "bin" / "python").exists():
        return {"peer": peer, "skipped": f"no venv {VENVS / peer}: run benchmarks/setup_peers.sh {peer}"}
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        lines, cpu = _run_runner(peer, root, limit, Path(tmp), threads)
        _, cpu_one = _run_runner(peer, root, 1, Path(tmp), threads)
    header, records = lines[0], lines[1:]
    ms = sum(r["ms"] for r in records)
    cpu_ms = 1000 * (cpu - cpu_one) / (len(records) - 1)
    return {
        "peer": peer, "images": len(records), "threads": threads, "versions": header["versions"],
        "images_per_second": round(len(records) / (ms / 1000), 2), "wall_s": header["wall_s"],
        "cpu_ms_per_image": round(cpu_ms, 2), "no_face": header.get("n_fallback"),
        "loadavg_1min_before": round(load_before, 2), "loadavg_1min_after": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lfw", type=Path, default=REPO.parent / "shared" / "datasets" / "lfw")
    ap.add_argument("--limit", type=int, default=500, help="the first N images (sorted), 0 = all")
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="cores every contender gets (wall)")
    ap.add_argument("--chunk", type=int, default=4, help="images per task (faces batched per model)")
    ap.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated: {', '.join(CONFIGS)}")
    ap.add_argument("--peers", default="opencv,face_recognition", help="comma-separated peers ('' = none)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()

    paths = lfw_images(args.lfw, args.limit)
    configs = [c for c in args.configs.split(",") if c]
    peers = [p for p in args.peers.split(",") if p]
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M"), "cpu_count": os.cpu_count(), "cores": args.cores,
        "python": platform.python_version(),
        "data": f"first {len(paths)} LFW images (sorted paths) under {args.lfw}", "faceflow": {}, "peers": {},
    }
    jobs: list[tuple[str, str]] = []  # each configuration right before its peer, so both meet similar load
    for config in configs:
        jobs.append(("faceflow", config))
        peer = TARGETS[config][0]
        if peer in peers and ("peers", peer) not in jobs:
            jobs.append(("peers", peer))
    jobs += [("peers", p) for p in peers if ("peers", p) not in jobs]
    for mode, n in (("one_core", 1), ("same_cores", args.cores)):
        for kind, name in jobs:
            print(f"== {mode} {kind} {name}", file=sys.stderr, flush=True)
            if kind == "faceflow":
                figures = run_faceflow(name, paths, n, args.chunk)
            else:
                figures = run_peer(name, args.lfw, args.limit, n)
            results[kind].setdefault(name, {})[mode] = figures
            print(json.dumps(figures), file=sys.stderr, flush=True)
    results["targets"] = {}
    for config in configs:
        peer, factor = TARGETS[config]
        ours, theirs = results["faceflow"][config], results["peers"].get(peer, {})
        if "cpu_ms_per_image" not in theirs.get("one_core", {}):
            continue
        ratios = {
            "ratio_cpu": round(theirs["one_core"]["cpu_ms_per_image"] / ours["one_core"]["cpu_ms_per_image"], 2),
            "ratio_wall_one_core": round(
                ours["one_core"]["images_per_second"] / theirs["one_core"]["images_per_second"], 2),
            "ratio_wall_same_cores": round(
                ours["same_cores"]["images_per_second"] / theirs["same_cores"]["images_per_second"], 2),
        }
        results["targets"][config] = {"vs": peer, "target": f">= {factor}x per CPU-second", **ratios,
                                      "met": ratios["ratio_cpu"] >= factor}
    emit_json(results, args.json)


if __name__ == "__main__":
    main()
