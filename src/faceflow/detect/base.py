"""What every detector shares: options, the result contract, NMS and the post-processing order."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import cv2
import numpy as np
import numpy.typing as npt

from faceflow.errors import ConfigError
from faceflow.models.runtime import LazyModel, Runtime, default_runtime
from faceflow.stage import option
from faceflow.types import Face, FloatArray, Image

DETECTORS: dict[str, str] = {
    "yunet": "faceflow.detect.yunet:YuNetDetector",
    "centerface": "faceflow.detect.centerface:CenterFaceDetector",
    "retinaface": "faceflow.detect.retinaface:RetinaFaceDetector",
    "blazeface_short": "faceflow.detect.blazeface:BlazeFaceShortDetector",
    "blazeface_full": "faceflow.detect.blazeface:BlazeFaceFullDetector",
    "dlib_hog": "faceflow.detect.dlib_hog:DlibHogDetector",
    "haar": "faceflow.detect.haar:HaarDetector",
    "accurate": "faceflow.detect.ensemble:AccurateDetector",
    "thorough": "faceflow.detect.ensemble:ThoroughDetector",
    "fast": "faceflow.detect.yunet_ort:FastDetector",
}
"""Detector names (for ``--detector``) and the class implementing each, imported on first use."""

DEFAULT_DETECTOR = "yunet"


@dataclass(frozen=True)
class DetectorOptions:
    """Settings of the detect stage (MediaPipe Tasks style: one options object); every detector
    understands all of them, and ignores ``detector``, which the stage uses to pick the class."""

    detector: str = option(DEFAULT_DETECTOR,
                           "Face detector, or a mode: accurate (ensemble), thorough (larger ensemble), fast.",
                           flag="detector", choices=tuple(DETECTORS))
    score_threshold: float | None = option(
        None, "Keep detections scoring at least this (default: the detector's own).", flag="threshold")
    nms_threshold: float = option(0.4, "IoU above which the lower-scoring of two boxes is suppressed.")
    min_face_size: float = option(0.0, "Drop faces narrower or shorter than this many pixels.", flag="min-face")
    max_faces: int | None = option(None, "Keep at most this many faces (highest scores first).")

    def __post_init__(self) -> None:
        """Refuse values that OpenCV would reject on the first image or that could never keep a face."""
        for name in ("score_threshold", "nms_threshold"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:  # NaN fails the comparison too
                raise ConfigError(f"detect {name} {value:g} is outside [0, 1], where scores and overlaps lie")
        if not self.min_face_size >= 0.0:
            raise ConfigError(f"detect min_face_size must be 0 or more pixels, got {self.min_face_size:g}")
        if self.max_faces is not None and self.max_faces < 1:
            raise ConfigError(f"detect max_faces must be at least 1 (or None: all), got {self.max_faces}")


@dataclass
class RawDetections:
    """What a model produced before the shared post-processing: boxes, scores, optional 5 points."""

    boxes: FloatArray  # (N, 4) x1, y1, x2, y2 in image pixels
    scores: FloatArray  # (N,)
    landmarks5: FloatArray | None = None  # (N, 5, 2) in the order of faceflow.types

    @classmethod
    def empty(cls, with_landmarks: bool = False) -> RawDetections:
        return cls(
            np.zeros((0, 4), np.float32),
            np.zeros((0,), np.float32),
            np.zeros((0, 5, 2), np.float32) if with_landmarks else None,
        )

    def __len__(self) -> int:
        return len(self.scores)

    def mapped(self, scale: float = 1.0, dx: float = 0.0, dy: float = 0.0) -> RawDetections:
        """Coordinates mapped by ``p * scale + (dx, dy)``: from a resized or padded copy back to the image."""
        shift = np.array([dx, dy], np.float32)
        boxes = self.boxes.astype(np.float32) * scale + np.tile(shift, 2)
        lms = None if self.landmarks5 is None else self.landmarks5.astype(np.float32) * scale + shift
        return RawDetections(boxes, self.scores.astype(np.float32), lms)


def sigmoid(x: npt.ArrayLike, gain: float = 1.0) -> FloatArray:
    """``1 / (1 + exp(-gain * x))`` as float32, safe for large ``|x|``: maps logits and margins to 0..1."""
    z = np.clip(gain * np.asarray(x, np.float64), -100.0, 100.0)
    return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)


def fit_within(image: Image, max_side: int) -> tuple[Image, float]:
    """``image`` shrunk (area interpolation) so that its longer side is at most ``max_side``, and the
    scale applied (1.0 when it already fits, and then the image itself)."""
    h, w = image.shape[:2]
    if max(h, w) <= max_side:
        return image, 1.0
    s = max_side / max(h, w)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    return np.asarray(cv2.resize(image, size, interpolation=cv2.INTER_AREA), np.uint8), size[0] / w


def pad_bottom_right(image: Image, multiple: int = 1, minimum: int = 0) -> Image:
    """``image`` with black added at the bottom and right so that each side is a multiple of
    ``multiple`` and at least ``minimum``; pixel coordinates are unchanged."""
    h, w = image.shape[:2]
    th = max(-(-h // multiple) * multiple, -(-minimum // multiple) * multiple)
    tw = max(-(-w // multiple) * multiple, -(-minimum // multiple) * multiple)
    if (th, tw) == (h, w):
        return image
    return np.asarray(cv2.copyMakeBorder(image, 0, th - h, 0, tw - w, cv2.BORDER_CONSTANT, value=(0, 0, 0)),
                      np.uint8)


def pad_image(image: Image, fraction: float) -> tuple[Image, int, int]:
    """``image`` with a border of ``fraction`` of its size on every side, in its mean colour.

    Returns the padded image and the left and top border widths (to map detections back). A flat
    border (rather than a replicated or mirrored one) adds no face-like structure of its own.
    """
    h, w = image.shape[:2]
    px, py = round(w * fraction), round(h * fraction)
    fill = [float(c) for c in image.reshape(-1, image.shape[2]).mean(0)]
    padded = cv2.copyMakeBorder(image, py, py, px, px, cv2.BORDER_CONSTANT, value=fill)
    return np.asarray(padded, np.uint8), px, py


def paired_iou(a: npt.ArrayLike, b: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """IoU of ``[x1, y1, x2, y2]`` boxes ``a[..., :]`` and ``b[..., :]`` row by row (they broadcast)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = iw * ih
    area_a = np.clip(a[..., 2] - a[..., 0], 0, None) * np.clip(a[..., 3] - a[..., 1], 0, None)
    area_b = np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(b[..., 3] - b[..., 1], 0, None)
    union = area_a + area_b - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def iou_matrix(a: npt.ArrayLike, b: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Pairwise IoU of two sets of ``[x1, y1, x2, y2]`` boxes: ``(len(a), len(b))``."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    return paired_iou(a[:, None, :], b[None, :, :])


def touching_pairs(a: npt.ArrayLike, b: npt.ArrayLike) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Indices ``(i, j)`` of every pair of boxes ``a[i]``, ``b[j]`` that may overlap (a superset of
    the pairs with IoU > 0), found with k-d trees on the centres instead of all ``len(a) * len(b)``.

    Two boxes overlap only if their centres are closer, on each axis, than half the sum of their
    sides, hence than the longer side of the larger box: so each box looks for the other set's centres
    within its own longer side (Chebyshev distance), from both sides.
    """
    from scipy.spatial import cKDTree

    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    if len(a) == 0 or len(b) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    ca, cb = (a[:, :2] + a[:, 2:]) / 2, (b[:, :2] + b[:, 2:]) / 2
    ra = np.maximum(a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]).clip(0)
    rb = np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]).clip(0)
    pairs: list[npt.NDArray[np.int64]] = [np.zeros((0, 2), np.int64)]
    for centres, radii, tree, flip in ((ca, ra, cKDTree(cb), False), (cb, rb, cKDTree(ca), True)):
        found = tree.query_ball_point(centres, radii, p=np.inf)
        counts = np.fromiter((len(f) for f in found), np.int64, len(found))
        if counts.sum():
            rows = np.repeat(np.arange(len(found)), counts)
            cols = np.concatenate([np.asarray(f, np.int64) for f in found if f])
            pairs.append(np.stack([cols, rows], axis=1) if flip else np.stack([rows, cols], axis=1))
    both = np.concatenate(pairs)
    key = np.unique(both[:, 0] * len(b) + both[:, 1])
    return key // len(b), key % len(b)


def opencv_nms(xywh: npt.NDArray[np.float64], scores: npt.NDArray[np.float32], threshold: float,
               top_k: int = 0) -> npt.NDArray[np.int64]:
    """``cv2.dnn.NMSBoxes`` on ``(x, y, w, h)`` boxes with scores above 0: kept rows, best first
    (``top_k`` of them at most, 0 for all)."""
    keep = cv2.dnn.NMSBoxes(cast(Any, xywh), cast(Any, scores), 0.0, float(threshold), top_k=top_k)
    return np.asarray(keep, dtype=np.int64).reshape(-1)


def nms(boxes: npt.ArrayLike, scores: npt.ArrayLike, threshold: float) -> npt.NDArray[np.int64]:
    """Greedy non-maximum suppression; returns kept indices, highest score first (ties: lower index
    first). A box is dropped when its IoU with a kept, higher-scoring box exceeds ``threshold``.

    The loop runs in OpenCV (``cv2.dnn.NMSBoxes``, the same greedy rule): in Python it cost about
    15 ms per WIDER image at a 0.05 score threshold, as much as the fast detector's network.
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(b) < 2:
        return np.arange(len(b), dtype=np.int64)
    # OpenCV wants float32 scores above a threshold >= 0; ranks keep the exact order and any score.
    order = np.argsort(-s, kind="stable")
    rank = np.empty(len(s), np.float32)
    rank[order] = np.arange(len(s), 0, -1, dtype=np.float32)
    wh = np.maximum(b[:, 2:] - b[:, :2], 0.0)
    # A box without area overlaps nothing (IoU 0): always kept, never suppressing. OpenCV would
    # divide 0 by 0 for two of them, so they stay out of its call.
    solid = np.nonzero((wh > 0).all(axis=1))[0]
    xywh = np.concatenate([b[solid, :2], wh[solid]], axis=1)
    kept = solid[opencv_nms(xywh, rank[solid], threshold)]
    mask = np.ones(len(s), bool)
    mask[solid] = False
    mask[kept] = True
    kept_in_order: npt.NDArray[np.int64] = order[mask[order]].astype(np.int64)
    return kept_in_order


class Detector(ABC):
    """Base of every face detector: subclasses implement :meth:`_detect`, the base does the rest.

    ``detect`` runs the model (and, when nothing reaches the threshold, a second pass on a padded copy
    for faces that fill the frame), then applies, in this order: the score threshold, NMS, clipping to
    the image, the minimum face size and ``max_faces``; it returns faces sorted by score, highest first.
    """

    name: ClassVar[str]
    default_score_threshold: ClassVar[float] = 0.5
    retry_pad: ClassVar[float] = 0.4
    """When a first pass finds nothing, look again with this fraction of the image added on each side
    (see :meth:`_detect_padded`); 0 disables the second pass."""
    retry_side: ClassVar[int] = 640
    """Longest side of the padded second-pass image (larger images are shrunk to it)."""
    suppresses: ClassVar[bool] = False
    """True when :meth:`_detect` already applies NMS at ``options.nms_threshold`` (then skipped here)."""
    gives_landmarks5: ClassVar[bool] = True
    """False for detectors without mouth corners (dlib HOG, Haar, BlazeFace): the 68-point stage
    fills them."""

    def __init__(self, options: DetectorOptions | None = None, runtime: Runtime | None = None) -> None:
        self.options = options or DetectorOptions()
        self.runtime = runtime or default_runtime()
        self._model: LazyModel[Any] = LazyModel(self._load)
        self._lock = threading.Lock()
        """Held around calls into model objects that keep state between calls (OpenCV, dlib)."""

    def _load(self) -> Any:
        """Build the model object; called once, on first use, so constructing a detector is cheap."""
        return None

    @property
    def model(self) -> Any:
        """The loaded model (see :meth:`_load`)."""
        return self._model.get()

    @property
    def score_threshold(self) -> float:
        t = self.options.score_threshold
        return self.default_score_threshold if t is None else t

    @abstractmethod
    def _detect(self, image: Image) -> RawDetections:
        """Run the model on an RGB image; return candidates at or above ``self.score_threshold``."""

    def _detect_padded(self, image: Image) -> RawDetections:
        """Second look at an image where nothing was found: shrunk to ``retry_side`` and padded.

        Faces that fill the frame (aligned crops, passport photos, LFW) are larger than the biggest
        anchors and lack the context the detectors were trained with; a flat border of
        ``retry_pad`` per side gives both back. Shrinking first bounds the cost on large images.
        """
        small, s = fit_within(image, int(self.retry_side / (1 + 2 * self.retry_pad)))
        padded, px, py = pad_image(small, self.retry_pad)
        return self._detect(padded).mapped(1 / s, -px / s, -py / s)

    def detect(self, image: Image) -> list[Face]:
        raw = self._detect(image)
        if self.retry_pad > 0 and not np.any(raw.scores >= self.score_threshold):
            raw = self._detect_padded(image)
        keep = raw.scores >= self.score_threshold
        boxes, scores = raw.boxes[keep], raw.scores[keep]
        lms = raw.landmarks5[keep] if raw.landmarks5 is not None else None
        idx = np.argsort(-scores, kind="stable") if self.suppresses else nms(boxes, scores, self.options.nms_threshold)
        h, w = image.shape[:2]
        kept = boxes[idx].astype(np.float32)
        kept[:, [0, 2]] = np.clip(kept[:, [0, 2]], 0, w)
        kept[:, [1, 3]] = np.clip(kept[:, [1, 3]], 0, h)
        side = np.minimum(kept[:, 2] - kept[:, 0], kept[:, 3] - kept[:, 1])
        ok = (side > 0) & (side >= self.options.min_face_size)
        idx, kept = idx[ok], kept[ok]
        if self.options.max_faces is not None:
            idx, kept = idx[: self.options.max_faces], kept[: self.options.max_faces]
        faces = [
            Face(box=box, score=float(scores[i]), detector=self.name, landmarks5=None if lms is None else lms[i])
            for i, box in zip(idx, kept, strict=True)
        ]
        return faces
