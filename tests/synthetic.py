"""Synthetic test images with known face boxes, built from one real face (the astronaut).

Each face is the source photo warped by a similarity transform (scale, optional mirror, rotation about
the face centre) and blended into a smooth neutral background through a feathered ellipse around the
face, so the detectors see a face with its hair and no rectangular seams. The known box of a face is
the source box scaled and centred on the warped face centre (a rotated face keeps its box size).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class FaceSpec:
    """One face to paste: its box width in pixels, rotation in degrees, and whether it is mirrored."""

    width: float
    angle: float = 0.0
    flip: bool = False


def background(height: int, width: int) -> npt.NDArray[np.uint8]:
    """A smooth grey-beige gradient: no structure a detector could take for a face."""
    x = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :, None]
    y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    base = np.array([150, 145, 135], np.float32)
    img = base + 40 * (x - 0.5) + 25 * (y - 0.5)
    return np.asarray(np.clip(img, 0, 255), np.uint8)


def _warp(box: Box, spec: FaceSpec, centre: tuple[float, float]) -> npt.NDArray[np.float64]:
    """The 2x3 matrix taking source pixels to the canvas for one face centred at ``centre``."""
    sx, sy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    k = spec.width / (box[2] - box[0])
    a = np.deg2rad(spec.angle)
    rot = k * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    if spec.flip:
        rot = rot @ np.diag([-1.0, 1.0])
    m = np.zeros((2, 3))
    m[:, :2] = rot
    m[:, 2] = np.asarray(centre) - rot @ np.array([sx, sy])
    return m


def compose(
    source: npt.NDArray[np.uint8], box: Box, specs: list[FaceSpec], margin: float = 1.2
) -> tuple[npt.NDArray[np.uint8], list[Box]]:
    """Faces from ``source`` (whose face is ``box``) in a row on a neutral canvas; returns the canvas
    and the known box of each face, in the order of ``specs``."""
    fw, fh = box[2] - box[0], box[3] - box[1]
    slots = [max(s.width * (1 + 2 * margin * 0.6), 64.0) for s in specs]
    height = round(max(s.width * fh / fw * (1 + 2 * margin * 0.5) for s in specs) + 40)
    width = round(sum(slots) + 40)
    canvas: npt.NDArray[np.float64] = background(height, width).astype(np.float64)
    disc = np.zeros(source.shape[:2], np.float32)
    centre_src = (round((box[0] + box[2]) / 2), round((box[1] + box[3]) / 2))
    cv2.ellipse(disc, centre_src, (round(0.8 * fw), round(0.75 * fh)), 0, 0, 360, 1.0, -1)
    ellipse = cv2.GaussianBlur(disc, (0, 0), 0.08 * fw)
    boxes: list[Box] = []
    x = 20.0
    for spec, slot in zip(specs, slots, strict=True):
        centre = (x + slot / 2, height / 2)
        m = _warp(box, spec, centre)
        layer = cv2.warpAffine(source, m, (width, height), flags=cv2.INTER_LINEAR).astype(np.float64)
        alpha = cv2.warpAffine(ellipse, m, (width, height))[..., None]
        canvas = canvas * (1 - alpha) + layer * alpha
        w, h = spec.width, spec.width * fh / fw
        boxes.append((centre[0] - w / 2, centre[1] - h / 2, centre[0] + w / 2, centre[1] + h / 2))
        x += slot
    return np.clip(canvas + 0.5, 0, 255).astype(np.uint8), boxes


def tight_crop(source: npt.NDArray[np.uint8], box: Box, size: int) -> tuple[npt.NDArray[np.uint8], Box]:
    """The square around the face (side = the box's longer side) resized to ``size``, and the face box
    in it: a face that fills the whole frame, as in aligned datasets and passport photos."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    side = max(box[2] - box[0], box[3] - box[1])
    k = size / side
    m = np.array([[k, 0, size / 2 - k * cx], [0, k, size / 2 - k * cy]])
    crop = cv2.warpAffine(source, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    x1, y1 = size / 2 - k * (cx - box[0]), size / 2 - k * (cy - box[1])
    return np.asarray(crop, np.uint8), (x1, y1, size - x1, size - y1)
