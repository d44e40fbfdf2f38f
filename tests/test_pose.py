"""Head pose: exact recovery of known poses, the sign conventions, and real faces turned and mirrored."""

from __future__ import annotations

import itertools

import cv2
import numpy as np
import pytest

from faceflow.detect import Detector, create_detector
from faceflow.io import load_image
from faceflow.landmarks import MESH_TO_68, MIRROR_68, Landmarks68Stage, MeshStage, landmarks5_from_68
from faceflow.pose import (
    MESH_DEPTH_SCALE,
    MODEL_5,
    MODEL_68,
    POSE_POINTS_68,
    PoseStage,
    camera_matrix,
    estimate_pose,
    face_pose,
    pose_from_mesh,
    rotation_matrix,
    rotation_to_pose,
)
from faceflow.types import Face, Pose

SIZE = (640, 480)
POSES = [(0, 0, 0), (30, 0, 0), (-30, 0, 0), (0, 20, 0), (0, -20, 0), (0, 0, 15), (25, -10, 5), (-40, 15, -20)]


def _project(yaw: float, pitch: float, roll: float, offset: tuple[float, float] = (0, 0)) -> np.ndarray:
    """MODEL_68 seen in a SIZE image, 600 mm away, the head ``offset`` mm off the optical axis."""
    rvec = cv2.Rodrigues(rotation_matrix(yaw, pitch, roll))[0]
    tvec = np.array([offset[0], offset[1], 600.0])
    pts, _ = cv2.projectPoints(MODEL_68.astype(np.float64), rvec, tvec, camera_matrix(SIZE), None)
    return pts.reshape(68, 2)


def _close(pose: Pose | None, expected: tuple[float, float, float], tol: float) -> bool:
    return pose is not None and np.allclose([pose.yaw, pose.pitch, pose.roll], expected, atol=tol)


@pytest.mark.parametrize("angles", [*POSES, *itertools.product((-60, 10), (-35, 25), (-170, 90))])
def test_rotation_matrix_and_angles_round_trip(angles: tuple[float, float, float]) -> None:
    r = rotation_matrix(*angles)
    np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(r) == pytest.approx(1.0)
    assert _close(rotation_to_pose(r), angles, 1e-9)


def test_signs_follow_the_design() -> None:
    nose, chin = MODEL_68[30], MODEL_68[8]
    eyes = MODEL_68[36:42].mean(0), MODEL_68[42:48].mean(0)
    turned = rotation_matrix(20, 0, 0) @ nose  # yaw > 0: the nose moves toward the image's right
    assert turned[0] > 5
    up = rotation_matrix(0, 20, 0)
    assert (up @ nose)[1] < nose[1] and (up @ chin)[2] < chin[2]  # pitch > 0: nose up, chin forward
    left, right = (rotation_matrix(0, 0, 20) @ e for e in eyes)
    assert right[1] > left[1]  # roll > 0: the eye line turns clockwise on screen (y down)


@pytest.mark.parametrize("angles", POSES)
def test_estimate_pose_recovers_known_poses(angles: tuple[float, float, float]) -> None:
    pts = _project(*angles)
    idx = list(POSE_POINTS_68)
    assert _close(estimate_pose(pts[idx], MODEL_68[idx], SIZE), angles, 1e-3)
    assert _close(estimate_pose(pts, MODEL_68, SIZE), angles, 1e-3)
    assert _close(estimate_pose(landmarks5_from_68(pts), MODEL_5, SIZE), angles, 1.0)


def test_a_face_looking_into_the_lens_is_frontal_anywhere_in_the_frame() -> None:
    offset = np.array([150.0, -100.0, 600.0])  # up and to the right of the optical axis
    ray = offset / np.linalg.norm(offset)
    axis = np.cross([0.0, 0.0, 1.0], ray)  # turn the head to face the camera centre
    face_camera = cv2.Rodrigues(axis / np.linalg.norm(axis) * np.arccos(ray[2]))[0]
    pts, _ = cv2.projectPoints(
        MODEL_68.astype(np.float64), cv2.Rodrigues(face_camera)[0], offset, camera_matrix(SIZE), None
    )
    assert _close(estimate_pose(pts.reshape(68, 2), MODEL_68, SIZE), (0, 0, 0), 1e-3)


@pytest.mark.parametrize("angles", POSES[1:])
def test_a_mirrored_face_has_opposite_yaw_and_roll(angles: tuple[float, float, float]) -> None:
    pts = _project(*angles)
    mirrored = pts[list(MIRROR_68)] * [-1, 1] + [SIZE[0], 0]  # flip the image, keep iBUG's order
    yaw, pitch, roll = angles
    assert _close(estimate_pose(mirrored, MODEL_68, SIZE), (-yaw, pitch, -roll), 1e-3)


def test_estimate_pose_needs_matching_points() -> None:
    with pytest.raises(ValueError, match="N >= 4"):
        estimate_pose(np.zeros((3, 2)), np.zeros((3, 3)), SIZE)
    with pytest.raises(ValueError, match="matching"):
        estimate_pose(np.zeros((5, 2)), np.zeros((6, 3)), SIZE)


def _synthetic_mesh(angles: tuple[float, float, float]) -> np.ndarray:
    """A mesh whose MESH_TO_68 vertices are the model turned by ``angles`` (z as deep as the mesh's)."""
    mesh = np.zeros((468, 3), np.float32)
    turned = 2.5 * MODEL_68.astype(np.float64) @ rotation_matrix(*angles).T
    mesh[list(MESH_TO_68)] = turned / [1, 1, MESH_DEPTH_SCALE] + [300, 200, 0]
    return mesh


@pytest.mark.parametrize("angles", POSES)
def test_pose_from_mesh_recovers_known_poses(angles: tuple[float, float, float]) -> None:
    assert _close(pose_from_mesh(_synthetic_mesh(angles)), angles, 1e-3)


def test_face_pose_prefers_mesh_then_68_then_5() -> None:
    mesh = _synthetic_mesh((10, 0, 0))
    p68 = _project(-20, 0, 0)
    p5 = landmarks5_from_68(_project(0, 0, 12))
    face = Face(box=[0, 0, 10, 10], landmarks5=p5, landmarks68=p68, mesh=mesh)
    assert _close(face_pose(face, SIZE), (10, 0, 0), 1e-3)
    face.mesh = None
    assert _close(face_pose(face, SIZE), (-20, 0, 0), 1e-3)
    face.landmarks68 = None
    assert _close(face_pose(face, SIZE), (0, 0, 12), 1.0)
    face.landmarks5 = None
    assert face_pose(face, SIZE) is None


# -- real faces -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def yunet() -> Detector:
    return create_detector("yunet")


@pytest.fixture(scope="module")
def stages() -> tuple[Landmarks68Stage, MeshStage]:
    return Landmarks68Stage("dlib"), MeshStage()


def _poses(image: np.ndarray, face: Face, stages: tuple[Landmarks68Stage, MeshStage]) -> dict[str, Pose]:
    """The pose of ``face`` from each source: the mesh, dlib's 68 points, the detector's 5 points."""
    landmarks, mesh = stages
    size = (image.shape[1], image.shape[0])
    out = {"5": face_pose(Face(box=face.box, landmarks5=face.landmarks5), size)}
    out["68"] = face_pose(Face(box=face.box, landmarks68=landmarks.predict(image, face)), size)
    out["mesh"] = face_pose(Face(box=face.box, mesh=mesh.predict(image, face)[0]), size)
    assert all(p is not None for p in out.values())
    return out  # type: ignore[return-value]


def test_the_astronaut_is_frontal(astronaut: np.ndarray, yunet: Detector, stages) -> None:  # type: ignore[no-untyped-def]
    face = yunet.detect(astronaut)[0]
    for source, pose in _poses(astronaut, face, stages).items():
        assert abs(pose.yaw) < 15 and abs(pose.pitch) < 15 and abs(pose.roll) < 10, (source, pose)
    stages[1].run(astronaut, [face])
    PoseStage().run(astronaut, [face])
    assert face.pose == pose_from_mesh(face.mesh)


@pytest.mark.parametrize("angle", [20, -20])
def test_turning_the_image_changes_roll(astronaut: np.ndarray, yunet: Detector, stages, angle: float) -> None:  # type: ignore[no-untyped-def]
    """``cv2.getRotationMatrix2D`` turns the picture counter-clockwise by ``angle``: roll becomes ~ -angle.

    YuNet's own five points stay nearly level on a turned face, so only the mesh and 68 points are checked.
    """
    centre = yunet.detect(astronaut)[0].center
    turned = np.ascontiguousarray(
        cv2.warpAffine(astronaut, cv2.getRotationMatrix2D(centre, angle, 1.0), astronaut.shape[1::-1])
    )
    poses = _poses(turned, yunet.detect(turned)[0], stages)
    for source in ("mesh", "68"):
        pose = poses[source]
        assert np.sign(pose.roll) == -np.sign(angle) and abs(pose.roll + angle) < 6, (source, pose)
        assert abs(pose.yaw) < 15 and abs(pose.pitch) < 15, (source, pose)


def test_a_mirrored_photo_has_opposite_yaw(dataset, yunet: Detector, stages) -> None:  # type: ignore[no-untyped-def]
    """A HELEN test face turned toward the image's right (a child looking right of the camera)."""
    image = load_image(dataset("300w", "helen", "testset", "2977452543_1.jpg"))
    mirrored = np.ascontiguousarray(image[:, ::-1])
    largest = max(yunet.detect(image), key=lambda f: f.width)
    poses = _poses(image, largest, stages)
    flipped = _poses(mirrored, max(yunet.detect(mirrored), key=lambda f: f.width), stages)
    for source in ("mesh", "68", "5"):
        assert poses[source].yaw > 10 and flipped[source].yaw < -10, (source, poses[source], flipped[source])
    for source in ("mesh", "68"):
        assert abs(poses[source].yaw + flipped[source].yaw) < 6


def test_estimate_pose_of_points_that_coincide_is_none() -> None:
    """SQPnP raised an OpenCV assertion (and ended a whole batch) on a face a pixel or two wide."""
    assert estimate_pose(np.full((5, 2), 100.0), MODEL_5, SIZE) is None
    assert estimate_pose(np.full((68, 2), 7.5) + np.random.default_rng(0).normal(0, 1e-9, (68, 2)),
                         MODEL_68, SIZE) is None
