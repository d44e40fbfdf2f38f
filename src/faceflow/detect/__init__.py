"""Face detectors behind one API: ``create_detector(name, options).detect(image) -> list[Face]``,
and the ``detect`` stage that runs the one chosen in its options."""

from __future__ import annotations

import importlib
from typing import ClassVar

from faceflow.detect.base import (
    DEFAULT_DETECTOR,
    DETECTORS,
    Detector,
    DetectorOptions,
    RawDetections,
    iou_matrix,
    nms,
)
from faceflow.errors import ConfigError
from faceflow.models.runtime import Runtime
from faceflow.stage import Stage, StageSpec
from faceflow.types import Face, Image


def detector_class(name: str) -> type[Detector]:
    try:
        target = DETECTORS[name]
    except KeyError:
        raise ConfigError(f"unknown detector {name!r}; choose one of: {', '.join(DETECTORS)}") from None
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)  # type: ignore[no-any-return]


def create_detector(
    name: str | None = None, options: DetectorOptions | None = None, runtime: Runtime | None = None
) -> Detector:
    """Build the detector called ``name`` (default: ``options.detector``; see :data:`DETECTORS`)."""
    options = options or DetectorOptions()
    return detector_class(name or options.detector)(options, runtime)


class DetectStage(Stage):
    """The first stage: finds the faces (box, score, and five points when the detector gives them)."""

    name: ClassVar[str] = "detect"

    def __init__(self, options: DetectorOptions | None = None, runtime: Runtime | None = None) -> None:
        self.options = options or DetectorOptions()
        self.detector = create_detector(None, self.options, runtime)

    def run(self, image: Image, faces: list[Face]) -> list[Face]:
        return self.detector.detect(image)


def _detect_provides(options: DetectorOptions) -> tuple[str, ...]:
    fields = ("box", "score", "detector")
    return (*fields, "landmarks5") if detector_class(options.detector).gives_landmarks5 else fields


STAGE = StageSpec(
    name="detect",
    help="Find faces: boxes, scores, and five points where the detector gives them.",
    options=DetectorOptions,
    factory=DetectStage,
    provides=_detect_provides,
)

__all__ = [
    "DEFAULT_DETECTOR",
    "DETECTORS",
    "STAGE",
    "DetectStage",
    "Detector",
    "DetectorOptions",
    "RawDetections",
    "create_detector",
    "detector_class",
    "iou_matrix",
    "nms",
]
