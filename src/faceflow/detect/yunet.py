"""YuNet 2023mar (libfacedetection, MIT) through OpenCV's ``FaceDetectorYN``.

OpenCV reshapes the network to each image (padded to a multiple of 32), so any size runs at its own
resolution; ONNX Runtime would need the fixed 640x640 input of the shipped graph and is no faster
(about 20 ms for 640x640 either way on this machine). YuNet's five points are already in faceflow's
order (image-left eye first, image-left mouth corner first).

The runtime's thread count does not apply: OpenCV's thread pool is process-wide (``cv2.setNumThreads``) and a
detector should not change it for every other stage.
"""

from __future__ import annotations

from typing import Any, ClassVar

import cv2
import numpy as np

from faceflow.detect.base import Detector, RawDetections, fit_within, pad_bottom_right
from faceflow.types import Image

MAX_SIDE = 1920
"""Longer images are shrunk to this first: beyond it the net costs seconds and its largest anchors
(stride 32) no longer cover the faces that such photos usually hold."""

MIN_SIDE = 64
"""Narrower images are padded to this: OpenCV 4.12 returned rows of garbage (infinite or 1e9 px boxes
scoring 1.0) for inputs 32 px or less on a side, e.g. 17x301."""


class YuNetDetector(Detector):
    """YuNet: a 75k-parameter anchor-free CNN, fast and accurate down to faces of about 10 px."""

    name: ClassVar[str] = "yunet"
    default_score_threshold: ClassVar[float] = 0.6

    def _load(self) -> Any:
        path = str(self.runtime.path("yunet"))
        return cv2.FaceDetectorYN.create(
            path, "", (320, 320), self.score_threshold, self.options.nms_threshold, 5000
        )

    def _detect(self, image: Image) -> RawDetections:
        small, scale = fit_within(image, MAX_SIDE)
        bgr = cv2.cvtColor(pad_bottom_right(small, minimum=MIN_SIDE), cv2.COLOR_RGB2BGR)
        net = self.model
        with self._lock:  # FaceDetectorYN keeps the input size and its buffers as state
            net.setInputSize((bgr.shape[1], bgr.shape[0]))
            _, rows = net.detect(bgr)
        if rows is None or len(rows) == 0:
            return RawDetections.empty(with_landmarks=True)
        rows = np.asarray(rows, np.float32)
        rows = rows[np.isfinite(rows).all(axis=1)]
        boxes = np.concatenate([rows[:, :2], rows[:, :2] + rows[:, 2:4]], axis=1)
        raw = RawDetections(boxes, rows[:, 14].copy(), rows[:, 4:14].reshape(-1, 5, 2).copy())
        return raw.mapped(1 / scale)
