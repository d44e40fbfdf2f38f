"""Gallery search at scale: N random unit vectors plus planted near-duplicates, through the store.

For each backend (SQLite + usearch HNSW, PostgreSQL + pgvector HNSW) it enrols the vectors, builds
the ANN index, then times one-query-at-a-time open-set identification and checks the ANN's top face
against exact (numpy) search over the same vectors:

    nice .venv/bin/python benchmarks/bench_search.py --n 1000000 --json benchmarks/results/search.json

Queries are random unit vectors; for each, one gallery vector is planted at a random position among
the rest, at a cosine similarity drawn from [0.8, 0.99] for the first half of the queries
(near-duplicates) and from [0.5, 0.8] for the second half (like another photo of the same person;
random pairs of 128-d vectors reach ~0.45 among 1M). Reported: enrol time, index build time and
memory, p50/p99 latency of one open-set identification, recall@1 of the ANN against exact search,
overall and per half.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from _emit import emit_json  # benchmarks/_emit.py

from faceflow.gallery import GalleryFace, open_gallery_store
from faceflow.gallery.search import Searcher, exact_topk
from faceflow.gallery.store import GalleryStore

MODEL = "bench@1"
BATCH = 10_000


def make_data(n: int, dim: int, queries: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(gallery vectors, query vectors, gallery row of each query's planted near-duplicate)."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((n + queries, dim), dtype=np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    q = rng.standard_normal((queries, dim), dtype=np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    u = base[n:] - np.sum(base[n:] * q, axis=1, keepdims=True) * q  # random directions orthogonal to q
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    half = queries // 2
    c = np.concatenate([rng.uniform(0.8, 0.99, half), rng.uniform(0.5, 0.8, queries - half)])[:, None]
    c = c.astype(np.float32)
    planted_rows = rng.choice(n + queries, queries, replace=False)
    rest = np.setdiff1d(np.arange(n + queries), planted_rows)
    gallery = np.empty_like(base)
    gallery[planted_rows] = c * q + np.sqrt(1 - c * c) * u
    gallery[rest] = base[:n]
    return gallery, q, planted_rows


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def enrol(store: GalleryStore, vectors: np.ndarray) -> tuple[np.ndarray, float]:
    store.create_gallery("bench", MODEL, vectors.shape[1], threshold=0.4)
    ids: list[int] = []
    t0 = time.perf_counter()
    for start in range(0, len(vectors), BATCH):
        chunk = vectors[start:start + BATCH]
        ids += store.add_faces(
            "bench", [GalleryFace(f"s{(start + i) // 4}", v) for i, v in enumerate(chunk)], model=MODEL)
        print(f"\r  enrolled {len(ids):,}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return np.asarray(ids, np.int64), time.perf_counter() - t0


def time_queries(searcher: Searcher, queries: np.ndarray, warmup: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """(top face id per query, seconds per query), one open-set identification at a time.

    With the ``max`` aggregate the best subject's best face is the top face of the whole gallery.
    """
    for q in queries[:warmup]:
        searcher.identify(q)
    tops, secs = [], []
    for q in queries:
        t0 = time.perf_counter()
        answer = searcher.identify(q)[0]
        secs.append(time.perf_counter() - t0)
        tops.append(answer.candidates[0].face_id)
    return np.asarray(tops), np.asarray(secs)


def run_backend(name: str, url: str, vectors: np.ndarray, queries: np.ndarray, truth_rows: np.ndarray,
                threads: int) -> dict[str, Any]:
    out: dict[str, Any] = {"backend": name}
    with open_gallery_store(url) as store:
        ids, out["enrol_s"] = enrol(store, vectors)
        searcher = Searcher(store, "bench", threads=threads)
        t0 = time.perf_counter()
        searcher.refresh()  # loads vectors (SQLite) and builds the index
        out["mode"] = searcher.mode
        out["load_and_build_s"] = time.perf_counter() - t0
        if searcher.mode == "usearch":
            assert searcher._index is not None
            out["index_bytes"] = searcher._index.memory_bytes
            t0 = time.perf_counter()
            again = Searcher(store, "bench", threads=threads)
            again.refresh()
            out["reload_from_disk_s"] = time.perf_counter() - t0
        else:
            out["index_bytes"] = int(store._run("SELECT pg_relation_size('faceflow.hnsw_g1')")[0][0])
        tops, secs = time_queries(searcher, queries)
        hit = tops == ids[truth_rows]
        half = len(hit) // 2
        out["recall_at_1_vs_exact"] = float(np.mean(hit))
        out["recall_near_duplicates"] = float(np.mean(hit[:half]))
        out["recall_same_person_like"] = float(np.mean(hit[half:]))
        out["p50_ms"] = float(np.percentile(secs, 50) * 1000)
        out["p99_ms"] = float(np.percentile(secs, 99) * 1000)
        out["peak_rss_mb"] = rss_mb()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="random gallery vectors (plus one planted per query)")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--backends", default="sqlite,postgres")
    ap.add_argument("--pg-url", help="PostgreSQL admin URL (default: a throw-away server)")
    ap.add_argument("--threads", type=int, default=0, help="usearch threads for building (0: all cores)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()

    t0 = time.perf_counter()
    vectors, queries, planted = make_data(args.n, args.dim, args.queries)
    print(f"data: {len(vectors):,} x {args.dim} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    t0 = time.perf_counter()
    rows, _ = exact_topk(vectors, queries, 1)
    exact_batch_s = time.perf_counter() - t0
    truth = rows[:, 0]
    single = []
    for q in queries[:50]:
        t1 = time.perf_counter()
        exact_topk(vectors, q[None], 1)
        single.append(time.perf_counter() - t1)
    results: dict[str, Any] = {
        "n": len(vectors), "dim": args.dim, "queries": args.queries,
        "planted_is_exact_top1": float(np.mean(truth == planted)),
        "exact_batch_s": exact_batch_s, "exact_single_p50_ms": float(np.median(single) * 1000),
        "backends": [],
    }
    print(json.dumps(results), file=sys.stderr)
    work = Path(tempfile.mkdtemp(prefix="faceflow-bench-"))
    try:
        for backend in args.backends.split(","):
            if backend == "sqlite":
                url = f"sqlite:///{work}/bench.db"
            else:
                import psycopg

                from faceflow.gallery.tempdb import temporary_postgres, with_database

                admin = args.pg_url or temporary_postgres()
                db = f"bench_{uuid.uuid4().hex[:8]}"
                with psycopg.connect(admin, autocommit=True) as conn:
                    conn.execute(f'CREATE DATABASE "{db}"')
                url = with_database(admin, db)
            r = run_backend(backend, url, vectors, queries, truth, args.threads)
            print(json.dumps(r), file=sys.stderr)
            results["backends"].append(r)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    emit_json(results, args.json)


if __name__ == "__main__":
    main()
