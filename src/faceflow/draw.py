"""Annotated copies of images: boxes, landmarks and a short label per face."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from faceflow.types import Face, Image


def label(face: Face) -> str:
    """The text drawn above a face: its track id, detector score, then what each registered stage
    says of it (its :attr:`~faceflow.stage.StageSpec.label`; a plug-in stage's label appears too)."""
    from faceflow.stage import registry

    parts = [f"{face.score:.2f}"]
    if face.track_id is not None:
        parts.insert(0, f"#{face.track_id}")
    for spec in registry().specs.values():
        text = spec.label(face) if spec.label is not None else None
        if text:
            parts.append(text)
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
        text = label(face)
        cv2.putText(out, text, (x1, max(12 * scale, y1 - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.45 * scale,
                    (255, 255, 0), scale, cv2.LINE_AA)
    return out


def encode_image(image: Image, suffix: str) -> bytes:
    """Encode an RGB image in the format that ``suffix`` names (``.jpg``, ``.png``, ...)."""
    try:
        ok, buf = cv2.imencode(suffix, cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    except cv2.error as exc:  # e.g. a side over JPEG's 65,535 pixels
        raise ValueError(f"cannot encode an image as {suffix}: {exc.err}") from None
    if not ok:
        raise ValueError(f"cannot encode an image as {suffix}")
    return bytes(buf)


def save_image(image: Image, path: str | os.PathLike[str]) -> None:
    """Write an RGB image; the format follows the suffix.

    Encoded in memory and written through Python's file API: OpenCV's own writer takes the name as
    UTF-8 text and crashes the process on a name that is not (a surrogate-escaped byte).
    """
    data = encode_image(image, Path(path).suffix or ".png")
    with open(path, "wb") as fh:
        fh.write(data)
