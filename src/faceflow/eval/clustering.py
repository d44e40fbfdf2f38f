"""Clustering quality: pairwise and BCubed precision / recall / F, and the LFW clustering runner.

Labels are any hashable values; a predicted label of ``-1`` (or ``None``) means "left unassigned",
which scores as a cluster of its own.

* **Pairwise**: over all pairs of items, precision = pairs put together that belong together / pairs
  put together; recall = pairs put together that belong together / pairs that belong together.
* **BCubed** (Bagga & Baldwin; Amigó et al. 2009): for each item, precision = the share of its
  cluster that has its class, recall = the share of its class that is in its cluster; both averaged
  over items.

LFW protocol (``faceflow eval clustering --root LFW``): every image of the people with two or more
images, plus the images of the one-image people as distractors, clustered together; each image is
its own photo (the cannot-link rule does not come into play). The per-model thresholds
(``faceflow.gallery.cluster.CLUSTER_THRESHOLDS``) were fitted on one half of LFW's people
(:func:`lfw_tuning_half`, by ``training/fit_cluster_threshold.py``), so the protocol scores only the
other half (``people="held-out"``); ``people="all"`` scores everyone, thresholds' own half included.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from faceflow.errors import ConfigError
from faceflow.eval.identification import EmbedFn, embed_all, lfw_identities

PeopleScored = Literal["held-out", "tuning", "all"]
"""Which of LFW's people a clustering run scores (see :func:`lfw_tuning_half`)."""

PEOPLE_NOTES: dict[str, str] = {
    "held-out": "the held-out half of LFW's people (SHA-1 of the name, first hex digit odd): the per-model "
                "thresholds were fitted on the other half",
    "tuning": "the half of LFW's people the per-model thresholds were fitted on (SHA-1 of the name, first hex "
              "digit even): not a held-out figure",
    "all": "all of LFW's people, including the half the per-model thresholds were fitted on: not a held-out figure",
}
"""What each ``people`` choice scores, as the run's output says it."""


def lfw_tuning_half(name: str) -> bool:
    """True for the LFW people the clustering thresholds are fitted on: the first hex digit of the SHA-1 of
    the person's folder name is even. The split is by person, so no one is in both halves."""
    return int(hashlib.sha1(name.encode()).hexdigest()[0], 16) % 2 == 0


def _people_filter(people: PeopleScored) -> Callable[[str], bool]:
    if people == "held-out":
        return lambda name: not lfw_tuning_half(name)
    if people == "tuning":
        return lfw_tuning_half
    if people == "all":
        return lambda name: True
    raise ConfigError(f"people must be one of {', '.join(PEOPLE_NOTES)}, not {people!r}")


def _codes(labels: Sequence[Hashable], *, unassigned_apart: bool) -> npt.NDArray[np.int64]:
    codes: list[int] = []
    seen: dict[Hashable, int] = {}
    for i, label in enumerate(labels):
        if unassigned_apart and (label is None or (isinstance(label, int | np.integer) and label < 0)):
            key: Hashable = ("__unassigned__", i)
        else:
            key = label
        codes.append(seen.setdefault(key, len(seen)))
    return np.asarray(codes, np.int64)


def contingency(
    truth: Sequence[Hashable], pred: Sequence[Hashable]
) -> tuple[npt.NDArray[Any], npt.NDArray[Any], npt.NDArray[Any]]:
    """``(n_ij, class of each cell, cluster of each cell)`` for the non-empty cells."""
    if len(truth) != len(pred):
        raise ValueError(f"{len(truth)} true labels but {len(pred)} predicted ones")
    t = _codes(truth, unassigned_apart=False)
    p = _codes(pred, unassigned_apart=True)
    cells, counts = np.unique(np.stack([t, p], axis=1), axis=0, return_counts=True)
    return counts.astype(np.float64), cells[:, 0], cells[:, 1]


def _f(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r > 0 else 0.0


def pairwise_prf(truth: Sequence[Hashable], pred: Sequence[Hashable]) -> tuple[float, float, float]:
    """Pairwise precision, recall and F-measure (1.0 where there is no pair to get wrong)."""
    n, cls, clu = contingency(truth, pred)

    def pairs(x: npt.NDArray[Any]) -> float:
        return float(np.sum(x * (x - 1) / 2))

    together = pairs(n)
    predicted = pairs(np.bincount(clu, weights=n))
    actual = pairs(np.bincount(cls, weights=n))
    p = together / predicted if predicted else 1.0
    r = together / actual if actual else 1.0
    return p, r, _f(p, r)


def bcubed_prf(truth: Sequence[Hashable], pred: Sequence[Hashable]) -> tuple[float, float, float]:
    """BCubed precision, recall and F-measure."""
    n, cls, clu = contingency(truth, pred)
    total = n.sum()
    if total == 0:
        return 1.0, 1.0, 1.0
    cluster_size = np.bincount(clu, weights=n)[clu]
    class_size = np.bincount(cls, weights=n)[cls]
    p = float(np.sum(n * n / cluster_size) / total)
    r = float(np.sum(n * n / class_size) / total)
    return p, r, _f(p, r)


def evaluate_clustering(truth: Sequence[Hashable], pred: Sequence[Hashable]) -> dict[str, Any]:
    """Pairwise and BCubed figures (fractions) and the cluster counts."""
    pp, pr, pf = pairwise_prf(truth, pred)
    bp, br, bf = bcubed_prf(truth, pred)
    codes = _codes(pred, unassigned_apart=True)
    sizes = np.bincount(codes)
    return {
        "pairwise_precision": pp, "pairwise_recall": pr, "pairwise_f": pf,
        "bcubed_precision": bp, "bcubed_recall": br, "bcubed_f": bf,
        "items": len(truth), "classes": len(set(truth)), "clusters": int(sizes.size),
        "clusters_of_2_or_more": int(np.sum(sizes >= 2)),
    }


def run_clustering(
    root: Path | str,
    embed_fn: EmbedFn,
    *,
    threshold: float | None = None,
    fallback_fn: EmbedFn | None = None,
    people: PeopleScored = "held-out",
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Cluster LFW (see the module docstring) and score it against the person labels.

    ``people`` picks which half of the people is clustered and scored: by default the half the
    thresholds were not fitted on; images without an embedding are left unassigned (scored as
    singletons).
    """
    from faceflow.gallery.cluster import DEFAULT_CLUSTER_THRESHOLD, average_linkage

    keep = _people_filter(people)
    identities = {k: v for k, v in lfw_identities(root).items() if keep(k)}
    items = [(name, p) for name, imgs in identities.items() for p in imgs]
    paths = [p for _, p in items]
    embeddings, counts = embed_all(paths, embed_fn, fallback_fn,
                                   (lambda i: progress(i, len(paths))) if progress else None)
    t = DEFAULT_CLUSTER_THRESHOLD if threshold is None else threshold
    found = [i for i, p in enumerate(paths) if p in embeddings]
    labels = np.full(len(paths), -1, np.int64)
    if found:
        vectors = np.stack([embeddings[paths[i]] for i in found])
        labels[found] = average_linkage(vectors, [str(paths[i]) for i in found], t)
    result = evaluate_clustering([name for name, _ in items], labels.tolist())
    result.update(
        threshold=t, people_scored=people, people_note=PEOPLE_NOTES[people],
        people_with_2_or_more=sum(len(v) >= 2 for v in identities.values()),
        distractors=sum(len(v) == 1 for v in identities.values()), **counts,
    )
    return result
