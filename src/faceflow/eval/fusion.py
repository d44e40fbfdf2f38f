"""Score-level fusion of several embedders, with its parameters fitted on training pairs only.

The rule (no search over weights): each model's cosine similarity is divided by the standard
deviation of that model's **impostor** (different-person) scores on the training pairs, and the
results are averaged (the "z-norm sum rule"). Offsets drop out because a threshold absorbs them, so
the fused score is ``sum_m w_m * cos_m`` with ``w_m = (1/sigma_m) / sum_k (1/sigma_k)``: still on the
cosine scale, and exactly the cosine similarity of the concatenated vectors ``[sqrt(w_m) * u_m]``
of unit-norm embeddings ``u_m`` (see :class:`faceflow.recognize.FusedEmbedder`).

The fixed weights of ``faceflow.recognize.FUSION_WEIGHTS`` were fitted by this rule on all 6,000
LFW View 2 pairs, so they are never used to score LFW verification: for LFW's 10-fold protocol,
:func:`fold_scores` fits the weights once per test fold on the other nine folds and returns one row
of fused scores per test fold; :func:`faceflow.eval.lfw.evaluate_lfw` takes such a
``(n_folds, n_pairs)`` matrix and uses row ``k`` (thresholds from its training pairs, figures on its
test pairs) when fold ``k`` is tested, and the test-fold parts of the rows for the ROC.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from faceflow.eval.lfw import cosine_scores

Scores = npt.NDArray[np.float64]


def impostor_weights(scores: npt.ArrayLike, labels: npt.ArrayLike) -> Scores:
    """Fusion weights ``(M,)`` from per-model scores ``(M, n)``: ``1/sigma_impostor``, summing to 1."""
    s, y = np.atleast_2d(np.asarray(scores, np.float64)), np.asarray(labels, bool)
    if s.shape[1] != y.size or y.all():
        raise ValueError("impostor_weights needs (models, pairs) scores and some impostor pairs")
    inv = 1.0 / np.maximum(s[:, ~y].std(axis=1), 1e-12)
    out: Scores = inv / inv.sum()
    return out


def fuse(scores: npt.ArrayLike, weights: npt.ArrayLike) -> Scores:
    """Fused scores ``(n,)``: the weighted sum of per-model scores ``(M, n)``."""
    out: Scores = np.asarray(weights, np.float64) @ np.atleast_2d(np.asarray(scores, np.float64))
    return out


def fold_scores(scores: npt.ArrayLike, labels: npt.ArrayLike, folds: npt.ArrayLike) -> tuple[Scores, Scores]:
    """Per-test-fold fused scores ``(n_folds, n)`` and the weights ``(n_folds, M)`` behind each row.

    Row ``k`` fuses every pair with weights fitted on the pairs outside fold ``k`` (folds in sorted
    order), so no figure measured on fold ``k`` depends on its labels.
    """
    s, y, f = np.atleast_2d(np.asarray(scores, np.float64)), np.asarray(labels, bool), np.asarray(folds)
    weights = np.stack([impostor_weights(s[:, f != k], y[f != k]) for k in np.unique(f)])
    return weights @ s, weights


def pair_cosines(emb1: npt.ArrayLike, emb2: npt.ArrayLike, dims: Sequence[int]) -> Scores:
    """Per-model cosine similarities ``(M, n)`` of side-by-side embeddings ``(n, sum(dims))``."""
    a, b = np.asarray(emb1, np.float64), np.asarray(emb2, np.float64)
    if a.shape != b.shape or a.ndim != 2 or a.shape[1] != sum(dims):
        raise ValueError(f"embeddings of shape {a.shape} / {b.shape} do not split into blocks {list(dims)}")
    cuts = np.cumsum(dims)[:-1]
    pairs = zip(np.split(a, cuts, axis=1), np.split(b, cuts, axis=1), strict=True)
    return np.stack([cosine_scores(u, v) for u, v in pairs])


class FoldFusionScorer:
    """A pair scorer for :func:`faceflow.eval.lfw.run_lfw`: side-by-side part embeddings (as
    :meth:`faceflow.recognize.FusedEmbedder.embed_parts` gives them) -> per-fold fused scores.

    After a call, :attr:`weights` holds the weights fitted for each test fold ``(n_folds, M)``.
    """

    def __init__(self, dims: Sequence[int]) -> None:
        self.dims = list(dims)
        self.weights: Scores | None = None

    def __call__(self, emb1: npt.ArrayLike, emb2: npt.ArrayLike, labels: npt.ArrayLike,
                 folds: npt.ArrayLike) -> Scores:
        scores, self.weights = fold_scores(pair_cosines(emb1, emb2, self.dims), labels, folds)
        return scores
