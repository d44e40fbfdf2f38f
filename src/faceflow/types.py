"""The plain data types that flow between stages: :class:`Face` and its parts.

Conventions (shared by every stage, the CLI and the service):

* coordinates are image pixels, floats, origin top-left; ``box`` is ``[x1, y1, x2, y2]``;
* ``landmarks5`` are, in order: the eye on the image's left, the eye on the image's right, the nose
  tip, the mouth corner on the image's left, the mouth corner on the image's right;
* pose angles are degrees: yaw > 0 when the face turns toward the image's right, pitch > 0 when it
  tilts up, roll > 0 when the eye line (image-left eye to image-right eye) rotates clockwise;
* ``to_dict()`` gives strict JSON: plain Python numbers (NumPy scalars converted), and ``None`` (null)
  for a NaN or infinite value, which JSON cannot write.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]
Image = npt.NDArray[np.uint8]
"""An RGB image, ``uint8``, shape ``(height, width, 3)``."""

EXPRESSIONS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")


def _num(value: Any, ndigits: int) -> float | None:
    """``value`` as a plain float rounded for compact JSON, or ``None`` when it is NaN or infinite."""
    x = float(value)
    return round(x, ndigits) if math.isfinite(x) else None


def _round(values: Any, ndigits: int = 2) -> Any:
    """Round floats in nested lists for compact JSON (non-finite ones become ``None``)."""
    if isinstance(values, list):
        return [_round(v, ndigits) for v in values]
    return _num(values, ndigits)


@dataclass(frozen=True, slots=True)
class Pose:
    """Head pose in degrees (see the module docstring for the signs)."""

    yaw: float
    pitch: float
    roll: float

    def to_dict(self) -> dict[str, float | None]:
        return {"yaw": _num(self.yaw, 2), "pitch": _num(self.pitch, 2), "roll": _num(self.roll, 2)}


@dataclass(frozen=True, slots=True)
class Estimate:
    """A predicted value with the model's confidence in it (0..1)."""

    value: float | str
    confidence: float

    def to_dict(self) -> dict[str, Any]:
        value: Any = self.value
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            value = int(value)
        elif not isinstance(value, str):
            value = _num(value, 2)
        return {"value": value, "confidence": _num(self.confidence, 4)}


@dataclass(frozen=True, slots=True)
class Expression:
    """The most likely expression and the probability of each of :data:`EXPRESSIONS`."""

    value: str
    scores: dict[str, float]

    @property
    def confidence(self) -> float:
        return self.scores[self.value]

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "scores": {k: _num(v, 4) for k, v in self.scores.items()}}


@dataclass(frozen=True, slots=True)
class QualityMeasure:
    """One quality component: its raw value (in the component's own unit) and its score in [0, 100]
    (higher is better); ``score == -1`` and ``value is None`` when it cannot be assessed."""

    value: float | None
    score: float

    def to_dict(self) -> dict[str, Any]:
        return {"value": None if self.value is None else _num(self.value, 4), "score": _num(self.score, 1)}


@dataclass(frozen=True, slots=True)
class Quality:
    """A face's quality: the unified utility score in [0, 100] (how useful the face is for
    recognition; ``None`` when no model scored it) and the ISO/IEC 29794-5 component measures by name."""

    unified: float | None
    components: dict[str, QualityMeasure]

    def failing(self, below: float) -> list[str]:
        """Names of the assessed components scoring under ``below``, worst first."""
        low = [(m.score, n) for n, m in self.components.items() if 0 <= m.score < below]
        return [n for _, n in sorted(low)]

    def to_dict(self) -> dict[str, Any]:
        return {"unified": None if self.unified is None else _num(self.unified, 1),
                "components": {n: m.to_dict() for n, m in self.components.items()}}


@dataclass(frozen=True, slots=True)
class Liveness:
    """Presentation-attack detection for one face: ``score`` in [0, 1] (1 = live), the ``decision``
    (``"live"`` when ``score >= threshold``, else ``"spoof"``), the ``threshold`` it was taken at and the
    ``model`` that scored it. ``reason`` says why a video track was judged as it was (else ``None``)."""

    score: float
    threshold: float
    model: str
    reason: str | None = None

    @property
    def decision(self) -> str:
        return "live" if self.score >= self.threshold else "spoof"

    @property
    def live(self) -> bool:
        return self.decision == "live"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"score": _num(self.score, 4), "decision": self.decision,
                               "threshold": _num(self.threshold, 4), "model": self.model}
        if self.reason is not None:
            out["reason"] = self.reason
        return out


def _as_points(value: Any, n: int, dims: int = 2) -> FloatArray | None:
    if value is None:
        return None
    arr = np.asarray(value, dtype=np.float32)
    if arr.shape != (n, dims):
        raise ValueError(f"expected {n} points of {dims} coordinates, got shape {arr.shape}")
    return arr


@dataclass(slots=True, eq=False)
class Face:
    """One face in one image. Each stage reads the fields it needs and fills in its own.

    Slots make a typo such as ``face.landmark5 = ...`` raise instead of silently adding a field.
    """

    box: FloatArray
    score: float = 1.0
    detector: str | None = None
    landmarks5: FloatArray | None = None
    landmarks68: FloatArray | None = None
    mesh: FloatArray | None = None
    pose: Pose | None = None
    embeddings: dict[str, FloatArray] = field(default_factory=dict)
    age: Estimate | None = None
    gender: Estimate | None = None
    expression: Expression | None = None
    quality: Quality | None = None
    liveness: Liveness | None = None
    track_id: int | None = None
    """Identity of this face across the frames of a video or stream (set by :mod:`faceflow.track`)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Fields of plug-in stages that ``Face`` does not declare, by the stage's field name (JSON-ready
    values, or objects with ``to_dict()``)."""

    def __post_init__(self) -> None:
        box = np.asarray(self.box, dtype=np.float32).reshape(-1)
        if box.shape != (4,):
            raise ValueError(f"box must be [x1, y1, x2, y2], got {self.box!r}")
        self.box = box
        self.score = float(self.score)
        self.landmarks5 = _as_points(self.landmarks5, 5)
        self.landmarks68 = _as_points(self.landmarks68, 68)
        self.mesh = _as_points(self.mesh, 468, 3)

    @property
    def width(self) -> float:
        return float(self.box[2] - self.box[0])

    @property
    def height(self) -> float:
        return float(self.box[3] - self.box[1])

    @property
    def center(self) -> tuple[float, float]:
        return float(self.box[0] + self.box[2]) / 2, float(self.box[1] + self.box[3]) / 2

    @property
    def quality_fraction(self) -> float:
        """The unified quality as a fraction in [0, 1] when a quality stage scored the face, else the
        detector's score: what galleries store and compare with their minimum."""
        if self.quality is not None and self.quality.unified is not None and self.quality.unified >= 0:
            return self.quality.unified / 100.0
        return self.score

    def to_dict(self, *, embeddings: bool = False) -> dict[str, Any]:
        """JSON-ready dict; fields no stage filled are omitted, embeddings only when asked."""
        out: dict[str, Any] = {"box": _round(self.box.tolist()), "score": _num(self.score, 4)}
        if self.track_id is not None:
            out["track_id"] = int(self.track_id)
        if self.detector is not None:
            out["detector"] = self.detector
        for name in ("landmarks5", "landmarks68", "mesh"):
            value = getattr(self, name)
            if value is not None:
                out[name] = _round(value.tolist())
        for name in ("pose", "age", "gender", "expression", "quality", "liveness"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value.to_dict()
        for name, value in self.extra.items():
            out[name] = value.to_dict() if hasattr(value, "to_dict") else value
        if embeddings and self.embeddings:
            out["embeddings"] = {k: _round(np.asarray(v).tolist(), 6) for k, v in self.embeddings.items()}
        return out


def largest_face(faces: Sequence[Face]) -> Face | None:
    """The face with the largest box area (the first of equals), or ``None`` when there is none."""
    return max(faces, key=lambda f: f.width * f.height, default=None)


def nearest_face(faces: Sequence[Face], point: Sequence[float]) -> Face | None:
    """The face whose box centre is nearest ``point`` (x, y), or ``None``; e.g. the most central face
    with ``point = (width / 2, height / 2)``."""
    px, py = float(point[0]), float(point[1])
    return min(faces, key=lambda f: (f.center[0] - px) ** 2 + (f.center[1] - py) ** 2, default=None)


@dataclass(slots=True)
class ImageResult:
    """What one image of a batch produced: its faces, or the error that stopped it."""

    path: str
    width: int | None = None
    height: int | None = None
    faces: list[Face] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self, *, embeddings: bool = False) -> dict[str, Any]:
        return {
            "path": self.path,
            "width": self.width,
            "height": self.height,
            "faces": [f.to_dict(embeddings=embeddings) for f in self.faces],
            "error": self.error,
        }
