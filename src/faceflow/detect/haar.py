"""OpenCV's frontal Haar cascade (Viola-Jones, ``haarcascade_frontalface_default.xml``).

The grey image is histogram-equalised and scanned with scale step 1.1; a face needs 4 overlapping
raw hits (``minNeighbors``), which is what removes most false alarms. Scores: ``detectMultiScale3``
with ``outputRejectLevels`` gives, per face, the boosted sum of the cascade's last stage (about -2..8
on real photos); we report ``sigmoid(sum / 2)``, a monotone squashing into 0..1 (0.5 at a sum of 0),
not a calibrated probability. The default threshold 0.7 (a sum of 1.7 or more) removed about a third
to half of the false alarms on WIDER FACE validation samples and almost none of the faces found.
"""

from __future__ import annotations

from typing import Any, ClassVar

import cv2
import numpy as np

from faceflow.detect.base import Detector, RawDetections, fit_within, sigmoid
from faceflow.errors import ModelUnavailable
from faceflow.types import Image

SCALE_STEP = 1.1
MIN_NEIGHBORS = 4
SUM_GAIN = 0.5
MAX_SIDE = 2048
"""Longer images are shrunk to this first (the scan's cost grows with the pixel count)."""


class HaarDetector(Detector):
    """Haar cascade: fast on small images, frontal upright faces only, many misses and false alarms."""

    name: ClassVar[str] = "haar"
    default_score_threshold: ClassVar[float] = 0.7
    gives_landmarks5: ClassVar[bool] = False

    def _load(self) -> Any:
        cascade = cv2.CascadeClassifier(str(self.runtime.path("haar")))
        if cascade.empty():
            raise ModelUnavailable("OpenCV could not read the Haar cascade file")
        return cascade

    def _detect(self, image: Image) -> RawDetections:
        small, s = fit_within(image, MAX_SIDE)
        grey = cv2.equalizeHist(cv2.cvtColor(small, cv2.COLOR_RGB2GRAY))
        cascade = self.model
        with self._lock:
            rects, _, sums = cascade.detectMultiScale3(
                grey, scaleFactor=SCALE_STEP, minNeighbors=MIN_NEIGHBORS, outputRejectLevels=True
            )
        if len(rects) == 0:
            return RawDetections.empty()
        r = np.asarray(rects, np.float32).reshape(-1, 4)
        boxes = np.concatenate([r[:, :2], r[:, :2] + r[:, 2:]], axis=1)
        scores = sigmoid(np.asarray(sums).reshape(-1), SUM_GAIN)
        return RawDetections(boxes, scores).mapped(1 / s)
