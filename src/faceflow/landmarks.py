"""Facial landmarks: MediaPipe's 468-point mesh (:class:`MeshStage`) and the iBUG 68 points
(:class:`Landmarks68Stage`), plus the pure geometry between them.

* **Mesh**: MediaPipe ``face_landmark.tflite`` reads a 192x192 RGB crop in [0, 1] and returns 468
  points (x, y from 0 to 192 across the crop, pixel edges; z a relative depth in the units of x,
  smaller = nearer the camera) and a face-presence logit. The crop is MediaPipe's region: the
  detector box made square, enlarged 1.5x and turned so the eyes are level (when ``landmarks5`` is
  known); then, as in MediaPipe's tracking, it is cut again around the first mesh (``refine``
  passes), which also levels the crop when the detector's eye points are off.
* **68 points** come from one of these sources, each by default averaged with its reading of the
  mirrored face (``mirror``; :data:`MIRROR_68` puts the mirrored points back in order):

  - ``"dlib"``: dlib's ``shape_predictor_68`` (trained on 300-W; weights for non-commercial use), run
    on an upright crop scaled to :data:`DLIB_BOX_SIDE` (:func:`dlib_68`). It was trained on the boxes
    of dlib's HOG detector, so other detectors' faces get a HOG-like box (:func:`dlib_box`): from the
    five points when the detector gives them (:data:`L5_BOX`); else from the box
    (:data:`BOX_ADAPTERS`), then once more from the five points of that first pass.
  - ``"mesh"``: a linear regression from the whole mesh, in a normalised frame (:class:`MeshTo68`, the
    registry's ``mesh_to_68``), distilled from dlib's points on 3,000 LFW and 2,763 UTKFace
    train faces and their mirror images by ``training/fit_mesh_to_68.py``. It follows the jaw better
    than any fixed vertex could (iBUG's jaw is the visible outline of the face, which slides over the
    skin as the head turns), but it can only learn dlib's points as far as the mesh predicts them.
  - ``"landmarker"``: the same kind of regression (``landmarker_to_68``) from the 478 points of
    MediaPipe's newer face landmarker (``face_landmarker``, 256x256, the mesh's region and refinement).
  - ``"pfld"``: the same kind of regression (``pfld_to_68``) from PFLD-106's points (``pfld106``: a
    112x112 BGR crop of 1.2x the box, then once more of 1.2x its own points' extent, eye-level).
  - ``"faceapi"``: the same kind of regression (``faceapi_to_68``) from face-api.js's own 68 points
    (``faceapi_landmark68``: a 112x112 RGB crop of the box, then once more of 1.3x its own points'
    extent, eye-level; :func:`faceapi_68`). Its own points follow another annotation than dlib's
    and 300-W's (the jaw and the brows sit higher): HELEN 4.86 % / 4.70 % without the regression.
  - ``"fused"``: the weighted mean of landmarker and PFLD (:data:`FUSED_WEIGHTS`).
  - ``"refined"`` (default): the fused points moved by what the image looks like around them
    (:mod:`faceflow.landmarks_refine`, the registry's ``refine_68``: two supervised descent steps on
    gradient histograms, distilled from the same teacher on the same faces).
  - ``"auto"``: dlib when its model can be loaded, else the mesh.

  The last four regressions were distilled as the mesh's was, on the same faces
  (``training/fit_landmarks_68.py``; each penalty and the fusion weights chosen by the error against
  the teacher on the other dataset, LFW <-> UTKFace). The default was chosen by the error against dlib
  on 500 LFW faces that none of the regressions saw (mirror on): mesh 3.01 %, landmarker 2.63 %,
  pfld 2.97 %, faceapi 2.75 %, fused 2.52 %.

  Nothing here was fitted or chosen on 300-W (HELEN only vetoed a fusion with faceapi that did not beat
  the default there, :data:`FUSED_WEIGHTS`). On all 330 HELEN test images with YuNet (NME by the outer
  eye corners, mean / median, failures above 0.1, AUC@0.1): dlib 2.54 % / 2.35 %, 0.3 %, 0.746 (without
  ``mirror`` 2.59 %); refined 3.17 % / 3.02 %, 0 %, 0.683; fused 3.41 % / 3.26 %, 0.3 %, 0.659;
  landmarker 3.43 % / 3.25 %, 0.6 %, 0.658; pfld 3.90 % / 3.77 %, 0 %, 0.610; faceapi 3.75 % / 3.63 %,
  0 %, 0.625; mesh 3.85 % / 3.64 %, 0.3 %, 0.616 (without ``mirror`` 3.93 %). dlib from its own HOG boxes:
  2.61 % over the 319 faces HOG finds. The mesh route's earlier fixed blends of two vertices per point,
  distilled the same way, gave 4.26 % / 4.01 %, 0 %, 0.574. Distillation bounds the permissive sources:
  on HELEN the fused points lie 2.29 % from dlib's, and that gap adds to dlib's own 2.54 % almost in
  quadrature (sqrt(2.54² + 2.29²) = 3.42 %); the refinement narrows that gap by reading the image. Fixed
  correspondences instead of regressions (each iBUG point the model point nearest the teacher's on the
  fitting faces) do worse: PFLD 4.88 %, landmarker 4.53 %.
"""

from __future__ import annotations

import io
import logging
import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from faceflow.align import similarity_transform
from faceflow.errors import ConfigError, ModelUnavailable
from faceflow.landmarks_refine import packaged_refiner
from faceflow.models.npz import npz_bytes
from faceflow.models.runtime import LazyModel, Runtime, default_runtime
from faceflow.stage import Stage, StageSpec, option
from faceflow.types import Face, FloatArray, Image

log = logging.getLogger(__name__)

Float64Array = npt.NDArray[np.float64]

MESH_INPUT = 192
"""Side of the square RGB crop the mesh model reads (values in [0, 1])."""

LANDMARKER_INPUT = 256
"""Side of the square RGB crop the newer 478-point face landmarker (``face_landmarker``) reads."""

LANDMARKER_POINTS = 478
"""The newer landmarker's points: the 468 of the mesh (same order) and ten iris points."""

MESH_MODELS: dict[str, tuple[int, int]] = {
    "face_mesh": (MESH_INPUT, 468),
    "face_landmarker": (LANDMARKER_INPUT, LANDMARKER_POINTS),
}
"""Each MediaPipe mesh model (registry name) and its crop side and point count."""

PFLD_INPUT = 112
PFLD_POINTS = 106
PFLD_SCALE = 1.2
"""PFLD's crop side as a multiple of the face's size (its training crops: 1.2x the points' extent)."""

PFLD_EYES: tuple[tuple[int, ...], tuple[int, ...]] = ((66, 67, 68, 70, 72, 73), (75, 76, 77, 78, 80, 82))
"""PFLD-106 points around the image-left and image-right eyes (the points nearest iBUG 36-41 and
42-47 on a frontal face), whose means level its refined crop."""

FACEAPI_INPUT = 112
FACEAPI_BOX_SCALE = 1.0
"""face-api's first crop: the detector box's longer side times this, upright, around its centre."""
FACEAPI_SCALE = 1.3
"""face-api's refined crop: its own 68 points' extent (eye-level), the longer side times this. This
and :data:`FACEAPI_BOX_SCALE` are the pair (of 0.9-1.3 x 1.0-1.4, steps of 0.1) whose own points (no
regression) had the least error against dlib's on the 500 held-out LFW faces of
``training/fit_landmarks_68.py`` (mirror on): 5.14 % (the first crop alone: 6.06 %)."""

MESH_EYE_CORNERS = (33, 263)
"""Mesh vertices at the outer corners of the image-left and image-right eyes."""

# fmt: off
MESH_TO_68: tuple[int, ...] = (
    127, 234, 93, 215, 138, 136, 149, 148, 152, 400, 378, 365, 367, 435, 323, 454, 356,  # jaw 0-16
    70, 63, 105, 66, 107, 336, 296, 334, 293, 300,                                      # brows 17-26
    168, 197, 5, 4, 75, 97, 2, 328, 305,                                                # nose 27-35
    7, 159, 158, 155, 153, 144, 382, 385, 386, 249, 373, 380,                           # eyes 36-47
    61, 39, 37, 11, 267, 304, 291, 321, 314, 17, 84, 180,                               # outer lip 48-59
    78, 38, 13, 268, 308, 317, 14, 87,                                                  # inner lip 60-67
)
"""One mesh vertex per iBUG point: the vertex set that :mod:`faceflow.pose` (its ``MODEL_68``) and the
attribute heads are built on, kept as it is because they depend on it. It was chosen by the vertices'
distance to the annotations of 100 300-W HELEN *test* images, so it no longer makes the 68 points
(:func:`mesh_to_68` does)."""

MIRROR_68: tuple[int, ...] = (
    *range(16, -1, -1), *range(26, 16, -1), 27, 28, 29, 30, 35, 34, 33, 32, 31,
    45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40,
    54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55, 64, 63, 62, 61, 60, 67, 66, 65,
)
"""For each iBUG point, its mirror image's index (the 68 points of a flipped face are ``p[MIRROR_68]``)."""
# fmt: on

LANDMARK_SOURCES = ("auto", "dlib", "mesh", "landmarker", "pfld", "fused", "refined", "faceapi")

REGRESSIONS = {"mesh": "mesh_to_68", "landmarker": "landmarker_to_68", "pfld": "pfld_to_68",
               "faceapi": "faceapi_to_68"}
"""The packaged regression (registry name) that turns each model-based source's points into iBUG 68."""

SOURCE_MODELS: dict[str, tuple[str, ...]] = {
    "auto": ("dlib_shape68", "face_mesh", "mesh_to_68"),
    "dlib": ("dlib_shape68",),
    "mesh": ("face_mesh", "mesh_to_68"),
    "landmarker": ("face_landmarker", "landmarker_to_68"),
    "pfld": ("pfld106", "pfld_to_68"),
    "fused": ("face_landmarker", "landmarker_to_68", "pfld106", "pfld_to_68"),
    "refined": ("face_landmarker", "landmarker_to_68", "pfld106", "pfld_to_68", "refine_68"),
    "faceapi": ("faceapi_landmark68", "faceapi_to_68"),
}
"""The registry models each source may load (for cache keys and ``models pull``)."""

FUSED_WEIGHTS: dict[str, float] = {"landmarker": 0.75, "pfld": 0.25}
"""Weight of each source's 68 points in the ``fused`` source: of 0, 0.25, 0.4, 0.5, 0.6, 0.75 and 1
for the landmarker (PFLD's the rest), the one with the least error against the teacher on the other
dataset (LFW <-> UTKFace, one read per face; ``training/fit_landmarks_68.py``): 2.38 / 2.93 % (0.6:
2.42 / 2.91 %).

Adding ``faceapi`` was tried and not kept. Chosen the same way (every weighting of the three on a 0.05
grid), 0.45 landmarker + 0.15 PFLD + 0.40 faceapi had the least cross-dataset error (2.49 % against
2.65 % for these weights, mean of both ways) and the least on the 500 held-out LFW faces (2.46 %
against 2.52 %), but not on HELEN: 3.43 % / 3.29 % (0 % failures) against these weights' 3.41 % /
3.26 % (0.3 %); its gap to dlib's points there stayed 2.29 %."""

DLIB_LIKE_BOXES = frozenset({"dlib_hog", "haar"})
"""Detectors whose boxes dlib's predictor takes as they are (Haar's measured as good as HOG's)."""

DLIB_BOX_SIDE = 400
"""dlib reads its face scaled so the box is this wide (pixels): its points are whole pixels and its
features the nearest pixel's, and how much dlib's points on a face and on its mirror image disagree
stops falling there (LFW, UTKFace and WIDER faces: 1.53 % of the eye distance at the box's own size,
1.45 / 1.39 / 1.38 / 1.37 % at 200 / 300 / 400 / 600 px)."""

L5_BOX: tuple[float, float] = (0.667, 1.63)
"""HOG-like box from the five points: side = ``L5_BOX[0]`` x eye distance + ``L5_BOX[1]`` x
eyes-to-mouth distance, centred halfway between the eyes' and the mouth corners' midpoints. Fitted to
dlib HOG boxes on LFW and UTKFace faces drawn at random scales and offsets by
``training/fit_dlib_box.py``."""

BOX_ADAPTERS: dict[str, tuple[float, float]] = {
    "yunet": (0.04, 1.074),
    "blazeface_short": (-0.037, 0.964),
    "blazeface_full": (0.014, 0.906),
}
"""HOG-like box from a detector's box alone: (centre moved down by this fraction of the height, side
as a fraction of the width), the mean offset and the geometric mean size ratio of dlib HOG's boxes to
the detector's on the data of :data:`L5_BOX` (``training/fit_dlib_box.py``). Detectors not listed
use YuNet's."""


@dataclass(frozen=True, slots=True)
class Roi:
    """A square, rotated region of an image: centre, side (pixels), angle (radians, clockwise) and
    whether its crop is mirrored left to right."""

    cx: float
    cy: float
    size: float
    angle: float = 0.0
    mirror: bool = False

    def to_crop(self, out: int) -> npt.NDArray[np.float64]:
        """The 2x3 matrix mapping image pixels into an ``out`` x ``out`` crop of this region (pixel
        centres at integers, as ``cv2.warpAffine`` has them: the centre goes to ``(out - 1) / 2``)."""
        k = out / max(self.size, 1e-6)
        c, s = math.cos(self.angle), math.sin(self.angle)
        rot = k * np.array([[-c if self.mirror else c, -s if self.mirror else s], [-s, c]])
        m = np.zeros((2, 3))
        m[:, :2] = rot
        m[:, 2] = (out - 1) / 2 - rot @ np.array([self.cx, self.cy])
        return m


def line_angle(p: npt.ArrayLike, q: npt.ArrayLike) -> float:
    """Angle of the line from ``p`` to ``q`` in image coordinates (radians, clockwise > 0)."""
    a, b = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    return math.atan2(b[1] - a[1], b[0] - a[0])


def mesh_roi(
    box: npt.ArrayLike, landmarks5: npt.ArrayLike | None = None, scale: float = 1.5, mirror: bool = False
) -> Roi:
    """MediaPipe's region for the mesh from a detection: the box made square, enlarged ``scale``
    times, turned so the eyes (when ``landmarks5`` is given) are level, mirrored if asked."""
    x1, y1, x2, y2 = (float(v) for v in np.asarray(box, dtype=np.float64).reshape(4))
    angle = 0.0 if landmarks5 is None else line_angle(*np.asarray(landmarks5)[:2])
    return Roi((x1 + x2) / 2, (y1 + y2) / 2, max(x2 - x1, y2 - y1) * scale, angle, mirror)


def roi_from_mesh(mesh: npt.ArrayLike, scale: float = 1.5, mirror: bool = False) -> Roi:
    """MediaPipe's tracking region: the mesh's extent in its own eye-level frame, square, ``scale``x.
    With ``mirror`` the mesh came from a mirrored crop (its first eye corner is on the image's right)
    and the region is mirrored too."""
    p = np.asarray(mesh, dtype=np.float64)[:, :2]
    first, second = MESH_EYE_CORNERS[::-1] if mirror else MESH_EYE_CORNERS
    return _level_extent_roi(p, p[first], p[second], scale, mirror)


def _level_extent_roi(points: npt.NDArray[np.float64], first_eye: npt.ArrayLike, second_eye: npt.ArrayLike,
                      scale: float, mirror: bool) -> Roi:
    """The square region around ``points``' extent in the frame where the two eyes are level, its
    longer side times ``scale``: the tracking region of both the mesh and PFLD."""
    angle = line_angle(first_eye, second_eye)
    c, s = math.cos(angle), math.sin(angle)
    rot = np.array([[c, s], [-s, c]])  # image -> eye-level frame
    q = points @ rot.T
    lo, hi = q.min(0), q.max(0)
    centre = rot.T @ ((lo + hi) / 2)
    return Roi(float(centre[0]), float(centre[1]), float((hi - lo).max()) * scale, angle, mirror)


def mesh_in_roi(
    model: Any, image: Image, roi: Roi, size: int = MESH_INPUT, points: int = 468
) -> tuple[FloatArray, float]:
    """Run a mesh model on ``roi``: its points in image pixels (z scaled like x) and the
    face-presence probability. The model reads a ``size`` x ``size`` RGB crop in [0, 1] and gives
    ``points`` x 3 values (``face_mesh``: 192, 468; ``face_landmarker``: 256, 478). Its x, y run from 0
    to ``size`` across the crop (pixel edges), so half a crop pixel is taken off to reach the
    pixel-centre coordinates of ``cv2.warpAffine``; without it a mirrored crop's points land one crop
    pixel off the unmirrored crop's (measured on LFW)."""
    m = roi.to_crop(size)
    crop = cv2.warpAffine(image, m, (size, size), flags=cv2.INTER_LINEAR)
    coords, logit, *_ = model.run((crop.astype(np.float32) / 255.0)[None])
    pts = coords.reshape(points, 3).astype(np.float64)
    inv = cv2.invertAffineTransform(m)
    out = np.empty((points, 3), dtype=np.float32)
    out[:, :2] = (pts[:, :2] - 0.5) @ inv[:, :2].T + inv[:, 2]
    out[:, 2] = pts[:, 2] * roi.size / size
    return out, float(1.0 / (1.0 + math.exp(-float(np.ravel(logit)[0]))))


def pfld_roi(box: npt.ArrayLike, scale: float = PFLD_SCALE, mirror: bool = False) -> Roi:
    """PFLD's first region: the box's longer side times ``scale``, upright, around its centre."""
    x1, y1, x2, y2 = (float(v) for v in np.asarray(box, dtype=np.float64).reshape(4))
    return Roi((x1 + x2) / 2, (y1 + y2) / 2, max(x2 - x1, y2 - y1) * scale, 0.0, mirror)


def roi_from_pfld(points: npt.ArrayLike, scale: float = PFLD_SCALE, mirror: bool = False) -> Roi:
    """PFLD's training region around its own 106 points (the points' extent, its longer side times
    ``scale``), turned so the eyes (:data:`PFLD_EYES`) are level. With ``mirror`` the points came from
    a mirrored crop (its first eye is on the image's right) and the region is mirrored too."""
    p = np.asarray(points, dtype=np.float64)[:, :2]
    first, second = (p[list(eye)].mean(0) for eye in (PFLD_EYES[::-1] if mirror else PFLD_EYES))
    return _level_extent_roi(p, first, second, scale, mirror)


def pfld_in_roi(session: Any, image: Image, roi: Roi) -> FloatArray:
    """Run PFLD-106 (an ONNX Runtime session of ``pfld106``) on ``roi``: its 106 points in image
    pixels. It reads BGR / 255 at 112x112 and gives each point in [0, 1] of the crop (pixel edges)."""
    m = roi.to_crop(PFLD_INPUT)
    crop = cv2.warpAffine(image, m, (PFLD_INPUT, PFLD_INPUT), flags=cv2.INTER_LINEAR)
    blob = np.ascontiguousarray(crop[:, :, ::-1].transpose(2, 0, 1)[None], np.float32) / np.float32(255.0)
    (values,) = session.run(None, {"input": blob})
    pts = np.asarray(values, np.float64).reshape(PFLD_POINTS, 2) * PFLD_INPUT - 0.5
    inv = cv2.invertAffineTransform(m)
    return (pts @ inv[:, :2].T + inv[:, 2]).astype(np.float32)


def roi_from_68(points: npt.ArrayLike, scale: float = FACEAPI_SCALE, mirror: bool = False) -> Roi:
    """The square region around 68 points' extent in the frame where the eyes (the means of iBUG
    36-41 and 42-47) are level, its longer side times ``scale``. With ``mirror`` the points came from a
    mirrored crop (their first eye is on the image's right) and the region is mirrored too."""
    p = np.asarray(points, dtype=np.float64)[:, :2]
    first, second = p[36:42].mean(0), p[42:48].mean(0)
    if mirror:
        first, second = second, first
    return _level_extent_roi(p, first, second, scale, mirror)


def faceapi_in_roi(session: Any, image: Image, roi: Roi) -> FloatArray:
    """Run face-api.js's 68-point network (an ONNX Runtime session of ``faceapi_landmark68``) on
    ``roi``: its 68 points in image pixels, in the crop's order (a mirrored crop gives the mirrored
    face's). It reads RGB 0..255 at 112x112 and gives each point in [0, 1] of the crop (pixel edges)."""
    m = roi.to_crop(FACEAPI_INPUT)
    crop = cv2.warpAffine(image, m, (FACEAPI_INPUT, FACEAPI_INPUT), flags=cv2.INTER_LINEAR)
    blob = np.ascontiguousarray(crop.transpose(2, 0, 1)[None], np.float32)
    (values,) = session.run(None, {"input": blob})
    pts = np.asarray(values, np.float64).reshape(68, 2) * FACEAPI_INPUT - 0.5
    inv = cv2.invertAffineTransform(m)
    return (pts @ inv[:, :2].T + inv[:, 2]).astype(np.float32)


def faceapi_68(session: Any, image: Image, box: npt.ArrayLike, refine: int = 1, mirror: bool = False) -> FloatArray:
    """face-api.js's own 68 points for the face in ``box``: a crop of the box (:data:`FACEAPI_BOX_SCALE`),
    then ``refine`` crops of its own points (:data:`FACEAPI_SCALE`); from mirrored crops when
    ``mirror`` (the points then come in the mirrored face's order)."""
    pts = faceapi_in_roi(session, image, pfld_roi(box, FACEAPI_BOX_SCALE, mirror))
    for _ in range(refine):
        pts = faceapi_in_roi(session, image, roi_from_68(pts, FACEAPI_SCALE, mirror))
    return pts


@dataclass(frozen=True)
class MeshTo68:
    """A linear regression from the mesh to the iBUG 68 points, in a normalised frame: the mesh is laid
    onto :attr:`reference` by :func:`~faceflow.align.similarity_transform` (its x, y; z scaled alike),
    its 468 x 3 values times :attr:`weights` plus :attr:`bias` give the 68 points in that frame, and
    the inverse transform brings them back to the image. A linear map of the whole mesh, unlike a fixed
    blend of vertices, can follow the jaw line, which slides over the skin as the head turns."""

    reference: npt.NDArray[np.float32]
    """``(n, 2)``: the frame's mean point set (the mesh's 468 vertices, or another model's points)."""
    weights: npt.NDArray[np.float32]
    """``(n * d, 136)``: normalised values (x, y and, for d = 3, z per point) to the 68 points' (x, y)."""
    bias: npt.NDArray[np.float32]
    """``(136,)``."""

    @property
    def shape(self) -> tuple[int, int]:
        """The ``(points, values per point)`` shape of the input this regression reads."""
        n = self.reference.shape[0]
        return n, self.weights.shape[0] // n

    def normalise(self, mesh: npt.ArrayLike) -> tuple[Float64Array, Float64Array, Float64Array]:
        """The points' ``n * d`` values in the frame, and the transform ``(A, t)`` into it."""
        m = np.asarray(mesh, dtype=np.float64)
        if m.shape != self.shape:
            raise ValueError(f"expected points of shape {self.shape}, got shape {m.shape}")
        onto = similarity_transform(m[:, :2], self.reference)
        rot, shift = onto[:, :2], onto[:, 2]
        scale = math.sqrt(abs(float(np.linalg.det(rot))))
        return np.concatenate([m[:, :2] @ rot.T + shift, m[:, 2:] * scale], axis=1).ravel(), rot, shift

    def predict(self, mesh: npt.ArrayLike) -> Float64Array:
        """The regression's 68 points for ``mesh``, read as it is."""
        values, rot, shift = self.normalise(mesh)
        framed = (values @ self.weights.astype(np.float64) + self.bias).reshape(68, 2)
        return np.asarray(np.linalg.solve(rot, (framed - shift).T).T, np.float64)

    def __call__(self, mesh: npt.ArrayLike) -> FloatArray:
        """The 68 points for ``mesh``: the mean of :meth:`predict` on it and, reflected back, on its
        reflection (x negated), so that a mesh and its mirror image give mirror-image points exactly."""
        m = np.array(mesh, dtype=np.float64)
        direct = self.predict(m)
        m[:, 0] = -m[:, 0]
        reflected = self.predict(m)
        reflected[:, 0] = -reflected[:, 0]
        return ((direct + reflected) / 2).astype(np.float32)

    def to_bytes(self) -> bytes:
        """A zip of three ``.npy`` arrays with fixed timestamps: the same model gives the same bytes."""
        return npz_bytes({n: np.asarray(getattr(self, n), np.float32) for n in ("reference", "weights", "bias")})

    @classmethod
    def from_bytes(cls, data: bytes) -> MeshTo68:
        with np.load(io.BytesIO(data)) as arrays:
            return cls(*(np.asarray(arrays[name], np.float32) for name in ("reference", "weights", "bias")))


def packaged_regression(name: str, runtime: Runtime | None = None) -> MeshTo68:
    """A packaged 68-point regression of the registry (``mesh_to_68``, ``landmarker_to_68``,
    ``pfld_to_68``: ``faceflow/data/<name>.npz``, checked against its sha256), loaded once per runtime."""
    rt = runtime or default_runtime()
    return rt.load((name,), lambda: MeshTo68.from_bytes(rt.path(name).read_bytes()))


def packaged_mesh_to_68(runtime: Runtime | None = None) -> MeshTo68:
    """The registry's ``mesh_to_68`` (``faceflow/data/mesh_to_68.npz``), loaded once per runtime."""
    return packaged_regression("mesh_to_68", runtime)


def mesh_to_68(mesh: npt.ArrayLike, runtime: Runtime | None = None) -> FloatArray:
    """The iBUG 68 points (x, y) from a (468, 3) mesh, by the packaged :class:`MeshTo68`. Points from
    a mesh of a mirrored crop come in the mirrored face's order: take ``[MIRROR_68]``."""
    return packaged_mesh_to_68(runtime)(mesh)


def landmarks5_from_68(points: npt.ArrayLike) -> FloatArray:
    """faceflow's five points from iBUG 68 (2-D or 3-D): eye centres (mean of each eye's six
    points), nose tip (30), mouth corners (48, 54). iBUG's first eye and first mouth corner are the
    subject's right, which is the image's left on any upright (|roll| < 90°) unmirrored face."""
    p = np.asarray(points, dtype=np.float32)
    if p.ndim != 2 or p.shape[0] != 68 or p.shape[1] not in (2, 3):
        raise ValueError(f"expected 68 points (68, 2|3), got shape {p.shape}")
    return np.stack([p[36:42].mean(0), p[42:48].mean(0), p[30], p[48], p[54]]).astype(np.float32)


def hog_box_from_landmarks5(landmarks5: npt.ArrayLike) -> tuple[FloatArray, float]:
    """A box like dlib's HOG detector's for a face with these five points, and the eye line's angle
    (radians, clockwise > 0) by which to turn the face upright first."""
    p = np.asarray(landmarks5, dtype=np.float64)
    eyes, mouth = (p[0] + p[1]) / 2, (p[3] + p[4]) / 2
    side = L5_BOX[0] * np.linalg.norm(p[1] - p[0]) + L5_BOX[1] * np.linalg.norm(mouth - eyes)
    return _square((eyes + mouth) / 2, float(side)), line_angle(p[0], p[1])


def hog_box_from_box(box: npt.ArrayLike, detector: str | None) -> FloatArray:
    """A box like dlib's HOG detector's from another detector's box (:data:`BOX_ADAPTERS`)."""
    x1, y1, x2, y2 = (float(v) for v in np.asarray(box, dtype=np.float64).reshape(4))
    shift, side = BOX_ADAPTERS.get(detector or "", BOX_ADAPTERS["yunet"])
    return _square(np.array([(x1 + x2) / 2, (y1 + y2) / 2 + shift * (y2 - y1)]), side * (x2 - x1))


def _square(centre: npt.NDArray[np.float64], side: float) -> FloatArray:
    half = side / 2
    return np.array([centre[0] - half, centre[1] - half, centre[0] + half, centre[1] + half], np.float32)


def dlib_box(face: Face) -> tuple[FloatArray, float]:
    """A box like dlib's HOG detector would give for ``face`` and the angle by which to turn the
    face upright first: HOG's and Haar's boxes as they are, else from the five points, else from
    the box."""
    if face.detector in DLIB_LIKE_BOXES:
        return face.box.copy(), 0.0
    if face.landmarks5 is not None:
        return hog_box_from_landmarks5(face.landmarks5)
    return hog_box_from_box(face.box, face.detector), 0.0


def dlib_68(predictor: Any, image: Image, box: npt.ArrayLike, angle: float = 0.0, *, mirror: bool = True) -> FloatArray:
    """dlib's 68 points for the face in ``box`` (a HOG-like box in the frame turned by ``angle``).

    dlib's boxes cannot rotate and its points are whole pixels, so the region around the box (twice
    its side) is cut out turned upright and scaled so the box is :data:`DLIB_BOX_SIDE` pixels wide,
    and the points are mapped back. With ``mirror``, dlib also reads the crop's mirror image and the
    two sets of points (that one through :data:`MIRROR_68`) are averaged.
    """
    import dlib

    x1, y1, x2, y2 = (float(v) for v in np.asarray(box, dtype=np.float64).reshape(4))
    side, out = DLIB_BOX_SIDE, 2 * DLIB_BOX_SIDE
    # Box edges to pixel centres: a HOG box [l, t, r + 1, b + 1] is centred on pixel (l + r) / 2.
    m = Roi((x1 + x2 - 1) / 2, (y1 + y2 - 1) / 2, 2 * (x2 - x1), angle).to_crop(out)
    crop = cv2.warpAffine(image, m, (out, out), flags=cv2.INTER_LINEAR)
    lo, hi = side // 2, side // 2 + side - 1  # centred on the crop's middle, (out - 1) / 2
    rect = dlib.rectangle(lo, lo, hi, hi)

    def points(img: Image) -> npt.NDArray[np.float64]:
        return np.array([(p.x, p.y) for p in predictor(img, rect).parts()], np.float64)

    pts = points(np.ascontiguousarray(crop))
    if mirror:
        flipped = points(np.ascontiguousarray(crop[:, ::-1]))[list(MIRROR_68)]
        flipped[:, 0] = out - 1 - flipped[:, 0]
        pts = (pts + flipped) / 2
    inv = cv2.invertAffineTransform(m)
    return (pts @ inv[:, :2].T + inv[:, 2]).astype(np.float32)


def _check_scale(stage: str, scale: Any) -> None:
    """A crop side must be a finite multiple of the face above 0: 0 or less puts every point on one
    pixel, NaN makes them NaN (or fails in an SVD), so such a value is refused when the options are built."""
    try:
        ok = math.isfinite(scale) and scale > 0
    except TypeError:
        ok = False
    if not ok:
        raise ConfigError(f"{stage} scale must be a finite number above 0 (the crop's side over the face's), "
                          f"got {scale!r}")


@dataclass(frozen=True)
class MeshOptions:
    """Settings of the ``mesh`` stage."""

    scale: float = option(1.5, "Side of the mesh model's crop, as a multiple of the face's size.")
    refine: int = option(1, "Passes re-centring the crop on the previous pass's mesh.")
    model: str = option("face_mesh", "Mesh model: face_mesh (468 points, 192x192; what the quality model and "
                                     "the mask were built on) or face_landmarker (MediaPipe's newer model; its "
                                     "first 468 of 478 points, same order).", choices=tuple(MESH_MODELS))

    def __post_init__(self) -> None:
        _check_scale("mesh", self.scale)


class MeshStage(Stage):
    """Fills ``face.mesh``: MediaPipe's 468 points (x, y image pixels; z relative depth, same scale).
    The crop is placed by the five points when a stage has filled them, else by the box."""

    name = "mesh"

    def __init__(self, options: MeshOptions | None = None, runtime: Runtime | None = None) -> None:
        self.options = options or MeshOptions()
        if self.options.model not in MESH_MODELS:
            raise ConfigError(f"unknown mesh model {self.options.model!r}; choose one of: {', '.join(MESH_MODELS)}")
        self.runtime = runtime or default_runtime()

    def points(self, image: Image, face: Face, mirror: bool = False) -> tuple[FloatArray, float]:
        """All the model's points for ``face`` (468 or 478) and its face-presence probability for its
        last crop. With ``mirror`` the model reads mirrored crops: the points, in image pixels, are then
        the mirrored face's (vertex 33 on the subject's left eye)."""
        model = self.runtime.tflite(self.options.model)
        size, n = MESH_MODELS[self.options.model]
        scale = self.options.scale
        pts, score = mesh_in_roi(model, image, mesh_roi(face.box, face.landmarks5, scale, mirror), size, n)
        for _ in range(self.options.refine):
            pts, score = mesh_in_roi(model, image, roi_from_mesh(pts, scale, mirror), size, n)
        return pts, score

    def predict(self, image: Image, face: Face, mirror: bool = False) -> tuple[FloatArray, float]:
        """The mesh of ``face`` (its 468 points) and the face-presence probability, as :meth:`points`."""
        pts, score = self.points(image, face, mirror)
        return pts[:468], score

    def run(self, image: Image, faces: list[Face]) -> list[Face]:
        for face in faces:
            face.mesh = self.predict(image, face)[0]
        return faces


@dataclass(frozen=True)
class LandmarksOptions:
    """Settings of the ``landmarks`` stage (68 points)."""

    source: str = option("refined", "68-point source: refined (default: fused, then moved by the image's "
                                    "gradients around each point), fused (a weighted mean of landmarker and pfld), "
                                    "landmarker (a regression from MediaPipe's 478-point landmarker), pfld (from "
                                    "PFLD-106), mesh (from MediaPipe's 468-point mesh), faceapi (from face-api.js's "
                                    "68-point network) or dlib (dlib's predictor, closer to 300-W; non-commercial "
                                    "weights); auto tries dlib, else mesh.",
                         flag="landmarks", choices=LANDMARK_SOURCES)
    mirror: bool = option(True, "Also read the mirrored face and average the two.")
    scale: float = option(1.5, "Mesh and landmarker routes: side of the model's crop, as a multiple of the "
                               "face's size.")
    refine: int = option(1, "Model routes: passes re-centring the crop on the previous pass's points.")

    def __post_init__(self) -> None:
        _check_scale("landmarks", self.scale)


class Landmarks68Stage(Stage):
    """Fills ``face.landmarks68`` (iBUG order, image pixels) from the chosen source, and
    ``face.landmarks5`` from them when the detector left it ``None`` (a detector's own are kept).
    With ``mirror`` (default) each source also reads the mirrored face and the two are averaged.
    For the ``mesh`` source, a mesh already on the face (the ``mesh`` stage runs first when both are
    asked for) is reused."""

    name = "landmarks"

    def __init__(self, options: LandmarksOptions | str | None = None, runtime: Runtime | None = None) -> None:
        if isinstance(options, str):
            options = LandmarksOptions(source=options)
        self.options = options or LandmarksOptions()
        if self.options.source not in LANDMARK_SOURCES:
            raise ConfigError(f"unknown landmark source {self.options.source!r}; "
                              f"choose one of: {', '.join(LANDMARK_SOURCES)}")
        self.runtime = runtime or default_runtime()
        self._mesh = MeshStage(MeshOptions(self.options.scale, self.options.refine), self.runtime)
        self._landmarker = MeshStage(MeshOptions(self.options.scale, self.options.refine, "face_landmarker"),
                                     self.runtime)
        self._source = LazyModel(self._resolve)

    def _predictor(self) -> Any:
        return self.runtime.dlib("dlib_shape68", "shape_predictor")

    def _resolve(self) -> str:
        if self.options.source != "auto":
            return self.options.source
        try:
            self._predictor()
        except (ModelUnavailable, ImportError) as exc:
            log.warning("dlib's 68-point model is unavailable (%s); using the mesh instead", exc)
            return "mesh"
        return "dlib"

    @property
    def source(self) -> str:
        """The source in use (``"auto"`` resolved to ``"dlib"`` or ``"mesh"`` on first use)."""
        return self._source.get()

    def predict(self, image: Image, face: Face) -> FloatArray:
        """The 68 points of ``face`` (a mesh already on the face is reused)."""
        if self.source == "dlib":
            predictor = self._predictor()
            box, angle = dlib_box(face)
            if face.landmarks5 is None and face.detector not in DLIB_LIKE_BOXES:
                # A box alone places dlib's box roughly: a first pass gives five points to place it by.
                first = dlib_68(predictor, image, box, angle, mirror=False)
                box, angle = hog_box_from_landmarks5(landmarks5_from_68(first))
            return dlib_68(predictor, image, box, angle, mirror=self.options.mirror)
        if self.source in ("fused", "refined"):
            fused = sum((w * self._model_points(image, face, s) for s, w in FUSED_WEIGHTS.items()),
                        np.zeros((68, 2), np.float64)).astype(np.float32)
            return packaged_refiner(self.runtime)(image, fused) if self.source == "refined" else fused
        return self._model_points(image, face, self.source)

    def _model_points(self, image: Image, face: Face, source: str) -> FloatArray:
        """The 68 points of one model-based source (``mesh``, ``landmarker``, ``pfld``) by its packaged
        regression, averaged with its reading of the mirrored face when ``mirror`` is on."""
        table = packaged_regression(REGRESSIONS[source], self.runtime)
        if source == "mesh" and face.mesh is not None:
            points = table(face.mesh)
        else:
            points = table(self._raw_points(image, face, source, mirror=False))
        if self.options.mirror:
            mirrored = table(self._raw_points(image, face, source, mirror=True))[list(MIRROR_68)]
            points = ((points + mirrored) / 2).astype(np.float32)
        return points

    def _raw_points(self, image: Image, face: Face, source: str, mirror: bool) -> FloatArray:
        """The model's own points (mesh 468 x 3, landmarker 478 x 3, PFLD 106 x 2, face-api 68 x 2) for
        ``face``, from
        mirrored crops when ``mirror`` (then in the mirrored face's order)."""
        if source == "mesh":
            return self._mesh.points(image, face, mirror=mirror)[0]
        if source == "landmarker":
            return self._landmarker.points(image, face, mirror=mirror)[0]
        if source == "faceapi":
            return faceapi_68(self.runtime.onnx("faceapi_landmark68"), image, face.box, self.options.refine, mirror)
        session = self.runtime.onnx("pfld106")
        pts = pfld_in_roi(session, image, pfld_roi(face.box, mirror=mirror))
        for _ in range(self.options.refine):
            pts = pfld_in_roi(session, image, roi_from_pfld(pts, mirror=mirror))
        return pts

    def run(self, image: Image, faces: list[Face]) -> list[Face]:
        for face in faces:
            face.landmarks68 = self.predict(image, face)
            if face.landmarks5 is None:
                face.landmarks5 = landmarks5_from_68(face.landmarks68)
        return faces


MESH_STAGE = StageSpec(
    name="mesh",
    help="MediaPipe's 468-point 3-D mesh.",
    options=MeshOptions,
    factory=MeshStage,
    needs=("box",),
    provides=("mesh",),
)

LANDMARKS_STAGE = StageSpec(
    name="landmarks",
    help="The 68 iBUG points (and the five points when the detector gave none).",
    options=LandmarksOptions,
    factory=Landmarks68Stage,
    needs=("box",),
    provides=("landmarks68", "landmarks5"),
    after=("mesh",),
)
