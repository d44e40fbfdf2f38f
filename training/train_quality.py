"""Train the unified face-quality model: ``src/faceflow/data/quality_utility.npz`` (registry name
``quality_utility``, a :class:`faceflow.quality.model.UtilityModel`).

Data: the 7,701 LFW images View 2's ``pairs.txt`` uses (4,281 people), each observed once by
:func:`faceflow.eval.quality.lfw_observations` (YuNet, the mesh, SFace with its embedding's norm before
normalisation, the expression model; cached under ``$FACEFLOW_HOME/eval-cache``). Tree inputs
(:func:`faceflow.quality.model.features`, as chosen below): the component measures' raw values (all
but the framing ones), seven normalised landmarks, the appearance of the eyes, nose and mouth in the
aligned crop and the detector's score; the QualityFace network's score is a candidate input that the
selection left out. Target: the CR-FIQA-style utility
(:func:`faceflow.eval.quality.utility_labels`: cosine to the own identity's centre without the image
minus the cosine to the nearest other identity's centre), over images whose person has another image.
The score blends the trees' percentile (weight :data:`TREE_WEIGHT`) with the percentile of the SFace
embedding's norm among the same training images.

Eleven ensembles: ensemble ``k`` < 10 learns from the people of the nine View 2 folds other than
``k`` only (its labels and norm percentiles use only their images); ensemble 10 from all of them. The
folds are identity-disjoint, so ``faceflow eval quality`` scores every image with an ensemble that
saw neither the image nor its person. The hyper-parameters were fixed before any evaluation (150
trees of depth 4, learning rate 0.05, subsample 0.8, 20 images per leaf).

Every choice was made on the pairs of folds 0-4 only (each fold scored by its own ensemble), by the
error-versus-reject area (threshold fixed). First version: components and 68 mesh points (x, y, z)
2.04e-3; adding the detector's score 2.15e-3; adding the face parts' appearance 1.82e-3; without the
68 points 1.73e-3; with seven of them (x, y) 1.66e-3 (the detector's score alone: 2.06e-3; random:
2.32e-3); the framing components (:data:`faceflow.quality.model.FRAMING`) dropped for a reason outside
these figures (LFW's fixed crops cannot teach them): 1.67e-3.

Second version (``--select`` prints these, with the FNMR cut from rejecting 5 % of images): QualityFace
alone 2.46e-3 (no better than random on these faces); the SFace norm alone 1.36e-3; trees alone
1.67e-3, with QualityFace 1.68e-3, with QualityFace and the norm 1.55e-3; blends of the trees'
percentile with the norm's at tree weights 0 / 0.25 / 0.4 / 0.5 / 0.6 / 0.75: without QualityFace
1.35 / 1.30 / 1.31 / 1.31 / 1.35 / 1.36e-3, with it 1.35 / 1.31 / 1.37 / 1.37 / 1.38 / 1.42e-3, with
it and the norm as a tree input 1.35 / 1.35 / 1.39 / 1.40 / 1.42 / 1.47e-3. The lowest, trees without
QualityFace at weight 0.25 (1.30e-3; FNMR 45 % lower with 5 % of images out), is the packaged model.
The figures of folds 5-9, which took no part in any choice, are reported apart by ``faceflow eval
quality``.

    PYTHONPATH=src python training/train_quality.py --root ../shared/datasets/lfw [--select]

scikit-learn (the ``dev`` extra) is needed here only; the package evaluates the trees in numpy.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np
import numpy.typing as npt

from faceflow.eval.lfw import read_pairs
from faceflow.eval.quality import (
    error_versus_reject,
    identity_folds,
    identity_of,
    image_rejection,
    lfw_features,
    lfw_observations,
    pair_scores,
    utility_labels,
)
from faceflow.quality.model import ALL_FOLDS, TreeEnsembles, UtilityModel, feature_names

TREES, DEPTH, RATE, SUBSAMPLE, MIN_LEAF = 150, 4, 0.05, 0.8, 20
OUT = Path(__file__).resolve().parents[1] / "src" / "faceflow" / "data" / "quality_utility.npz"


def complete_tree(tree: object, depth: int, rate: float) -> tuple[npt.NDArray[np.int16], npt.NDArray[np.float64],
                                                                   npt.NDArray[np.float32]]:
    """A fitted scikit-learn regression tree as a complete tree of ``depth`` (heap order)."""
    t = tree.tree_  # type: ignore[attr-defined]
    n_inner = 2**depth - 1
    feature = np.zeros(n_inner, np.int16)
    threshold = np.full(n_inner, np.inf, np.float64)
    leaf = np.zeros(2**depth, np.float32)

    def fill(node: int, pos: int, level: int) -> None:
        if level == depth:
            leaf[pos - n_inner] = rate * float(t.value[node].ravel()[0])
            return
        if t.children_left[node] == -1:  # a leaf above the full depth: everything goes left
            fill(node, 2 * pos + 1, level + 1)
            fill(node, 2 * pos + 2, level + 1)
            return
        feature[pos] = t.feature[node]
        threshold[pos] = float(t.threshold[node])
        fill(int(t.children_left[node]), 2 * pos + 1, level + 1)
        fill(int(t.children_right[node]), 2 * pos + 2, level + 1)

    fill(0, 0, 0)
    return feature, threshold, leaf


INPUT_SETS: dict[str, frozenset[str]] = {
    "previous (no network)": frozenset({"qualityface", "embedding_norm"}),
    "with qualityface": frozenset({"embedding_norm"}),
    "with qualityface and the norm": frozenset(),
}
"""Candidate tree inputs, each named by the features it leaves out (``embedding_norm`` is appended to
:func:`~faceflow.quality.model.feature_names` here only); ``--select`` ranks them on folds 0-4."""
TREE_WEIGHTS = (0.0, 0.25, 0.4, 0.5, 0.6, 0.75, 1.0)
"""Candidate weights of the trees' percentile against the embedding norm's (``--select``)."""
CHOSEN, TREE_WEIGHT = "previous (no network)", 0.25
"""What the packaged model uses, chosen with ``--select`` by the area on folds 0-4 only."""


def fit_ensemble(x: npt.NDArray[np.float64], emb: npt.NDArray[np.float64], names: list[str],
                 train: npt.NDArray[np.bool_], columns: npt.NDArray[np.int64]) -> TreeEnsembles:
    """One ensemble trained on the images ``train`` (labels from their embeddings only) reading the
    feature ``columns``; its trees index the full feature vector."""
    from sklearn.ensemble import GradientBoostingRegressor

    labels = np.full(len(names), np.nan)
    labels[train] = utility_labels(emb[train], [n for n, t in zip(names, train, strict=True) if t])
    use = train & np.isfinite(labels)
    model = GradientBoostingRegressor(n_estimators=TREES, max_depth=DEPTH, learning_rate=RATE,
                                      subsample=SUBSAMPLE, min_samples_leaf=MIN_LEAF, random_state=0)
    model.fit(x[use][:, columns], labels[use])
    trees = [complete_tree(est[0], DEPTH, RATE) for est in model.estimators_]
    feature = columns[np.stack([t[0] for t in trees])].astype(np.int16)
    probe = TreeEnsembles(feature[None], np.stack([t[1] for t in trees])[None], np.stack([t[2] for t in trees])[None],
                          np.array([float(model.init_.constant_.ravel()[0])]), np.zeros((1, 101)))
    pred = probe.predict(x[use], 0)
    gap = float(np.max(np.abs(pred - model.predict(x[use][:, columns]))))
    print(f"  {use.sum()} images, numpy vs sklearn max gap {gap:.2e}", file=sys.stderr)
    return TreeEnsembles(probe.feature, probe.threshold, probe.leaf, probe.base,
                         np.percentile(pred, np.arange(101))[None])


def stack(parts: list[TreeEnsembles]) -> TreeEnsembles:
    """Ensembles of the same shape as one :class:`TreeEnsembles` (in order)."""
    return TreeEnsembles(*(np.concatenate([getattr(e, k) for e in parts])
                           for k in ("feature", "threshold", "leaf", "base", "quantiles")))


def norm_quantiles(norms: npt.NDArray[np.float64], train: npt.NDArray[np.bool_]) -> npt.NDArray[np.float64]:
    """Percentiles 0-100 of the embedding norms of the training images."""
    return np.asarray(np.percentile(norms[train], np.arange(101)), np.float64)


def select(root: Path, paths: list[Path], x: npt.NDArray[np.float64], norms: npt.NDArray[np.float64],
           emb: npt.NDArray[np.float64], names: list[str], folds: npt.NDArray[np.int64]) -> None:
    """Print, for each of :data:`INPUT_SETS` and :data:`TREE_WEIGHTS`, the error-versus-reject area
    (threshold fixed) and the FNMR cut from rejecting 5 % of the images, on the pairs of folds 0-4, each
    image scored by an ensemble trained without its fold; folds 5-9 are not touched."""
    pairs = [p for p in read_pairs(root / "pairs.txt") if p.fold < 5]
    index = {p: i for i, p in enumerate(paths)}
    keep = [p for p in pairs if p.path1 in index and p.path2 in index]
    y = np.array([p.same for p in keep])
    scores = pair_scores(keep, {p: emb[i] for i, p in enumerate(paths)})
    i1, i2 = np.array([index[p.path1] for p in keep]), np.array([index[p.path2] for p in keep])
    images = {q for p in keep for q in (p.path1, p.path2)}

    def show(label: str, q: npt.NDArray[np.float64]) -> None:
        area = error_versus_reject(scores, y, np.minimum(q[i1], q[i2]))["area_fixed"]
        cut = image_rejection(keep, scores, {p: float(q[i]) for i, p in enumerate(paths) if p in images}, 0.05)
        print(f"{label}: folds 0-4 area {area:.4e}, 5 % of images rejected: FNMR {cut['relative_reduction']:.1%} lower")

    all_names = (*feature_names(), "embedding_norm")
    xn = np.c_[x, norms]
    for name in ("detector_score", "qualityface", "embedding_norm"):
        show(f"{name} alone", xn[:, all_names.index(name)])
    for label, drop in INPUT_SETS.items():
        columns = np.array([i for i, n in enumerate(all_names) if n not in drop])
        q = np.full(len(paths), np.nan)
        nq = np.full(len(paths), np.nan)
        for k in range(5):
            ens = fit_ensemble(xn, emb, names, folds != k, columns)
            q[folds == k] = ens.score(xn[folds == k], 0)
            nq[folds == k] = np.interp(norms[folds == k], norm_quantiles(norms, folds != k), np.arange(101))
        for w in TREE_WEIGHTS:
            show(f"{label}, tree weight {w}", w * q + (1 - w) * nq)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, required=True, help="LFW folder with pairs.txt")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--select", action="store_true",
                        help="only rank the candidate input sets on folds 0-4 (writes nothing)")
    args = parser.parse_args(argv)

    paths, observations, errors = lfw_observations(args.root)
    if errors:
        print(f"{len(errors)} images failed: {errors[:3]}", file=sys.stderr)
    paths, _, x = lfw_features(paths, observations)
    emb = np.stack([observations[p].embedding for p in paths]).astype(np.float64)
    norms = np.array([observations[p].embedding_norm for p in paths], np.float64)
    names = [identity_of(p) for p in paths]
    fold_of = identity_folds(read_pairs(args.root / "pairs.txt"))
    folds = np.array([fold_of[n] for n in names])
    if args.select:
        select(args.root, paths, x, norms, emb, names, folds)
        return 0

    columns = np.array([i for i, n in enumerate(feature_names()) if n not in INPUT_SETS[CHOSEN]])
    parts, quantiles = [], []
    for k in range(ALL_FOLDS + 1):
        print(f"ensemble {k}:", file=sys.stderr)
        parts.append(fit_ensemble(x, emb, names, folds != k, columns))
        quantiles.append(norm_quantiles(norms, folds != k))
    data = UtilityModel(stack(parts), np.stack(quantiles), TREE_WEIGHT).to_bytes()
    args.out.write_bytes(data)
    print(f"{args.out}: {len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
