"""The QualityFace network's score of a face (registry ``qualityface``, see
:mod:`faceflow.models.qualityface`): the detector's box cut out (zero padding where it leaves the image),
resized to 128 x 128 without keeping its aspect ratio, as the package's training crops of WIDER FACE
boxes were, and scaled to [-1, 1]. The output is unbounded; higher means a better face. One of the
unified model's inputs (:func:`faceflow.quality.model.features`)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np
import numpy.typing as npt

from faceflow.models.qualityface import QUALITYFACE_INPUT
from faceflow.models.runtime import Runtime
from faceflow.types import Face, Image

NETWORK_MODEL = "qualityface"


def network_crop(image: Image, face: Face) -> npt.NDArray[np.uint8]:
    """The face's box as a 128 x 128 RGB crop (area interpolation when shrinking, bilinear otherwise)."""
    h, w = image.shape[:2]
    x1, y1, x2, y2 = (float(v) for v in np.asarray(face.box).reshape(4))
    xa, ya = math.floor(x1), math.floor(y1)
    xb, yb = max(math.ceil(x2), xa + 1), max(math.ceil(y2), ya + 1)
    region = np.ascontiguousarray(image[max(ya, 0):min(yb, h), max(xa, 0):min(xb, w)])
    if region.size == 0:
        return np.zeros((QUALITYFACE_INPUT, QUALITYFACE_INPUT, 3), np.uint8)
    padded = cv2.copyMakeBorder(region, max(-ya, 0), max(yb - h, 0), max(-xa, 0), max(xb - w, 0),
                                cv2.BORDER_CONSTANT, value=(0, 0, 0))
    shrink = padded.shape[0] > QUALITYFACE_INPUT or padded.shape[1] > QUALITYFACE_INPUT
    out = cv2.resize(padded, (QUALITYFACE_INPUT, QUALITYFACE_INPUT),
                     interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return np.asarray(out, np.uint8)


def network_quality(image: Image, faces: Sequence[Face], runtime: Runtime) -> npt.NDArray[np.float64]:
    """The network's raw score of each face (one batched forward pass)."""
    if not faces:
        return np.zeros(0, np.float64)
    crops = np.stack([network_crop(image, f) for f in faces]).astype(np.float32)
    blob = np.ascontiguousarray((crops / 127.5 - 1.0).transpose(0, 3, 1, 2), np.float32)
    session = runtime.onnx(NETWORK_MODEL)
    return np.asarray(session.run(None, {"input": blob})[0], np.float64).reshape(-1)
