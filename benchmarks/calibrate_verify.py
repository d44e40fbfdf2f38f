"""Calibrate faceflow's verification thresholds on LFW View 2 (6,000 pairs, 7,701 images).

Protocol: YuNet 2023mar finds the faces of each 250x250 deep-funneled image and the one nearest the
image centre is kept; where none is found, the median box of the detected faces is used with the
box-based five points (:func:`faceflow.recognize.box_landmarks5`). Each image is embedded once; a
pair's score is the cosine similarity of its two embeddings.

Figures written (JSON, fractions):

* ``threshold``: the operating point at FMR = 1e-3 over all 3,000 impostor pairs (the midpoint
  between the 4th and 3rd highest impostor scores, so exactly 3 impostors match), rounded up to 4 places;
  its FMR, TMR (over the 3,000 genuine pairs) and accuracy over all 6,000 pairs;
* ``best_accuracy``: the threshold maximising accuracy over all 6,000 pairs, for reference;
* ``ten_fold``: the standard protocol (threshold from the nine other folds by maximum accuracy),
  and TAR at FAR 1e-3 with the threshold from the nine training folds allowing floor(1e-3 x 2,700)
  false accepts, and the ROC AUC: comparable with ../shared/docs/PEERS.md.

Detections and embeddings are cached under ``--cache`` (default /tmp/faceflow_lfw) as .npy, so the
threshold maths can be rerun for free. Run (about 10 min for sface, 20 for dlib, on 2 cores)::

    FACEFLOW_THREADS=2 nice .venv/bin/python benchmarks/calibrate_verify.py --model sface

A fused model (``fused``, ``fused_int8``) embeds each image with its parts, with its flip (on), and its
weights come from the z-norm rule (:func:`faceflow.eval.fusion.impostor_weights`) over all 6,000 pairs
(written as ``fusion_weights``) before the threshold is set on the fused scores.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from faceflow.eval.fusion import fuse, impostor_weights, pair_cosines
from faceflow.io import load_image
from faceflow.recognize import EMBEDDERS, FusedEmbedder, create_embedder
from faceflow.types import Face

REPO = Path(__file__).resolve().parents[1]
Arr = npt.NDArray[Any]


def read_pairs(lfw: Path) -> tuple[list[tuple[str, str]], Arr, Arr]:
    """``pairs.txt`` as (relative path a, relative path b), labels (1 = same) and fold indices."""
    lines = (lfw / "pairs.txt").read_text().split("\n")
    folds, per_fold = (int(v) for v in lines[0].split())
    pairs, labels = [], []
    for line in lines[1 : 1 + 2 * folds * per_fold]:
        f = line.split("\t")
        if len(f) == 3:
            pairs.append((f"{f[0]}/{f[0]}_{int(f[1]):04d}.jpg", f"{f[0]}/{f[0]}_{int(f[2]):04d}.jpg"))
            labels.append(1)
        else:
            pairs.append((f"{f[0]}/{f[0]}_{int(f[1]):04d}.jpg", f"{f[2]}/{f[2]}_{int(f[3]):04d}.jpg"))
            labels.append(0)
    return pairs, np.array(labels), np.arange(len(pairs)) // (2 * per_fold)


def detect_all(lfw: Path, files: list[str]) -> Arr:
    """Box (4) and five points (10) of the face nearest the centre per image; NaN where none."""
    from faceflow.detect import create_detector

    detector = create_detector("yunet")
    out = np.full((len(files), 14), np.nan, np.float32)
    for i, rel in enumerate(files):
        img = load_image(lfw / rel)
        faces = detector.detect(img)
        if faces:
            centre = np.array([img.shape[1] / 2, img.shape[0] / 2])
            face = min(faces, key=lambda f: float(np.hypot(*(np.array(f.center) - centre))))
            out[i, :4] = face.box
            if face.landmarks5 is not None:
                out[i, 4:] = face.landmarks5.reshape(-1)
    return out


def box_point_fractions(dets: Arr) -> Arr:
    """Median positions of the five points inside their boxes, mirrored left/right and averaged."""
    ok = ~np.isnan(dets).any(1)
    box, lm = dets[ok, :4], dets[ok, 4:].reshape(-1, 5, 2)
    wh = (box[:, 2:] - box[:, :2])[:, None, :]
    rel = np.median((lm - box[:, None, :2]) / wh, axis=0)
    mirrored = rel[[1, 0, 2, 4, 3]] * [-1, 1] + [1, 0]
    return np.asarray((rel + mirrored) / 2)


def embed_all(lfw: Path, files: list[str], dets: Arr, model: str, batch: int) -> Arr:
    """One unit-norm embedding per image (fallback: the median detected box, box-based points)."""
    embedder = create_embedder(model)
    found: Arr = np.asarray(~np.isnan(dets[:, :4]).any(1))
    fallback_box = np.median(dets[found, :4], axis=0)
    out = np.zeros((len(files), embedder.dim), np.float32)
    t0 = time.perf_counter()
    if isinstance(embedder, FusedEmbedder):  # its parts side by side, unweighted, with its flip
        for i, rel in enumerate(files):
            d = dets[i]
            lm = None if np.isnan(d[4:]).any() else d[4:].reshape(5, 2)
            face = Face(box=d[:4], landmarks5=lm, detector="yunet") if found[i] else Face(box=fallback_box)
            out[i] = embedder.embed_parts(load_image(lfw / rel), [face])[0]
        return out
    for start in range(0, len(files), batch):
        crops = []
        for i in range(start, min(start + batch, len(files))):
            img = load_image(lfw / files[i])
            d = dets[i]
            if found[i]:
                lm = None if np.isnan(d[4:]).any() else d[4:].reshape(5, 2)
                face = Face(box=d[:4], landmarks5=lm, detector="yunet")
            else:
                face = Face(box=fallback_box)
            crops.extend(embedder.crops(img, [face]))
        out[start : start + len(crops)] = embedder.embed_crops(crops)
        done = start + len(crops)
        if done % (batch * 20) == 0 or done == len(files):
            rate = (time.perf_counter() - t0) / done * 1000
            print(f"  {model}: {done}/{len(files)} images, {rate:.1f} ms/image", file=sys.stderr, flush=True)
    return out


def rates(scores: Arr, labels: Arr, t: float) -> tuple[float, float, float]:
    """FMR, TMR and accuracy when ``score >= t`` means "same"."""
    same = scores >= t
    fmr = float(same[labels == 0].mean())
    tmr = float(same[labels == 1].mean())
    return fmr, tmr, float((same == (labels == 1)).mean())


def fmr_threshold(scores: Arr, labels: Arr, fmr: float) -> float:
    """Midpoint between the (k+1)-th and k-th highest impostor scores, k = floor(fmr x impostors)."""
    imp = np.sort(scores[labels == 0])[::-1]
    k = int(np.floor(fmr * len(imp) + 1e-9))
    return float((imp[k] + imp[k - 1]) / 2) if k > 0 else float(np.nextafter(imp[0], np.inf))


def best_accuracy_threshold(scores: Arr, labels: Arr) -> float:
    """The midpoint between consecutive sorted scores that maximises accuracy."""
    s = np.sort(scores)
    cands = np.r_[s[0] - 1e-6, (s[1:] + s[:-1]) / 2, s[-1] + 1e-6]
    accs = [((scores >= t) == (labels == 1)).mean() for t in cands]
    return float(cands[int(np.argmax(accs))])


def roc_auc(scores: Arr, labels: Arr) -> float:
    """Probability that a random genuine pair outscores a random impostor pair (ties count half)."""
    from scipy.stats import rankdata

    ranks = rankdata(scores)
    pos = labels == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def ten_fold(scores: Arr, labels: Arr, folds: Arr) -> dict[str, float]:
    """Standard LFW 10-fold accuracy, and TAR at FAR 1e-3 with thresholds from the training folds."""
    accs, tars, fars = [], [], []
    for k in np.unique(folds):
        train, test = folds != k, folds == k
        t = best_accuracy_threshold(scores[train], labels[train])
        accs.append(rates(scores[test], labels[test], t)[2])
        t3 = fmr_threshold(scores[train], labels[train], 1e-3)
        far, tar, _ = rates(scores[test], labels[test], t3)
        tars.append(tar)
        fars.append(far)
    return {
        "accuracy_mean": float(np.mean(accs)),
        "accuracy_std": float(np.std(accs)),
        "tar_at_far_1e-3": float(np.mean(tars)),
        "far_measured": float(np.mean(fars)),
    }


def analyse(scores: Arr, labels: Arr, folds: Arr, fmr: float) -> dict[str, object]:
    t = float(np.ceil(fmr_threshold(scores, labels, fmr) * 1e4) / 1e4)  # never more false matches
    f, m, a = rates(scores, labels, t)
    tb = round(best_accuracy_threshold(scores, labels), 4)
    fb, mb, ab = rates(scores, labels, tb)
    return {
        "threshold": {"value": t, "target_fmr": fmr, "fmr": f, "tmr": m, "accuracy": a},
        "best_accuracy": {"value": tb, "fmr": fb, "tmr": mb, "accuracy": ab},
        "ten_fold": ten_fold(scores, labels, folds),
        "auc": roc_auc(scores, labels),
        "genuine_mean": float(scores[labels == 1].mean()),
        "impostor_mean": float(scores[labels == 0].mean()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="sface", choices=list(EMBEDDERS))
    ap.add_argument("--lfw", type=Path, default=REPO.parent / "shared" / "datasets" / "lfw")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/faceflow_lfw"))
    ap.add_argument("--fmr", type=float, default=1e-3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--limit", type=int, default=0, help="use N pairs spread over all folds (smoke test)")
    args = ap.parse_args()

    pairs, labels, folds = read_pairs(args.lfw)
    if args.limit:
        keep = np.linspace(0, len(pairs) - 1, args.limit).astype(int)
        pairs, labels, folds = [pairs[i] for i in keep], labels[keep], folds[keep]
    files = sorted({p for pair in pairs for p in pair})
    index = {f: i for i, f in enumerate(files)}
    args.cache.mkdir(parents=True, exist_ok=True)
    tag = f"{len(files)}"

    det_file = args.cache / f"detections_{tag}.npy"
    if det_file.exists():
        dets = np.load(det_file)
    else:
        t0 = time.perf_counter()
        dets = detect_all(args.lfw, files)
        print(f"detection: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        np.save(det_file, dets)

    from faceflow.recognize import embedding_identity

    version = embedding_identity(args.model).version  # a changed model file never reuses old vectors
    emb_file = args.cache / f"emb_{args.model}_{version}_{tag}.npy"
    if emb_file.exists():
        emb = np.load(emb_file)
    else:
        t0 = time.perf_counter()
        emb = embed_all(args.lfw, files, dets, args.model, args.batch)
        print(f"embedding: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        np.save(emb_file, emb)

    ia = np.array([index[a] for a, _ in pairs])
    ib = np.array([index[b] for _, b in pairs])
    scores = np.einsum("ij,ij->i", emb[ia], emb[ib])
    fusion: dict[str, Any] = {}
    embedder = EMBEDDERS[args.model]
    if issubclass(embedder, FusedEmbedder):  # the z-norm weights over all pairs, then the fused score
        names = list(embedder.part_weights)
        parts = pair_cosines(emb[ia], emb[ib], [EMBEDDERS[m].dim for m in names])
        weights = impostor_weights(parts, labels)
        scores = fuse(parts, weights)
        fusion = {"fusion_weights": dict(zip(names, np.round(weights, 4).tolist(), strict=True)), "flip": True}
    result = {
        "model": args.model,
        "data": f"LFW View 2 pairs.txt, {len(pairs)} pairs, {len(files)} images (deep-funneled)",
        "detector": "faceflow.detect yunet, default options (YuNet 2023mar, cv2.FaceDetectorYN, score 0.6)",
        "no_face": int(np.isnan(dets[:, :4]).any(1).sum()),
        "box_landmarks5": np.round(box_point_fractions(dets), 3).tolist(),
        "threads": os.environ.get("FACEFLOW_THREADS", "all"),
        "date": time.strftime("%Y-%m-%d"),
        **fusion,
        **analyse(scores, labels, folds, args.fmr),
    }
    text = json.dumps(result, indent=2)
    print(text)
    (args.cache / f"result_{args.model}_{tag}.json").write_text(text + "\n")


if __name__ == "__main__":
    main()
