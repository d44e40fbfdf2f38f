"""Head pose: yaw, pitch and roll in degrees, from the mesh, the 68 points or the five points.

Signs (as in DESIGN.md and :mod:`faceflow.types`), all 0 for a frontal upright face:

* **yaw** > 0 when the face turns toward the image's right (its nose moves right);
* **pitch** > 0 when the face tilts up (its nose moves up, its chin forward);
* **roll** > 0 when the line from the image-left eye to the image-right eye turns clockwise on screen
  (image y points down). Turning an image counter-clockwise by ``a`` degrees (``cv2.getRotationMatrix2D``
  with angle ``a``) therefore changes roll by ``-a``.

The rotation taking the model into camera axes (x right, y down, z away from the camera) is
``R = Rz(roll) @ Ry(-yaw) @ Rx(-pitch)``: roll is applied last, about the optical axis, so turning
the image changes roll only.

Sources, best first: the mesh (closed form: the 3-D rotation that best maps the model onto the
mesh's own vertices :data:`~faceflow.landmarks.MESH_TO_68`), the 68 points (``cv2.solvePnP`` on the
eye corners and nose, :data:`POSE_POINTS_68`), the five points (``cv2.solvePnP``). The camera is a
pinhole with focal length = image width, centred; its angles are taken relative to the line of sight
to the head, so a face looking into the lens is frontal anywhere in the frame, as the mesh (which
sees only its crop) has it. On 60 300-W faces the 68-point pose differs from the mesh's by 3.3° (yaw),
6.4° (pitch) and 1.1° (roll) on average; pitch from 2-D points depends on the focal length guessed.

:data:`MODEL_68` is our generic 3-D face, measured with the mesh model: the generalised Procrustes
mean of the vertices ``MESH_TO_68`` over 100 300-W HELEN faces, made left-right symmetric, turned so
the eye centres lie on x and the line from their midpoint to the mouth corners' midpoint on y (that
defines pitch 0), scaled to 63 mm between the eye centres, its depth multiplied by
:data:`MESH_DEPTH_SCALE`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from faceflow.landmarks import MESH_TO_68, landmarks5_from_68
from faceflow.stage import Stage, StageSpec
from faceflow.types import Face, FloatArray, Image, Pose

MESH_DEPTH_SCALE = 0.7
"""The mesh's z is deeper than real faces: with the model's depth scaled by 0.7 its projections fit the
300-W annotations of 160 faces in varied poses best (reprojection error minimal over 0.5-1.3)."""

# fmt: off
MODEL_68: FloatArray = np.array([
    (-71.1, 6.4, 39.1), (-70.3, 21.2, 42.1), (-69.3, 36.0, 42.3), (-64.2, 61.5, 24.6),
    (-57.5, 73.3, 19.1), (-48.6, 90.0, 21.4), (-31.0, 103.9, 10.1), (-17.7, 111.0, 3.1),
    (0.0, 114.3, 0.1), (17.7, 111.0, 3.1), (31.0, 103.9, 10.1), (48.6, 90.0, 21.4),
    (57.5, 73.3, 19.1), (64.2, 61.5, 24.6), (69.3, 36.0, 42.3), (70.3, 21.2, 42.1),
    (71.1, 6.4, 39.1), (-57.8, -14.8, 5.3), (-51.3, -20.9, -0.5), (-41.3, -24.2, -5.2),
    (-28.7, -23.8, -9.5), (-14.6, -22.2, -11.6), (14.6, -22.2, -11.6), (28.7, -23.8, -9.5),
    (41.3, -24.2, -5.2), (51.3, -20.9, -0.5), (57.8, -14.8, 5.3), (0.0, -5.0, -11.4),
    (0.0, 9.6, -18.4), (0.0, 22.8, -26.5), (0.0, 31.2, -28.4), (-13.4, 40.6, -13.5),
    (-8.3, 43.9, -14.9), (0.0, 44.8, -16.1), (8.3, 43.9, -14.9), (13.4, 40.6, -13.5),
    (-43.8, 1.4, 2.9), (-33.7, -5.0, -1.2), (-28.4, -4.6, -1.5), (-19.1, 1.9, 0.4),
    (-26.7, 3.2, -0.9), (-37.3, 3.1, 0.3), (19.1, 1.9, 0.4), (28.4, -4.6, -1.5),
    (33.7, -5.0, -1.2), (43.8, 1.4, 2.9), (37.3, 3.1, 0.3), (26.7, 3.2, -0.9),
    (-29.0, 64.7, 0.0), (-19.0, 59.9, -10.1), (-8.5, 56.5, -15.0), (0.0, 60.5, -15.1),
    (8.5, 56.5, -15.0), (19.0, 59.9, -10.1), (29.0, 64.7, 0.0), (18.4, 73.3, -7.2),
    (8.5, 79.9, -10.5), (0.0, 80.8, -11.0), (-8.5, 79.9, -10.5), (-18.4, 73.3, -7.2),
    (-25.0, 64.7, -1.2), (-7.6, 62.5, -13.0), (0.0, 63.4, -11.9), (7.6, 62.5, -13.0),
    (25.0, 64.7, -1.2), (7.1, 70.9, -9.5), (0.0, 71.4, -10.2), (-7.1, 70.9, -9.5),
], dtype=np.float32)
"""Generic 3-D positions (mm) of the iBUG 68 points, camera axes for a frontal upright face (x to the
image's right, y down, z away from the camera), origin midway between the eye centres."""
# fmt: on

MODEL_5: FloatArray = landmarks5_from_68(MODEL_68)
"""The five points of :data:`MODEL_68` in faceflow's order (eye centres, nose tip, mouth corners)."""

POSE_POINTS_68: tuple[int, ...] = (36, 39, 42, 45, *range(27, 36))
"""The 68 points used with ``solvePnP``: eye corners and nose, which expressions hardly move (with the
mouth, a broad smile reads as a head bowed 20°; the jaw is an outline that slides as the head turns)."""


def _rx(a: float) -> npt.NDArray[np.float64]:
    c, s = math.cos(a), math.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def _ry(a: float) -> npt.NDArray[np.float64]:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def _rz(a: float) -> npt.NDArray[np.float64]:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def rotation_matrix(yaw: float, pitch: float, roll: float) -> npt.NDArray[np.float64]:
    """The model-to-camera rotation for angles in degrees (see the module docstring)."""
    y, p, r = (math.radians(v) for v in (yaw, pitch, roll))
    return _rz(r) @ _ry(-y) @ _rx(-p)


def rotation_to_pose(rotation: npt.ArrayLike) -> Pose:
    """Yaw, pitch and roll (degrees) of a model-to-camera rotation; inverse of :func:`rotation_matrix`."""
    m = np.asarray(rotation, dtype=np.float64)
    beta = math.asin(float(np.clip(-m[2, 0], -1.0, 1.0)))
    alpha = math.atan2(m[2, 1], m[2, 2])
    gamma = math.atan2(m[1, 0], m[0, 0])
    return Pose(yaw=-math.degrees(beta), pitch=-math.degrees(alpha), roll=math.degrees(gamma))


def camera_matrix(image_size: tuple[int, int]) -> npt.NDArray[np.float64]:
    """A pinhole camera for a ``(width, height)`` image: focal length = width, centred."""
    w, h = image_size
    return np.array([[w, 0, w / 2], [0, w, h / 2], [0, 0, 1]], dtype=np.float64)


def _toward_axis(direction: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """The smallest rotation taking ``direction`` onto the optical axis (0, 0, 1)."""
    v = np.asarray(direction, dtype=np.float64).reshape(3)
    v = v / np.linalg.norm(v)
    axis = np.cross(v, [0.0, 0.0, 1.0])
    s = float(np.linalg.norm(axis))
    if s < 1e-12:
        return np.eye(3)
    angle = math.atan2(s, float(v[2]))
    return np.asarray(cv2.Rodrigues(axis / s * angle)[0], dtype=np.float64)


def estimate_pose(points2d: npt.ArrayLike, model3d: npt.ArrayLike, image_size: tuple[int, int]) -> Pose | None:
    """The pose that projects ``model3d`` (N, 3) onto ``points2d`` (N, 2, image pixels) through
    :func:`camera_matrix`, relative to the line of sight to the head (so a face looking into the lens
    is frontal wherever it is in the frame); ``None`` when ``solvePnP`` finds none or the points are too
    close together to define one. Needs N >= 4."""
    img = np.ascontiguousarray(points2d, dtype=np.float64).reshape(-1, 2)
    obj = np.ascontiguousarray(model3d, dtype=np.float64).reshape(-1, 3)
    if len(img) != len(obj) or len(img) < 4:
        raise ValueError(f"need N >= 4 matching points, got {len(img)} 2-D and {len(obj)} 3-D")
    k, no_distortion = camera_matrix(image_size), np.zeros(4)
    try:
        ok, rvec, tvec = cv2.solvePnP(obj, img, k, no_distortion, flags=cv2.SOLVEPNP_SQPNP)
    except cv2.error:  # SQPnP refuses points that (nearly) coincide, e.g. a face of a pixel or two
        return None
    if not ok:
        return None
    rvec, tvec = cv2.solvePnPRefineLM(obj, img, k, no_distortion, rvec, tvec)
    return rotation_to_pose(_toward_axis(tvec) @ cv2.Rodrigues(rvec)[0])


def pose_from_mesh(mesh: npt.ArrayLike) -> Pose:
    """Closed-form pose from a (468, 3) mesh: the rotation of the best similarity (Kabsch/Umeyama)
    mapping :data:`MODEL_68` onto the mesh's vertices :data:`~faceflow.landmarks.MESH_TO_68`."""
    dst = np.asarray(mesh, dtype=np.float64)[list(MESH_TO_68)] * [1.0, 1.0, MESH_DEPTH_SCALE]
    src = MODEL_68.astype(np.float64)
    cov = (dst - dst.mean(0)).T @ (src - src.mean(0))
    u, _, vt = np.linalg.svd(cov)
    fix = np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))])
    return rotation_to_pose(u @ fix @ vt)


def face_pose(face: Face, image_size: tuple[int, int]) -> Pose | None:
    """The pose of ``face`` from its best landmarks (mesh, else 68, else 5 points), ``None`` if none."""
    if face.mesh is not None:
        return pose_from_mesh(face.mesh)
    if face.landmarks68 is not None:
        idx = list(POSE_POINTS_68)
        return estimate_pose(face.landmarks68[idx], MODEL_68[idx], image_size)
    if face.landmarks5 is not None:
        return estimate_pose(face.landmarks5, MODEL_5, image_size)
    return None


@dataclass(frozen=True)
class PoseOptions:
    """The ``pose`` stage has no settings: it uses the best points a face carries."""


class PoseStage(Stage):
    """Fills ``face.pose`` (degrees) from the mesh, the 68 points or the five points."""

    name = "pose"

    def __init__(self, options: PoseOptions | None = None, runtime: object = None) -> None:
        self.options = options or PoseOptions()

    def run(self, image: Image, faces: list[Face]) -> list[Face]:
        size = (int(image.shape[1]), int(image.shape[0]))
        for face in faces:
            face.pose = face_pose(face, size)
        return faces


STAGE = StageSpec(
    name="pose",
    help="Head pose (yaw, pitch, roll in degrees) from the mesh, the 68 points or the five points.",
    options=PoseOptions,
    factory=PoseStage,
    needs=("landmarks5",),
    provides=("pose",),
    after=("mesh", "landmarks68"),
)
