"""Clustering a library too big for one agglomeration: a threshold graph, its components, then the
in-process rule (:func:`faceflow.gallery.cluster.average_linkage`) inside each component.

Two routes to the graph:

* :func:`cluster_gallery` on a PostgreSQL + pgvector gallery (``faceflow gallery cluster``), the one
  that scales: the driver pages through the gallery's face ids (keyset pagination), and each page is
  one job (a thread, or a Ray task on any node) asking the server for each face's ``k`` nearest by
  the gallery's HNSW index, keeping those at or above the threshold; only pairs of ids come back, the
  vectors never leave the server. The edges stream into the components (scipy), compacted to a
  spanning forest whenever they pile up, so the driver holds O(faces) integers, never the vectors or
  all the edges. Each component is then agglomerated by a job that fetches just that component's
  vectors. A SQLite gallery takes the second route for its graph (it has no ANN inside the database).
* :func:`cluster_large` on vectors in memory: the graph from an in-process usearch HNSW index. It
  needs every vector in one process (about 0.5 GB per million 128-d faces), so it serves up to what
  one machine holds; its per-component agglomeration is the same.

Why the result is the in-process one: average linkage merges two clusters only while their mean
pairwise similarity is at least the threshold ``t``, which needs at least one pair across them with
similarity >= ``t``. So every cluster it ever forms lies inside one connected component of the graph
whose edges are the pairs with similarity >= ``t``, and the cannot-link rule only forbids merges.
Agglomerating each component on its own therefore gives exactly the clusters of agglomerating
everything at once, provided the graph has all those edges.

The graph comes from an HNSW index (usearch, :class:`faceflow.gallery.search.UsearchIndex`): each
face's ``k`` nearest candidates, their similarities recomputed exactly; a face whose ``k``-th
candidate still passes ``t`` is searched again with twice the ``k`` until one does not, so dense
neighbourhoods are not cut short. An approximate search may still miss a neighbour; ``tests`` check
the result equals the in-process clustering on LFW. Components are labelled with scipy (sparse graph,
linear in the edges); the agglomerations, the costly part (quadratic in a component's size), are
independent and run in parallel: threads here, or Ray tasks across a cluster with ``map_fn``.
"""

from __future__ import annotations

import json
import os
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from faceflow.errors import GalleryError
from faceflow.gallery.cluster import IntArray, average_linkage
from faceflow.types import FloatArray

DEFAULT_K = 32
"""Candidates per face in the first search (doubled for faces whose candidates all pass the threshold)."""
MAX_K = 4096


def _unit(vectors: npt.ArrayLike) -> FloatArray:
    x = np.asarray(vectors, dtype=np.float32)
    out: FloatArray = (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)
    return out


def threshold_edges(vectors: npt.ArrayLike, threshold: float, *, k: int = DEFAULT_K, threads: int = 0,
                    chunk: int = 16_384) -> tuple[IntArray, IntArray]:
    """Pairs ``(i, j)``, ``i != j``, with cosine similarity >= ``threshold``, found through an HNSW index."""
    from faceflow.gallery.search import UsearchIndex

    x = _unit(vectors)
    n = x.shape[0]
    if n < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    index = UsearchIndex(x.shape[1], threads=threads)
    index.add(np.arange(n, dtype=np.int64), x)
    rows: list[IntArray] = []
    cols: list[IntArray] = []
    for start in range(0, n, chunk):
        todo = np.arange(start, min(start + chunk, n))
        kk = min(k, n)
        while todo.size:
            cand = index.search(x[todo], kk)
            valid = cand >= 0
            safe = np.where(valid, cand, 0)
            sims = np.einsum("qd,qkd->qk", x[todo], x[safe])
            hit = valid & (sims >= threshold) & (safe != todo[:, None])
            q, c = np.nonzero(hit)
            rows.append(todo[q])
            cols.append(safe[q, c])
            # Every candidate passed: there may be more beyond them; ask again with a wider net.
            full = valid.all(axis=1) & (sims >= threshold).all(axis=1)
            if kk >= min(n, MAX_K):
                break
            todo, kk = todo[full], min(kk * 2, n, MAX_K)
    if not rows:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(rows).astype(np.int64), np.concatenate(cols).astype(np.int64)


def components(n: int, rows: IntArray, cols: IntArray) -> IntArray:
    """Connected-component label of each of ``n`` nodes of the undirected graph with edges ``(rows, cols)``."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(rows.size, np.int8), (rows, cols)), shape=(n, n)).tocsr()
    _, labels = connected_components(graph, directed=True, connection="weak")
    return np.asarray(labels, np.int64)


def _agglomerate(job: tuple[FloatArray, list[Hashable], float]) -> IntArray:
    vectors, groups, threshold = job
    return average_linkage(vectors, groups, threshold)


MapFn = Callable[[Callable[[Any], Any], Iterable[Any]], Iterable[Any]]
"""Runs a function over jobs, results in order: ``map``, a thread pool's ``map``, or :func:`ray_map`."""


def cluster_large(vectors: npt.ArrayLike, groups: Sequence[Hashable], threshold: float, *, k: int = DEFAULT_K,
                  map_fn: MapFn | None = None, threads: int = 0) -> IntArray:
    """The labels :func:`~faceflow.gallery.cluster.average_linkage` gives (same partition, labels
    numbered by first appearance), computed per component of the threshold graph (module docstring)."""
    x = _unit(vectors)
    n = x.shape[0]
    if n == 0:
        return np.zeros(0, np.int64)
    rows, cols = threshold_edges(x, threshold, k=k, threads=threads)
    comp = components(n, rows, cols)
    order = np.argsort(comp, kind="stable")
    bounds = np.flatnonzero(np.diff(comp[order])) + 1
    members = [m for m in np.split(order, bounds) if m.size > 1]
    labels = np.full(n, -1, np.int64)
    jobs = [(x[m], [groups[i] for i in m], float(threshold)) for m in members]
    results = (map_fn or map)(_agglomerate, jobs)
    next_label = 0
    for m, local in zip(members, results, strict=True):
        labels[m] = local + next_label
        next_label += int(local.max()) + 1
    singles = labels < 0
    labels[singles] = next_label + np.arange(int(singles.sum()))
    return canonical(labels)


def canonical(labels: npt.ArrayLike) -> IntArray:
    """Labels renumbered 0, 1, ... in order of first appearance (two equal partitions become equal arrays)."""
    arr = np.asarray(labels, np.int64)
    _, first, inverse = np.unique(arr, return_index=True, return_inverse=True)
    rank = np.empty(first.size, np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(first.size)
    out: IntArray = rank[inverse]
    return out


def ray_map(ray: Any, window: int = 64) -> MapFn:
    """A :data:`MapFn` running each job as a Ray task (one CPU each) on the connected cluster, at most
    ``window`` in flight (the results come back in order, as they are consumed)."""

    def run(fn: Callable[[Any], Any], jobs: Iterable[Any]) -> Iterator[Any]:
        remote = ray.remote(num_cpus=1)(fn)
        flight: deque[Any] = deque()
        for job in jobs:
            flight.append(remote.remote(job))
            if len(flight) >= window:
                yield ray.get(flight.popleft())
        while flight:
            yield ray.get(flight.popleft())

    return run


def thread_map(threads: int) -> MapFn:
    """A :data:`MapFn` over ``threads`` threads (database round trips and numpy overlap)."""

    def run(fn: Callable[[Any], Any], jobs: Iterable[Any]) -> Iterator[Any]:
        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            yield from pool.map(fn, jobs)

    return run


# -- the scalable route: the graph from pgvector --------------------------------------------------------

PAGE = 2048
"""Face ids per page of the driver's listing and per neighbour job."""
JOB_FACES = 20_000
"""Faces per agglomeration job: small components travel together, a big one goes alone."""
EDGE_MARGIN = 1e-5
"""Pairs are kept from ``threshold - EDGE_MARGIN``: the server's float32 sums may round a pair at the
threshold below it, and an extra edge only joins components, which changes no cluster."""


class EdgeForest:
    """The connected components of a graph whose edges arrive in chunks: held edges are replaced by a
    spanning forest (each node to its component's first node) whenever they pass ``limit``, so memory
    stays O(nodes + limit) however many edges come."""

    def __init__(self, n: int, limit: int | None = None) -> None:
        self.n = n
        self.limit = limit or max(4 * n, 1 << 20)
        self.rows: list[IntArray] = []
        self.cols: list[IntArray] = []
        self.held = 0
        self.seen = 0
        """Edges added in all."""

    def add(self, rows: IntArray, cols: IntArray) -> None:
        self.rows.append(rows)
        self.cols.append(cols)
        self.held += int(rows.size)
        self.seen += int(rows.size)
        if self.held > self.limit:
            self._compact()

    def _compact(self) -> IntArray:
        rows = np.concatenate(self.rows) if self.rows else np.zeros(0, np.int64)
        cols = np.concatenate(self.cols) if self.cols else np.zeros(0, np.int64)
        labels = components(self.n, rows, cols)
        _, first = np.unique(labels, return_index=True)
        root = first[labels]
        moved = np.flatnonzero(root != np.arange(self.n))
        self.rows, self.cols, self.held = [moved], [root[moved]], int(moved.size)
        return labels

    def labels(self) -> IntArray:
        """Component label of each node."""
        return self._compact()


def _store(url: str) -> Any:
    from faceflow.gallery.backends import open_gallery_store

    return open_gallery_store(url)


def _neighbour_job(job: tuple[str, str, IntArray, int, float]) -> tuple[IntArray, IntArray]:
    """(query, neighbour) face ids at or above the threshold for one page of faces, from the server's
    HNSW index; a face whose ``k`` nearest all pass is asked again with twice the ``k`` (beyond
    pgvector's largest search: exactly, by a scan)."""
    from faceflow.gallery.postgres import MAX_EF_SEARCH

    url, gallery, ids, k, threshold = job
    rows: list[IntArray] = []
    cols: list[IntArray] = []
    k_now: int | None
    with _store(url) as store:
        g = store.gallery(gallery, counts=False)
        todo, k_now = ids, min(k, MAX_EF_SEARCH)
        while todo.size:
            q, nb = store.similar_faces(g, todo, k_now, threshold)
            again = np.zeros(0, np.int64)
            if k_now is not None:  # a face whose k nearest all passed may have more: asked again, wider
                found, counts = np.unique(q, return_counts=True)
                again = found[counts >= k_now]
                keep = ~np.isin(q, again)
                q, nb = q[keep], nb[keep]
                k_now = None if k_now >= MAX_EF_SEARCH else min(2 * k_now, MAX_EF_SEARCH)
            rows.append(q)
            cols.append(nb)
            todo = again
    return np.concatenate(rows), np.concatenate(cols)


def _groups(ids: IntArray, sources: Sequence[str | None]) -> list[Hashable]:
    """Cannot-link groups: a face's source photo, or the face alone when it has none."""
    return [s if s is not None else f"face:{i}" for i, s in zip(ids.tolist(), sources, strict=True)]


def _component_job(job: tuple[str, str, list[IntArray], float]) -> list[tuple[IntArray, FloatArray]]:
    """Average linkage inside each of the given components (face ids), with only their vectors fetched:
    per component, the local labels and each face's similarity to its cluster's mean (typicality)."""
    url, gallery, members, threshold = job
    with _store(url) as store:
        ids, vectors, sources = store.face_vectors(gallery, np.concatenate(members))
    x = _unit(vectors)
    groups = _groups(ids, sources)
    out = []
    for m in members:
        at = np.minimum(np.searchsorted(ids, m), max(ids.size - 1, 0))
        if ids.size == 0 or not np.array_equal(ids[at], m):
            raise GalleryError(f"faces of gallery {gallery!r} were deleted while it was clustered: run again")
        local = average_linkage(x[at], [groups[i] for i in at], threshold)
        out.append((local, _typicality(x[at], local)))
    return out


def _typicality(x: FloatArray, labels: IntArray) -> FloatArray:
    """Each row's dot product with its cluster's mean vector (the report lists the most typical first)."""
    sums = np.zeros((int(labels.max()) + 1, x.shape[1]), np.float64)
    np.add.at(sums, labels, x)
    means = sums / np.bincount(labels)[:, None]
    out: FloatArray = np.einsum("nd,nd->n", x, means[labels]).astype(np.float32)
    return out


@dataclass
class GalleryClusters:
    """A gallery's faces clustered: ``labels[i]`` is the cluster of face ``face_ids[i]`` (ids ascending,
    labels numbered by first appearance), ``typicality[i]`` its similarity to its cluster's mean."""

    face_ids: IntArray
    labels: IntArray
    typicality: FloatArray
    route: str
    """``pgvector`` (the graph from the server's HNSW index) or ``usearch`` (in memory)."""
    edges: int
    """Pairs found (each direction a face found the other in counts once)."""
    components: int
    largest_component: int
    seconds_graph: float = 0.0
    """Listing the ids, the pairs, the components."""
    seconds_agglomeration: float = 0.0


def gallery_face_ids(store: Any, gallery: str, page: int = 65_536) -> IntArray:
    """Every face id of the gallery (with an embedding of its model), ascending, by keyset pages."""
    chunks: list[IntArray] = []
    after = -1
    while True:
        rows = store.face_page(gallery, after, page)
        if not rows:
            break
        chunks.append(np.fromiter((r[0] for r in rows), np.int64, len(rows)))
        after = int(chunks[-1][-1])
    return np.concatenate(chunks) if chunks else np.zeros(0, np.int64)


def cluster_gallery(url: str, gallery: str, threshold: float, *, k: int = DEFAULT_K, map_fn: MapFn | None = None,
                    page: int = PAGE, job_faces: int = JOB_FACES) -> GalleryClusters:
    """The clusters :func:`~faceflow.gallery.cluster.average_linkage` gives for the gallery's faces (in
    id order, a face's source photo as its cannot-link group), computed per component of the threshold
    graph (module docstring). ``map_fn`` runs the neighbour and agglomeration jobs (default: in turn)."""
    run = map_fn or map
    t0 = time.perf_counter()
    with _store(url) as store:
        store.gallery(gallery, counts=False)  # NotFound naming the galleries there
        native = store.has_native_ann()
        if native:
            store.ensure_ann_index(gallery)
        ids = gallery_face_ids(store, gallery)
        n = int(ids.size)
        forest = EdgeForest(n)
        if not native and n:  # SQLite: the graph from the in-memory index
            fids, vectors, _ = store.face_vectors(gallery, ids)
            if not np.array_equal(fids, ids):
                raise GalleryError(f"gallery {gallery!r} changed while it was clustered: run again")
            rows, cols = threshold_edges(vectors, threshold - EDGE_MARGIN, k=k)
            forest.add(rows, cols)
    if native and n:
        jobs = ((url, gallery, ids[a:a + page], k, threshold - EDGE_MARGIN) for a in range(0, n, page))
        for q, nb in run(_neighbour_job, jobs):
            qi, ni = np.searchsorted(ids, q), np.searchsorted(ids, nb)
            ok = (qi < n) & (ni < n) & (q != nb)  # a face is its own nearest: no edge
            ok[ok] &= (ids[qi[ok]] == q[ok]) & (ids[ni[ok]] == nb[ok])  # faces added meanwhile are left out
            forest.add(qi[ok], ni[ok])
    comp = forest.labels() if n else np.zeros(0, np.int64)
    t1 = time.perf_counter()
    order = np.argsort(comp, kind="stable")
    members = [m for m in np.split(order, np.flatnonzero(np.diff(comp[order])) + 1) if m.size > 1]
    batches: list[list[IntArray]] = []
    held = job_faces
    for m in sorted(members, key=len, reverse=True):
        if held + m.size > job_faces:
            batches.append([])
            held = 0
        batches[-1].append(m)
        held += int(m.size)
    labels = np.full(n, -1, np.int64)
    typicality = np.ones(n, np.float32)
    next_label = 0
    results = run(_component_job, ((url, gallery, [ids[m] for m in b], float(threshold)) for b in batches))
    for batch, outcome in zip(batches, results, strict=True):
        for m, (local, typ) in zip(batch, outcome, strict=True):
            labels[m] = local + next_label
            typicality[m] = typ
            next_label += int(local.max()) + 1
    singles = labels < 0
    labels[singles] = next_label + np.arange(int(singles.sum()))
    sizes = np.bincount(comp) if n else np.zeros(0, np.int64)
    return GalleryClusters(ids, canonical(labels), typicality, "pgvector" if native else "usearch",
                           forest.seen, int(sizes.size), int(sizes.max(initial=0)), round(t1 - t0, 3),
                           round(time.perf_counter() - t1, 3))


def write_gallery_report(out: Path, store: Any, gallery: str, result: GalleryClusters, *, threshold: float,
                         min_size: int = 2) -> dict[str, Any]:
    """``out/clusters.parquet``, one row per face (``face_id``, ``subject``, ``photo`` = its source,
    ``cluster``, ``cluster_size``, ``typicality``), and ``out/clusters.json`` laid out as ``faceflow
    cluster`` writes it (clusters of ``min_size`` faces or more, largest first, most typical face first;
    the other faces under ``unassigned`` as "alone"), written cluster by cluster. The faces' names and
    sources are read by keyset pages into columns. Returns the counts and paths."""
    from faceflow.distributed.jobs import _pa, _pq
    from faceflow.gallery.folders import order_clusters

    pa, pq = _pa(), _pq()
    ids: list[Any] = []
    subjects: list[Any] = []
    photos: list[Any] = []
    after = -1
    while rows := store.face_page(gallery, after, 65_536):
        fid, name, source = zip(*rows, strict=True)
        ids.append(pa.array(fid, pa.int64()))
        subjects.append(pa.array(name, pa.string()))
        photos.append(pa.array(source, pa.string()))
        after = int(fid[-1])
    n = int(result.face_ids.size)
    face_ids = pa.chunked_array(ids, pa.int64()).to_numpy() if ids else np.zeros(0, np.int64)
    if not np.array_equal(face_ids, result.face_ids):
        raise GalleryError(f"gallery {gallery!r} changed while it was clustered: run again")
    sizes = np.bincount(result.labels)[result.labels] if n else np.zeros(0, np.int64)
    table = pa.table({"face_id": pa.array(face_ids), "subject": pa.chunked_array(subjects, pa.string()),
                      "photo": pa.chunked_array(photos, pa.string()), "cluster": pa.array(result.labels),
                      "cluster_size": pa.array(sizes.astype(np.int32)),
                      "typicality": pa.array(result.typicality.astype(np.float32))})
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out / "clusters.parquet", row_group_size=262_144)
    big, alone = order_clusters(result.labels, result.typicality, np.ones(n, bool), min_size)

    def faces(rows: IntArray, note: str | None = None) -> list[dict[str, Any]]:
        part = table.take(pa.array(rows)).to_pydict()
        return [{"face_id": part["face_id"][j], "subject": part["subject"][j], "photo": part["photo"][j],
                 "typicality": round(float(part["typicality"][j]), 4), **({"unassigned": note} if note else {})}
                for j in range(len(rows))]

    model = store.gallery(gallery, counts=False).model
    tmp = out / f".clusters.json.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        head = {"model": model, "threshold": threshold, "gallery": gallery, "faces": n}
        fh.write(json.dumps(head)[:-1] + ', "clusters": [')
        for i, (label, rows) in enumerate(big):
            fh.write(("," if i else "") + "\n" + json.dumps({"id": label, "size": int(rows.size),
                                                            "faces": faces(rows)}))
        fh.write('\n], "unassigned": [')
        for i in range(0, alone.size, 4096):
            chunk = faces(alone[i:i + 4096], "alone")
            fh.write(("," if i else "") + "\n" + ",\n".join(json.dumps(f) for f in chunk))
        fh.write("\n]}\n")
    os.replace(tmp, out / "clusters.json")
    return {"faces": n, "clusters": len(big), "alone": int(alone.size), "json": str(out / "clusters.json"),
            "parquet": str(out / "clusters.parquet")}
