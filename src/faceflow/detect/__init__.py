"""Face detectors behind one API: ``create_detector(name, options).detect(image) -> list[Face]``."""

from __future__ import annotations

import importlib

from faceflow.detect.base import Detector, DetectorOptions, RawDetections, iou_matrix, nms
from faceflow.errors import ConfigError
from faceflow.models.store import ModelStore

DETECTORS: dict[str, str] = {
    "yunet": "faceflow.detect.yunet:YuNetDetector",
    "centerface": "faceflow.detect.centerface:CenterFaceDetector",
    "blazeface_short": "faceflow.detect.blazeface:BlazeFaceShortDetector",
    "blazeface_full": "faceflow.detect.blazeface:BlazeFaceFullDetector",
    "dlib_hog": "faceflow.detect.dlib_hog:DlibHogDetector",
    "haar": "faceflow.detect.haar:HaarDetector",
    "accurate": "faceflow.detect.ensemble:AccurateDetector",
    "fast": "faceflow.detect.yunet_ort:FastDetector",
}
"""Detector names (for ``--detector``) and the class implementing each, imported on first use."""

DEFAULT_DETECTOR = "yunet"


def detector_class(name: str) -> type[Detector]:
    try:
        target = DETECTORS[name]
    except KeyError:
        raise ConfigError(f"unknown detector {name!r}; choose one of: {', '.join(DETECTORS)}") from None
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)  # type: ignore[no-any-return]


def create_detector(
    name: str = DEFAULT_DETECTOR, options: DetectorOptions | None = None, store: ModelStore | None = None
) -> Detector:
    """Build the detector called ``name`` (see :data:`DETECTORS`)."""
    return detector_class(name)(options, store)


__all__ = [
    "DEFAULT_DETECTOR",
    "DETECTORS",
    "Detector",
    "DetectorOptions",
    "RawDetections",
    "create_detector",
    "detector_class",
    "iou_matrix",
    "nms",
]
