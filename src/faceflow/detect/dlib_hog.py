"""dlib's HOG + linear SVM frontal face detector (built into dlib, no model file).

Scores: dlib reports the SVM margin, 0 being its own decision boundary. We report
``sigmoid(2 * margin)``: 0.5 is dlib's default boundary and a margin of 1, a clear face, scores 0.88.
The default threshold 0.6 (a margin of 0.2) drops the weakest hits at the boundary (such as one on the
astronaut's suit) at little cost in recall on WIDER FACE samples. The 80x80 sliding window misses
smaller faces, so images up to ``UPSAMPLE_BELOW`` pixels on their longer side are searched once
upsampled (faces down to about 40 px).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np

from faceflow.detect.base import Detector, RawDetections, fit_within, sigmoid
from faceflow.types import Image

MARGIN_GAIN = 2.0
UPSAMPLE_BELOW = 1024
MAX_SIDE = 2048
"""Longer images are shrunk to this first (HOG over 12 Mpx takes seconds, and faces there are large)."""


def score_to_margin(score: float) -> float:
    """The margin whose score is ``score`` (the inverse of the mapping): dlib reports down to it."""
    score = min(max(score, 1e-6), 1 - 1e-6)
    return math.log(score / (1 - score)) / MARGIN_GAIN


class DlibHogDetector(Detector):
    """dlib HOG: frontal and near-frontal faces of 40 px and more; slow on large images, CPU only."""

    name: ClassVar[str] = "dlib_hog"
    default_score_threshold: ClassVar[float] = 0.6
    gives_landmarks5: ClassVar[bool] = False

    def _load(self) -> Any:
        import dlib

        return dlib.get_frontal_face_detector()

    def _detect(self, image: Image) -> RawDetections:
        small, s = fit_within(image, MAX_SIDE)
        upsample = 1 if max(small.shape[:2]) <= UPSAMPLE_BELOW else 0
        detector = self.model
        with self._lock:
            rects, margins, _ = detector.run(
                np.ascontiguousarray(small), upsample, score_to_margin(self.score_threshold)
            )
        if not rects:
            return RawDetections.empty()
        boxes = np.array([[r.left(), r.top(), r.right() + 1, r.bottom() + 1] for r in rects], np.float32)
        return RawDetections(boxes, sigmoid(list(margins), MARGIN_GAIN)).mapped(1 / s)
