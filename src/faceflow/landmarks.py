"""Dense and sparse facial landmarks: MediaPipe's 468-point mesh and the iBUG 68 points.

Draft: mesh core only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from faceflow.types import FloatArray, Image

MESH_INPUT = 192
"""Side of the square RGB crop the mesh model reads, values in [0, 1]."""


@dataclass(frozen=True, slots=True)
class Roi:
    """A square, rotated region of an image: centre, side (pixels) and angle (radians, clockwise)."""

    cx: float
    cy: float
    size: float
    angle: float = 0.0

    def to_crop(self, out: int) -> npt.NDArray[np.float64]:
        """The 2x3 matrix mapping image pixels into an ``out`` x ``out`` crop of this region."""
        k = out / max(self.size, 1e-6)
        c, s = math.cos(self.angle), math.sin(self.angle)
        rot = k * np.array([[c, s], [-s, c]])
        m = np.zeros((2, 3))
        m[:, :2] = rot
        m[:, 2] = out / 2 - rot @ np.array([self.cx, self.cy])
        return m


def eye_angle(landmarks5: npt.ArrayLike) -> float:
    """Angle of the line from the image-left eye to the image-right eye (radians, clockwise > 0)."""
    p = np.asarray(landmarks5, dtype=np.float64)
    return math.atan2(p[1, 1] - p[0, 1], p[1, 0] - p[0, 0])


def mesh_roi(box: npt.ArrayLike, landmarks5: npt.ArrayLike | None = None, scale: float = 1.5) -> Roi:
    """MediaPipe's region for the mesh: the box made square, enlarged ``scale`` times, turned so the
    eyes (when ``landmarks5`` is given) lie on a horizontal line."""
    x1, y1, x2, y2 = (float(v) for v in np.asarray(box).reshape(4))
    angle = eye_angle(landmarks5) if landmarks5 is not None else 0.0
    return Roi((x1 + x2) / 2, (y1 + y2) / 2, max(x2 - x1, y2 - y1) * scale, angle)


def mesh_in_roi(model: object, image: Image, roi: Roi) -> tuple[FloatArray, float]:
    """Run the mesh model on ``roi``: the 468 points in image pixels (z scaled like x) and the
    face-presence probability."""
    m = roi.to_crop(MESH_INPUT)
    crop = cv2.warpAffine(image, m, (MESH_INPUT, MESH_INPUT), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT)
    x = (crop.astype(np.float32) / 255.0)[None]
    coords, logit = model.run(x)  # type: ignore[attr-defined]
    pts = coords.reshape(468, 3).astype(np.float64)
    inv = cv2.invertAffineTransform(m)
    out = np.empty((468, 3), dtype=np.float32)
    out[:, :2] = pts[:, :2] @ inv[:, :2].T + inv[:, 2]
    out[:, 2] = pts[:, 2] * roi.size / MESH_INPUT
    return out, float(1.0 / (1.0 + np.exp(-float(np.ravel(logit)[0]))))
