"""Weighted box fusion and the ``accurate`` mode: CenterFace and multi-scale YuNet, fused.

Weighted box fusion (Solovyev, Wang and Gabruseva, 2019) keeps what every member found instead of
choosing between them as NMS does: boxes of all members, highest score first, join the cluster whose
fused box overlaps them most (IoU above a threshold) or start a new one; a cluster's box and five
points are the averages of its members' weighted by score, and its score is the mean over *all*
members of each member's best score in it, a member that did not vote counting 0. A face that only
one of two detectors saw keeps half its score, so agreement ranks above a lone guess.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from faceflow.detect.base import Detector, DetectorOptions, RawDetections, iou_matrix, nms
from faceflow.detect.centerface import CenterFaceDetector
from faceflow.detect.yunet_ort import YuNetOrtDetector
from faceflow.types import Face, FloatArray, Image


def weighted_box_fusion(
    boxes: Sequence[npt.ArrayLike],
    scores: Sequence[npt.ArrayLike],
    landmarks: Sequence[npt.ArrayLike | None] | None = None,
    weights: Sequence[float] | None = None,
    iou_threshold: float = 0.55,
) -> RawDetections:
    """Fuse the detections of several members (one entry per member in each sequence).

    ``boxes[m]`` is ``(N_m, 4)`` x1, y1, x2, y2, ``scores[m]`` ``(N_m,)``, ``landmarks[m]``
    ``(N_m, 5, 2)`` or ``None``. A box joins the cluster whose fused box has the highest IoU with it
    when that IoU exceeds ``iou_threshold``. Fused coordinates and points are averages weighted by
    ``weight * score`` (points over the boxes that have them); the fused score is
    ``sum_m weight_m * best_score_m / sum_m weight_m``. The result is sorted by score, highest
    first; its ``landmarks5`` is ``None`` unless every cluster holds at least one box with points.
    """
    n_members = len(boxes)
    w = np.ones(n_members) if weights is None else np.asarray(weights, np.float64)
    lms_in = list(landmarks) if landmarks is not None else [None] * n_members
    if not (len(scores) == len(lms_in) == len(w) == n_members):
        raise ValueError("boxes, scores, landmarks and weights need one entry per member")
    b = np.concatenate([np.asarray(x, np.float64).reshape(-1, 4) for x in boxes] + [np.zeros((0, 4))])
    s = np.concatenate([np.asarray(x, np.float64).reshape(-1) for x in scores] + [np.zeros(0)])
    member = np.concatenate([np.full(len(np.asarray(x).reshape(-1)), m) for m, x in enumerate(scores)]
                            + [np.zeros(0, np.int64)]).astype(np.int64)
    pts = np.concatenate([np.full((len(np.asarray(x).reshape(-1)), 5, 2), np.nan) if p is None
                          else np.asarray(p, np.float64).reshape(-1, 5, 2) for x, p in zip(scores, lms_in, strict=True)]
                         + [np.zeros((0, 5, 2))])
    if len(b) != len(s):
        raise ValueError(f"{len(b)} boxes but {len(s)} scores")
    vote = w[member] * s  # each box's weight in the averages
    clusters: list[list[int]] = []
    fused = np.zeros((0, 4))
    for i in np.argsort(-vote, kind="stable"):
        overlap = iou_matrix(b[i], fused)[0] if len(fused) else np.zeros(0)
        j = int(np.argmax(overlap)) if overlap.size else -1
        if j < 0 or overlap[j] <= iou_threshold:
            clusters.append([int(i)])
            fused = np.vstack([fused, b[i]])
            continue
        clusters[j].append(int(i))
        idx = clusters[j]
        fused[j] = vote[idx] @ b[idx] / max(vote[idx].sum(), 1e-12)
    out_scores = np.zeros(len(clusters))
    out_pts = np.full((len(clusters), 5, 2), np.nan)
    for j, idx in enumerate(clusters):
        best = np.zeros(n_members)
        np.maximum.at(best, member[idx], s[idx])
        out_scores[j] = w @ best / w.sum()
        has = [i for i in idx if not np.isnan(pts[i]).any()]
        if has:
            out_pts[j] = np.tensordot(vote[has], pts[has], axes=1) / max(vote[has].sum(), 1e-12)
    order = np.argsort(-out_scores, kind="stable")
    lms = None if np.isnan(out_pts).any() else out_pts[order].astype(np.float32)
    return RawDetections(fused[order].astype(np.float32), out_scores[order].astype(np.float32), lms)


def _arrays(faces: Sequence[Face]) -> tuple[FloatArray, FloatArray, FloatArray | None]:
    """Boxes, scores and (when every face has them) five points of detected faces."""
    boxes = np.array([f.box for f in faces], np.float32).reshape(-1, 4)
    scores = np.array([f.score for f in faces], np.float32)
    with_points = all(f.landmarks5 is not None for f in faces)
    lms = np.array([f.landmarks5 for f in faces], np.float32).reshape(-1, 5, 2) if with_points else None
    return boxes, scores, lms


class AccurateDetector(Detector):
    """``accurate`` mode: CenterFace, and YuNet at the image's size and enlarged ``upscale`` times for
    faces under ``small_face`` pixels, fused by :func:`weighted_box_fusion`.

    Members run at ``member_threshold`` (their weak votes still count in the fused mean) with their
    own post-processing (NMS, padded second pass); the fused result then gets the shared one.
    """

    name: ClassVar[str] = "accurate"
    default_score_threshold: ClassVar[float] = 0.5
    retry_pad: ClassVar[float] = 0.0  # each member looks again on a padded copy on its own
    member_threshold: ClassVar[float] = 0.05
    upscale: ClassVar[float] = 2.0
    upscale_max_side: ClassVar[int] = 2560
    """The enlarged pass is shrunk to this longer side (at most), and skipped when that leaves no
    enlargement."""
    small_face: ClassVar[float] = 32.0
    """Faces of the enlarged pass are kept when their shorter side, in image pixels, is below this."""
    fusion_iou: ClassVar[float] = 0.55

    def _load(self) -> Any:
        opts = DetectorOptions(score_threshold=min(self.member_threshold, self.score_threshold),
                               nms_threshold=self.options.nms_threshold, threads=self.options.threads)
        return (CenterFaceDetector(opts, self.store), YuNetOrtDetector(opts, self.store),
                YuNetOrtDetector(opts, self.store, scale=self.upscale, max_side=self.upscale_max_side))

    def _yunet_multiscale(self, image: Image) -> list[Face]:
        """YuNet at 1x, plus the small faces of the enlarged pass, merged by NMS."""
        _, plain, enlarged = self.model
        faces = plain.detect(image)
        if enlarged.resize_factor(*image.shape[:2]) <= 1:
            return faces
        faces += [f for f in enlarged.detect(image) if min(f.width, f.height) < self.small_face]
        boxes, scores, _ = _arrays(faces)
        return [faces[i] for i in nms(boxes, scores, self.options.nms_threshold)]

    def _detect(self, image: Image) -> RawDetections:
        centerface = self.model[0]
        members = [_arrays(centerface.detect(image)), _arrays(self._yunet_multiscale(image))]
        boxes, scores, lms = zip(*members, strict=True)
        return weighted_box_fusion(boxes, scores, lms, iou_threshold=self.fusion_iou)
