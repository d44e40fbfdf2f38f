"""Clustering a gallery at scale on real LFW embeddings enrolled into PostgreSQL + pgvector: the
threshold graph from the server's HNSW index, page by page, then average linkage per component; the
same partition as the in-process :func:`~faceflow.gallery.cluster.average_linkage`, from the library
and from ``faceflow gallery cluster``. The store tests skip, saying why, without a PostgreSQL server.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import datasets_root

pytest.importorskip("pyarrow", reason="pyarrow is not installed (pip install 'faceflow[ray]')")

LFW = datasets_root() / "lfw"
SRC = Path(__file__).resolve().parents[1] / "src"
THRESHOLD = 0.45  # sface's clustering threshold (faceflow.gallery.cluster.CLUSTER_THRESHOLDS)


def lfw_subset(n: int) -> list[tuple[str, Path]]:
    """Whole people of LFW's held-out half (as ``faceflow eval clustering``), by name, until ``n`` images."""
    from faceflow.eval.clustering import lfw_tuning_half
    from faceflow.eval.identification import lfw_identities

    out: list[tuple[str, Path]] = []
    for name, images in lfw_identities(LFW).items():
        if not lfw_tuning_half(name):
            out += [(name, p) for p in images]
            if len(out) >= n:
                break
    return out


def enrol_lfw(url: str, n: int, gallery: str = "lfw") -> None:
    """Enrol the sface embedding (face nearest the centre, as the gallery evaluations take it) of the
    first ``n`` images of :func:`lfw_subset`, each under its person's name with its path as source."""
    from faceflow.eval.tasks import lfw_gallery_embedder
    from faceflow.gallery import open_gallery_store
    from faceflow.gallery.store import GalleryFace
    from faceflow.gallery.workflows import create_gallery

    embed = lfw_gallery_embedder("sface")
    faces = [GalleryFace(subject=name, embedding=e, source=str(p)) for name, p in lfw_subset(n)
             if (e := embed(p)) is not None]
    with open_gallery_store(url) as store:
        g = create_gallery(store, gallery, "sface")
        for a in range(0, len(faces), 256):
            store.add_faces(gallery, faces[a:a + 256], model=g.model)


def in_process(url: str, gallery: str = "lfw") -> tuple[np.ndarray, np.ndarray]:
    """(face ids ascending, canonical labels) of average linkage over all the gallery's faces at once."""
    from faceflow.distributed.clustering import canonical, gallery_face_ids
    from faceflow.gallery import open_gallery_store
    from faceflow.gallery.cluster import average_linkage

    with open_gallery_store(url) as store:
        ids, vectors, sources = store.face_vectors(gallery, gallery_face_ids(store, gallery))
    return ids, canonical(average_linkage(vectors, sources, THRESHOLD))


def _faceflow(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", COLUMNS="400")
    return subprocess.run([sys.executable, "-m", "faceflow.cli", *args], env=env, capture_output=True, text=True,
                          timeout=300)


def read_report(out: Path) -> tuple[np.ndarray, np.ndarray, dict[str, object]]:
    """(face ids, canonical labels) from clusters.parquet, and clusters.json."""
    import pyarrow.parquet as pq

    from faceflow.distributed.clustering import canonical

    table = pq.read_table(out / "clusters.parquet")
    ids = table.column("face_id").to_numpy()
    return ids, canonical(table.column("cluster").to_numpy()), json.loads((out / "clusters.json").read_text())


@pytest.mark.skipif(not LFW.is_dir(), reason=f"LFW not found at {LFW}")
def test_gallery_clustering_from_pgvector_equals_in_process(pg_url: str, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from faceflow.distributed.clustering import cluster_gallery, thread_map
    from faceflow.gallery import open_gallery_store

    enrol_lfw(pg_url, 400)
    ids, expected = in_process(pg_url)
    assert 100 < int(expected.max()) + 1 < ids.size  # people merged, not everything

    # k = 2: nearly every face needs the widening search to find all its neighbours.
    got = cluster_gallery(pg_url, "lfw", THRESHOLD, k=2, map_fn=thread_map(2), page=64, job_faces=50)
    assert got.route == "pgvector"
    assert np.array_equal(got.face_ids, ids) and np.array_equal(got.labels, expected)
    assert got.edges > ids.size and got.largest_component > 2

    # Faces with more neighbours above the threshold than pgvector's largest search returns go on to
    # the exact scan: with that limit at 4 here, every face of a big enough person does.
    import faceflow.gallery.postgres as postgres

    monkeypatch.setattr(postgres, "MAX_EF_SEARCH", 4)
    exact = cluster_gallery(pg_url, "lfw", THRESHOLD, k=2, page=100)
    assert np.array_equal(exact.labels, expected) and exact.edges == got.edges
    monkeypatch.undo()

    with open_gallery_store(pg_url) as store:
        plan = store.explain_similar("lfw", ids[:5].tolist(), 32)
        assert "hnsw_g" in plan, plan  # the pairs come from the gallery's HNSW index
        # The exact fallback (beyond pgvector's largest search) finds what brute force finds.
        g = store.gallery("lfw", counts=False)
        q, nb = store.similar_faces(g, ids[:40].tolist(), None, THRESHOLD)
        _, vectors, _ = store.face_vectors("lfw", ids)
    sims = vectors[:40] @ vectors.T
    found = set(zip(q.tolist(), nb.tolist(), strict=True))
    assert {(int(ids[i]), int(ids[j])) for i, j in zip(*np.nonzero(sims >= THRESHOLD + 1e-5), strict=True)} <= found
    assert not {(int(ids[i]), int(ids[j])) for i, j in zip(*np.nonzero(sims < THRESHOLD - 1e-5), strict=True)} & found

    # The command: the same partition in clusters.parquet; clusters.json as `faceflow cluster` lays it out.
    done = _faceflow("gallery", "cluster", "lfw", "--store", pg_url, "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    assert "graph from pgvector" in done.stderr
    report_ids, labels, doc = read_report(tmp_path / "out")
    assert np.array_equal(report_ids, ids) and np.array_equal(labels, expected)
    clusters = doc["clusters"]
    assert isinstance(clusters, list) and doc["faces"] == ids.size and doc["threshold"] == THRESHOLD
    sizes = [c["size"] for c in clusters]
    assert sizes == sorted(sizes, reverse=True) and min(sizes) >= 2
    assert sum(sizes) + len(doc["unassigned"]) == ids.size  # type: ignore[arg-type]
    assert int(np.bincount(expected).max()) == sizes[0]
    for c in clusters:  # one person per photo at most, and mostly one name per cluster
        photos = [f["photo"] for f in c["faces"]]
        assert len(set(photos)) == len(photos) == c["size"]


@pytest.mark.skipif(not LFW.is_dir(), reason=f"LFW not found at {LFW}")
def test_gallery_clustering_on_sqlite_takes_the_in_memory_graph(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/g.db"
    enrol_lfw(url, 200)
    ids, expected = in_process(url)
    done = _faceflow("gallery", "cluster", "lfw", "--store", url, "-o", str(tmp_path / "out"), "--min-size", "3")
    assert done.returncode == 0, done.stderr
    assert "graph from usearch" in done.stderr
    report_ids, labels, doc = read_report(tmp_path / "out")
    assert np.array_equal(report_ids, ids) and np.array_equal(labels, expected)
    assert min(c["size"] for c in doc["clusters"]) >= 3  # type: ignore[union-attr]
    missing = _faceflow("gallery", "cluster", "nope", "--store", url, "-o", str(tmp_path / "x"))
    assert missing.returncode == 2 and "no gallery named 'nope'" in missing.stderr
    bad = _faceflow("gallery", "cluster", "lfw", "--store", url, "-o", str(tmp_path / "x"), "--threshold", "45")
    assert bad.returncode == 2 and "--threshold is a cosine similarity" in bad.stderr


def test_edge_forest_gives_the_components_of_all_edges_at_once() -> None:
    from faceflow.distributed.clustering import EdgeForest, canonical, components

    rng = np.random.default_rng(3)
    n = 5000
    rows, cols = rng.integers(0, n, 4000), rng.integers(0, n, 4000)
    forest = EdgeForest(n, limit=300)  # compacted many times on the way
    for a in range(0, rows.size, 250):
        forest.add(rows[a:a + 250], cols[a:a + 250])
        assert forest.held < n + 250  # a spanning forest and the chunk since
    assert forest.seen == rows.size
    assert np.array_equal(canonical(forest.labels()), canonical(components(n, rows, cols)))
