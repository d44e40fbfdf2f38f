"""Landmarks: the pure geometry exactly, the mesh and 68-point stages on real images and on 300-W."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from faceflow.detect import Detector, create_detector
from faceflow.errors import ConfigError
from faceflow.eval.w300 import nme, read_pts
from faceflow.io import load_image
from faceflow.landmarks import (
    BOX_ADAPTERS,
    DLIB_LIKE_BOXES,
    MESH_INPUT,
    MESH_TO_68,
    MIRROR_68,
    Landmarks68Stage,
    MeshStage,
    MeshTo68,
    Roi,
    dlib_box,
    landmarks5_from_68,
    mesh_in_roi,
    mesh_roi,
    mesh_to_68,
    roi_from_mesh,
)
from faceflow.models.runtime import model_path
from faceflow.types import Face

# -- pure geometry ----------------------------------------------------------------------------------


def test_landmarks5_from_68_on_a_hand_made_face() -> None:
    pts = np.zeros((68, 2), np.float32)
    pts[36:42] = [[10, 20], [12, 18], [14, 18], [16, 20], [14, 22], [12, 22]]  # centre (13, 20)
    pts[42:48] = [[30, 20], [32, 18], [34, 18], [36, 20], [34, 22], [32, 22]]  # centre (33, 20)
    pts[30] = [23, 30]
    pts[48], pts[54] = [15, 40], [31, 40]
    np.testing.assert_allclose(landmarks5_from_68(pts), [[13, 20], [33, 20], [23, 30], [15, 40], [31, 40]])
    depth = np.concatenate([pts, np.arange(68, dtype=np.float32)[:, None]], axis=1)
    assert landmarks5_from_68(depth)[2, 2] == 30  # 3-D points keep their third coordinate
    with pytest.raises(ValueError, match="68 points"):
        landmarks5_from_68(np.zeros((5, 2)))


def test_mesh_to_68_is_packaged_and_moves_with_the_face() -> None:
    """The packaged regression loads (checked against the registry's sha256), and moving, turning and
    scaling a mesh in the image moves its 68 points the same way: it reads the mesh in its own frame."""
    mesh = np.zeros((468, 3), np.float32)
    model = _packaged_mesh_to_68()
    mesh[:, :2] = model.reference * 0.8 + 200
    mesh[:, 2] = np.random.default_rng(2).normal(size=468)
    out = mesh_to_68(mesh)
    assert out.shape == (68, 2) and out.dtype == np.float32
    assert np.isfinite(out).all()
    # On the mean face the points fall inside it, eyes above the mouth, image-left eye first.
    assert out[36, 0] < out[45, 0] and out[36:48, 1].mean() < out[48:68, 1].mean()
    c, s = math.cos(0.3), math.sin(0.3)
    rot = 1.7 * np.array([[c, -s], [s, c]])
    moved = mesh.copy()
    moved[:, :2] = mesh[:, :2] @ rot.T + [40, -15]
    moved[:, 2] *= 1.7
    np.testing.assert_allclose(mesh_to_68(moved), out @ rot.T + [40, -15], atol=1e-2)
    assert MeshTo68.from_bytes(model.to_bytes()).to_bytes() == model.to_bytes()
    assert len(set(MESH_TO_68)) == 68 and max(MESH_TO_68) < 468  # the vertex set pose and attributes use
    with pytest.raises(ValueError, match="468"):
        mesh_to_68(np.zeros((68, 3)))


def _packaged_mesh_to_68() -> MeshTo68:
    return MeshTo68.from_bytes(model_path("mesh_to_68").read_bytes())


def test_mirror_68_swaps_sides_and_keeps_the_midline() -> None:
    mirror = np.asarray(MIRROR_68)
    np.testing.assert_array_equal(mirror[mirror], np.arange(68))
    assert {i for i in range(68) if mirror[i] == i} == {8, 27, 28, 29, 30, 33, 51, 57, 62, 66}
    assert (mirror[36], mirror[48], mirror[0]) == (45, 54, 16)


def test_roi_crop_levels_the_eyes_and_centres_the_box() -> None:
    angle = math.radians(25)  # eye line turned 25 degrees clockwise on screen
    eyes = np.array([[100.0, 100.0], [100 + 40 * math.cos(angle), 100 + 40 * math.sin(angle)]])
    l5 = np.vstack([eyes, [[118, 125], [100, 140], [130, 150]]])
    roi = mesh_roi([80, 60, 160, 180], l5, scale=1.5)
    assert (roi.cx, roi.cy, roi.size) == (120, 120, 180)
    m = roi.to_crop(192)
    crop_eyes = eyes @ m[:, :2].T + m[:, 2]
    assert abs(crop_eyes[0, 1] - crop_eyes[1, 1]) < 1e-9  # level in the crop
    np.testing.assert_allclose(m[:, :2] @ [120, 120] + m[:, 2], [95.5, 95.5])  # the middle pixel centre
    np.testing.assert_allclose(np.linalg.norm(crop_eyes[1] - crop_eyes[0]), 40 * 192 / 180)
    mirrored = mesh_roi([80, 60, 160, 180], l5, scale=1.5, mirror=True).to_crop(192)
    np.testing.assert_allclose(mirrored, np.array([[-1, 0, 191], [0, 1, 0]]) @ np.vstack([m, [0, 0, 1]]))


def test_roi_from_mesh_follows_the_mesh() -> None:
    rng = np.random.default_rng(2)
    mesh = np.zeros((468, 3))
    mesh[:, :2] = rng.uniform(-50, 50, size=(468, 2))
    mesh[33, :2], mesh[263, :2] = [-30, 0], [30, 0]
    a = math.radians(-15)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    moved = mesh.copy()
    moved[:, :2] = mesh[:, :2] @ rot.T + [200, 300]
    base, turned = roi_from_mesh(mesh), roi_from_mesh(moved)
    assert turned.angle == pytest.approx(a)
    assert turned.size == pytest.approx(base.size)
    np.testing.assert_allclose(rot @ [base.cx, base.cy] + [200, 300], [turned.cx, turned.cy], atol=1e-9)
    swapped = moved.copy()  # a mesh from a mirrored crop: its first eye corner is on the image's right
    swapped[[33, 263]] = moved[[263, 33]]
    mirrored = roi_from_mesh(swapped, mirror=True)
    assert mirrored.mirror and mirrored.angle == pytest.approx(a) and mirrored.size == pytest.approx(base.size)


class _CentreModel:
    """A stand-in mesh model: every vertex at crop position (x, y) in the model's 0-192 units."""

    def __init__(self, x: float, y: float) -> None:
        self.xy = (x, y)

    def run(self, crop: np.ndarray) -> list[np.ndarray]:
        coords = np.zeros((1, 468 * 3), np.float32)
        coords[0, 0::3], coords[0, 1::3] = self.xy
        return [coords, np.zeros((1, 1), np.float32)]


@pytest.mark.parametrize("mirror", [False, True])
def test_mesh_coordinates_are_read_as_pixel_edges(mirror: bool) -> None:
    image = np.zeros((300, 400, 3), np.uint8)
    roi = Roi(150.0, 120.0, 96.0, math.radians(30), mirror)
    centre, _ = mesh_in_roi(_CentreModel(MESH_INPUT / 2, MESH_INPUT / 2), image, roi)
    np.testing.assert_allclose(centre[:, :2], np.tile([150.0, 120.0], (468, 1)), atol=1e-6)
    corner, _ = mesh_in_roi(_CentreModel(0, 0), image, Roi(150.0, 120.0, 96.0, 0.0, mirror))
    np.testing.assert_allclose(corner[0, :2], [150 + 48 if mirror else 150 - 48, 120 - 48], atol=1e-6)


def test_dlib_box_adapts_other_detectors() -> None:
    hog = Face(box=[10, 20, 90, 100], detector="dlib_hog")
    np.testing.assert_array_equal(dlib_box(hog)[0], hog.box)
    assert "haar" in DLIB_LIKE_BOXES
    l5 = np.array([[40, 50], [80, 50], [60, 70], [45, 90], [75, 90]], np.float32)
    box, angle = dlib_box(Face(box=[20, 20, 100, 120], detector="yunet", landmarks5=l5))
    assert angle == 0.0
    assert box[2] - box[0] == pytest.approx(box[3] - box[1])
    np.testing.assert_allclose([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2], [60, 70])
    plain, _ = dlib_box(Face(box=[20, 20, 100, 120], detector="yunet"))
    shift, side = BOX_ADAPTERS["yunet"]
    np.testing.assert_allclose(
        plain, [60 - 40 * side, 70 + 100 * shift - 40 * side, 60 + 40 * side, 70 + 100 * shift + 40 * side], rtol=1e-6
    )
    np.testing.assert_array_equal(dlib_box(Face(box=[20, 20, 100, 120], detector="new"))[0], plain)


def test_unknown_source_is_refused() -> None:
    with pytest.raises(ConfigError, match="unknown landmark source"):
        Landmarks68Stage("mediapipe")


# -- real models ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def yunet() -> Detector:
    return create_detector("yunet")


@pytest.fixture(scope="module")
def mesh_stage() -> MeshStage:
    return MeshStage()


@pytest.fixture(scope="module", params=["dlib", "mesh", "landmarker", "pfld", "fused"])
def landmarks68(request: pytest.FixtureRequest) -> Landmarks68Stage:
    return Landmarks68Stage(request.param)


def _inside(points: np.ndarray, box: np.ndarray, scale: float = 1.0, pad: float = 0.0) -> np.ndarray:
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    hw, hh = (box[2] - box[0]) * scale / 2 + pad, (box[3] - box[1]) * scale / 2 + pad
    return (np.abs(points[:, 0] - cx) <= hw) & (np.abs(points[:, 1] - cy) <= hh)


def test_mesh_of_the_astronaut(astronaut: np.ndarray, yunet: Detector, mesh_stage: MeshStage) -> None:
    face = yunet.detect(astronaut)[0]
    mesh, presence = mesh_stage.predict(astronaut, face)
    assert presence > 0.9
    mesh_stage.run(astronaut, [face])
    assert face.mesh is not None and face.mesh.shape == (468, 3)
    assert _inside(face.mesh, face.box, scale=1.5).mean() > 0.95
    np.testing.assert_array_equal(face.mesh, mesh)
    depth = face.mesh[:, 2]
    assert depth[4] < depth[33] < depth[234]  # nose tip nearer the camera than the eyes, eyes than the ear


def test_68_points_of_the_astronaut(astronaut: np.ndarray, yunet: Detector, landmarks68: Landmarks68Stage) -> None:
    face = yunet.detect(astronaut)[0]
    bare = Face(box=face.box, detector="yunet")  # as from a detector without five points
    landmarks68.run(astronaut, [face, bare])
    for f in (face, bare):
        pts = f.landmarks68
        assert pts is not None and pts.shape == (68, 2)
        assert _inside(pts, f.box, pad=0.08 * f.width).all()  # the jaw may touch the box's sides
        eyes, nose, mouth = pts[36:48, 1].mean(), pts[30, 1], pts[48:68, 1].mean()
        assert eyes < nose < mouth
        assert pts[36:42, 0].mean() < pts[42:48, 0].mean()  # iBUG's first eye is on the image's left
    assert bare.landmarks5 is not None  # filled from the 68 points, in faceflow's order
    iod = float(np.linalg.norm(face.landmarks5[1] - face.landmarks5[0]))
    assert np.abs(bare.landmarks5 - face.landmarks5).max() < 0.25 * iod


def test_68_points_of_a_mirrored_face_are_mirrored(
    astronaut: np.ndarray, yunet: Detector, landmarks68: Landmarks68Stage
) -> None:
    face = yunet.detect(astronaut)[0]
    width = astronaut.shape[1]
    l5 = face.landmarks5[[1, 0, 2, 4, 3]] * [-1, 1] + [width - 1, 0]
    box = [width - face.box[2], face.box[1], width - face.box[0], face.box[3]]
    flipped = Face(box=box, detector=face.detector, landmarks5=l5)
    pts = landmarks68.predict(np.ascontiguousarray(astronaut[:, ::-1]), flipped)
    expected = landmarks68.predict(astronaut, face)[list(MIRROR_68)] * [-1, 1] + [width - 1, 0]
    assert nme(pts, expected) < 0.005  # the same crops read the other way round (up to interpolation)


def test_68_points_follow_a_turned_face(astronaut: np.ndarray, yunet: Detector, landmarks68: Landmarks68Stage) -> None:
    upright = yunet.detect(astronaut)[0]
    base = landmarks68.predict(astronaut, upright)
    for angle in (25, -25):
        m = cv2.getRotationMatrix2D(upright.center, angle, 1.0)
        turned = np.ascontiguousarray(cv2.warpAffine(astronaut, m, astronaut.shape[1::-1]))
        pts = landmarks68.predict(turned, yunet.detect(turned)[0])
        expected = base @ m[:, :2].T + m[:, 2]
        assert nme(pts, expected) < 0.06


def _w300_images(root: Path, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    pts = sorted(root.glob("*.pts"))[:n]
    return [(load_image(p.with_suffix(".jpg")), read_pts(p)) for p in pts]


def test_nme_on_300w_helen(dataset, yunet: Detector) -> None:  # type: ignore[no-untyped-def]
    """30 HELEN test images (the first in name order; nothing in faceflow was fitted on 300-W)."""
    images = _w300_images(dataset("300w", "helen", "testset"), 30)
    default, mesh = Landmarks68Stage(), Landmarks68Stage("mesh")
    errors: dict[str, list[float]] = {"default": [], "mesh": []}
    for image, gt in images:
        faces = yunet.detect(image)
        assert faces, "YuNet found no face"
        centre = gt.mean(axis=0)
        face = min(faces, key=lambda f: float(np.hypot(*(np.asarray(f.center) - centre))))
        errors["default"].append(nme(default.predict(image, face), gt))
        errors["mesh"].append(nme(mesh.predict(image, face), gt))
    assert np.mean(errors["default"]) < 0.06
    assert np.mean(errors["mesh"]) < 0.06
    if default.source == "dlib":
        assert np.mean(errors["default"]) < np.mean(errors["mesh"])


def test_crop_scales_must_be_positive_and_finite(astronaut: np.ndarray, yunet: Detector) -> None:
    """A crop side of 0 or less, or NaN/inf, is refused when the options are built (ConfigError naming
    the stage's scale). Before, mesh_scale=0 or -1 gave 468 points on one pixel, NaN a NaN mesh, and
    landmarks_scale=nan a StageError from an SVD on the first face."""
    from faceflow import Analyzer
    from faceflow.landmarks import LandmarksOptions, MeshOptions

    for bad in (0, -1, 0.0, math.nan, math.inf, "x"):
        with pytest.raises(ConfigError, match="mesh scale must be"):
            MeshOptions(scale=bad)  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match="landmarks scale must be"):
            LandmarksOptions(scale=bad)  # type: ignore[arg-type]
    for keyword in ("mesh_scale", "landmarks_scale"):
        for bad in (0, -1, math.nan):
            with pytest.raises(ConfigError, match="scale must be a finite number above 0"):
                Analyzer(stages=("mesh", "landmarks"), **{keyword: bad})
    face = yunet.detect(astronaut)[0]
    mesh = MeshStage(MeshOptions(scale=1.3)).predict(astronaut, face)[0]  # a tighter crop still finds the face
    assert np.isfinite(mesh).all() and _inside(mesh, face.box, scale=1.5).mean() > 0.95
    assert np.ptp(mesh[:, 0]) > 0.5 * face.width
