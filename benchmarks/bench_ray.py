"""Ray engine benchmark: throughput against the in-process engine, driver memory on a long list.

    # throughput: in-process on 1 CPU, in-process best on 2 CPUs (2 threads x 1 image, 1 x 2), local Ray on 2 CPUs
    python benchmarks/bench_ray.py throughput --root ../shared/datasets/lfw [--limit N]
    # driver RSS: a list of 100,000 entries (LFW's files repeated in order), the detect stage only
    python benchmarks/bench_ray.py memory --root ../shared/datasets/lfw --entries 100000 [--time-limit S]
    #   (--thumbnails 64: small copies of LFW images instead, so that results reach the driver faster;
    #    --annotate: annotated images written too, so that the driver names every one of them)
    # clustering at scale: LFW's held-out half clustered in process and by components, compared
    python benchmarks/bench_ray.py clustering --root ../shared/datasets/lfw
    # the same half enrolled into PostgreSQL + pgvector (a throw-away server, or --store URL) and clustered
    # from the gallery (faceflow gallery cluster's route: threads, then Ray tasks on a local runtime)
    python benchmarks/bench_ray.py clustering-pg --root ../shared/datasets/lfw [--store postgresql://...]

Each writes benchmarks/results/ray_<mode>.json with the command's arguments, the machine's load
average before and after (the machine is shared: figures under load are noisy), and the figures.
All three throughput runs write faces.jsonl (the Ray run also its Parquet shards and manifest), with
the default stages (detect, landmarks, pose, attributes) and one intra-op thread per model unless said.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from faceflow.distributed.engine import analyze_job
from faceflow.outputs import json_line
from faceflow.pipeline import DEFAULT_STAGES, Analyzer, AnalyzerOptions

RESULTS = Path(__file__).resolve().parent / "results"


def lfw_files(root: Path, limit: int | None) -> list[Path]:
    files = sorted(root.glob("*/*.jpg"))
    return files[:limit] if limit else files


def in_process(files: list[Path], out: Path, *, workers: int, threads: int, stages: tuple[str, ...]) -> dict[str, Any]:
    """Images per second of ``Analyzer.analyze_batch`` writing faces.jsonl, models loaded beforehand."""
    with Analyzer(AnalyzerOptions(stages=stages, workers=workers, threads=threads)) as analyzer:
        analyzer.analyze_file(files[0])  # load the models: the Ray actors load theirs before timing starts too
        t0 = time.perf_counter()
        with open(out, "w", encoding="utf-8") as fh:
            for result in analyzer.analyze_batch(files):
                fh.write(json_line(result.to_dict()))
        seconds = time.perf_counter() - t0
    return {"workers": workers, "threads": threads, "images": len(files), "seconds": round(seconds, 2),
            "images_per_second": round(len(files) / seconds, 2)}


class RssSampler:
    """Largest resident set size of this process (the driver), sampled every 0.2 s."""

    def __init__(self) -> None:
        import psutil

        self.process = psutil.Process()
        self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)


def on_ray(listing: Path, out: Path, *, cpus: int, stages: tuple[str, ...], batch_size: int,
           deadline: float | None = None, annotate: bool = False) -> dict[str, Any]:
    """A local Ray runtime with ``cpus`` actors: wall time (runtime start included) and the steady rate
    (from the first finished batch to the last, so that start-up and model loading are left out)."""
    marks: list[tuple[float, int]] = []

    def progress(done: int, total: int) -> None:
        marks.append((time.perf_counter(), done))
        if deadline is not None and time.perf_counter() > deadline and done < total:
            raise TimeoutError(f"stopped at the time limit after {done} of {total} images")

    t0 = time.perf_counter()
    stopped = None
    with RssSampler() as rss:
        try:
            summary = analyze_job([str(listing)], out, AnalyzerOptions(stages=stages, threads=1), workers=cpus,
                                  batch_size=batch_size, progress=progress, annotate=annotate)
            images = summary.total
        except TimeoutError as exc:
            stopped, images = str(exc), marks[-1][1]
    wall = time.perf_counter() - t0
    started = [m for m in marks if m[1] > 0]
    steady = None
    if len(started) >= 2:
        (ta, na), (tb, nb) = started[0], started[-1]
        steady = round((nb - na) / max(tb - ta, 1e-9), 2)
    out_figures: dict[str, Any] = {
        "cpus": cpus, "images": images, "wall_seconds": round(wall, 2),
        # driver-only phases: listing + stat + manifest + pending file, and faces.jsonl from the shards
        "planning_seconds": round(marks[0][0] - t0, 2) if marks else None,
        "assembly_seconds": None if stopped or not marks else round(t0 + wall - marks[-1][0], 2),
        "images_per_second_wall": round(images / wall, 2), "images_per_second_steady": steady,
        "driver_peak_rss_mib": round(rss.peak / 2**20, 1),
    }
    if stopped:
        out_figures["stopped"] = stopped
    return out_figures


def throughput(args: argparse.Namespace) -> dict[str, Any]:
    files = lfw_files(args.root, args.limit)
    stages = tuple(args.stages.split(","))
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
        work = Path(tmp)
        listing = work / "list.txt"
        listing.write_text("".join(f"{f}\n" for f in files))
        one = in_process(files, work / "one.jsonl", workers=1, threads=1, stages=stages)
        two_workers = in_process(files, work / "w2.jsonl", workers=2, threads=1, stages=stages)
        # one image at a time on two intra-op threads is the slowest way to use two CPUs (8.6 against
        # 21.7 images/s on 2,000 images); --threads-limit measures it on the first N images only
        two_threads = in_process(files[:args.threads_limit] if args.threads_limit else files, work / "t2.jsonl",
                                 workers=1, threads=2, stages=stages)
        ray = on_ray(listing, work / "ray", cpus=2, stages=stages, batch_size=args.batch_size)
        same = (work / "one.jsonl").read_bytes() == (work / "ray" / "faces.jsonl").read_bytes()
    best = max(two_workers, two_threads, key=lambda r: r["images_per_second"])
    rate = ray["images_per_second_steady"] or ray["images_per_second_wall"]
    return {
        "in_process_1_cpu": one, "in_process_2_cpus_2_workers": two_workers,
        "in_process_2_cpus_2_threads": two_threads, "ray_local_2_cpus": ray,
        "ray_jsonl_identical_to_in_process": same,
        "ray_steady_vs_in_process_1_cpu": round(rate / one["images_per_second"], 3),
        "ray_steady_vs_in_process_best_2_cpus": round(rate / best["images_per_second"], 3),
        "ray_wall_vs_in_process_1_cpu": round(ray["images_per_second_wall"] / one["images_per_second"], 3),
        "ray_wall_vs_in_process_best_2_cpus": round(ray["images_per_second_wall"] / best["images_per_second"], 3),
    }


def thumbnails(files: list[Path], folder: Path, size: int) -> list[Path]:
    """``files`` scaled down to ``size`` pixels square (JPEG) in ``folder``: cheap images, so that the
    driver sees results arrive as fast as the workers can make them."""
    from PIL import Image

    folder.mkdir()
    out = []
    for i, f in enumerate(files):
        target = folder / f"{i:05d}.jpg"
        with Image.open(f) as im:
            im.convert("RGB").resize((size, size)).save(target, quality=90)
        out.append(target)
    return out


def memory(args: argparse.Namespace) -> dict[str, Any]:
    files = lfw_files(args.root, None)
    stages = tuple(args.stages.split(","))
    with tempfile.TemporaryDirectory(prefix="bench-ray-mem-") as tmp:
        work = Path(tmp)
        if args.thumbnails:
            files = thumbnails(files[:args.limit or 1000], work / "thumbs", args.thumbnails)
        listing = work / "list.txt"
        with open(listing, "w", encoding="utf-8") as fh:  # LFW's files in order, again and again
            for i in range(args.entries):
                fh.write(f"{files[i % len(files)]}\n")
        deadline = time.perf_counter() + args.time_limit if args.time_limit else None
        ray = on_ray(listing, work / "ray", cpus=2, stages=stages, batch_size=args.batch_size, deadline=deadline,
                     annotate=args.annotate)
        if args.annotate:
            ray["annotated_images"] = sum(1 for p in (work / "ray" / "annotated").rglob("*") if p.is_file())
        jsonl = work / "ray" / "faces.jsonl"
        lines = len(jsonl.read_text(encoding="utf-8").splitlines()) if jsonl.exists() else 0
    what = f"{args.thumbnails}x{args.thumbnails} copies of the first {len(files)}" if args.thumbnails else \
        f"the {len(files)}"
    return {"list": f"{args.entries} lines: {what} LFW images in sorted order, repeated", "stages": stages,
            "annotate": args.annotate,
            "ray_local_2_cpus": ray, "faces_jsonl_lines": lines}


def clustering(args: argparse.Namespace) -> dict[str, Any]:
    """LFW's held-out half (as ``faceflow eval clustering``): in-process average linkage against the
    component-wise clustering of :mod:`faceflow.distributed.clustering`, same partition or not."""
    import numpy as np

    from faceflow.distributed.clustering import canonical, cluster_large
    from faceflow.eval.clustering import evaluate_clustering, lfw_tuning_half
    from faceflow.eval.identification import lfw_identities
    from faceflow.eval.tasks import lfw_gallery_embedder
    from faceflow.gallery.cluster import average_linkage, cluster_threshold

    model = "sface"
    items = [(name, p) for name, imgs in lfw_identities(args.root).items() if not lfw_tuning_half(name) for p in imgs]
    embed = lfw_gallery_embedder(model)
    found = [(name, p, e) for name, p in items if (e := embed(p)) is not None]
    x = np.stack([e for _, _, e in found])
    groups = [str(p) for _, p, _ in found]
    t = cluster_threshold(model)
    t0 = time.perf_counter()
    expected = canonical(average_linkage(x, groups, t))
    t1 = time.perf_counter()
    got = cluster_large(x, groups, t)
    t2 = time.perf_counter()
    truth = [name for name, _, _ in found]
    return {"model": model, "threshold": t, "images": len(items), "embedded": len(found),
            "clusters_in_process": int(expected.max()) + 1, "clusters_by_components": int(got.max()) + 1,
            "same_partition": bool(np.array_equal(expected, got)),
            "seconds_in_process": round(t1 - t0, 2), "seconds_by_components": round(t2 - t1, 2),
            "pairwise_f_in_process": round(evaluate_clustering(truth, expected.tolist())["pairwise_f"], 4),
            "pairwise_f_by_components": round(evaluate_clustering(truth, got.tolist())["pairwise_f"], 4)}


def clustering_pg(args: argparse.Namespace) -> dict[str, Any]:
    """LFW's held-out half enrolled into PostgreSQL + pgvector, clustered by :func:`cluster_gallery` (the
    graph from the gallery's HNSW index, components agglomerated apart) with 2 threads and with Ray tasks
    on a local 2-CPU runtime, against average linkage over all the vectors at once."""
    import numpy as np

    from faceflow.distributed.clustering import canonical, cluster_gallery, gallery_face_ids, ray_map, thread_map
    from faceflow.distributed.engine import ray_session
    from faceflow.eval.clustering import evaluate_clustering, lfw_tuning_half
    from faceflow.eval.identification import lfw_identities
    from faceflow.eval.tasks import lfw_gallery_embedder
    from faceflow.gallery import open_gallery_store
    from faceflow.gallery.cluster import average_linkage, cluster_threshold
    from faceflow.gallery.store import GalleryFace
    from faceflow.gallery.tempdb import temporary_postgres, with_database

    model, gallery = "sface", "lfw-held-out"
    items = [(name, p) for name, imgs in lfw_identities(args.root).items() if not lfw_tuning_half(name) for p in imgs]
    embed = lfw_gallery_embedder(model)
    faces = [GalleryFace(subject=name, embedding=e, source=str(p)) for name, p in items if (e := embed(p)) is not None]
    if args.store:
        url = args.store
    else:
        import psycopg

        admin = temporary_postgres()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute("CREATE DATABASE bench_cluster")
        url = with_database(admin, "bench_cluster")
    t = cluster_threshold(model)
    with open_gallery_store(url) as store:
        from faceflow.gallery.workflows import create_gallery

        if gallery in {g.name for g in store.galleries()}:
            store.delete_gallery(gallery)
        g = create_gallery(store, gallery, model)
        t0 = time.perf_counter()
        for a in range(0, len(faces), 512):
            store.add_faces(gallery, faces[a:a + 512], model=g.model)
        t1 = time.perf_counter()
        store.ensure_ann_index(gallery)
        t2 = time.perf_counter()
        ids = gallery_face_ids(store, gallery)
        plan = store.explain_similar(gallery, ids[:5].tolist(), 32)
        t3 = time.perf_counter()
        fids, vectors, sources = store.face_vectors(gallery, ids)
        expected = canonical(average_linkage(vectors, sources, t))
        t4 = time.perf_counter()
    names = dict(zip((str(f.source) for f in faces), (f.subject for f in faces), strict=True))
    truth = [names[str(s)] for s in sources]

    def measure(result: Any, seconds: float) -> dict[str, Any]:
        return {"seconds": round(seconds, 2), "clusters": int(result.labels.max()) + 1,
                "same_partition": bool(np.array_equal(result.face_ids, fids)
                                       and np.array_equal(result.labels, expected)),
                "pairwise_f": round(evaluate_clustering(truth, result.labels.tolist())["pairwise_f"], 4),
                "pairs_found": result.edges, "components": result.components,
                "largest_component": result.largest_component, "seconds_graph": result.seconds_graph,
                "seconds_agglomeration": result.seconds_agglomeration}

    t5 = time.perf_counter()
    threads = cluster_gallery(url, gallery, t, map_fn=thread_map(2))
    on_threads = measure(threads, time.perf_counter() - t5)
    t6 = time.perf_counter()
    with ray_session(None, num_cpus=2) as ray:
        t7 = time.perf_counter()
        on_ray = measure(cluster_gallery(url, gallery, t, map_fn=ray_map(ray)), time.perf_counter() - t7)
    on_ray["seconds_with_runtime_start"] = round(time.perf_counter() - t6, 2)
    return {"model": model, "threshold": t, "images": len(items), "faces_enrolled": len(faces),
            "store": "a throw-away PostgreSQL (pgserver) with pgvector" if not args.store else "--store",
            "enrol_seconds": round(t1 - t0, 2), "hnsw_build_seconds": round(t2 - t1, 2),
            "pairs_query_uses_hnsw_index": "hnsw_g" in plan,
            "in_process": {"seconds": round(t4 - t3, 2), "clusters": int(expected.max()) + 1,
                           "pairwise_f": round(evaluate_clustering(truth, expected.tolist())["pairwise_f"], 4),
                           "note": "average_linkage over every vector at once, fetched from the store "
                                   "(fetch included)"},
            "from_pgvector_2_threads": on_threads, "from_pgvector_ray_local_2_cpus": on_ray}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("throughput", "memory", "clustering", "clustering-pg"))
    parser.add_argument("--store", default=None, help="clustering-pg: a PostgreSQL URL (default: a throw-away server)")
    parser.add_argument("--root", type=Path, default=Path("../shared/datasets/lfw"))
    parser.add_argument("--limit", type=int, default=None, help="throughput: the first N images only")
    parser.add_argument("--entries", type=int, default=100_000, help="memory: lines in the list")
    parser.add_argument("--time-limit", type=float, default=None, help="memory: stop the run after S seconds")
    parser.add_argument("--thumbnails", type=int, default=None,
                        help="memory: list SIZExSIZE copies of the first --limit (1000) LFW images instead")
    parser.add_argument("--threads-limit", type=int, default=None,
                        help="throughput: the 2-thread in-process run on the first N images only")
    parser.add_argument("--annotate", action="store_true",
                        help="memory: the actors write annotated images too (the driver names them all)")
    parser.add_argument("--stages", default=None)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    if args.stages is None:
        args.stages = ",".join(DEFAULT_STAGES) if args.mode == "throughput" else "detect"
    load_before = os.getloadavg()
    t0 = time.time()
    result = {"throughput": throughput, "memory": memory, "clustering": clustering,
              "clustering-pg": clustering_pg}[args.mode](args)
    report = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "cpu_count": os.cpu_count(),
              "load_average_before": [round(x, 2) for x in load_before],
              "load_average_after": [round(x, 2) for x in os.getloadavg()],
              "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t0)), **result}
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"ray_{args.mode.replace('-', '_')}.json"
    path.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
