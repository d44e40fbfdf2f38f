"""Alignment: similarity transforms from landmarks to canonical templates, and the warped crops.

Pure numpy/OpenCV geometry; no model is involved.
"""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt

from faceflow.types import FloatArray, Image

ARCFACE_112: FloatArray = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float32,
)
"""The standard 112x112 five-point template (eyes, nose tip, mouth corners) used by ArcFace/SFace."""


def similarity_transform(src: npt.ArrayLike, dst: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Least-squares similarity (rotation, uniform scale, translation) mapping ``src`` onto ``dst``.

    Umeyama's closed form; returns the 2x3 matrix ``M`` with ``dst ~ M @ [x, y, 1]``.
    """
    s = np.asarray(src, dtype=np.float64)
    d = np.asarray(dst, dtype=np.float64)
    if s.shape != d.shape or s.ndim != 2 or s.shape[1] != 2 or len(s) < 2:
        raise ValueError(f"need two equal (N, 2) point sets with N >= 2, got {s.shape} and {d.shape}")
    mu_s, mu_d = s.mean(0), d.mean(0)
    sc, dc = s - mu_s, d - mu_d
    var_s = (sc**2).sum() / len(s)
    cov = dc.T @ sc / len(s)
    u, sig, vt = np.linalg.svd(cov)
    sign = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1, 1] = -1
    rot = u @ sign @ vt
    scale = (sig * np.diag(sign)).sum() / var_s if var_s > 0 else 1.0
    m = np.zeros((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - scale * rot @ mu_s
    return m


def transform_points(m: npt.ArrayLike, pts: npt.ArrayLike) -> FloatArray:
    """Apply a 2x3 affine matrix to ``(N, 2)`` points."""
    mat = np.asarray(m, dtype=np.float64)
    p = np.asarray(pts, dtype=np.float64)
    return (p @ mat[:, :2].T + mat[:, 2]).astype(np.float32)


def invert_affine(m: npt.ArrayLike) -> npt.NDArray[np.float64]:
    return np.asarray(cv2.invertAffineTransform(np.asarray(m, dtype=np.float64)), dtype=np.float64)


def align_crop(
    image: Image, landmarks5: npt.ArrayLike, size: int = 112, template: npt.ArrayLike = ARCFACE_112
) -> Image:
    """Warp the face so its five points land on ``template`` (scaled from 112 to ``size``)."""
    dst = np.asarray(template, dtype=np.float64) * (size / 112.0)
    m = similarity_transform(landmarks5, dst)
    return np.asarray(
        cv2.warpAffine(image, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT),
        dtype=np.uint8,
    )


def crop_box(image: Image, box: npt.ArrayLike, scale: float = 1.0, size: int | None = None) -> Image:
    """A square crop around ``box`` enlarged by ``scale``, zero-padded where it leaves the image."""
    x1, y1, x2, y2 = (float(v) for v in np.asarray(box).reshape(4))
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    side = max(x2 - x1, y2 - y1) * scale
    out = size or max(1, round(side))
    k = out / max(side, 1e-6)
    m = np.array([[k, 0, out / 2 - k * cx], [0, k, out / 2 - k * cy]], dtype=np.float64)
    return np.asarray(cv2.warpAffine(image, m, (out, out), flags=cv2.INTER_LINEAR), dtype=np.uint8)
