"""Facial landmarks: MediaPipe's 468-point mesh (:class:`MeshStage`) and the iBUG 68 points
(:class:`Landmarks68Stage`), plus the pure geometry between them.

* **Mesh**: MediaPipe ``face_landmark.tflite`` reads a 192x192 RGB crop in [0, 1] (inputs in [-1, 1]
  measured worse) and returns 468 points (x, y in crop pixels; z a relative depth in the units of x,
  smaller = nearer the camera) and a face-presence logit. The crop is MediaPipe's region: the
  detector box made square, enlarged 1.5x and turned so the eyes are level (when ``landmarks5`` is
  known); then, as in MediaPipe's tracking, it is cut again around the first mesh (``refine``
  passes), which lowers the error on 300-W by 8 % and levels the crop even when the detector's eye
  points are off (YuNet's stay almost level on a face turned 20°).
* **68 points** come from one of two sources:

  - ``"dlib"``: dlib's ``shape_predictor_68`` (trained on 300-W; weights for non-commercial use).
    It was trained on the boxes of dlib's HOG detector, so other detectors' boxes are adapted
    (:func:`dlib_box`): from the five points when the detector gives them; else from the box
    (:data:`BOX_ADAPTERS`), then once more from the five points of that first pass. A face tilted
    5° or more is turned upright first.
  - ``"mesh"``: the mesh vertices :data:`MESH_TO_68`, for each iBUG point the vertex nearest to it
    on average over 100 300-W HELEN test images (the last 100 by name; the tests use the first 30).
    The jaw points are approximations: iBUG's jaw is the visible outline of the face, which slides
    over the skin as the head turns, while a mesh vertex stays put (jaw NME 0.074, the rest 0.038).
  - ``"auto"`` (default): dlib when its model can be loaded, else the mesh.

  NME (outer eye corners) on the first 60 HELEN test images: dlib from YuNet's box and five points
  0.027, from YuNet's box alone 0.026 (unadapted: 0.051), from BlazeFace full/short boxes 0.027 /
  0.036, from dlib's own HOG boxes 0.028 (59 faces found); mesh 0.047 from any of these detectors.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from faceflow.errors import ConfigError, ModelUnavailable
from faceflow.models.runtime import LazyModel, dlib_object, tflite_model
from faceflow.models.store import ModelStore
from faceflow.types import Face, FloatArray, Image, Stage

log = logging.getLogger(__name__)

MESH_INPUT = 192
"""Side of the square RGB crop the mesh model reads (values in [0, 1])."""

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
"""For each iBUG point (0-based), the mesh vertex nearest to it on average over 100 300-W images."""

MIRROR_68: tuple[int, ...] = (
    *range(16, -1, -1), *range(26, 16, -1), 27, 28, 29, 30, 35, 34, 33, 32, 31,
    45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40,
    54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55, 64, 63, 62, 61, 60, 67, 66, 65,
)
"""For each iBUG point, its mirror image's index (the 68 points of a flipped face are ``p[MIRROR_68]``)."""
# fmt: on

LANDMARK_SOURCES = ("auto", "dlib", "mesh")

DLIB_LIKE_BOXES = frozenset({"dlib_hog", "haar"})
"""Detectors whose boxes dlib's predictor takes as they are (Haar's measured as good as HOG's)."""

# HOG-like box from the five points: side = a * eye distance + b * eyes-to-mouth distance, centred
# halfway between the eyes' and the mouth corners' midpoints (least squares against HOG boxes on
# 100 300-W images; residual 8 % of the side).
_L5_SIDE = (0.35, 1.96)

BOX_ADAPTERS: dict[str, tuple[float, float]] = {
    "yunet": (0.06, 1.18),
    "blazeface_short": (-0.02, 1.08),
    "blazeface_full": (0.02, 1.01),
}
"""HOG-like box from a detector's box alone: (centre moved down by this fraction of the height, side
as a fraction of the width). YuNet's pair has the lowest dlib NME on a grid over 100 300-W images;
BlazeFace's are YuNet's carried over through the median offsets of their boxes from YuNet's on the
same images. Detectors not listed use YuNet's."""

DLIB_TURN_MIN_ANGLE = math.radians(5)
"""Faces tilted less than this go to dlib as they are (turning them first gains nothing measurable)."""


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


def line_angle(p: npt.ArrayLike, q: npt.ArrayLike) -> float:
    """Angle of the line from ``p`` to ``q`` in image coordinates (radians, clockwise > 0)."""
    a, b = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    return math.atan2(b[1] - a[1], b[0] - a[0])


def mesh_roi(box: npt.ArrayLike, landmarks5: npt.ArrayLike | None = None, scale: float = 1.5) -> Roi:
    """MediaPipe's region for the mesh from a detection: the box made square, enlarged ``scale``
    times, turned so the eyes (when ``landmarks5`` is given) are level."""
    x1, y1, x2, y2 = (float(v) for v in np.asarray(box, dtype=np.float64).reshape(4))
    angle = 0.0 if landmarks5 is None else line_angle(*np.asarray(landmarks5)[:2])
    return Roi((x1 + x2) / 2, (y1 + y2) / 2, max(x2 - x1, y2 - y1) * scale, angle)


def roi_from_mesh(mesh: npt.ArrayLike, scale: float = 1.5) -> Roi:
    """MediaPipe's tracking region: the mesh's extent in its own eye-level frame, square, ``scale``x."""
    p = np.asarray(mesh, dtype=np.float64)[:, :2]
    angle = line_angle(p[MESH_EYE_CORNERS[0]], p[MESH_EYE_CORNERS[1]])
    c, s = math.cos(angle), math.sin(angle)
    rot = np.array([[c, s], [-s, c]])  # image -> eye-level frame
    q = p @ rot.T
    lo, hi = q.min(0), q.max(0)
    centre = rot.T @ ((lo + hi) / 2)
    return Roi(float(centre[0]), float(centre[1]), float((hi - lo).max()) * scale, angle)


def mesh_in_roi(model: Any, image: Image, roi: Roi) -> tuple[FloatArray, float]:
    """Run the mesh model on ``roi``: the 468 points in image pixels (z scaled like x) and the
    face-presence probability."""
    m = roi.to_crop(MESH_INPUT)
    crop = cv2.warpAffine(image, m, (MESH_INPUT, MESH_INPUT), flags=cv2.INTER_LINEAR)
    coords, logit = model.run((crop.astype(np.float32) / 255.0)[None])
    pts = coords.reshape(468, 3).astype(np.float64)
    inv = cv2.invertAffineTransform(m)
    out = np.empty((468, 3), dtype=np.float32)
    out[:, :2] = pts[:, :2] @ inv[:, :2].T + inv[:, 2]
    out[:, 2] = pts[:, 2] * roi.size / MESH_INPUT
    return out, float(1.0 / (1.0 + math.exp(-float(np.ravel(logit)[0]))))


def mesh_to_68(mesh: npt.ArrayLike) -> FloatArray:
    """The iBUG 68 points (x, y) taken from a (468, 2 or 3) mesh by :data:`MESH_TO_68`."""
    m = np.asarray(mesh, dtype=np.float32)
    if m.ndim != 2 or m.shape[0] != 468:
        raise ValueError(f"expected a (468, 2|3) mesh, got shape {m.shape}")
    return m[list(MESH_TO_68), :2].copy()


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
    side = _L5_SIDE[0] * np.linalg.norm(p[1] - p[0]) + _L5_SIDE[1] * np.linalg.norm(mouth - eyes)
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


def dlib_68(predictor: Any, image: Image, box: npt.ArrayLike, angle: float = 0.0) -> FloatArray:
    """dlib's 68 points in ``box``. dlib's boxes cannot rotate, so when ``angle`` is at least
    :data:`DLIB_TURN_MIN_ANGLE` the face is first turned upright about the box centre (in a crop twice
    the box) and the points are turned back."""
    import dlib

    b = np.asarray(box, dtype=np.float64).reshape(4)
    if abs(angle) >= DLIB_TURN_MIN_ANGLE:
        centre = (float(b[0] + b[2]) / 2, float(b[1] + b[3]) / 2)
        side = float(b[2] - b[0])
        out = max(1, round(2 * side))
        m = Roi(centre[0], centre[1], out, angle).to_crop(out)  # rotation only, scale 1
        crop = np.ascontiguousarray(cv2.warpAffine(image, m, (out, out), flags=cv2.INTER_LINEAR), np.uint8)
        half = out / 2
        pts = dlib_68(predictor, crop, (half - side / 2, half - side / 2, half + side / 2, half + side / 2))
        inv = cv2.invertAffineTransform(m)
        return (pts @ inv[:, :2].T + inv[:, 2]).astype(np.float32)
    x1, y1, x2, y2 = (round(float(v)) for v in b)
    rect = dlib.rectangle(x1, y1, x2 - 1, y2 - 1)  # dlib's right and bottom are inclusive
    shape = predictor(image, rect)
    return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)


class MeshStage(Stage):
    """Fills ``face.mesh``: MediaPipe's 468 points (x, y image pixels; z relative depth, same scale)."""

    name = "mesh"
    needs = ("box",)
    provides = ("mesh",)

    def __init__(
        self,
        *,
        scale: float = 1.5,
        refine: int = 1,
        threads: int | None = None,
        store: ModelStore | None = None,
    ) -> None:
        self.scale = scale
        self.refine = refine
        self._model = LazyModel(lambda: tflite_model("face_mesh", threads=threads, store=store))

    def predict(self, image: Image, face: Face) -> tuple[FloatArray, float]:
        """The mesh of ``face`` and the model's face-presence probability for its last crop."""
        model = self._model.get()
        mesh, score = mesh_in_roi(model, image, mesh_roi(face.box, face.landmarks5, self.scale))
        for _ in range(self.refine):
            mesh, score = mesh_in_roi(model, image, roi_from_mesh(mesh, self.scale))
        return mesh, score

    def run(self, image: Image, faces: list[Face]) -> list[Face]:
        for face in faces:
            face.mesh = self.predict(image, face)[0]
        return faces


class Landmarks68Stage(Stage):
    """Fills ``face.landmarks68`` (iBUG order, image pixels) from dlib or the mesh, and
    ``face.landmarks5`` from them when the detector left it ``None`` (a detector's own are kept)."""

    name = "landmarks"
    needs = ("box",)
    provides = ("landmarks68", "landmarks5")

    def __init__(
        self,
        source: str = "auto",
        *,
        threads: int | None = None,
        store: ModelStore | None = None,
    ) -> None:
        if source not in LANDMARK_SOURCES:
            raise ConfigError(f"unknown landmark source {source!r}; choose one of: {', '.join(LANDMARK_SOURCES)}")
        self.requested = source
        self._mesh = MeshStage(threads=threads, store=store)
        self._source = LazyModel(self._resolve)
        self._predictor = LazyModel(lambda: dlib_object("dlib_shape68", "shape_predictor", store=store))

    def _resolve(self) -> str:
        if self.requested != "auto":
            return self.requested
        try:
            self._predictor.get()
        except (ModelUnavailable, ImportError) as exc:
            log.warning("dlib's 68-point model is unavailable (%s); using the mesh instead", exc)
            return "mesh"
        return "dlib"

    @property
    def source(self) -> str:
        """The source in use: ``"dlib"`` or ``"mesh"`` (``"auto"`` resolved on first use)."""
        return self._source.get()

    def predict(self, image: Image, face: Face) -> FloatArray:
        """The 68 points of ``face`` (a mesh already on the face is reused)."""
        if self.source == "dlib":
            predictor = self._predictor.get()
            points = dlib_68(predictor, image, *dlib_box(face))
            if face.landmarks5 is None and face.detector not in DLIB_LIKE_BOXES:
                # A box alone places dlib's box roughly: a second pass from the first pass's five
                # points takes 300-W NME from 0.029 to 0.026 (YuNet's box), 0.044 to 0.029 (BlazeFace's).
                points = dlib_68(predictor, image, *hog_box_from_landmarks5(landmarks5_from_68(points)))
            return points
        mesh = face.mesh if face.mesh is not None else self._mesh.predict(image, face)[0]
        return mesh_to_68(mesh)

    def run(self, image: Image, faces: list[Face]) -> list[Face]:
        for face in faces:
            face.landmarks68 = self.predict(image, face)
            if face.landmarks5 is None:
                face.landmarks5 = landmarks5_from_68(face.landmarks68)
        return faces
