"""Annotated copies of images: boxes, landmarks and a short label per face."""

from __future__ import annotations

import cv2
import numpy as np

from faceflow.types import Face, Image


def _label(face: Face) -> str:
    parts = [f"{face.score:.2f}"]
    if face.track_id is not None:
        parts.insert(0, f"#{face.track_id}")
    if face.gender is not None:
        parts.append(str(face.gender.value)[0].upper())
    if face.age is not None:
        parts.append(f"{float(face.age.value):.0f}")
    if face.expression is not None:
        parts.append(face.expression.value)
    return " ".join(parts)


def annotate(image: Image, faces: list[Face]) -> Image:
    """A copy of ``image`` (RGB) with every face drawn on it."""
    out = np.ascontiguousarray(image.copy())
    scale = max(1, round(max(out.shape[:2]) / 800))
    for face in faces:
        x1, y1, x2, y2 = (round(float(v)) for v in face.box)
        cv2.rectangle(out, (x1, y1), (x2, y2), (0, 220, 0), scale)
        if face.landmarks68 is not None:
            for x, y in face.landmarks68:
                cv2.circle(out, (round(float(x)), round(float(y))), scale, (0, 160, 255), -1)
        if face.landmarks5 is not None:
            for x, y in face.landmarks5:
                cv2.circle(out, (round(float(x)), round(float(y))), 2 * scale, (255, 40, 40), -1)
        text = _label(face)
        cv2.putText(out, text, (x1, max(12 * scale, y1 - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.45 * scale,
                    (255, 255, 0), scale, cv2.LINE_AA)
    return out


def save_image(image: Image, path: str) -> None:
    """Write an RGB image; the format follows the suffix."""
    if not cv2.imwrite(path, cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")
