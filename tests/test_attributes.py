"""Age, gender and expression on real models: the astronaut and a UTKFace sample."""

from __future__ import annotations

import numpy as np
import pytest

from faceflow.attributes import (
    AGE_BINS,
    AgeGenderStage,
    AttributesStage,
    ExpressionStage,
    age_estimate,
    gender_estimate,
)
from faceflow.detect import create_detector
from faceflow.io import load_image
from faceflow.types import EXPRESSIONS, Face


@pytest.fixture(scope="module")
def detector():  # type: ignore[no-untyped-def]
    return create_detector("yunet")


@pytest.fixture(scope="module")
def stage() -> AttributesStage:
    return AttributesStage()


def central_face(detector, image: np.ndarray) -> Face | None:  # type: ignore[no-untyped-def]
    faces = detector.detect(image)
    centre = np.array(image.shape[1::-1]) / 2
    return min(faces, key=lambda f: float(np.hypot(*(np.array(f.center) - centre))), default=None)


def test_age_estimate_is_expectation_with_mass_confidence() -> None:
    p = np.zeros(81)
    p[30] = 1.0
    assert age_estimate(p).value == pytest.approx(30.0) and age_estimate(p).confidence == pytest.approx(1.0)
    p = np.zeros(81)
    p[[20, 40]] = 0.5
    est = age_estimate(p)
    assert est.value == pytest.approx(30.0) and est.confidence == pytest.approx(0.0)
    assert AGE_BINS[0] == pytest.approx(0.25) and AGE_BINS[-1] == 80


def test_gender_estimate_labels() -> None:
    assert gender_estimate([0.3, 0.7]).value == "male"
    assert gender_estimate([0.9, 0.1]).value == "female"
    assert gender_estimate([0.9, 0.1]).confidence == pytest.approx(0.9)


def test_astronaut_attributes(astronaut, detector, stage: AttributesStage) -> None:
    face = central_face(detector, astronaut)
    assert face is not None
    assert stage.name == "attributes" and stage.run(astronaut, []) == []
    stage.run(astronaut, [face])
    assert face.gender is not None and face.gender.value == "female" and face.gender.confidence > 0.5
    assert face.age is not None and 20 <= face.age.value <= 60 and 0 < face.age.confidence <= 1
    assert face.expression is not None and face.expression.value == "happy"
    assert tuple(face.expression.scores) == EXPRESSIONS
    assert sum(face.expression.scores.values()) == pytest.approx(1.0, abs=1e-3)


def test_parts_alone_and_box_only_faces(astronaut, detector) -> None:
    found = central_face(detector, astronaut)
    assert found is not None
    face = Face(box=found.box)  # no five points: the box-based approximation is used
    AgeGenderStage().run(astronaut, [face])
    assert face.expression is None and face.gender is not None and face.gender.value == "female"
    ExpressionStage().run(astronaut, [face])
    assert face.expression is not None and face.expression.value == "happy"


def test_utkface_sample(dataset, detector, stage: AttributesStage) -> None:  # type: ignore[no-untyped-def]
    files = sorted(dataset("utkface").glob("*.jpg"))[::40][:100]
    errors, correct = [], []
    for path in files:
        age, gender = (int(v) for v in path.name.split("_")[:2])
        image = load_image(path)
        face = central_face(detector, image)
        if face is None:
            continue
        stage.run(image, [face])
        assert face.age is not None and face.gender is not None
        errors.append(abs(face.age.value - age))
        correct.append(face.gender.value == ("female" if gender == 1 else "male"))
    assert len(errors) >= 95
    assert np.mean(correct) > 0.8
    assert np.mean(errors) < 10
