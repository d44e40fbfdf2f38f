"""Embedders and verification on real models and real photos."""

from __future__ import annotations

import itertools
from pathlib import Path

import cv2
import numpy as np
import pytest

from faceflow.detect import create_detector
from faceflow.errors import ConfigError
from faceflow.io import load_image
from faceflow.recognize import (
    BOX_LANDMARKS5,
    CALIBRATION,
    EMBEDDERS,
    EmbedStage,
    Verification,
    box_landmarks5,
    create_embedder,
    dlib_box,
    verify,
    verify_images,
)
from faceflow.types import Face

MODELS = tuple(EMBEDDERS)


@pytest.fixture(scope="module")
def detector():  # type: ignore[no-untyped-def]
    return create_detector("yunet")


def largest_face(detector, image: np.ndarray) -> Face:  # type: ignore[no-untyped-def]
    faces = detector.detect(image)
    assert faces, "no face found"
    return max(faces, key=lambda f: f.width * f.height)


@pytest.fixture(scope="module")
def astronaut_face(astronaut: np.ndarray, detector) -> Face:  # type: ignore[no-untyped-def]
    return largest_face(detector, astronaut)


def embed_one(model: str, image: np.ndarray, face: Face, **kw: bool) -> np.ndarray:
    return create_embedder(model, **kw).embed(image, [face])[0]


@pytest.mark.parametrize("model", MODELS)
def test_embedding_is_unit_norm_128d_and_deterministic(model: str, astronaut, astronaut_face) -> None:
    a = embed_one(model, astronaut, astronaut_face)
    b = embed_one(model, astronaut, astronaut_face)
    assert a.shape == (128,) and a.dtype == np.float32
    assert np.linalg.norm(a) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("model", MODELS)
def test_same_face_mirrored_and_rescaled_verifies(model: str, astronaut, astronaut_face, detector) -> None:
    ref = embed_one(model, astronaut, astronaut_face)
    mirrored = np.ascontiguousarray(astronaut[:, ::-1])
    h, w = astronaut.shape[:2]
    smaller = cv2.resize(astronaut, (int(w * 0.7), int(h * 0.7)), interpolation=cv2.INTER_AREA)
    for image in (mirrored, smaller):
        v = verify(ref, embed_one(model, image, largest_face(detector, image)), model)
        assert v.same, v
        threshold = CALIBRATION[model].threshold
        assert v.similarity > threshold + (1 - threshold) / 2  # well above: past halfway to 1


@pytest.mark.parametrize("model", MODELS)
def test_flip_averaging_changes_little(model: str, astronaut, astronaut_face) -> None:
    plain = embed_one(model, astronaut, astronaut_face)
    flipped = embed_one(model, astronaut, astronaut_face, flip=True)
    assert np.linalg.norm(flipped) == pytest.approx(1.0, abs=1e-5)
    assert not np.allclose(plain, flipped)
    assert float(plain @ flipped) > 0.9


@pytest.mark.parametrize("model", MODELS)
def test_known_people_same_and_different(model: str, dataset, detector) -> None:  # type: ignore[no-untyped-def]
    root = dataset("samples", "face_recognition", "examples", "knn_examples", "train")
    files = sorted(p for p in Path(root).glob("*/*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    embedder = create_embedder(model)
    vectors = []
    for path in files:
        image = load_image(path)
        vectors.append(embedder.embed(image, [largest_face(detector, image)])[0])
    n_same = 0
    for i, j in itertools.combinations(range(len(files)), 2):
        same_person = files[i].parent.name == files[j].parent.name
        n_same += same_person
        assert verify(vectors[i], vectors[j], model).same == same_person, (model, files[i], files[j])
    assert n_same >= 3


def test_sface_without_landmarks_uses_box_points(astronaut, astronaut_face) -> None:
    with_points = embed_one("sface", astronaut, astronaut_face)
    box_only = Face(box=astronaut_face.box)
    assert float(with_points @ embed_one("sface", astronaut, box_only)) > 0.8


def test_box_landmarks5_geometry() -> None:
    pts = box_landmarks5([10, 20, 110, 220])
    np.testing.assert_allclose(pts, BOX_LANDMARKS5 * [100, 200] + [10, 20], rtol=1e-6)
    assert pts[0, 0] < pts[2, 0] < pts[1, 0]  # image-left eye, nose, image-right eye
    assert pts[0, 1] < pts[2, 1] < pts[3, 1]  # eyes above nose above mouth
    np.testing.assert_allclose(BOX_LANDMARKS5[[1, 4], 0], 1 - BOX_LANDMARKS5[[0, 3], 0], atol=1e-6)


def test_dlib_box_is_square_around_the_points() -> None:
    hog = Face(box=[10, 20, 90, 100], detector="dlib_hog")
    assert dlib_box(hog) == (10, 20, 89, 99)  # dlib's right and bottom are inclusive
    face = Face(box=[0, 0, 100, 130], landmarks5=box_landmarks5([0, 0, 100, 130]), detector="yunet")
    x1, y1, x2, y2 = dlib_box(face)
    assert abs((x2 - x1) - (y2 - y1)) <= 1  # square up to rounding
    assert x1 < face.landmarks5[0, 0] and x2 > face.landmarks5[1, 0]
    assert y1 < face.landmarks5[0, 1] and y2 > face.landmarks5[3, 1]
    assert dlib_box(Face(box=face.box)) == (x1, y1, x2, y2)  # same points from the box alone


def test_embed_stage_fills_each_model(astronaut, astronaut_face) -> None:
    stage = EmbedStage(models=("sface", "dlib"))
    assert stage.name == "embed" and set(stage.needs) == {"box", "landmarks5"}
    assert EmbedStage(models=("dlib",)).needs == ("box",)
    face = Face(box=astronaut_face.box, landmarks5=astronaut_face.landmarks5)
    assert stage.run(astronaut, []) == []
    stage.run(astronaut, [face])
    assert set(face.embeddings) == {"sface", "dlib"}
    assert verify(face, face, "dlib").similarity == pytest.approx(1.0, abs=1e-5)


def test_verification_fields_and_thresholds() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=128), rng.normal(size=128)
    v = verify(a, a)
    assert isinstance(v, Verification) and v.same and v.similarity == pytest.approx(1.0, abs=1e-6)
    assert v.threshold == CALIBRATION["sface"].threshold and v.far == CALIBRATION["sface"].fmr
    assert set(v.to_dict()) == {"similarity", "same", "threshold", "far"}
    assert not verify(a, -a).same
    custom = verify(a, b, threshold=-1.0)
    assert custom.same and custom.far is None
    with pytest.raises(AttributeError):
        v.same = False  # type: ignore[misc]
    for name, cal in CALIBRATION.items():
        assert name in EMBEDDERS
        assert 0.0 < cal.threshold < 1.0 and cal.fmr <= 1e-3
        assert 0.9 < cal.tmr <= 1.0 and 0.9 < cal.accuracy <= 1.0


def test_unknown_model_and_bad_vectors_raise() -> None:
    with pytest.raises(ConfigError):
        verify(np.ones(128), np.ones(128), model="arcface")
    with pytest.raises(ConfigError):
        create_embedder("arcface")
    with pytest.raises(ConfigError):
        EmbedStage(models=("sface", "nope"))
    with pytest.raises(ConfigError):
        verify(np.ones(64), np.ones(64))
    with pytest.raises(ConfigError):
        verify(Face(box=[0, 0, 1, 1]), np.ones(128))


def test_verify_images_on_files(dataset) -> None:  # type: ignore[no-untyped-def]
    root = dataset("samples", "face_recognition", "examples", "knn_examples", "train")
    obama = sorted((root / "obama").iterdir())
    biden = sorted((root / "biden").iterdir())
    assert verify_images(obama[0], obama[1]).same
    assert not verify_images(obama[0], biden[0]).same
