"""Detect + align + embed throughput on LFW (images/s): faceflow's configurations on every core, and
the peers on the same images, in one run.

faceflow: a pool of ``--workers`` processes (default: one per core), each with one intra-op thread
per model; every image is decoded, YuNet finds its faces, the face nearest the centre (a centre box
when none) is aligned and embedded, ``--chunk`` images per task so a model sees several faces at once.
Models are loaded and warmed up before the clock starts; the figure is images / wall seconds, decoding
included. On a machine shared with other work the wall figure depends on that load, so two
load-independent figures are added: ``cpu_ms_per_image`` (CPU time summed over the workers) and
``cpu_bound_images_per_second`` (what the cores used would give at that CPU cost: cores x 1000 / it).
Linux's autogroup scheduling shares the CPU between sessions, not processes: on a busy machine the
pool's workers split the share that a peer's single process gets alone, so the wall ratio then
understates what the second core gives; the CPU-bound ratio is what an otherwise idle machine shows.

* ``fast``: SFace only (``sface``, no flip).
* ``accurate``: SFace + dlib fused with flip (``fused``, its default).

Peers (``benchmarks/.venvs/<peer>``, built by ``benchmarks/setup_peers.sh``; skipped with a note when
absent): their runners in ``benchmarks/peers/`` on the first ``--limit`` images, one thread, as
PEERS.md measured them; images/s = images / the sum of their per-image times (decoding excluded), as
``benchmarks/peers/score.py`` computes it, plus the runner's CPU time per image (decoding included,
start-up and model loading not: a one-image run is subtracted) and its CPU-bound images/s on its one
core. The targets of issue 11: accurate >= 2x face_recognition, fast >= 2x OpenCV YuNet+SFace,
compared both ways (``ratio_wall``, ``ratio_cpu_bound``).

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
CONFIGS: dict[str, tuple[str, bool | None]] = {"fast": ("sface", False), "accurate": ("fused", None)}
"""Configuration name -> (embedder, flip; ``None`` = the embedder's default)."""
TARGETS = {"fast": "opencv", "accurate": "face_recognition"}
"""Each configuration must reach twice this peer's images/s."""

_worker: dict[str, Any] = {}


def lfw_images(root: Path, limit: int) -> list[Path]:
    """The first ``limit`` LFW images in sorted order: the same ones the peer runners take."""
    paths = sorted(root.glob("*/*.jpg"))
    if not paths:
        raise SystemExit(f"no LFW images under {root}")
    return paths[:limit] if limit > 0 else paths


def _init_worker(model: str, flip: bool | None, warmup: str) -> None:
    """Load the detector and the embedder in this worker (one thread each) and run them once."""
    import cv2

    from faceflow.detect import create_detector
    from faceflow.models.runtime import Runtime
    from faceflow.recognize import create_embedder

    cv2.setNumThreads(1)
    runtime = Runtime(threads=1)
    _worker["detector"] = create_detector("yunet", runtime=runtime)
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
    model, flip = CONFIGS[name]
    chunks = [[str(p) for p in paths[i : i + chunk]] for i in range(0, len(paths), chunk)]
    ctx = get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                             initargs=(model, flip, str(paths[0]))) as pool:
        list(pool.map(_ready, [0.5] * workers))  # all workers up, models loaded and warmed
        load_before = os.getloadavg()[0]
        t0 = time.perf_counter()
        results = list(pool.map(_process, chunks))
        wall = time.perf_counter() - t0
    faces = sum(n for n, _ in results)
    cpu_ms = 1000 * sum(s for _, s in results) / len(paths)
    cores = min(workers, os.cpu_count() or 1)
    return {
        "config": name, "embedder": model, "flip": flip if flip is not None else "model default",
        "images": len(paths), "faces": faces, "workers": workers, "chunk": chunk,
        "wall_s": round(wall, 2), "images_per_second": round(len(paths) / wall, 2),
        "cpu_ms_per_image": round(cpu_ms, 2), "cpu_bound_images_per_second": round(cores * 1000 / cpu_ms, 2),
        "loadavg_1min_before": round(load_before, 2), "loadavg_1min_after": round(os.getloadavg()[0], 2),
    }


def _peer_args(peer: str) -> list[str]:
    """Model-file arguments of a peer runner (OpenCV takes YuNet and SFace int8 from faceflow's store)."""
    if peer != "opencv":
        return []
    from faceflow.models import default_store, registry
    from faceflow.models.runtime import model_path

    return ["--yunet", str(model_path("yunet")), "--sface", str(default_store().fetch_file(registry.SFACE_INT8_FILE))]


def _run_runner(peer: str, root: Path, limit: int, tmp: Path) -> tuple[list[dict[str, Any]], float]:
    """One run of a peer's LFW runner -> (its JSONL lines, the CPU seconds its process used)."""
    out = tmp / f"{peer}_lfw_{limit}.jsonl"
    cmd = [str(VENVS / peer / "bin" / "python"), str(PEERS / f"{peer}_run.py"), "--task", "lfw", "--root", str(root),
           "--out", str(out), "--limit", str(limit), "--threads", "1", *_peer_args(peer)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return [json.loads(line) for line in out.read_text().splitlines()], cpu


def run_peer(peer: str, root: Path, limit: int) -> dict[str, Any]:
    """Run one peer's LFW runner (one thread) and read its per-image times.

    Its CPU time per image is (CPU of the full run - CPU of a one-image run) / (images - 1), so that
    starting Python and loading the models are left out, as they are from faceflow's figure.
    """
    if not (VENVS / peer / "bin" / "python").exists():
        return {"peer": peer, "skipped": f"no venv {VENVS / peer}: run benchmarks/setup_peers.sh {peer}"}
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        lines, cpu = _run_runner(peer, root, limit, Path(tmp))
        _, cpu_one = _run_runner(peer, root, 1, Path(tmp))
    header, records = lines[0], lines[1:]
    ms = sum(r["ms"] for r in records)
    cpu_ms = 1000 * (cpu - cpu_one) / (len(records) - 1)
    return {
        "peer": peer, "images": len(records), "threads": 1, "versions": header["versions"],
        "images_per_second": round(len(records) / (ms / 1000), 2), "wall_s": header["wall_s"],
        "cpu_ms_per_image": round(cpu_ms, 2), "cpu_bound_images_per_second": round(1000 / cpu_ms, 2),
        "no_face": header.get("n_fallback"),
        "loadavg_1min_before": round(load_before, 2), "loadavg_1min_after": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lfw", type=Path, default=REPO.parent / "shared" / "datasets" / "lfw")
    ap.add_argument("--limit", type=int, default=500, help="the first N images (sorted), 0 = all")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--chunk", type=int, default=4, help="images per task (faces batched per model)")
    ap.add_argument("--configs", default="fast,accurate", help=f"comma-separated: {', '.join(CONFIGS)}")
    ap.add_argument("--peers", default="opencv,face_recognition", help="comma-separated peers ('' = none)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()

    paths = lfw_images(args.lfw, args.limit)
    configs = [c for c in args.configs.split(",") if c]
    peers = [p for p in args.peers.split(",") if p]
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M"), "cpu_count": os.cpu_count(), "python": platform.python_version(),
        "data": f"first {len(paths)} LFW images (sorted paths) under {args.lfw}", "faceflow": {}, "peers": {},
    }
    # each configuration right before the peer it is measured against, so both meet similar load
    jobs = []
    for config in configs:
        jobs.append(("faceflow", config))
        if TARGETS.get(config) in peers:
            jobs.append(("peers", TARGETS[config]))
    jobs += [("peers", p) for p in peers if ("peers", p) not in jobs]
    for kind, name in jobs:
        print(f"== {kind} {name}", file=sys.stderr, flush=True)
        if kind == "faceflow":
            results[kind][name] = run_faceflow(name, paths, args.workers, args.chunk)
        else:
            results[kind][name] = run_peer(name, args.lfw, args.limit)
        print(json.dumps(results[kind][name]), file=sys.stderr, flush=True)
    results["targets"] = {}
    for config, peer in TARGETS.items():
        ours, theirs = results["faceflow"].get(config, {}), results["peers"].get(peer, {})
        if "images_per_second" in ours and "images_per_second" in theirs:
            ratios = {f"ratio_{kind}": round(ours[key] / theirs[key], 2) for kind, key in
                      (("wall", "images_per_second"), ("cpu_bound", "cpu_bound_images_per_second"))}
            results["targets"][config] = {"vs": peer, **ratios, "met (>= 2x)": {k: v >= 2 for k, v in ratios.items()}}
    emit_json(results, args.json)


if __name__ == "__main__":
    main()
