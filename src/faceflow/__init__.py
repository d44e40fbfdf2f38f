"""faceflow: face analysis on a plain CPU, offline, with real pretrained models."""

from faceflow.detect import DetectorOptions, create_detector
from faceflow.errors import (
    ChecksumMismatch,
    ConfigError,
    DatasetError,
    FaceflowError,
    ImageError,
    ModelUnavailable,
)
from faceflow.io import load_image
from faceflow.models.runtime import Runtime
from faceflow.pipeline import Analyzer, AnalyzerOptions, analyze
from faceflow.stage import Stage, StageSpec, option
from faceflow.types import Estimate, Expression, Face, ImageResult, Pose

__version__ = "0.1.0"

__all__ = [
    "Analyzer",
    "AnalyzerOptions",
    "ChecksumMismatch",
    "ConfigError",
    "DatasetError",
    "DetectorOptions",
    "Estimate",
    "Expression",
    "Face",
    "FaceflowError",
    "ImageError",
    "ImageResult",
    "ModelUnavailable",
    "Pose",
    "Runtime",
    "Stage",
    "StageSpec",
    "__version__",
    "analyze",
    "create_detector",
    "load_image",
    "option",
]
