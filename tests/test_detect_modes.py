"""The ``accurate`` and ``fast`` detector modes: weighted box fusion exactly on hand-made boxes, the
ONNX Runtime YuNet against OpenCV's, and both modes on real photos."""

from __future__ import annotations

import itertools
from functools import cache

import cv2
import numpy as np
import pytest

from faceflow.detect import Detector, DetectorOptions, create_detector, iou_matrix
from faceflow.detect.centerface import CenterFaceDetector
from faceflow.detect.ensemble import Pass, look, tile_starts, weighted_box_fusion
from faceflow.detect.yunet_ort import YuNetOrtDetector, bgr_planes
from faceflow.io import load_image
from faceflow.models.runtime import model_path
from faceflow.types import Image
from tests.conftest import ASTRONAUT_FACE_BOX

MODES = ("accurate", "thorough", "fast")


@cache
def detector(name: str) -> Detector:
    return create_detector(name)


# -- weighted box fusion, exactly ----------------------------------------------------------------------
A_BOXES = [[0, 0, 10, 10], [100, 100, 120, 120]]
A_SCORES = [0.8, 0.6]
B_BOXES = [[1, 1, 11, 11]]  # IoU 81 / 119 = 0.68 with A's first box
B_SCORES = [0.4]
A_POINTS = np.arange(20, dtype=np.float64).reshape(2, 5, 2)
B_POINTS = np.full((1, 5, 2), 3.0)


def test_wbf_averages_by_score_and_penalises_missing_votes() -> None:
    fused = weighted_box_fusion([A_BOXES, B_BOXES], [A_SCORES, B_SCORES], [A_POINTS, B_POINTS])
    third = 1 / 3
    expected = np.array([[third, third, 10 + third, 10 + third], [100, 100, 120, 120]])
    np.testing.assert_allclose(fused.boxes, expected, rtol=1e-6)
    np.testing.assert_allclose(fused.scores, [(0.8 + 0.4) / 2, 0.6 / 2], rtol=1e-6)  # B did not vote on the 2nd
    assert fused.landmarks5 is not None
    np.testing.assert_allclose(fused.landmarks5[0], (0.8 * A_POINTS[0] + 0.4 * B_POINTS[0]) / 1.2, rtol=1e-6)
    np.testing.assert_allclose(fused.landmarks5[1], A_POINTS[1])


def test_wbf_member_weights() -> None:
    fused = weighted_box_fusion([A_BOXES, B_BOXES], [A_SCORES, B_SCORES], weights=[2.0, 1.0])
    np.testing.assert_allclose(fused.boxes[0], [0.2, 0.2, 10.2, 10.2], rtol=1e-6)  # (1.6 * 0 + 0.4 * 1) / 2
    np.testing.assert_allclose(fused.scores, [(2 * 0.8 + 0.4) / 3, 2 * 0.6 / 3], rtol=1e-6)
    assert fused.landmarks5 is None  # no member gave points


def test_wbf_threshold_duplicates_and_missing_points() -> None:
    # IoU of these two is 81 / 119 = 0.68: above 0.6 they fuse, at 0.7 they stay apart.
    assert len(weighted_box_fusion([A_BOXES[:1], B_BOXES], [[0.8], [0.4]], iou_threshold=0.6)) == 1
    apart = weighted_box_fusion([A_BOXES[:1], B_BOXES], [[0.8], [0.4]], iou_threshold=0.7)
    np.testing.assert_allclose(apart.scores, [0.4, 0.2], rtol=1e-6)
    # Two boxes of one member in a cluster: the member's score is its best, not their sum.
    twice = weighted_box_fusion([[[0, 0, 10, 10], [0, 0, 10, 9]], [[0, 0, 10, 10]]], [[0.9, 0.5], [0.3]])
    np.testing.assert_allclose(twice.scores, [(0.9 + 0.3) / 2], rtol=1e-6)
    np.testing.assert_allclose(twice.boxes[0], [0, 0, 10, (0.9 * 10 + 0.5 * 9 + 0.3 * 10) / 1.7], rtol=1e-6)
    # Points come from the members that have them.
    mixed = weighted_box_fusion([A_BOXES, B_BOXES], [A_SCORES, B_SCORES], [A_POINTS, None])
    assert mixed.landmarks5 is not None
    np.testing.assert_allclose(mixed.landmarks5[0], A_POINTS[0])
    # Nothing in, nothing out.
    empty = weighted_box_fusion([np.zeros((0, 4)), np.zeros((0, 4))], [[], []])
    assert len(empty) == 0 and empty.boxes.shape == (0, 4)
    with pytest.raises(ValueError, match="one entry per member"):
        weighted_box_fusion([A_BOXES, B_BOXES], [A_SCORES])


# -- YuNet in ONNX Runtime ------------------------------------------------------------------------------
def test_dynamic_graph_leaves_the_weights_alone() -> None:
    """The registry's derived ``yunet_dynamic`` file: only the declared input size changes."""
    import onnx

    src = model_path("yunet").read_bytes()
    m = onnx.load(str(model_path("yunet_dynamic")))
    dims = [d.dim_param or d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, "height", "width"]
    assert len(m.graph.initializer) == len(onnx.load_from_string(src).graph.initializer)


def test_bgr_planes_equal_opencvs_blob(astronaut: Image) -> None:
    odd = np.ascontiguousarray(astronaut[:97, :131])
    for image in (astronaut, odd):
        assert np.array_equal(bgr_planes(image), cv2.dnn.blobFromImage(image, swapRB=True))


def test_onnxruntime_yunet_matches_opencv(astronaut: Image) -> None:
    """The same network, decoded in numpy instead of OpenCV: same box, points and score."""
    (ours,) = YuNetOrtDetector().detect(astronaut)
    (theirs,) = create_detector("yunet").detect(astronaut)
    np.testing.assert_allclose(ours.box, theirs.box, atol=1.0)
    assert ours.landmarks5 is not None and theirs.landmarks5 is not None
    np.testing.assert_allclose(ours.landmarks5, theirs.landmarks5, atol=1.0)
    assert abs(ours.score - theirs.score) < 1e-3


def test_passes_map_back_to_the_image(astronaut: Image) -> None:
    """Enlarged and mirrored looks give the plain look's face, in the image's pixels and point order."""
    det = YuNetOrtDetector(max_side=1200)
    plain = look(det, astronaut, Pass("yunet"), 1200)
    assert len(plain) == 1 and plain.landmarks5 is not None
    for p in (Pass("yunet", scale=2.0), Pass("yunet", mirror=True), Pass("yunet", scale=0.5, mirror=True)):
        raw = look(det, astronaut, p, 1200)
        assert len(raw) == 1 and raw.landmarks5 is not None, p
        assert iou_matrix(raw.boxes, plain.boxes)[0, 0] >= 0.85, p
        # The model's own jitter stays under 10 % of the 90 px face; unswapped points would be 45 px off.
        assert np.abs(raw.landmarks5 - plain.landmarks5).max() < 9, p
    assert len(look(det, astronaut, Pass("yunet", scale=2.0, below=60), 1200)) == 0  # the face is 90 px
    assert len(look(det, astronaut, Pass("yunet", scale=2.0), 500)) == 0  # no room to enlarge 512 px


def test_tiles_cover_the_side_with_the_overlap_asked() -> None:
    for length, tile, overlap in ((1000, 320, 96), (2048, 1024, 256), (321, 320, 100), (320, 320, 50), (90, 320, 50)):
        starts = tile_starts(length, tile, overlap)
        assert starts[0] == 0 and starts[-1] + min(tile, length) == length, (length, tile, overlap)
        assert all(0 < b - a <= tile - overlap for a, b in itertools.pairwise(starts))


def test_a_tiled_look_finds_the_faces_of_the_whole_look_once(dataset) -> None:  # type: ignore[no-untyped-def]
    """Tiles cut from the image and mapped back: the small faces of a crowd that one look at the whole
    image finds, each once (faces cut by a tile's side are left to the neighbour that holds them whole)."""
    image = load_image(dataset("wider", "WIDER_val", "images", "0--Parade", "0_Parade_marchingband_1_267.jpg"))
    det = CenterFaceDetector(DetectorOptions(score_threshold=0.3))
    whole = look(det, image, Pass("centerface", below=40), 2560)
    tiled = look(det, image, Pass("centerface", below=40, tile=256), 2560)
    sure = whole.boxes[whole.scores >= 0.5]
    assert len(sure) >= 10 and max(image.shape[:2]) > 2 * 256  # several tiles, many faces
    best = iou_matrix(sure, tiled.boxes).max(axis=1)  # a tile's other context moves a box a little
    assert best.min() >= 0.5 and best.mean() >= 0.8
    twice = iou_matrix(tiled.boxes, tiled.boxes) - np.eye(len(tiled))
    assert twice.max() <= 0.4
    assert tiled.landmarks5 is not None and len(tiled.landmarks5) == len(tiled)


def test_a_fused_threshold_under_the_members_keeps_their_votes(dataset) -> None:  # type: ignore[no-untyped-def]
    """``thorough`` asked for faces down to 0.02 gives, above 0.05, exactly the faces it gives at 0.05:
    its members stay at their own threshold, so weaker votes do not move the fused boxes and scores."""
    image = load_image(dataset("wider", "WIDER_val", "images", "0--Parade", "0_Parade_marchingband_1_267.jpg"))
    low = create_detector("thorough", DetectorOptions(score_threshold=0.02)).detect(image)
    high = create_detector("thorough", DetectorOptions(score_threshold=0.05)).detect(image)
    above = [f for f in low if f.score >= 0.05]
    assert len(low) > len(above) == len(high) > 10
    np.testing.assert_array_equal([f.box for f in above], [f.box for f in high])
    np.testing.assert_array_equal([f.score for f in above], [f.score for f in high])


# -- both modes on real photos -----------------------------------------------------------------------
@pytest.mark.parametrize("name", MODES)
def test_astronaut(name: str, astronaut: Image) -> None:
    (face,) = detector(name).detect(astronaut)
    assert face.detector == name
    assert iou_matrix(face.box, ASTRONAUT_FACE_BOX)[0, 0] >= 0.7
    assert face.landmarks5 is not None
    left_eye, right_eye, nose, left_mouth, right_mouth = face.landmarks5
    assert left_eye[0] < nose[0] < right_eye[0] and left_mouth[0] < right_mouth[0]
    assert max(left_eye[1], right_eye[1]) < nose[1] < min(left_mouth[1], right_mouth[1])


@pytest.mark.parametrize("name", MODES)
def test_group_photo_has_six_faces(name: str, dataset) -> None:  # type: ignore[no-untyped-def]
    image = load_image(dataset("samples", "insightface_data", "t1.jpg"))
    faces = detector(name).detect(image)
    assert len(faces) == 6
    for face in faces:
        assert face.landmarks5 is not None
        x1, y1, x2, y2 = face.box
        p = face.landmarks5
        assert np.all((p[:, 0] >= x1) & (p[:, 0] <= x2) & (p[:, 1] >= y1) & (p[:, 1] <= y2))


def test_accurate_keeps_weak_votes_and_the_options(astronaut: Image) -> None:
    """Members run below the fused threshold; the fused result gets the shared post-processing."""
    det = create_detector("accurate", DetectorOptions(score_threshold=0.3, max_faces=1))
    assert all(m.score_threshold == 0.05 for m in det.model.values())
    (face,) = det.detect(astronaut)
    assert 0.3 <= face.score <= 1.0
