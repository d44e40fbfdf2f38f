"""Pure geometry of align.py: exact similarity fits, no reflections, crops on the template, padding."""

from __future__ import annotations

import math

import numpy as np
import pytest

from faceflow.align import ARCFACE_112, align_crop, crop_box, invert_affine, similarity_transform, transform_points


def _similarity(angle_deg: float, scale: float, tx: float, ty: float) -> np.ndarray:
    a = math.radians(angle_deg)
    return np.array([[scale * math.cos(a), -scale * math.sin(a), tx], [scale * math.sin(a), scale * math.cos(a), ty]])


@pytest.mark.parametrize(("angle", "scale", "tx", "ty"), [(0, 1, 0, 0), (30, 2.5, 10, -7), (-135, 0.4, 300, 45)])
def test_similarity_transform_recovers_a_known_transform(angle: float, scale: float, tx: float, ty: float) -> None:
    src = np.random.default_rng(0).uniform(-50, 150, size=(7, 2))
    m = _similarity(angle, scale, tx, ty)
    dst = src @ m[:, :2].T + m[:, 2]
    fit = similarity_transform(src, dst)
    np.testing.assert_allclose(fit, m, atol=1e-9)
    np.testing.assert_allclose(transform_points(fit, src), dst, atol=1e-3)
    np.testing.assert_allclose(transform_points(invert_affine(fit), dst), src, atol=1e-3)


def test_similarity_transform_never_reflects() -> None:
    src = np.asarray(ARCFACE_112, np.float64)
    mirrored = src * [-1, 1] + [112, 0]  # the template seen in a mirror
    m = similarity_transform(src, mirrored)
    assert np.linalg.det(m[:, :2]) > 0
    a, b = m[0, 0], m[1, 0]  # a proper similarity: [[a, -b], [b, a]]
    np.testing.assert_allclose(m[:, :2], [[a, -b], [b, a]], atol=1e-12)


def test_similarity_transform_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="equal"):
        similarity_transform(np.zeros((5, 2)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="N >= 2"):
        similarity_transform(np.zeros((1, 2)), np.zeros((1, 2)))


def _blob_centre(image: np.ndarray) -> np.ndarray:
    """Intensity-weighted centre of an image holding one bright blob."""
    w = image.astype(np.float64)
    ys, xs = np.indices(w.shape)
    return np.array([(xs * w).sum() / w.sum(), (ys * w).sum() / w.sum()])


@pytest.mark.parametrize("size", [112, 224])
def test_align_crop_puts_the_five_points_on_the_template(size: int) -> None:
    m = _similarity(25, 2.2, 140, 60)
    points = transform_points(m, ARCFACE_112)  # a face turned 25 degrees, 2.2 times larger
    ys, xs = np.indices((400, 400))
    for p, target in zip(points, np.asarray(ARCFACE_112) * size / 112, strict=True):
        blob = np.exp(-((xs - p[0]) ** 2 + (ys - p[1]) ** 2) / (2 * 3.0**2))
        image = np.repeat((255 * blob).astype(np.uint8)[:, :, None], 3, axis=2)
        crop = align_crop(image, points, size=size)
        assert crop.shape == (size, size, 3) and crop.dtype == np.uint8
        np.testing.assert_allclose(_blob_centre(crop[:, :, 0]), target, atol=0.3)


def test_crop_box_pads_outside_the_image() -> None:
    image = np.full((100, 100, 3), 200, np.uint8)
    crop = crop_box(image, [-50, -50, 50, 50])  # the box's top-left quarter lies outside
    assert crop.shape == (100, 100, 3)
    assert (crop[:45, :45] == 0).all()
    assert (crop[55:, 55:] == 200).all()
    assert (crop_box(image, [20, 30, 60, 50], scale=1.5, size=64).shape == np.array([64, 64, 3])).all()
