"""Moving 68 points by what the image looks like around them: a supervised descent cascade.

The permissive 68-point sources (:mod:`faceflow.landmarks`) map another model's points to iBUG's by a
regression over those points alone, so they cannot see where the jaw line or an eyebrow actually is
in this image. :class:`ShapeRefiner` can. It lays the face upright in a 128 x 128 frame (a similarity
of the points onto a mean shape), describes the neighbourhood of every point by histograms of
gradient orientations (:func:`point_features`), and moves all the points at once by a linear map of
those histograms; the next step does the same again from the moved points with finer cells (the
supervised descent method of Xiong & De la Torre, CVPR 2013, with HOG-like features of our own).

The steps are fitted by ``training/fit_refine_68.py`` on the same faces as the regressions and with
the same teacher (dlib's points on LFW and UTKFace, never 300-W). Each step's map is stored low-rank
(features -> 32 components -> 136 coordinates) with the larger factor in int8, so that the packaged
file stays under 1 MiB.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from faceflow.align import invert_affine, similarity_transform, transform_points
from faceflow.models.npz import npz_bytes
from faceflow.models.runtime import Runtime, default_runtime
from faceflow.types import Image

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

CANVAS = 128
"""Side of the normalised frame the features are read in (pixels)."""
BINS = 8
"""Orientation bins over the full circle (a dark-to-light edge differs from a light-to-dark one)."""
CLIP = 0.25
"""Each point's histogram is L2-normalised, clipped at this value and normalised again (as in SIFT),
so one strong edge cannot drown the rest."""


def normalised_face(image: Image, points: npt.ArrayLike, reference: npt.ArrayLike) -> tuple[F32, F64]:
    """The grey face laid onto ``reference`` (the similarity of ``points`` onto it) in a
    :data:`CANVAS`-pixel square, and that similarity's ``2 x 3`` matrix (image -> frame). A face
    shrunk by more than 0.7 is blurred first, so that the frame does not alias. Only the part of the
    picture the frame covers is converted and blurred, so a face costs the same in a large photo."""
    m = similarity_transform(np.asarray(points, np.float64), np.asarray(reference, np.float64))
    scale = float(np.sqrt(abs(np.linalg.det(m[:, :2]))))
    sigma = 0.5 / scale if scale < 0.7 else 0.0
    back = invert_affine(m)
    corners = np.array([[0, 0], [CANVAS, 0], [0, CANVAS], [CANVAS, CANVAS]], np.float64) @ back[:, :2].T + back[:, 2]
    h, w = image.shape[:2]
    pad = int(np.ceil(4 * sigma)) + 2
    x0, y0 = (int(np.clip(np.floor(v) - pad, 0, lim - 1)) for v, lim in zip(corners.min(axis=0), (w, h), strict=True))
    x1, y1 = (int(np.clip(np.ceil(v) + pad + 1, lo + 1, lim)) for v, lim, lo in
              zip(corners.max(axis=0), (w, h), (x0, y0), strict=True))
    crop = np.ascontiguousarray(image[y0:y1, x0:x1])
    gray = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY).astype(np.float32)
    if sigma:
        gray = np.asarray(cv2.GaussianBlur(gray, (0, 0), sigma), np.float32)
    shifted = m.copy()
    shifted[:, 2] += m[:, :2] @ [x0, y0]
    frame = cv2.warpAffine(gray, shifted, (CANVAS, CANVAS), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_REPLICATE)
    return frame.astype(np.float32), m


def gradient_cells(gray: npt.ArrayLike, cell: int) -> F32:
    """``(BINS, H, W)``: for every pixel, the gradient magnitude summed over the ``cell x cell`` square
    centred on it, split over :data:`BINS` orientations (each pixel's magnitude shared between its two
    nearest bins)."""
    g = np.asarray(gray, np.float32)
    gx = cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=1)
    gy = cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=1)
    magnitude = np.sqrt(gx**2 + gy**2)
    position = (np.arctan2(gy, gx) % (2 * np.pi)) * (BINS / (2 * np.pi))
    lower = np.floor(position).astype(np.int64) % BINS
    upper_share = (position - np.floor(position)).astype(np.float32)
    maps = np.zeros((BINS, *g.shape), np.float32)
    for b in range(BINS):
        weight = np.where(lower == b, 1 - upper_share, 0) + np.where((lower + 1) % BINS == b, upper_share, 0)
        maps[b] = cv2.boxFilter(magnitude * weight, -1, (cell, cell), normalize=False,
                                borderType=cv2.BORDER_CONSTANT)
    return maps


def point_features(gray: npt.ArrayLike, points: npt.ArrayLike, cell: int, grid: int) -> F32:
    """One row of features for a set of points in the frame: around each point a ``grid x grid`` block
    of cells ``cell`` pixels wide, each cell's orientation histogram (:func:`gradient_cells`), the
    point's block normalised as :data:`CLIP` says. Length ``len(points) * grid * grid * BINS``."""
    cells = gradient_cells(gray, cell)
    p = np.asarray(points, np.float64)
    offsets = (np.arange(grid) - (grid - 1) / 2) * cell
    ox, oy = (a.ravel() for a in np.meshgrid(offsets, offsets))
    h, w = cells.shape[1:]
    xs = np.clip(np.rint(p[:, :1] + ox), 0, w - 1).astype(np.int64)
    ys = np.clip(np.rint(p[:, 1:2] + oy), 0, h - 1).astype(np.int64)
    block = cells[:, ys, xs].transpose(1, 2, 0).reshape(len(p), -1)
    block /= np.linalg.norm(block, axis=1, keepdims=True) + 1e-3
    clipped = np.minimum(block, CLIP)
    clipped /= np.linalg.norm(clipped, axis=1, keepdims=True) + 1e-3
    return np.asarray(clipped.ravel(), np.float32)


@dataclass(frozen=True)
class RefineStep:
    """One step: ``moves = ((features - mean) @ basis) @ components + offset`` (frame pixels, x, y per
    point), ``basis`` stored as int8 times one scale per column."""

    cell: int
    grid: int
    mean: F32
    basis: F32
    components: F32
    offset: F32

    def moves(self, gray: npt.ArrayLike, points: F64) -> F64:
        x = point_features(gray, points, self.cell, self.grid) - self.mean
        return np.asarray(((x @ self.basis) @ self.components + self.offset).reshape(points.shape), np.float64)


class ShapeRefiner:
    """A cascade of :class:`RefineStep` in the frame of ``reference`` (``68 x 2``, frame pixels)."""

    def __init__(self, reference: npt.ArrayLike, steps: list[RefineStep]) -> None:
        self.reference = np.asarray(reference, np.float32)
        self.steps = steps

    def __call__(self, image: Image, points: npt.ArrayLike) -> F32:
        """``points`` (image pixels) moved by every step, in image pixels. Points that cannot be laid in
        the frame (not finite, or all within a pixel of each other) are returned as they are."""
        pts = np.asarray(points, np.float64)
        if not np.all(np.isfinite(pts)) or float(np.ptp(pts, axis=0).max()) < 1:
            return pts.astype(np.float32)
        gray, m = normalised_face(image, pts, self.reference)
        framed = pts @ m[:, :2].T + m[:, 2]
        for step in self.steps:
            framed = framed + step.moves(gray, framed)
        return transform_points(invert_affine(m), framed)

    def to_bytes(self) -> bytes:
        """The packaged form: each step's basis as int8 with a float32 scale per column."""
        arrays: dict[str, npt.ArrayLike] = {"reference": self.reference,
                                            "shape": np.array([[s.cell, s.grid] for s in self.steps], np.int32)}
        for i, s in enumerate(self.steps):
            scale = np.maximum(np.abs(s.basis).max(axis=0), 1e-12) / 127
            arrays |= {f"mean{i}": s.mean.astype(np.float32),
                       f"basis{i}": np.rint(s.basis / scale).astype(np.int8),
                       f"scale{i}": scale.astype(np.float32),
                       f"components{i}": s.components.astype(np.float32),
                       f"offset{i}": s.offset.astype(np.float32)}
        return npz_bytes(arrays)

    @classmethod
    def from_bytes(cls, data: bytes) -> ShapeRefiner:
        with np.load(io.BytesIO(data)) as a:
            steps = [RefineStep(int(cell), int(grid), a[f"mean{i}"],
                                (a[f"basis{i}"] * a[f"scale{i}"]).astype(np.float32),
                                a[f"components{i}"], a[f"offset{i}"])
                     for i, (cell, grid) in enumerate(a["shape"])]
            return cls(a["reference"], steps)


def packaged_refiner(runtime: Runtime | None = None) -> ShapeRefiner:
    """The registry's ``refine_68`` (``faceflow/data/refine_68.npz``, checked against its sha256),
    loaded once per runtime."""
    rt = runtime or default_runtime()
    return rt.load(("refine_68",), lambda: ShapeRefiner.from_bytes(rt.path("refine_68").read_bytes()))
