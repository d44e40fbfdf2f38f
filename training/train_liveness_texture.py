"""Train the colour-texture liveness model: ``src/faceflow/data/liveness_texture.npz`` (registry name
``liveness_texture``).

Data: every image of ``antispoof/nuaa`` (196: 98 live, 98 printed photos, 14 subjects) and
``antispoof/msu_mfsd`` (70: 35 live, 35 print/replay, 35 subjects). The face is the default detector's
largest (:func:`faceflow.eval.antispoof.image_results`, cached); the features are
:func:`faceflow.liveness.texture.face_features`; the classifier is
:func:`faceflow.liveness.texture.fit_logistic` (the same routine ``faceflow eval antispoof`` uses to
train on each protocol's training side). The shipped model learns from all 266 images; its threshold
is the equal-error point of subject-disjoint out-of-fold scores (5 folds per source, pooled), not of
its own training scores.

``--select`` prints the mean subject-disjoint out-of-fold ACER inside each source for a grid of L2
strengths and crop scales; the values in the package (``TEXTURE_L2`` in
:mod:`faceflow.eval.antispoof`, ``CROP_SCALE`` in :mod:`faceflow.liveness.texture`) were chosen from it.
It reads no cross-dataset result. Grid run on 2026-12-07 (OOF ACER nuaa / msu_mfsd / mean, %): scale
1.0: L2 1 -> 2.0 / 11.2 / 6.6, L2 10 -> 3.1 / 11.2 / 7.1, L2 100 -> 6.1 / 16.8 / 11.5; scale 1.2: 3.1 /
16.8 / 9.9 (L2 1 and 10), 4.1 / 22.4 / 13.2 (L2 100); scale 1.6: 2.0 / 12.6 / 7.3 (L2 1 and 10), 3.1 /
12.6 / 7.8 (L2 100). Chosen: scale 1.0, L2 1.

    PYTHONPATH=src python training/train_liveness_texture.py --root ../shared/datasets/antispoof [--select]
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np

from faceflow.eval.antispoof import (
    TEXTURE_L2,
    find_sources,
    image_results,
    load_source,
    metrics,
    out_of_fold,
)
from faceflow.io import load_image
from faceflow.liveness.texture import CROP_SCALE, LinearModel, equal_error_threshold, face_features, fit_logistic

OUT = Path(__file__).resolve().parents[1] / "src" / "faceflow" / "data" / "liveness_texture.npz"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", type=Path, required=True, help="antispoof folder holding nuaa/ and msu_mfsd/")
    ap.add_argument("--select", action="store_true", help="print the selection grid instead of training")
    args = ap.parse_args()
    sources = find_sources(args.root)
    per_source = {}
    for name in ("nuaa", "msu_mfsd"):
        samples = load_source(sources[name])
        data = image_results(samples, (), progress=False)
        per_source[name] = (samples, data)
    if args.select:
        for scale in (1.0, 1.2, 1.6):
            feats = {n: np.asarray([face_features(load_image(s.path), b, scale) for s, b in zip(ss, d["box"],
                                                                                              strict=True)])
                     for n, (ss, d) in per_source.items()}
            for l2 in (1.0, 10.0, 100.0):
                acers = []
                for n, (ss, _) in per_source.items():
                    live = np.array([s.live for s in ss])
                    subj = [s.subject for s in ss]
                    oof = out_of_fold(feats[n], live, subj, l2=l2)
                    m = metrics(oof, live, [s.attack for s in ss], equal_error_threshold(oof, live))
                    acers.append(m["acer"])
                print(f"scale {scale} l2 {l2:6g}: OOF ACER " +
                      " ".join(f"{n} {100 * a:.1f} %" for n, a in zip(per_source, acers, strict=True)) +
                      f"  mean {100 * np.mean(acers):.1f} %")
        return
    x_parts, y_parts, oof_parts = [], [], []
    for _name, (ss, d) in per_source.items():
        live = np.array([s.live for s in ss])
        subj = [s.subject for s in ss]
        x_parts.append(d["features"])
        y_parts.append(live)
        oof_parts.append(out_of_fold(d["features"], live, subj, l2=TEXTURE_L2))
    x, y, oof = np.concatenate(x_parts), np.concatenate(y_parts), np.concatenate(oof_parts)
    fitted = fit_logistic(x, y, l2=TEXTURE_L2)
    model = LinearModel(fitted.mean, fitted.scale, fitted.weights, fitted.bias, equal_error_threshold(oof, y))
    data = model.to_bytes()
    OUT.write_bytes(data)
    print(f"crop scale {CROP_SCALE}, l2 {TEXTURE_L2}, {len(y)} images ({int(y.sum())} live), "
          f"threshold {model.threshold:.4f}")
    print(f"wrote {OUT} ({len(data)} B, sha256 {hashlib.sha256(data).hexdigest()})")


if __name__ == "__main__":
    main()
