"""YuNet 2023mar in ONNX Runtime, decoded in numpy: the same model as :mod:`faceflow.detect.yunet`
and the same WIDER FACE AP (within 0.002). On a WIDER image (about 1024x750, one thread) the network
takes about 20 ms in ONNX Runtime against 50-65 ms for OpenCV's ``FaceDetectorYN`` with its decoding;
faceflow's shared post-processing then costs both the same.

The shipped graph fixes its input at 1x3x640x640; the registry's derived ``yunet_dynamic`` file (see
:func:`faceflow.models.derive.onnx_yunet_dynamic`) makes its input size symbolic. The network sees BGR 0..255,
padded at the bottom and right to multiples of 32, exactly as OpenCV feeds it.

Decoding follows OpenCV's ``FaceDetectorYN``: per stride 8, 16 and 32, cells row-major; score
``sqrt(clip(cls) * clip(obj))``; centre ``(cell + d) * stride``; size ``exp(d) * stride``; five points
``(cell + d) * stride`` (already in faceflow's order); then NMS in OpenCV (C++), so that the shared
post-processing gets a few hundred candidates, not tens of thousands.
"""

from __future__ import annotations

from typing import Any, ClassVar

import cv2
import numpy as np

from faceflow.detect.base import Detector, DetectorOptions, RawDetections, fit_within, opencv_nms, pad_bottom_right
from faceflow.models.runtime import Runtime
from faceflow.types import FloatArray, Image

STRIDES = (8, 16, 32)
MULTIPLE = 32
MAX_SIDE = 1920
MIN_SIDE = 64
TOP_K = 5000
"""Candidates kept by the NMS at most (OpenCV's ``top_k`` as PEERS.md ran it)."""

def bgr_planes(image: Image) -> FloatArray:
    """An RGB uint8 image as the float32 BGR planes ``(1, 3, H, W)`` that YuNet reads: what
    ``cv2.dnn.blobFromImage(image, swapRB=True)`` gives, several times faster (one plane at a time)."""
    blob = np.empty((1, 3, *image.shape[:2]), np.float32)
    for plane, channel in enumerate(cv2.split(image)[::-1]):
        blob[0, plane] = channel
    return blob


def decode(outputs: dict[str, FloatArray], height: int, width: int, threshold: float) -> RawDetections:
    """Candidates scoring at least ``threshold`` from the twelve named outputs of one
    ``height`` x ``width`` input, in its pixels (before any NMS)."""
    boxes, scores, points = [], [], []
    for s in STRIDES:
        cols = width // s
        score = np.sqrt(np.clip(outputs[f"cls_{s}"][0, :, 0], 0, 1) * np.clip(outputs[f"obj_{s}"][0, :, 0], 0, 1))
        idx = np.nonzero(score >= threshold)[0]
        cell = np.stack([idx % cols, idx // cols], axis=1).astype(np.float32)
        d = outputs[f"bbox_{s}"][0, idx]
        centre = (cell + d[:, :2]) * s
        size = np.exp(d[:, 2:4]) * s
        boxes.append(np.concatenate([centre - size / 2, centre + size / 2], axis=1))
        points.append((cell[:, None, :] + outputs[f"kps_{s}"][0, idx].reshape(-1, 5, 2)) * s)
        scores.append(score[idx])
    return RawDetections(np.concatenate(boxes).astype(np.float32), np.concatenate(scores).astype(np.float32),
                         np.concatenate(points).astype(np.float32))


def suppress(raw: RawDetections, threshold: float, top_k: int = TOP_K) -> RawDetections:
    """``raw`` after OpenCV's greedy NMS (``cv2.dnn.NMSBoxes``), highest score first."""
    if len(raw) == 0:
        return raw
    boxes = raw.boxes.astype(np.float64)
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    keep = opencv_nms(xywh, raw.scores, threshold, top_k)
    lms = None if raw.landmarks5 is None else raw.landmarks5[keep]
    return RawDetections(raw.boxes[keep], raw.scores[keep], lms)


class YuNetOrtDetector(Detector):
    """YuNet through ONNX Runtime, at the image's own size (images longer than ``max_side`` are shrunk
    to it first, as :class:`~faceflow.detect.yunet.YuNetDetector` does)."""

    name: ClassVar[str] = "yunet_ort"
    default_score_threshold: ClassVar[float] = 0.6
    suppresses: ClassVar[bool] = True

    def __init__(self, options: DetectorOptions | None = None, runtime: Runtime | None = None,
                 max_side: int = MAX_SIDE) -> None:
        super().__init__(options, runtime)
        self.max_side = max_side

    def _load(self) -> Any:
        return self.runtime.onnx("yunet_dynamic")

    def _detect(self, image: Image) -> RawDetections:
        small, s = fit_within(image, self.max_side)
        padded = pad_bottom_right(small, MULTIPLE, MIN_SIDE)
        blob = bgr_planes(padded)
        sess = self.model
        names = [o.name for o in sess.get_outputs()]
        outputs = dict(zip(names, sess.run(names, {sess.get_inputs()[0].name: blob}), strict=True))
        raw = decode(outputs, padded.shape[0], padded.shape[1], self.score_threshold)
        return suppress(raw, self.options.nms_threshold).mapped(1 / s)


class FastDetector(YuNetOrtDetector):
    """``fast`` mode: YuNet at the image's own resolution through ONNX Runtime."""

    name: ClassVar[str] = "fast"
