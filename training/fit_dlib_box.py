"""Fit ``L5_BOX`` and ``BOX_ADAPTERS`` (:mod:`faceflow.landmarks`): HOG-like boxes for dlib's predictor.

    FACEFLOW_THREADS=1 .venv/bin/python training/fit_dlib_box.py --datasets ../shared/datasets

dlib's 68-point predictor was trained on the boxes of dlib's HOG detector, so faces from other
detectors get the box HOG would have given them. Data (no 300-W): the images of
``fit_mesh_to_68.fit_images`` (500 LFW, 500 UTKFace train), each drawn at a random scale (1 to 3x,
log-uniform) and offset (0 to 24 px), seeded: HOG's boxes snap to its 8-pixel cells and pyramid
levels, and LFW's and UTKFace's faces all have about the same size and place, so drawn as they come
they would all snap the same way (so drawn, HOG's sides come out about 5 % above what the fitted
``L5_BOX`` gives on LFW and about 7 % below on UTKFace).

On each drawn image, dlib HOG (faceflow's ``dlib_hog``), YuNet and both BlazeFace models; the face
nearest the image's centre from each. Fits, over the images where both found it (outliers beyond
+-0.3 in log side ratio left out):

* ``L5_BOX``: HOG's side against YuNet's eye distance and eyes-to-mouth distance, least squares on
  the relative error, then scaled so the geometric mean ratio is 1;
* ``BOX_ADAPTERS``: the mean vertical offset of HOG's box centre from the detector's (a fraction of its
  height) and the geometric mean of HOG's side over the detector's width.

It prints the constants and the spread of HOG's boxes around them (the centre offsets across and along
the face, as a fraction of the side, were below 0.5 % on average and are not modelled).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
from fit_mesh_to_68 import central_face, fit_images

from faceflow.detect import create_detector
from faceflow.io import load_image
from faceflow.types import Face

Array = npt.NDArray[np.float64]
DETECTORS = ("yunet", "blazeface_short", "blazeface_full")
MAX_SCALE = 3.0
MAX_OFFSET = 24.0
OUTLIER = 0.3


def drawn(image: npt.NDArray[np.uint8], rng: np.random.Generator) -> npt.NDArray[np.uint8]:
    """``image`` scaled by a random factor in [1, :data:`MAX_SCALE`] and moved by up to
    :data:`MAX_OFFSET` pixels on a canvas with that margin (borders replicated)."""
    scale = math.exp(rng.uniform(0, math.log(MAX_SCALE)))
    dx, dy = rng.uniform(0, MAX_OFFSET, 2)
    h, w = image.shape[:2]
    size = (math.ceil(w * scale + 2 * MAX_OFFSET), math.ceil(h * scale + 2 * MAX_OFFSET))
    m = np.array([[scale, 0, MAX_OFFSET / 2 + dx], [0, scale, MAX_OFFSET / 2 + dy]])
    return np.ascontiguousarray(cv2.warpAffine(image, m, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE))


def collect(paths: list[Path]) -> list[dict[str, Face | None]]:
    """For each drawn image, the face nearest its centre from HOG and each of :data:`DETECTORS`."""
    detectors = {name: create_detector(name) for name in ("dlib_hog", *DETECTORS)}
    rng = np.random.default_rng(0)
    rows = []
    for path in paths:
        image = drawn(load_image(path), rng)
        rows.append({name: central_face(detector.detect(image), image) for name, detector in detectors.items()})
    return rows


def hog_pairs(rows: list[dict[str, Face | None]], name: str, field: str) -> list[tuple[Array, Array]]:
    """(HOG's box, ``field`` of detector ``name``'s face) where both are there."""
    out = []
    for row in rows:
        hog, face = row["dlib_hog"], row[name]
        value = None if face is None else getattr(face, field)
        if hog is not None and value is not None:
            out.append((np.asarray(hog.box, np.float64), np.asarray(value, np.float64)))
    return out


def _inliers(log_ratio: npt.NDArray[np.float64]) -> npt.NDArray[np.bool_]:
    return np.abs(log_ratio - np.median(log_ratio)) <= OUTLIER


def fit_l5(pairs: list[tuple[Array, Array]]) -> tuple[float, float]:
    """``L5_BOX`` from (HOG box, five points) pairs; prints the spread."""
    side = np.array([hog[2] - hog[0] for hog, _ in pairs])
    p = np.array([l5 for _, l5 in pairs], np.float64)
    eyes, mouth = (p[:, 0] + p[:, 1]) / 2, (p[:, 3] + p[:, 4]) / 2
    x = np.stack([np.linalg.norm(p[:, 1] - p[:, 0], axis=1), np.linalg.norm(mouth - eyes, axis=1)], axis=1)
    keep = _inliers(np.log(side / (x @ np.linalg.lstsq(x, side, rcond=None)[0])))
    coef = np.linalg.lstsq(x[keep] / side[keep, None], np.ones(keep.sum()), rcond=None)[0]
    log_ratio = np.log(side[keep] / (x[keep] @ coef))
    coef *= math.exp(log_ratio.mean())
    print(f"L5_BOX from {keep.sum()} of {len(side)} faces: side spread {100 * log_ratio.std():.1f} % (log sd)")
    return round(float(coef[0]), 3), round(float(coef[1]), 3)


def fit_box(pairs: list[tuple[Array, Array]], name: str) -> tuple[float, float]:
    """A ``BOX_ADAPTERS`` entry from (HOG box, detector box) pairs; prints the spread."""
    hog, box = (np.array(v, np.float64) for v in zip(*pairs, strict=True))
    width, height = box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]
    log_ratio = np.log((hog[:, 2] - hog[:, 0]) / width)
    shift = ((hog[:, 1] + hog[:, 3]) - (box[:, 1] + box[:, 3])) / 2 / height
    keep = _inliers(log_ratio)
    print(
        f"{name} from {keep.sum()} of {len(pairs)} faces: side spread {100 * log_ratio[keep].std():.1f} %, "
        f"vertical offset spread {100 * shift[keep].std():.1f} % of the height"
    )
    return round(float(shift[keep].mean()), 3), round(float(np.exp(log_ratio[keep].mean())), 3)


def main(argv: list[str] | None = None) -> None:
    """Detect on the drawn images and print the fitted constants."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", type=Path, default=Path("../shared/datasets"))
    args = parser.parse_args(argv)
    rows = collect([p for paths in fit_images(args.datasets).values() for p in paths])
    print(f"L5_BOX = {fit_l5(hog_pairs(rows, 'yunet', 'landmarks5'))}")
    adapters = {name: fit_box(hog_pairs(rows, name, "box"), name) for name in DETECTORS}
    print("BOX_ADAPTERS = {" + ", ".join(f'"{k}": {v}' for k, v in adapters.items()) + "}")


if __name__ == "__main__":
    main()
