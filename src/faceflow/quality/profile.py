"""Quality reports: which components fail, and the ICAO-like document-photo profile with an overlay.

The ``icao`` profile turns the requirements of ICAO Doc 9303 / ISO/IEC 19794-5 for passport photos
into checks on the component measures' raw values. It is a screening aid, not a certified check;
the limits are the standards' where they give one (eye distance, pose, expression, one face), else
conservative readings of our own measures (documented with each requirement).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from faceflow.errors import ConfigError
from faceflow.quality.measures import FACE_OVAL, mesh_landmarks5
from faceflow.types import Face, Image, Quality


@dataclass(frozen=True)
class Requirement:
    """One check of a profile: a component, the test on its raw value, and the reason in words."""

    name: str
    component: str
    test: Callable[[float], bool]
    text: str


def _between(lo: float, hi: float) -> Callable[[float], bool]:
    return lambda v: lo <= v <= hi


def _at_least(lo: float) -> Callable[[float], bool]:
    return lambda v: v >= lo


def _at_most(hi: float) -> Callable[[float], bool]:
    return lambda v: v <= hi


ICAO: tuple[Requirement, ...] = (
    Requirement("resolution", "inter_eye_distance", _at_least(90.0), "at least 90 pixels between the eye centres"),
    Requirement("frontal (yaw)", "head_pose_yaw", _between(-5.0, 5.0), "head turned at most 5 degrees"),
    Requirement("frontal (pitch)", "head_pose_pitch", _between(-5.0, 5.0), "head tilted up/down at most 5 degrees"),
    Requirement("level (roll)", "head_pose_roll", _between(-8.0, 8.0), "head tilted sideways at most 8 degrees"),
    Requirement("eyes open", "eyes_open", _at_least(0.18), "eyes open (lid opening >= 0.18 of the eye width)"),
    Requirement("eyes visible", "eyes_visible", _at_least(0.9), "both eyes fully visible"),
    Requirement("mouth closed", "mouth_closed", _at_most(0.1), "mouth closed (lip gap <= 0.1 of its width)"),
    Requirement("neutral expression", "expression_neutrality", _at_least(0.5), "neutral expression (p >= 0.5)"),
    Requirement("single face", "single_face_present", _at_least(0.9), "no other face in the picture"),
    Requirement("head size", "head_size", _between(0.40, 0.65), "forehead-to-chin 40-65 % of the image height "
                "(chin-to-crown about 70-80 %)"),
    Requirement("margin left", "leftward_crop", _at_least(0.5), "free space left of the face"),
    Requirement("margin right", "rightward_crop", _at_least(0.5), "free space right of the face"),
    Requirement("margin above", "margin_above", _at_least(0.5), "free space above the face"),
    Requirement("margin below", "margin_below", _at_least(0.3), "free space below the chin"),
    Requirement("face not cut", "face_occlusion_prevention", _at_least(1.0), "the whole face inside the picture"),
    Requirement("exposure (dark)", "under_exposure_prevention", _at_most(0.02), "<= 2 % of the face under-exposed"),
    Requirement("exposure (bright)", "over_exposure_prevention", _at_most(0.02), "<= 2 % of the face over-exposed"),
    Requirement("brightness", "luminance_mean", _between(0.3, 0.75), "face luminance mean 0.3-0.75"),
    Requirement("even lighting", "illumination_uniformity", _at_least(0.6), "left and right halves lit alike "
                "(histogram intersection >= 0.6)"),
    Requirement("in focus", "sharpness", _at_least(300.0), "sharp (Laplacian variance >= 300 in the aligned crop)"),
    Requirement("no compression artefacts", "compression_artifacts", _at_most(1.35), "JPEG blockiness <= 1.35"),
)
"""The ``icao`` profile."""

PROFILES: dict[str, tuple[Requirement, ...]] = {"icao": ICAO}


@dataclass(frozen=True)
class Check:
    """One requirement's outcome; ``passed is None`` when its component could not be assessed."""

    requirement: Requirement
    value: float | None
    passed: bool | None

    def to_dict(self) -> dict[str, Any]:
        return {"requirement": self.requirement.name, "component": self.requirement.component,
                "value": None if self.value is None else round(self.value, 4), "passed": self.passed,
                "rule": self.requirement.text}


def check_profile(quality: Quality, profile: str = "icao") -> list[Check]:
    """Each requirement of ``profile`` checked on ``quality``'s raw values (not assessable fails closed
    as ``passed=None``, which :func:`profile_passed` counts as a failure)."""
    try:
        reqs = PROFILES[profile]
    except KeyError:
        raise ConfigError(f"unknown quality profile {profile!r}; choose from: {', '.join(PROFILES)}") from None
    out = []
    for r in reqs:
        value = quality.components[r.component].value
        out.append(Check(r, value, None if value is None else bool(r.test(value))))
    return out


def profile_passed(checks: list[Check]) -> bool:
    return all(c.passed is True for c in checks)


def overlay(image: Image, face: Face, checks: list[Check] | None = None, failing: list[str] | None = None) -> Image:
    """A copy of ``image`` showing why: the face outline and eye line green when everything passed,
    red otherwise, and the failing requirements (or components) listed beside the face."""
    out = np.ascontiguousarray(image.copy())
    bad = [c.requirement.name for c in checks if c.passed is not True] if checks is not None else list(failing or [])
    colour = (0, 200, 0) if not bad else (230, 30, 30)
    scale = max(1, round(max(out.shape[:2]) / 600))
    if face.mesh is not None:
        oval = np.round(face.mesh[list(FACE_OVAL), :2]).astype(np.int32)
        cv2.polylines(out, [oval], True, colour, scale, cv2.LINE_AA)
        l5 = np.round(mesh_landmarks5(face.mesh)).astype(np.int32)
        cv2.line(out, tuple(int(v) for v in l5[0]), tuple(int(v) for v in l5[1]), colour, scale, cv2.LINE_AA)
    else:
        x1, y1, x2, y2 = (round(float(v)) for v in face.box)
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, scale)
    x, y = max(2, round(float(face.box[0]))), max(12, round(float(face.box[1])) - 4)
    title = "PASS" if not bad else "FAIL"
    if face.quality is not None and face.quality.unified is not None:
        title += f"  Q{face.quality.unified:.0f}"
    lines = [title, *bad]
    for i, text in enumerate(lines):
        pos = (x, y + i * 14 * scale) if i else (x, y)
        if i:
            pos = (x, round(float(face.box[3])) + 14 * scale * i)
        cv2.putText(out, text, pos, cv2.FONT_HERSHEY_SIMPLEX, 0.42 * scale, (0, 0, 0), 3 * scale, cv2.LINE_AA)
        cv2.putText(out, text, pos, cv2.FONT_HERSHEY_SIMPLEX, 0.42 * scale, colour, scale, cv2.LINE_AA)
    return out
