"""Clustering faces into persons: average-linkage agglomeration with a cannot-link rule, incremental.

Two clusters merge while their *average* pairwise cosine similarity is at least ``threshold``; two
clusters holding faces of the same photo never merge (one person appears once in a photo). With
unit-norm embeddings the average similarity of clusters A and B is ``sum(A) . sum(B) / (|A| |B|)``,
so a cluster is just its sum vector, its size and its set of photos, and no N x N matrix is needed.

The merges follow the nearest-neighbour-chain algorithm, which gives exactly the clusters of
classic (greedy, best pair first) agglomeration because average linkage is reducible: merging two
clusters never brings the result closer to a third than the nearer of the two was. The cannot-link
rule keeps that property (a conflict of A or B with C is a conflict of A+B with C). A cluster whose
best partner is below the threshold can never merge again and leaves the search.

Incremental: :func:`update_clusters` starts from the existing clusters as whole units and adds the
new faces as single ones, so earlier work is kept (clusters may grow or merge, never split), and
cluster ids stay stable.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np
import numpy.typing as npt

from faceflow.errors import ConfigError
from faceflow.types import FloatArray

CLUSTER_THRESHOLDS: dict[str, float] = {
    "sface": 0.45, "fused": 0.80, "dlib": 0.925, "sface_int8": 0.45, "fused_int8": 0.80,
}
"""Average-linkage cosine threshold per recognition model (each with its default flip): the best
pairwise F on one half of LFW's people (``training/fit_cluster_threshold.py``; the half whose name's
SHA-1 starts with an even hex digit, :func:`faceflow.eval.clustering.lfw_tuning_half`), so
``faceflow eval clustering`` scores only the other half. sface 0.45 (grid 0.20-0.55 by 0.05): pairwise
F 0.976 on the fitting half, 0.977 on the other; fused 0.80 (grid 0.50-0.85): 0.977 and 0.984; dlib
0.925 (grid 0.75-0.95 by 0.025): 0.804 and 0.795; sface_int8 0.45 (grid 0.20-0.55): 0.974 and 0.977
(BCubed 0.987 on the other half); fused_int8 0.80 (grid 0.50-0.85): 0.976 and 0.981 (BCubed 0.991).
dlib_int8 is not fitted. Re-measured 2026-12-06 on the other half
(``faceflow eval clustering --root ../shared/datasets/lfw [--model fused]``, 3,889 images of 2,166
people, one thread per model): pairwise F 0.9772 (sface) and 0.9837 (fused), BCubed F 0.9874 and 0.9912;
pinned by ``tests/test_figures.py``."""
DEFAULT_CLUSTER_THRESHOLD = CLUSTER_THRESHOLDS["sface"]


def cluster_threshold(model: str) -> float:
    """The clustering threshold of recognition model ``model``; :class:`ConfigError` when none is known."""
    try:
        return CLUSTER_THRESHOLDS[model]
    except KeyError:
        raise ConfigError(f"no clustering threshold is known for model {model!r} (known: "
                          f"{', '.join(CLUSTER_THRESHOLDS)}); pass one") from None


def check_threshold(threshold: float) -> float:
    """``threshold`` when it is a cosine similarity, in [-1, 1]; else :class:`ConfigError`. A NaN passes
    no ``s < threshold`` test, so it would merge every face with every other photo's; values beyond
    the range mean nothing more than its ends."""
    if not -1.0 <= threshold <= 1.0:
        raise ConfigError(f"--threshold is a cosine similarity in [-1, 1], got {threshold}")
    return float(threshold)


IntArray = npt.NDArray[np.int64]


def average_linkage(
    vectors: npt.ArrayLike,
    groups: Sequence[Hashable],
    threshold: float,
    *,
    init: npt.ArrayLike | None = None,
) -> IntArray:
    """Cluster label (0..K-1) of each row: constrained average-linkage agglomeration down to ``threshold``.

    ``groups[i]`` is the photo of row ``i`` (rows of one group never share a cluster); ``init[i] >= 0``
    puts row ``i`` in an initial cluster with the other rows of that label (-1: start alone).
    """
    check_threshold(threshold)
    x = np.asarray(vectors, dtype=np.float64)
    n = x.shape[0]
    if n == 0:
        return np.zeros(0, np.int64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    start = np.arange(n) if init is None else np.asarray(init, dtype=np.int64)
    if init is not None:
        fresh = start < 0
        start = start.copy()
        start[fresh] = start.max(initial=-1) + 1 + np.arange(int(fresh.sum()))
    _, unit_of = np.unique(start, return_inverse=True)
    k = int(unit_of.max()) + 1
    sums = np.zeros((k, x.shape[1]))
    np.add.at(sums, unit_of, x)
    sizes = np.bincount(unit_of, minlength=k).astype(np.float64)
    photos: list[set[Hashable]] = [set() for _ in range(k)]
    for row, unit in enumerate(unit_of):
        photos[unit].add(groups[row])
    holders: dict[Hashable, set[int]] = {}
    for unit, ps in enumerate(photos):
        for p in ps:
            holders.setdefault(p, set()).add(unit)
    parent = np.arange(k)  # merged units point to the unit that absorbed them
    live = np.ones(k, bool)  # may still merge

    def best(a: int, prefer: int | None) -> tuple[int, float]:
        cand = np.flatnonzero(live)
        sims = sums[cand] @ sums[a] / (sizes[cand] * sizes[a])
        blocked = {c for p in photos[a] for c in holders[p]}
        sims[np.isin(cand, list(blocked))] = -np.inf  # includes a itself
        j = int(np.argmax(sims))
        if prefer is not None and live[prefer] and prefer not in blocked:
            s_pref = float(sums[prefer] @ sums[a] / (sizes[prefer] * sizes[a]))
            if s_pref >= sims[j]:
                return prefer, s_pref
        return int(cand[j]), float(sims[j])

    chain: list[int] = []
    while True:
        if not chain:
            alive = np.flatnonzero(live)
            if alive.size == 0:
                break
            chain.append(int(alive[0]))
        a = chain[-1]
        prev = chain[-2] if len(chain) > 1 else None
        b, s = best(a, prev)
        if s < threshold:
            live[a] = False  # nothing will ever be close enough again
            chain.pop()
        elif b == prev:  # reciprocal nearest neighbours: merge b into a
            del chain[-2:]
            sums[a] += sums[b]
            sizes[a] += sizes[b]
            for p in photos[b]:
                holders[p].discard(b)
                holders[p].add(a)
            photos[a] |= photos[b]
            live[b] = False
            parent[b] = a
        else:
            chain.append(b)
    root = np.arange(k)
    for u in range(k):
        r = u
        while parent[r] != r:
            r = parent[r]
        root[u] = r
    _, labels = np.unique(root[unit_of], return_inverse=True)
    out: IntArray = labels.astype(np.int64)
    return out


def update_clusters(
    vectors: npt.ArrayLike,
    groups: Sequence[Hashable],
    cluster_ids: Sequence[int],
    threshold: float,
) -> IntArray:
    """New cluster ids after adding faces: rows with an id >= 0 keep their cluster as a unit,
    rows with -1 are new. A resulting cluster keeps the id of its largest earlier cluster; new ones
    get ids above every earlier id."""
    old = np.asarray(cluster_ids, dtype=np.int64)
    labels = average_linkage(vectors, groups, threshold, init=old)
    out = np.full(len(old), -1, np.int64)
    next_id = int(old.max(initial=-1)) + 1
    for label in np.unique(labels):
        members = labels == label
        previous = old[members & (old >= 0)]
        if previous.size:
            ids, counts = np.unique(previous, return_counts=True)
            out[members] = ids[np.argmax(counts)]
        else:
            out[members] = next_id
            next_id += 1
    return out


def cannot_link_violations(labels: Sequence[int], groups: Sequence[Hashable]) -> int:
    """How many pairs of rows from one group share a cluster (0 for any output of this module)."""
    seen: dict[tuple[int, Hashable], int] = {}
    bad = 0
    for label, group in zip(labels, groups, strict=True):
        if label < 0:
            continue
        key = (int(label), group)
        bad += seen.get(key, 0)
        seen[key] = seen.get(key, 0) + 1
    return bad


def cluster_centroids(vectors: FloatArray, labels: IntArray) -> dict[int, FloatArray]:
    """Unit-norm mean embedding of each cluster (label >= 0)."""
    out = {}
    for label in np.unique(labels[labels >= 0]):
        m = vectors[labels == label].mean(axis=0)
        out[int(label)] = (m / max(float(np.linalg.norm(m)), 1e-12)).astype(np.float32)
    return out
