"""The supervised descent refinement of the 68 points (:mod:`faceflow.landmarks_refine`)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from faceflow.detect import create_detector
from faceflow.eval.w300 import nme
from faceflow.io import load_image
from faceflow.landmarks import Landmarks68Stage, LandmarksOptions
from faceflow.landmarks_refine import BINS, RefineStep, ShapeRefiner, gradient_cells, packaged_refiner, point_features
from faceflow.types import nearest_face


def test_a_vertical_edge_fills_the_horizontal_bins_only() -> None:
    """Dark on the left, light on the right: the gradient points along +x (bin 0); the mirror image's
    along -x (bin BINS / 2); nothing else gets any magnitude."""
    gray = np.zeros((32, 32), np.float32)
    gray[:, 16:] = 100
    for image, full in ((gray, 0), (gray[:, ::-1].copy(), BINS // 2)):
        cells = gradient_cells(image, 4)
        totals = cells.sum(axis=(1, 2))
        assert totals[full] > 0
        assert np.delete(totals, full).max() == pytest.approx(0, abs=1e-3)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(-6, 6), st.integers(-6, 6), st.sampled_from([(3, 4), (4, 4), (6, 3)]))
def test_features_move_with_the_image(seed: int, dx: int, dy: int, cell_grid: tuple[int, int]) -> None:
    """Shifting the picture and the points by the same whole pixels leaves the features unchanged (away
    from the borders), and they are normalised per point."""
    cell, grid = cell_grid
    rng = np.random.default_rng(seed)
    big = rng.uniform(0, 255, (96, 96)).astype(np.float32)
    points = rng.uniform(36, 60, (5, 2))
    a = point_features(big[16:80, 16:80], points - 16, cell, grid)
    b = point_features(big[16 + dy : 80 + dy, 16 + dx : 80 + dx], points - 16 - [dx, dy], cell, grid)
    np.testing.assert_allclose(a, b, atol=1e-5)
    norms = np.linalg.norm(a.reshape(5, -1), axis=1)
    np.testing.assert_allclose(norms, 1, atol=1e-2)


def test_stored_steps_round_trip_within_int8_precision() -> None:
    rng = np.random.default_rng(0)
    n = 68 * 16 * BINS
    step = RefineStep(4, 4, rng.normal(size=n).astype(np.float32), rng.normal(size=(n, 8)).astype(np.float32),
                      rng.normal(size=(8, 136)).astype(np.float32), rng.normal(size=136).astype(np.float32))
    back = ShapeRefiner.from_bytes(ShapeRefiner(rng.normal(size=(68, 2)), [step]).to_bytes()).steps[0]
    scale = np.abs(step.basis).max(axis=0) / 127
    assert np.all(np.abs(back.basis - step.basis) <= scale / 2 + 1e-6)
    np.testing.assert_array_equal(back.components, step.components)


def test_points_that_cannot_be_framed_are_left_as_they_are(astronaut: np.ndarray) -> None:
    """Degenerate starts (one repeated point, a NaN) come back unchanged rather than as NaN or an error;
    points partly outside the picture are still moved, by a few pixels at most."""
    refiner = packaged_refiner()
    same = np.full((68, 2), 50.0)
    np.testing.assert_array_equal(refiner(astronaut, same), same)
    broken = np.array(same)
    broken[3] = np.nan
    np.testing.assert_array_equal(refiner(astronaut, broken), broken)
    face = create_detector("yunet").detect(astronaut)[0]
    start = Landmarks68Stage("fused").predict(astronaut, face)
    off = start - start.mean(axis=0) + [5.0, 5.0]  # the face's shape centred on the top-left corner
    moved = refiner(astronaut, off)
    assert moved.shape == (68, 2) and np.all(np.isfinite(moved))
    assert np.abs(moved - off).max() < 0.2 * np.ptp(off[:, 0])


def test_the_default_source_is_the_refined_one() -> None:
    assert LandmarksOptions().source == "refined"
    refiner = packaged_refiner()
    assert len(refiner.steps) == 2 and refiner.reference.shape == (68, 2)


def test_refining_brings_the_points_nearer_the_teacher_on_unseen_faces(dataset) -> None:  # type: ignore[no-untyped-def]
    """On 30 LFW faces that neither the regressions nor the refiner saw (the held-out people of
    ``training/fit_landmarks_68.py``), the refined points lie nearer dlib's (their teacher) than the
    fused ones they start from, on average and on most faces, and they move by a few percent at most."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
    from fit_landmarks_68 import held_out_images

    paths = held_out_images(dataset("lfw").parent, 30)
    detector = create_detector("yunet")
    fused, refined, teacher = Landmarks68Stage("fused"), Landmarks68Stage("refined"), Landmarks68Stage("dlib")
    before, after, moved = [], [], []
    for path in paths:
        image = load_image(path)
        h, w = image.shape[:2]
        face = nearest_face(detector.detect(image), (w / 2, h / 2))
        assert face is not None
        start, end, truth = (s.predict(image, face) for s in (fused, refined, teacher))
        before.append(nme(start, truth))
        after.append(nme(end, truth))
        moved.append(nme(end, start))
    before_a, after_a = np.array(before), np.array(after)
    assert after_a.mean() < 0.92 * before_a.mean()
    assert np.mean(after_a < before_a) > 0.6
    assert max(moved) < 0.06
