"""LFW View 2 verification: ``pairs.txt``, the 10-fold protocol, ROC, and a runner over embeddings.

Protocol (as the reference implementation defines it):

* **Accuracy**: for each fold, the threshold is chosen on the other folds as the one maximising
  accuracy there; candidates are the midpoints of the sorted unique training scores, a pair is
  accepted ("same") when ``score >= threshold``, and among candidates of equal training accuracy the
  **lowest** is taken. The fold's accuracy is measured with it; mean and **population** standard
  deviation (``ddof=0``, numpy's default) over the folds are reported.
* **TAR@FAR=1e-3**: per fold, the lowest candidate threshold (same candidates) that accepts at most
  ``floor(1e-3 * n_training_negatives)`` training negatives (2 of 2,700 on View 2); TAR is the
  fraction of the fold's positives accepted with it, averaged over folds.
* **ROC AUC** and **EER** over all pairs at once: AUC is the area under the ROC with ties as
  diagonal steps (equal to the Mann-Whitney probability, ties counting 1/2); EER is where the
  piecewise-linear ROC crosses FAR = FRR.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from faceflow.errors import DatasetError
from faceflow.eval._common import run_item, track
from faceflow.eval.cache import ResultCache

EmbedFn = Callable[[Path], "npt.ArrayLike | None"]
"""``embed_fn(path) -> embedding`` (1-D), or ``None`` when no face was found."""

PairScorer = Callable[..., "npt.NDArray[np.float64]"]
"""``scorer(emb1, emb2, labels, folds) -> scores``: ``(n,)``, or ``(n_folds, n)`` for a score model
fitted per fold on its training pairs (see :func:`evaluate_lfw`)."""


@dataclass(frozen=True)
class Pair:
    """One View 2 pair: two image paths, whether they show the same person, and its fold (0-based)."""

    path1: Path
    path2: Path
    same: bool
    fold: int


def _image_path(root: Path, name: str, number: str) -> Path:
    return root / name / f"{name}_{int(number):04d}.jpg"


def read_pairs(pairs_txt: Path | str, root: Path | str | None = None) -> list[Pair]:
    """Read a ``pairs.txt`` (header ``"<folds>\\t<S>"`` or just ``"<S>"`` for one fold).

    Each fold holds ``S`` matched lines ``name i j`` then ``S`` mismatched lines ``name1 i name2 j``;
    image paths are ``<root>/<name>/<name>_<NNNN>.jpg`` with ``root`` defaulting to the file's folder.
    """
    pairs_txt = Path(pairs_txt)
    root = Path(root) if root is not None else pairs_txt.parent
    try:
        lines = [ln.split() for ln in pairs_txt.read_text().splitlines() if ln.strip()]
    except OSError as exc:
        raise DatasetError(f"cannot read LFW pairs file {pairs_txt}: {exc}") from exc
    if not lines or not all(re.fullmatch(r"\d+", t) for t in lines[0]) or len(lines[0]) > 2:
        raise DatasetError(f"{pairs_txt}: first line must be '<folds> <pairs per class>' or '<pairs>'")
    n_folds, per_class = (1, int(lines[0][0])) if len(lines[0]) == 1 else map(int, lines[0])
    body = lines[1:]
    if len(body) != n_folds * 2 * per_class:
        raise DatasetError(f"{pairs_txt}: header promises {n_folds * 2 * per_class} pairs, found {len(body)}")
    pairs = []
    for i, tokens in enumerate(body):
        same = i % (2 * per_class) < per_class
        bad = next((t for t in (tokens[1:] if same else tokens[1::2]) if not t.isdecimal()), None)
        if bad is not None and len(tokens) == (3 if same else 4):
            raise DatasetError(f"{pairs_txt}:{i + 2}: image number {bad!r} is not a whole number")
        if same and len(tokens) == 3:
            p1, p2 = _image_path(root, tokens[0], tokens[1]), _image_path(root, tokens[0], tokens[2])
        elif not same and len(tokens) == 4:
            p1, p2 = _image_path(root, tokens[0], tokens[1]), _image_path(root, tokens[2], tokens[3])
        else:
            kind = "matched 'name i j'" if same else "mismatched 'name1 i name2 j'"
            raise DatasetError(f"{pairs_txt}:{i + 2}: expected a {kind} line, got {' '.join(tokens)!r}")
        pairs.append(Pair(p1, p2, same, i // (2 * per_class)))
    return pairs


def _candidates(scores: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Threshold candidates: midpoints of the sorted unique scores (the score itself if only one)."""
    u = np.unique(scores)
    return (u[:-1] + u[1:]) / 2 if u.size > 1 else u


def _accepted(sorted_scores: npt.NDArray[np.float64], thresholds: npt.NDArray[np.float64]) -> npt.NDArray[np.intp]:
    """How many of ``sorted_scores`` are ``>=`` each threshold."""
    return sorted_scores.size - np.searchsorted(sorted_scores, thresholds, side="left")


def best_threshold(scores: npt.ArrayLike, labels: npt.ArrayLike) -> float:
    """The candidate threshold of maximum accuracy on these pairs (lowest one on ties)."""
    s, y = np.asarray(scores, np.float64), np.asarray(labels, bool)
    cands = _candidates(s)
    pos, neg = np.sort(s[y]), np.sort(s[~y])
    correct = _accepted(pos, cands) + (neg.size - _accepted(neg, cands))
    return float(cands[int(np.argmax(correct))])


def far_threshold(scores: npt.ArrayLike, labels: npt.ArrayLike, far: float) -> float:
    """The lowest candidate threshold accepting at most ``floor(far * n_negatives)`` negatives.

    When even the highest candidate accepts more, a threshold just above every score is returned.
    """
    s, y = np.asarray(scores, np.float64), np.asarray(labels, bool)
    neg = np.sort(s[~y])
    allowed = math.floor(far * neg.size + 1e-9)
    cands = _candidates(s)
    ok = np.nonzero(_accepted(neg, cands) <= allowed)[0]
    return float(cands[ok[0]]) if ok.size else float(np.nextafter(s.max(), np.inf))


def roc_curve(scores: npt.ArrayLike, labels: npt.ArrayLike) -> tuple[npt.NDArray[np.float64], ...]:
    """``(fpr, tpr, thresholds)`` from accepting nothing to accepting everything (``score >= t``)."""
    s, y = np.asarray(scores, np.float64), np.asarray(labels, bool)
    if y.all() or not y.any():
        raise ValueError("the ROC needs both positive and negative pairs")
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last = np.r_[np.nonzero(np.diff(s))[0], s.size - 1]  # last index of each distinct score
    tps, fps = np.cumsum(y)[last], np.cumsum(~y)[last]
    fpr = np.r_[0.0, fps / fps[-1]]
    tpr = np.r_[0.0, tps / tps[-1]]
    return fpr, tpr, np.r_[np.inf, s[last]]


def roc_auc(fpr: npt.ArrayLike, tpr: npt.ArrayLike) -> float:
    """Trapezoidal area under an ROC curve."""
    f, t = np.asarray(fpr, np.float64), np.asarray(tpr, np.float64)
    return float(np.sum(np.diff(f) * (t[1:] + t[:-1]) / 2))


def equal_error_rate(fpr: npt.ArrayLike, tpr: npt.ArrayLike) -> float:
    """FAR (= FRR) where the piecewise-linear ROC crosses FAR = 1 - TAR."""
    f, t = np.asarray(fpr, np.float64), np.asarray(tpr, np.float64)
    d = f - (1 - t)  # increases along the curve, from -1 to +1
    i = int(np.argmax(d >= 0))
    if i == 0:
        return float(f[0])
    alpha = -d[i - 1] / (d[i] - d[i - 1])
    return float(f[i - 1] + alpha * (f[i] - f[i - 1]))


def evaluate_lfw(
    scores: npt.ArrayLike, labels: npt.ArrayLike, folds: npt.ArrayLike, far: float = 1e-3
) -> dict[str, Any]:
    """The View 2 figures from per-pair similarity ``scores`` (higher = more alike).

    ``scores`` is ``(n,)``, or ``(n_folds, n)`` when the scoring itself is fitted per fold (a score
    fusion, :mod:`faceflow.eval.fusion`): row ``k`` (folds in sorted order) must come from a fit on
    the other folds, and is used when fold ``k`` is tested (thresholds from its training pairs,
    figures on its test pairs); ROC, AUC and EER are then over the test-fold parts of the rows.

    Returns ``accuracy_mean``, ``accuracy_std`` (ddof=0), ``tar_at_far_1e-3``, ``roc_auc``, ``eer``
    (fractions), ``thresholds`` (per fold), and ``curves`` (``fpr``, ``tpr``) for plots.
    """
    s, y, f = np.asarray(scores, np.float64), np.asarray(labels, bool), np.asarray(folds)
    fold_ids = np.unique(f)
    rows = s if s.ndim == 2 else np.broadcast_to(s, (fold_ids.size, *s.shape))
    if y.ndim != 1 or y.shape != f.shape or rows.shape != (fold_ids.size, y.size):
        raise ValueError("scores must be (n,) or (n_folds, n), labels and folds (n,)")
    if fold_ids.size < 2:
        raise ValueError("the protocol needs at least two folds")
    accuracies, tars, thresholds = [], [], []
    pooled = np.empty(y.size)
    for row, fold in zip(rows, fold_ids, strict=True):
        test = f == fold
        train = ~test
        t = best_threshold(row[train], y[train])
        thresholds.append(t)
        accuracies.append(np.mean((row[test] >= t) == y[test]))
        t_far = far_threshold(row[train], y[train], far)
        tars.append(np.mean(row[test & y] >= t_far))
        pooled[test] = row[test]
    fpr, tpr, _ = roc_curve(pooled, y)
    return {
        "protocol": "lfw",
        "accuracy_mean": float(np.mean(accuracies)),
        "accuracy_std": float(np.std(accuracies)),
        f"tar_at_far_{far:.0e}".replace("e-0", "e-"): float(np.mean(tars)),
        "roc_auc": roc_auc(fpr, tpr),
        "eer": equal_error_rate(fpr, tpr),
        "thresholds": thresholds,
        "curves": {"fpr": fpr, "tpr": tpr},
    }


def cosine_scores(emb1: npt.ArrayLike, emb2: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Row-wise cosine similarity of two ``(n, d)`` arrays."""
    a, b = np.asarray(emb1, np.float64), np.asarray(emb2, np.float64)
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    out: npt.NDArray[np.float64] = np.sum(a * b, axis=1)
    return out


def run_lfw(
    root: Path | str,
    embed_fn: EmbedFn,
    fallback_fn: EmbedFn | None = None,
    progress: bool = True,
    cache: ResultCache | None = None,
    scorer: PairScorer | None = None,
) -> dict[str, Any]:
    """Embed every image that ``<root>/pairs.txt`` uses once, score pairs by cosine, evaluate.

    ``scorer(emb1, emb2, labels, folds)`` replaces the cosine (e.g. a per-fold fitted score fusion);
    it sees the scored pairs only.

    ``embed_fn(path)`` returns an embedding or ``None`` when it finds no face; that counts as a
    detection failure and ``fallback_fn(path)`` (e.g. a centre crop) is used when given. A pair with
    an image that has no embedding at all gets score -1 (rejected) and is counted in
    ``unscored_pairs``. A :class:`~faceflow.errors.FaceflowError` is recorded in ``errors``.
    Adds ``detection_failures``, ``images``, ``images_per_second`` (over the embedding calls) and
    ``pairs`` to :func:`evaluate_lfw`'s figures. ``cache`` holds ``embed_fn``'s results only.
    """
    root = Path(root)
    pairs = read_pairs(root / "pairs.txt")
    folds_found = len({p.fold for p in pairs})
    if folds_found < 2:  # each fold's threshold is chosen on the others
        raise DatasetError(f"{root / 'pairs.txt'}: {folds_found} fold; the protocol needs at least 2 "
                           "(header '<folds> <pairs per class>')")
    paths = list(dict.fromkeys(p for pair in pairs for p in (pair.path1, pair.path2)))
    embeddings: dict[Path, npt.NDArray[np.float64]] = {}
    errors: list[dict[str, str]] = []
    failures, seconds = 0, 0.0
    for path in track(paths, "LFW", progress):
        emb, secs = run_item(path, embed_fn, cache, errors)
        seconds += secs or 0.0
        if emb is None and secs is not None:
            failures += 1
        if emb is None and fallback_fn is not None:  # no face, or an error the fallback may get past
            again: list[dict[str, str]] = []
            emb, secs = run_item(path, fallback_fn, None, again)
            seconds += secs or 0.0
            if not any(e["path"] == str(path) for e in errors):  # an image is listed once, however it failed
                errors.extend(again)
        if emb is not None:
            embeddings[path] = np.asarray(emb, np.float64).reshape(-1)
    labels = np.array([p.same for p in pairs])
    folds = np.array([p.fold for p in pairs])
    scored = np.array([p.path1 in embeddings and p.path2 in embeddings for p in pairs])
    scores: npt.NDArray[np.float64] = np.full(len(pairs), -1.0)
    if scored.any():
        idx = np.nonzero(scored)[0]
        emb1 = np.stack([embeddings[pairs[i].path1] for i in idx])
        emb2 = np.stack([embeddings[pairs[i].path2] for i in idx])
        part = cosine_scores(emb1, emb2) if scorer is None else np.asarray(scorer(emb1, emb2, labels[idx], folds[idx]))
        scores = np.full((*part.shape[:-1], len(pairs)), -1.0)
        scores[..., idx] = part
    result = evaluate_lfw(scores, labels, folds)
    result.update(
        detection_failures=failures,
        images=len(paths),
        images_per_second=len(paths) / seconds if seconds > 0 else None,
        pairs=len(pairs),
        unscored_pairs=int((~scored).sum()),
        errors=errors,
    )
    return result
