"""Clustering a library too big for one agglomeration: a threshold graph, its components, then the
in-process rule (:func:`faceflow.gallery.cluster.average_linkage`) inside each component.

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

from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

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


MapFn = Callable[[Callable[[Any], IntArray], Iterable[Any]], Iterable[IntArray]]
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


def ray_map(ray: Any) -> MapFn:
    """A :data:`MapFn` running each job as a Ray task (one CPU each) on the connected cluster."""
    remote = ray.remote(num_cpus=1)(_agglomerate)

    def run(fn: Callable[[Any], IntArray], jobs: Iterable[Any]) -> list[IntArray]:
        return list(ray.get([remote.remote(job) for job in jobs]))

    return run
