"""MediaPipe BlazeFace (Apache-2.0), short range (128x128) and full range (192x192, dense), in LiteRT.

The image is letterboxed into the square input (aspect kept, centred, black bars), the network
regresses, for each SSD anchor, a box and six keypoints (right eye, left eye, nose tip, mouth centre,
right and left ear tragion, in the subject's terms) in input pixels relative to the anchor centre, and
a logit. The anchors follow MediaPipe's ``SsdAnchorsCalculator`` with fixed anchor size, so only their
centres matter: short range has 2 anchors per cell at stride 8 and 6 at stride 16 (16x16x2 + 8x8x6 =
896), full range one per cell at stride 4 (48x48 = 2304); both counts are checked against the model.

BlazeFace has no mouth corners, so ``landmarks5`` stays ``None`` (the landmark stage fills it).
"""

from __future__ import annotations

from functools import cache
from typing import Any, ClassVar

import cv2
import numpy as np

from faceflow.detect.base import Detector, RawDetections, sigmoid
from faceflow.errors import ModelUnavailable
from faceflow.types import FloatArray, Image


@cache
def ssd_anchor_centres(size: int, strides: tuple[int, ...], per_cell: tuple[int, ...]) -> FloatArray:
    """Anchor centres ``(N, 2)`` as fractions of the input: cells row-major, anchors within a cell.

    ``per_cell[i]`` is how many anchors each cell of the ``strides[i]`` grid holds (layers of equal
    stride are merged into one grid, as MediaPipe does).
    """
    centres = []
    for stride, k in zip(strides, per_cell, strict=True):
        n = -(-size // stride)
        ys, xs = np.meshgrid((np.arange(n) + 0.5) / n, (np.arange(n) + 0.5) / n, indexing="ij")
        grid = np.stack([xs.ravel(), ys.ravel()], axis=1)
        centres.append(np.repeat(grid, k, axis=0))
    return np.concatenate(centres).astype(np.float32)  # type: ignore[no-any-return]


def letterbox(image: Image, size: int) -> tuple[Image, float, int, int]:
    """``image`` resized to fit a ``size`` square, aspect kept, centred on black; returns it with the
    scale and the left and top offsets."""
    h, w = image.shape[:2]
    s = size / max(h, w)
    nw, nh = min(size, max(1, round(w * s))), min(size, max(1, round(h * s)))
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(image, (nw, nh), interpolation=interp)
    left, top = (size - nw) // 2, (size - nh) // 2
    out = np.zeros((size, size, 3), np.uint8)
    out[top : top + nh, left : left + nw] = resized
    return out, s, left, top


def decode(
    regressors: FloatArray, logits: FloatArray, anchors: FloatArray, size: int, threshold: float
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Boxes ``(N, 4)``, scores ``(N,)`` and the six keypoints ``(N, 6, 2)`` in input pixels."""
    scores = sigmoid(logits.reshape(-1))
    keep = np.nonzero(scores >= threshold)[0]
    reg, centre = regressors.reshape(len(anchors), -1)[keep], anchors[keep] * size
    cxy = centre + reg[:, 0:2]
    half = reg[:, 2:4] / 2
    boxes = np.concatenate([cxy - half, cxy + half], axis=1)
    keypoints = centre[:, None, :] + reg[:, 4:16].reshape(-1, 6, 2)
    return boxes.astype(np.float32), scores[keep], keypoints.astype(np.float32)


class _BlazeFace(Detector):
    """Shared code of the two BlazeFace models; subclasses set the model and its anchor layout."""

    gives_landmarks5: ClassVar[bool] = False
    model_name: ClassVar[str]
    input_size: ClassVar[int]
    strides: ClassVar[tuple[int, ...]]
    anchors_per_cell: ClassVar[tuple[int, ...]]

    def _load(self) -> Any:
        model = self.runtime.tflite(self.model_name)
        n = len(ssd_anchor_centres(self.input_size, self.strides, self.anchors_per_cell))
        shapes = [tuple(d["shape"]) for d in model.outputs]
        if (1, n, 16) not in shapes or (1, n, 1) not in shapes:
            raise ModelUnavailable(f"{self.model_name}: outputs {shapes} do not match {n} anchors")
        return model

    def _detect(self, image: Image) -> RawDetections:
        model = self.model
        boxed, s, left, top = letterbox(image, self.input_size)
        x = (boxed.astype(np.float32) / 127.5 - 1.0)[None]
        outputs = model.run(x)
        regressors = next(o for o in outputs if o.shape[-1] == 16)
        logits = next(o for o in outputs if o.shape[-1] == 1)
        anchors = ssd_anchor_centres(self.input_size, self.strides, self.anchors_per_cell)
        boxes, scores, _ = decode(regressors, logits, anchors, self.input_size, self.score_threshold)
        raw = RawDetections(boxes, scores)
        return raw.mapped(1 / s, -left / s, -top / s)


class BlazeFaceShortDetector(_BlazeFace):
    """BlazeFace short range: faces within about 2 m of the camera (selfies, video calls, crops)."""

    name: ClassVar[str] = "blazeface_short"
    default_score_threshold: ClassVar[float] = 0.5
    model_name: ClassVar[str] = "blazeface_short"
    input_size: ClassVar[int] = 128
    strides: ClassVar[tuple[int, ...]] = (8, 16)
    anchors_per_cell: ClassVar[tuple[int, ...]] = (2, 6)


class BlazeFaceFullDetector(_BlazeFace):
    """BlazeFace full range: smaller faces, up to about 5 m away, at 192x192."""

    name: ClassVar[str] = "blazeface_full"
    default_score_threshold: ClassVar[float] = 0.5
    model_name: ClassVar[str] = "blazeface_full"
    input_size: ClassVar[int] = 192
    strides: ClassVar[tuple[int, ...]] = (4,)
    anchors_per_cell: ClassVar[tuple[int, ...]] = (1,)
