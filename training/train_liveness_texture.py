"""Train the liveness models faceflow ships: the colour-texture model
(``src/faceflow/data/liveness_texture.npz``, registry name ``liveness_texture``, the default) and the
head on Human's hidden layers (``src/faceflow/data/liveness_human_head.npz``, ``liveness_human_head``).

Data: every image of ``antispoof/nuaa`` (196: 98 live, 98 printed photos, 14 subjects) and
``antispoof/msu_mfsd`` (70: 35 live, 35 print/replay, 35 subjects). The face is the default detector's
largest and the per-image vectors are the evaluation's (:func:`faceflow.eval.antispoof.image_results`,
cached). Each model is trained exactly as ``faceflow eval antispoof`` trains that candidate on a
training side (:func:`faceflow.eval.antispoof.fit_trained`), the training side being all 266 images:
its blocks and L2 strength are chosen from its menu (:func:`faceflow.eval.antispoof.menu`) by
:func:`faceflow.eval.antispoof.select_recipe`, whose shift folds here are leave-one-source-out, and its
threshold is the equal-error point of subject-disjoint out-of-fold scores. The file holds the model over
the candidate's own feature vector (the texture features, or the 192 hidden units), not the
evaluation's side-by-side vector. ``--criteria`` prints every recipe's criterion.

    PYTHONPATH=src python training/train_liveness_texture.py --root ../shared/datasets/antispoof [--criteria]
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np

from faceflow.eval.antispoof import EVAL_BLOCKS, fit_trained, image_results, load_source, menu, shift_folds
from faceflow.liveness.head import HEAD_BLOCKS, HEAD_MODEL, HumanHead
from faceflow.liveness.models import TEXTURE_MODEL
from faceflow.liveness.texture import BLOCKS, LinearModel

DATA = Path(__file__).resolve().parents[1] / "src" / "faceflow" / "data"
SHIPPED = {"texture": (TEXTURE_MODEL, BLOCKS), "human_head": (HEAD_MODEL, HEAD_BLOCKS)}
"""Candidate -> (registry name of its file, the layout of its own feature vector)."""


def restrict(model: LinearModel, own: dict[str, slice]) -> LinearModel:
    """``model`` (over the evaluation's vector, :data:`EVAL_BLOCKS`) over the candidate's own vector,
    whose blocks are ``own``; the columns it does not read must carry no weight."""
    cols = np.concatenate([np.arange(EVAL_BLOCKS[b].start, EVAL_BLOCKS[b].stop) for b in own])
    rest = np.setdiff1d(np.arange(len(model.weights)), cols)
    if np.any(model.weights[rest] != 0):
        raise ValueError("the model reads columns outside the candidate's own vector")
    return LinearModel(model.mean[cols], model.scale[cols], model.weights[cols], model.bias, model.threshold)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", type=Path, required=True, help="antispoof folder holding nuaa/ and msu_mfsd/")
    ap.add_argument("--criteria", action="store_true", help="print every recipe's criterion")
    args = ap.parse_args()
    samples = [s for name in ("nuaa", "msu_mfsd") for s in load_source(args.root / name)]
    nets = HumanHead.registry_models[:2]  # the head's features need Human's two networks
    parts = [image_results(load_source(args.root / name), nets, progress=False) for name in ("nuaa", "msu_mfsd")]
    data = {k: np.concatenate([p[k] for p in parts]) for k in ("features", "source", "session", "attack")}
    live = np.array([s.live for s in samples])
    subjects = [f"{s.source}/{s.subject}" for s in samples]
    folds = shift_folds(live, subjects, data["source"], data["session"], data["attack"])
    for name, (registry_name, own) in SHIPPED.items():
        model, sel = fit_trained(data["features"], live, subjects, data["attack"], folds, menu(name))
        if args.criteria:
            for recipe, crit in sel.criteria.items():
                print(f"  {name:10s} {recipe:24s} criterion {100 * crit:5.1f} %")
        blob = restrict(model, own).to_bytes()
        out = DATA / f"{registry_name}.npz"
        out.write_bytes(blob)
        print(f"{name}: chose {sel.recipe} on {len(live)} images ({int(live.sum())} live), "
              f"threshold {model.threshold:.4f}; wrote {out.name} ({len(blob)} B, "
              f"sha256 {hashlib.sha256(blob).hexdigest()})")


if __name__ == "__main__":
    main()
