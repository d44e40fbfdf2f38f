"""WIDER FACE validation: the official ground truth, the official evaluation, and a detector runner.

The evaluation follows the official ``eval_tools`` (and its Python port ``widerface_evaluate``):

* predictions of each image are sorted by score, highest first (stable, as MATLAB's ``sort``);
* scores are min-max normalised over all predictions of all evaluated images (when they are all
  equal, which the official code would divide by zero on, every score becomes 1);
* boxes are compared in ``x, y, w, h`` with the +1-pixel convention: ``x2 = x + w`` and areas and
  intersections count ``x2 - x1 + 1`` pixels; a prediction matches the ground-truth face of highest
  IoU (first on ties) when that IoU is >= 0.5;
* a prediction matching a face outside the difficulty's ``gt_list`` is ignored (neither TP nor FP);
  a second prediction on an already recalled face is a false positive;
* 1,000 thresholds ``1 - (t + 1) / 1000``; precision = TP / kept predictions over all images,
  recall = TP / faces in the ``gt_list``s; AP is the VOC area under the precision envelope.

Only images present under ``WIDER_val/images/`` are evaluated (the ``.mat`` files cover all 3,226).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from faceflow.detect.base import iou_matrix
from faceflow.errors import DatasetError
from faceflow.eval._common import median_ms, run_item, track
from faceflow.eval.cache import ResultCache
from faceflow.types import Face, Image

SETTINGS = ("easy", "medium", "hard")
DetectFn = Callable[[Image], "npt.ArrayLike"]
"""``detect_fn(rgb_image) -> (N, 5)`` rows ``x1, y1, x2, y2, score`` in image pixels."""


@dataclass(frozen=True)
class WiderImage:
    """One validation image: ``key`` is ``"<event>/<file>.jpg"`` under ``WIDER_val/images``."""

    key: str
    path: Path
    boxes: npt.NDArray[np.float64]
    """``(N, 4)`` ground-truth boxes ``x, y, w, h`` exactly as in ``wider_face_val.mat``."""
    keep: Mapping[str, npt.NDArray[np.int64]]
    """Per setting, the 0-based indices of the faces in that setting's ``gt_list``."""

    @property
    def boxes_xyxy(self) -> npt.NDArray[np.float64]:
        """The boxes as ``x1, y1, x2, y2`` (``x2 = x + w``)."""
        return np.hstack([self.boxes[:, :2], self.boxes[:, :2] + self.boxes[:, 2:]])


def event_parity(key: str) -> int:
    """0 for an image of an even-numbered event (``"12--Group/..."``), 1 for an odd one: the split into
    two halves by event that any choice made by looking at WIDER figures is made on (one half chosen
    on, the other reported)."""
    return int(key.split("--", 1)[0]) % 2


def _cells(arr: npt.NDArray[Any]) -> list[Any]:
    """The cells of a MATLAB ``(n, 1)`` cell array."""
    return [c[0] for c in arr]


def _load_mat(path: Path) -> dict[str, Any]:
    """The variables of the MATLAB file at ``path``; a missing or unreadable one is a DatasetError naming it."""
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    if not path.is_file():
        raise DatasetError(f"{path}: no such file (expected the official WIDER FACE eval tools' ground truth)")
    try:
        return dict(loadmat(path))
    except (MatReadError, OSError, ValueError, TypeError) as exc:
        raise DatasetError(f"{path}: not a MATLAB file scipy can read ({exc})") from None


def load_wider(root: Path | str) -> list[WiderImage]:
    """Ground truth of the images present under ``<root>/WIDER_val/images``, in the ``.mat`` order."""
    root = Path(root)
    gt_dir, images = root / "ground_truth", root / "WIDER_val" / "images"
    full = _load_mat(gt_dir / "wider_face_val.mat")
    gt_lists = {s: _load_mat(gt_dir / f"wider_{s}_val.mat") for s in SETTINGS}
    out = []
    try:
        events = zip(_cells(full["event_list"]), _cells(full["file_list"]), _cells(full["face_bbx_list"]), strict=True)
        for e, (event, files, boxes) in enumerate(events):
            event_name = str(event[0])
            keeps = {s: _cells(_cells(gt_lists[s]["gt_list"])[e]) for s in SETTINGS}
            for j, (name, bbx) in enumerate(zip(_cells(files), _cells(boxes), strict=True)):
                key = f"{event_name}/{name[0]}.jpg"
                if not (images / key).is_file():
                    continue
                keep = {s: np.asarray(keeps[s][j], np.int64).reshape(-1) - 1 for s in SETTINGS}
                out.append(WiderImage(key, images / key, np.asarray(bbx, np.float64).reshape(-1, 4), keep))
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise DatasetError(f"{gt_dir / 'wider_face_val.mat'}: not the WIDER FACE ground truth with its "
                           f"wider_{{easy,medium,hard}}_val.mat ({type(exc).__name__}: {exc})") from None
    if not out:
        raise DatasetError(f"no image of wider_face_val.mat is present under {images}")
    return out


def boxes_from_faces(faces: Sequence[Face]) -> npt.NDArray[np.float64]:
    """``(N, 5)`` prediction rows ``x1, y1, x2, y2, score`` from detected faces."""
    return np.array([[*f.box, f.score] for f in faces], np.float64).reshape(-1, 5)


def _plus_one(xywh: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """``x, y, w, h`` -> corners whose continuous IoU equals the official +1-pixel IoU."""
    return np.hstack([xywh[:, :2], xywh[:, :2] + xywh[:, 2:4] + 1])


def _image_matches(
    pred_xywh: npt.NDArray[np.float64], gt_xywh: npt.NDArray[np.float64], keep: npt.NDArray[np.int64], iou: float
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Per prediction (score order): cumulative counted proposals and cumulative recalled faces."""
    overlaps = iou_matrix(_plus_one(pred_xywh), _plus_one(gt_xywh))
    best = overlaps.argmax(axis=1)
    hit = overlaps[np.arange(len(best)), best] >= iou
    kept = np.zeros(len(gt_xywh), bool)
    kept[keep] = True
    counted = ~(hit & ~kept[best])  # a hit on an ignored face is not a proposal
    good = np.nonzero(hit & kept[best])[0]
    first = np.zeros(len(best), bool)
    first[good[np.unique(best[good], return_index=True)[1]]] = True  # first hit on each kept face
    return np.cumsum(counted), np.cumsum(first)


def voc_ap(recall: npt.ArrayLike, precision: npt.ArrayLike) -> float:
    """VOC area under the precision envelope (recall ascending)."""
    mrec = np.r_[0.0, np.asarray(recall, np.float64), 1.0]
    mpre = np.r_[0.0, np.asarray(precision, np.float64), 0.0]
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def _normalised(preds: Mapping[str, npt.ArrayLike], keys: Sequence[str]) -> dict[str, npt.NDArray[np.float64]]:
    """Predictions as ``x, y, w, h, score``, score-sorted, scores min-max normalised over all images."""
    out: dict[str, npt.NDArray[np.float64]] = {}
    for key in keys:
        p: npt.NDArray[np.float64] = np.asarray(preds.get(key, np.zeros((0, 5))), np.float64).reshape(-1, 5)
        p = p[np.argsort(-p[:, 4], kind="stable")]
        out[key] = np.hstack([p[:, :2], p[:, 2:4] - p[:, :2], p[:, 4:]])
    scores = np.concatenate([p[:, 4] for p in out.values()])
    if scores.size:
        lo, hi = scores.min(), scores.max()
        for p in out.values():
            p[:, 4] = (p[:, 4] - lo) / (hi - lo) if hi > lo else 1.0
    return out


def evaluate_wider(
    preds: Mapping[str, npt.ArrayLike], gt: Sequence[WiderImage], iou: float = 0.5, thresh_num: int = 1000
) -> dict[str, Any]:
    """AP per setting of ``preds`` (key -> ``(N, 5)`` ``x1, y1, x2, y2, score``) against ``gt``.

    Returns ``easy``, ``medium``, ``hard`` and ``curves`` (per setting ``precision``, ``recall``
    over the thresholds, from the highest down). Predictions of images not in ``gt`` are unused;
    an image of ``gt`` without predictions counts its faces as missed.
    """
    norm = _normalised(preds, [im.key for im in gt])
    thresholds = 1 - (np.arange(thresh_num) + 1) / thresh_num
    result: dict[str, Any] = {"protocol": "wider"}
    curves = {}
    for setting in SETTINGS:
        proposals, recalled = np.zeros(thresh_num), np.zeros(thresh_num)
        faces = 0
        for im in gt:
            keep = im.keep[setting]
            faces += len(keep)
            p = norm[im.key]
            if len(im.boxes) == 0 or len(p) == 0:
                continue
            counted, recall = _image_matches(p[:, :4], im.boxes, keep, iou)
            n = np.searchsorted(-p[:, 4], -thresholds, side="right")  # predictions with score >= t
            has = n > 0
            proposals[has] += counted[n[has] - 1]
            recalled[has] += recall[n[has] - 1]
        precision = np.divide(recalled, proposals, out=np.zeros(thresh_num), where=proposals > 0)
        recall_curve = recalled / faces if faces else np.zeros(thresh_num)
        result[setting] = voc_ap(recall_curve, precision)
        curves[setting] = {"precision": precision, "recall": recall_curve}
    result["curves"] = curves
    return result


def run_wider(
    root: Path | str, detect_fn: DetectFn, progress: bool = True, cache: ResultCache | None = None
) -> dict[str, Any]:
    """Run ``detect_fn`` on every validation image present under ``root`` and evaluate.

    ``detect_fn`` gets the decoded RGB image (decoding is not timed) and returns ``(N, 5)`` rows
    ``x1, y1, x2, y2, score`` (see :func:`boxes_from_faces`). Adds ``median_ms``, ``images`` and
    ``errors`` (images whose :class:`~faceflow.errors.FaceflowError` left them without predictions).
    """

    def detect(image: Image) -> npt.NDArray[np.float64]:
        return np.asarray(detect_fn(image), np.float64).reshape(-1, 5)

    gt = load_wider(root)
    preds: dict[str, npt.NDArray[np.float64]] = {}
    seconds: list[float | None] = []
    errors: list[dict[str, str]] = []
    for im in track(gt, "WIDER FACE", progress):
        value, secs = run_item(im.path, detect, cache, errors, image=True)
        seconds.append(secs)
        preds[im.key] = value if value is not None else np.zeros((0, 5))
    result = evaluate_wider(preds, gt)
    result.update(median_ms=median_ms(seconds), images=len(gt), errors=errors, **half_aps(preds, gt))
    return result


def half_aps(preds: Mapping[str, npt.ArrayLike], gt: Sequence[WiderImage]) -> dict[str, float]:
    """AP per setting on each half of the events (see :func:`event_parity`), as ``even_easy``,
    ``odd_hard`` and so on: the figures that a choice made on one half is reported on."""
    out: dict[str, float] = {}
    if not all(im.key.split("--", 1)[0].isdigit() for im in gt):
        return out  # not WIDER's "<event number>--<name>/" layout: no halves to report
    for parity, half in enumerate(("even", "odd")):
        part = [im for im in gt if event_parity(im.key) == parity]
        ev = evaluate_wider(preds, part)
        out.update({f"{half}_{s}": float(ev[s]) for s in SETTINGS})
    return out
