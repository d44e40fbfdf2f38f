"""Train the unified face-quality model: ``src/faceflow/data/quality_utility.npz`` (registry name
``quality_utility``).

Data: the 7,701 LFW images View 2's ``pairs.txt`` uses (4,281 people), each observed once by
:func:`faceflow.eval.quality.lfw_observations` (YuNet, the mesh, SFace, the expression model; cached
under ``$FACEFLOW_HOME/eval-cache``). Inputs (:func:`faceflow.quality.model.features`): the component
measures' raw values (all but the framing ones), seven normalised landmarks, the appearance of the
eyes, nose and mouth in the aligned crop, and the detector's score. Target: the CR-FIQA-style utility
(:func:`faceflow.eval.quality.utility_labels`: cosine to the own identity's centre without the image
minus the cosine to the nearest other identity's centre), over images whose person has another image.

Eleven ensembles: ensemble ``k`` < 10 learns from the people of the nine View 2 folds other than
``k`` only (its labels use only their embeddings and centres); ensemble 10 from all of them. The
folds are identity-disjoint, so ``faceflow eval quality`` scores every image with an ensemble that
saw neither the image nor its person. The hyper-parameters were fixed before any evaluation (150
trees of depth 4, learning rate 0.05, subsample 0.8, 20 images per leaf). The input set was chosen
by the error-versus-reject area on the pairs of folds 0-4 only (each fold scored by its own
ensemble): components and 68 mesh points (x, y, z) 2.04e-3; adding the detector's score 2.15e-3;
adding the face parts' appearance 1.82e-3; without the 68 points 1.73e-3; with seven of them (x, y)
1.66e-3 (the detector's score alone: 2.06e-3; random: 2.32e-3). Then the framing components
(:data:`faceflow.quality.model.FRAMING`) were dropped for a reason outside these figures (LFW's fixed
crops cannot teach them, and other photos fall outside their LFW range); with that, 1.67e-3 on folds
0-4. ``faceflow eval quality`` reports folds 5-9, which took no part in any choice, separately.

    PYTHONPATH=src python training/train_quality.py --root ../shared/datasets/lfw

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
from faceflow.eval.quality import identity_folds, identity_of, lfw_features, lfw_observations, utility_labels
from faceflow.quality.model import ALL_FOLDS, TreeEnsembles

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


def main(argv: list[str] | None = None) -> int:
    from sklearn.ensemble import GradientBoostingRegressor

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, required=True, help="LFW folder with pairs.txt")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)

    paths, observations, errors = lfw_observations(args.root)
    if errors:
        print(f"{len(errors)} images failed: {errors[:3]}", file=sys.stderr)
    paths, _, x = lfw_features(paths, observations)
    emb = np.stack([observations[p].embedding for p in paths]).astype(np.float64)
    names = [identity_of(p) for p in paths]
    fold_of = identity_folds(read_pairs(args.root / "pairs.txt"))
    folds = np.array([fold_of[n] for n in names])

    feats, thrs, leaves, bases, quants = [], [], [], [], []
    for k in range(ALL_FOLDS + 1):
        train = folds != k
        labels = np.full(len(paths), np.nan)
        labels[train] = utility_labels(emb[train], [n for n, t in zip(names, train, strict=True) if t])
        use = train & np.isfinite(labels)
        model = GradientBoostingRegressor(n_estimators=TREES, max_depth=DEPTH, learning_rate=RATE,
                                          subsample=SUBSAMPLE, min_samples_leaf=MIN_LEAF, random_state=0)
        model.fit(x[use], labels[use])
        trees = [complete_tree(est[0], DEPTH, RATE) for est in model.estimators_]
        feats.append(np.stack([t[0] for t in trees]))
        thrs.append(np.stack([t[1] for t in trees]))
        leaves.append(np.stack([t[2] for t in trees]))
        bases.append(float(model.init_.constant_.ravel()[0]))
        probe = TreeEnsembles(feats[-1][None], thrs[-1][None], leaves[-1][None], np.array([bases[-1]]),
                              np.zeros((1, 101)))
        pred = probe.predict(x[use], 0)
        gap = float(np.max(np.abs(pred - model.predict(x[use]))))
        quants.append(np.percentile(pred, np.arange(101)))
        print(f"ensemble {k}: {use.sum()} images, numpy vs sklearn max gap {gap:.2e}", file=sys.stderr)
    ens = TreeEnsembles(np.stack(feats), np.stack(thrs), np.stack(leaves), np.array(bases), np.stack(quants))
    data = ens.to_bytes()
    args.out.write_bytes(data)
    print(f"{args.out}: {len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
