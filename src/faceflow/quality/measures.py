"""ISO/IEC 29794-5 component quality measures from the mesh and an aligned crop, in numpy and OpenCV.

Each measure gives a raw value in its own unit and a score in [0, 100] (higher is better) through a
documented piecewise-linear mapping (:func:`ramp`, or a trapezoid for two-sided measures); a
measure that cannot be assessed has ``value=None`` and ``score=-1``. The names follow the standard
(and OFIQ, its reference implementation); the methods are ours, lighter than OFIQ's networks:

* **Capture-related, on the aligned crop** (:data:`CROP_SIZE` pixels, the face laid by its five
  points onto the ArcFace template scaled by :data:`CROP_SCALE`; measured inside the mesh's face
  oval, eroded, over pixels that come from the image): luminance Y (BT.601, in [0, 1]);
  ``luminance_mean``, ``luminance_variance``, ``under_exposure_prevention`` (share of Y below
  :data:`DARK`), ``over_exposure_prevention`` (share above :data:`BRIGHT`), ``dynamic_range``
  (entropy of the 256-bin Y histogram, bits), ``illumination_uniformity`` (intersection of the
  normalised Y histograms of the face's left and right halves, as OFIQ), ``sharpness`` (variance of
  the Laplacian of Y x 255 in the face region of the crop, so a fixed face scale).
* ``compression_artifacts``: JPEG blockiness on the image's own 8x8 grid around the face: the mean
  absolute step across block edges over the mean step inside blocks (1 for an unblocked image).
* **Subject-related, from the mesh**: ``eyes_open`` (the smaller eye aspect ratio: lid opening over
  eye width), ``mouth_closed`` (inner-lip gap over mouth width), ``eyes_visible`` (the smaller share
  of an eye's outline inside the image times its width relative to the other eye's, so an eye turned
  away or out of frame counts as hidden), ``face_occlusion_prevention`` (share of the face-oval
  vertices inside the image: only occlusion by the frame is seen, not objects in front of the face),
  ``head_pose_yaw`` / ``pitch`` / ``roll`` (degrees, from :func:`faceflow.pose.pose_from_mesh`;
  score 100 cos^2), ``expression_neutrality`` (the expression model's neutral probability).
* **Geometry**: ``inter_eye_distance`` (pixels between the eye centres), ``head_size`` (mesh height,
  forehead to chin, over the image height), ``leftward_crop`` / ``rightward_crop`` /
  ``margin_above`` / ``margin_below`` (the free space between the face's outline and each image
  edge, in inter-eye distances; negative when the face is cut), ``single_face_present`` (1 minus the
  area of the largest other face relative to this one).

Where mappings were not taken from a standard (the ICAO 90-pixel eye distance, OFIQ's 12.5 x entropy
and its exposure bands, the cos^2 pose mapping) their end points were set by hand from the spread of
the raw values on the first 200 images View 2's ``pairs.txt`` names (people of its first fold) and
from the controlled degradations of ``tests/test_quality.py``; the mappings only shape the component
scores (reports, the ``icao`` profile); the unified model reads the raw values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from faceflow.align import ARCFACE_112, similarity_transform
from faceflow.pose import pose_from_mesh
from faceflow.types import Face, FloatArray, Image, QualityMeasure

F64 = npt.NDArray[np.float64]

CROP_SIZE = 192
"""Side of the aligned crop the capture measures read (pixels)."""
CROP_SCALE = 1.25
"""The ArcFace 112 template scaled by this and centred in the crop: eye distance 44 pixels, the whole
face oval inside."""
DARK = 25 / 255
"""Y below this is under-exposed (OFIQ's [0, 25] band)."""
BRIGHT = 247 / 255
"""Y above this is over-exposed (OFIQ's [247, 255] band)."""

# MediaPipe mesh vertices.
LEFT_EYE = (33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246)
"""The outline of the eye on the image's left (the subject's right)."""
RIGHT_EYE = (263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466)
LEFT_EAR = (33, 160, 158, 133, 153, 144)
"""Eye aspect ratio points: outer corner, two upper lid, inner corner, two lower lid."""
RIGHT_EAR = (263, 387, 385, 362, 380, 373)
MOUTH = (78, 308, 13, 14)
"""Inner mouth corners, inner upper lip, inner lower lip."""
FACE_OVAL = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377, 152,
             148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109)
FOREHEAD, CHIN = 10, 152
NOSE_TIP = 1
MOUTH_CORNERS = (61, 291)

COMPONENTS: tuple[str, ...] = (
    "sharpness", "illumination_uniformity", "luminance_mean", "luminance_variance",
    "under_exposure_prevention", "over_exposure_prevention", "dynamic_range", "compression_artifacts",
    "eyes_open", "mouth_closed", "eyes_visible", "face_occlusion_prevention", "inter_eye_distance",
    "head_size", "leftward_crop", "rightward_crop", "margin_above", "margin_below",
    "head_pose_yaw", "head_pose_pitch", "head_pose_roll", "expression_neutrality", "single_face_present",
)
"""The component measures, in ISO/IEC 29794-5's naming (snake case)."""

NOT_ASSESSED = QualityMeasure(None, -1.0)


def ramp(x: float, lo: float, hi: float) -> float:
    """100 at ``hi`` and beyond, 0 at ``lo`` and beyond, linear between (``lo > hi`` for a falling ramp)."""
    return float(100.0 * np.clip((x - lo) / (hi - lo), 0.0, 1.0))


def trapezoid(x: float, zero_lo: float, full_lo: float, full_hi: float, zero_hi: float) -> float:
    """100 between ``full_lo`` and ``full_hi``, falling linearly to 0 at ``zero_lo`` and ``zero_hi``."""
    return min(ramp(x, zero_lo, full_lo), ramp(x, zero_hi, full_hi))


def mesh_landmarks5(mesh: npt.ArrayLike) -> FloatArray:
    """faceflow's five points from the mesh: eye-outline centres, nose tip, outer mouth corners."""
    m = np.asarray(mesh, np.float64)[:, :2]
    return np.stack([m[list(LEFT_EYE)].mean(0), m[list(RIGHT_EYE)].mean(0), m[NOSE_TIP],
                     m[MOUTH_CORNERS[0]], m[MOUTH_CORNERS[1]]]).astype(np.float32)


def crop_transform(landmarks5: npt.ArrayLike) -> F64:
    """The 2x3 similarity taking the image into the aligned crop."""
    template = (ARCFACE_112.astype(np.float64) - 56.0) * CROP_SCALE + CROP_SIZE / 2
    return similarity_transform(landmarks5, template)


@dataclass
class AlignedFace:
    """The face in the crop: luminance (float, [0, 1]), the measurement mask and the oval's midline x."""

    y: F64
    mask: npt.NDArray[np.bool_]
    mid_x: float
    points: F64
    """The mesh's (x, y) in the crop."""


def aligned_face(image: Image, mesh: npt.ArrayLike) -> AlignedFace:
    """Warp the face into the crop; the mask is the mesh's face oval, eroded 4 px, over image pixels."""
    m = crop_transform(mesh_landmarks5(mesh))
    size = (CROP_SIZE, CROP_SIZE)
    gray = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
    crop = cv2.warpAffine(gray, m, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    inside = cv2.warpAffine(np.full(gray.shape, 255, np.uint8), m, size, flags=cv2.INTER_NEAREST,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    oval = np.asarray(mesh, np.float64)[list(FACE_OVAL), :2] @ m[:, :2].T + m[:, 2]
    mask = np.zeros(size, np.uint8)
    cv2.fillPoly(mask, [np.round(oval).astype(np.int32)], 255)
    eroded = cv2.erode(mask, np.ones((9, 9), np.uint8))
    points = np.asarray(mesh, np.float64)[:, :2] @ m[:, :2].T + m[:, 2]
    return AlignedFace(crop.astype(np.float64) / 255.0, (eroded > 0) & (inside > 0), float(np.mean(oval[:, 0])),
                       points)


def _measure(value: float, score: float) -> QualityMeasure:
    return QualityMeasure(float(value), float(round(score, 2)))


def capture_measures(face: AlignedFace) -> dict[str, QualityMeasure]:
    """The luminance, exposure, uniformity and sharpness measures on the aligned face."""
    names = ("luminance_mean", "luminance_variance", "under_exposure_prevention", "over_exposure_prevention",
             "dynamic_range", "illumination_uniformity", "sharpness")
    if face.mask.sum() < 200:
        return dict.fromkeys(names, NOT_ASSESSED)
    y = face.y[face.mask]
    mean, var = float(y.mean()), float(y.var())
    dark, bright = float(np.mean(y < DARK)), float(np.mean(y > BRIGHT))
    hist = np.bincount(np.clip(np.round(y * 255), 0, 255).astype(np.int64), minlength=256) / y.size
    nz = hist[hist > 0]
    entropy = float(-(nz * np.log2(nz)).sum())
    cols = np.arange(CROP_SIZE)[None, :].repeat(CROP_SIZE, 0)[face.mask]
    left, right = y[cols < face.mid_x], y[cols >= face.mid_x]
    if left.size and right.size:
        hl = np.histogram(left, 32, (0, 1))[0] / left.size
        hr = np.histogram(right, 32, (0, 1))[0] / right.size
        uniformity = float(np.minimum(hl, hr).sum())
    else:
        uniformity = 0.0
    lap = cv2.Laplacian(face.y * 255.0, cv2.CV_64F, ksize=3)
    sharp_mask = cv2.erode(face.mask.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    sharpness = float(lap[sharp_mask].var()) if sharp_mask.any() else 0.0
    return {
        # OFIQ-like two-sided bands: well lit faces have Y means of 0.3-0.6 and spreads of 0.01-0.04.
        "luminance_mean": _measure(mean, trapezoid(mean, 0.08, 0.3, 0.65, 0.92)),
        "luminance_variance": _measure(var, trapezoid(var, 0.0, 0.008, 0.06, 0.15)),
        "under_exposure_prevention": _measure(dark, ramp(dark, 0.5, 0.0)),
        "over_exposure_prevention": _measure(bright, ramp(bright, 0.5, 0.0)),
        "dynamic_range": _measure(entropy, 12.5 * entropy),
        "illumination_uniformity": _measure(uniformity, 100.0 * uniformity),
        "sharpness": _measure(sharpness, ramp(math.log1p(sharpness), math.log1p(200.0), math.log1p(1200.0))),
    }


def blockiness(image: Image, box: npt.ArrayLike) -> float | None:
    """JPEG blockiness around ``box``: mean |step| across the image's 8x8 block edges over the mean
    |step| elsewhere, horizontal and vertical averaged; ``None`` for a region under 24 pixels."""
    h, w = image.shape[:2]
    x1, y1, x2, y2 = (float(v) for v in np.asarray(box).reshape(4))
    xa, ya = max(0, math.floor(x1)), max(0, math.floor(y1))
    xb, yb = min(w, math.ceil(x2)), min(h, math.ceil(y2))
    if xb - xa < 24 or yb - ya < 24:
        return None
    gray = cv2.cvtColor(np.ascontiguousarray(image[ya:yb, xa:xb]), cv2.COLOR_RGB2GRAY).astype(np.float64)
    ratios = []
    for axis, origin in ((1, xa), (0, ya)):
        d = np.abs(np.diff(gray, axis=axis)).mean(axis=1 - axis)  # step between position i and i + 1
        edge = (np.arange(d.size) + origin) % 8 == 7
        inner = d[~edge].mean()
        ratios.append(float(d[edge].mean() / max(inner, 1e-6)))
    return float(np.mean(ratios))


def eye_aspect_ratios(mesh: npt.ArrayLike) -> tuple[float, float]:
    """Eye aspect ratio (Soukupova and Cech, 2016) of the eye on the image's left and on its right, from the
    mesh: the two lid gaps over twice the corner distance (about 0.3 open, near 0 closed)."""
    p = np.asarray(mesh, np.float64)[:, :2]

    def ear(idx: Sequence[int]) -> float:
        o, u1, u2, i, l1, l2 = (p[k] for k in idx)
        gaps = float(np.linalg.norm(u1 - l2) + np.linalg.norm(u2 - l1))
        return gaps / max(2 * float(np.linalg.norm(o - i)), 1e-6)

    return ear(LEFT_EAR), ear(RIGHT_EAR)


def mesh_measures(mesh: npt.ArrayLike, image_size: tuple[int, int]) -> dict[str, QualityMeasure]:
    """Eyes, mouth, visibility, occlusion by the frame, eye distance, head size, margins, pose."""
    m = np.asarray(mesh, np.float64)
    p = m[:, :2]
    w, h = image_size

    def dist(a: int, b: int) -> float:
        return float(np.linalg.norm(p[a] - p[b]))

    def in_frame(idx: Sequence[int]) -> float:
        q = p[list(idx)]
        return float(np.mean((q[:, 0] >= 0) & (q[:, 0] < w) & (q[:, 1] >= 0) & (q[:, 1] < h)))

    eyes_open = min(eye_aspect_ratios(m))
    mouth = dist(MOUTH[2], MOUTH[3]) / max(dist(MOUTH[0], MOUTH[1]), 1e-6)
    widths = (dist(LEFT_EAR[0], LEFT_EAR[3]), dist(RIGHT_EAR[0], RIGHT_EAR[3]))
    mean_w = max(sum(widths) / 2, 1e-6)
    visible = min(in_frame(LEFT_EYE) * min(1.0, widths[0] / mean_w), in_frame(RIGHT_EYE) * min(1.0, widths[1] / mean_w))
    oval = in_frame(FACE_OVAL)
    l5 = mesh_landmarks5(m)
    ied = float(np.linalg.norm(l5[1] - l5[0]))
    head = float(np.linalg.norm(p[FOREHEAD] - p[CHIN])) / max(h, 1)
    lo, hi = p[list(FACE_OVAL)].min(0), p[list(FACE_OVAL)].max(0)
    unit = max(ied, 1e-6)
    margins = {"leftward_crop": lo[0] / unit, "rightward_crop": (w - 1 - hi[0]) / unit,
               "margin_above": lo[1] / unit, "margin_below": (h - 1 - hi[1]) / unit}
    pose = pose_from_mesh(m)
    out = {
        # Open eyes read 0.2-0.35 on LFW; closed ones under 0.1.
        "eyes_open": _measure(eyes_open, ramp(eyes_open, 0.08, 0.2)),
        # A closed mouth reads under 0.05; teeth showing from about 0.15.
        "mouth_closed": _measure(mouth, ramp(mouth, 0.3, 0.05)),
        "eyes_visible": _measure(visible, ramp(visible, 0.5, 0.9)),
        "face_occlusion_prevention": _measure(oval, ramp(oval, 0.5, 1.0)),
        # ICAO 9303: at least 90 pixels between the eye centres.
        "inter_eye_distance": _measure(ied, ramp(ied, 0.0, 90.0)),
        # ICAO's chin-to-crown 70-80 % of the height is about 45-65 % forehead-to-chin.
        "head_size": _measure(head, trapezoid(head, 0.15, 0.4, 0.7, 1.0)),
    }
    for name, value in margins.items():
        out[name] = _measure(value, ramp(value, -0.5, 0.5))
    for name, angle in (("head_pose_yaw", pose.yaw), ("head_pose_pitch", pose.pitch), ("head_pose_roll", pose.roll)):
        out[name] = _measure(angle, 100.0 * max(0.0, math.cos(math.radians(angle))) ** 2)
    return out


REGIONS: dict[str, tuple[int, ...]] = {
    "left_eye": LEFT_EYE, "right_eye": RIGHT_EYE, "mouth": (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291, 375, 321,
                                                             405, 314, 17, 84, 181, 91, 146),
    "nose": (168, 6, 197, 195, 5, 4, 1, 19, 94, 2, 98, 327, 129, 358),
}
"""Face parts whose appearance the utility model reads (an occluded or shadowed part looks unlike skin)."""


def region_features(face: AlignedFace) -> F64:
    """For each of :data:`REGIONS` (its vertices' hull widened by 4 px, in the crop): mean luminance
    minus the face's, the standard deviation of luminance, and log(1 + Laplacian variance); NaN when
    no pixel of the part comes from the image."""
    out = []
    face_mean = float(face.y[face.mask].mean()) if face.mask.any() else float("nan")
    lap = cv2.Laplacian(face.y * 255.0, cv2.CV_64F, ksize=3)
    for idx in REGIONS.values():
        hull = cv2.convexHull(np.round(face.points[list(idx)]).astype(np.int32))
        region = np.zeros(face.y.shape, np.uint8)
        cv2.fillConvexPoly(region, hull, 255)
        sel = cv2.dilate(region, np.ones((9, 9), np.uint8)) > 0
        sel &= face.y >= 0
        if not sel.any():
            out += [float("nan")] * 3
            continue
        v = face.y[sel]
        out += [float(v.mean()) - face_mean, float(v.std()), math.log1p(float(lap[sel].var()))]
    return np.asarray(out, np.float64)


def region_feature_names() -> tuple[str, ...]:
    return tuple(f"{r}_{k}" for r in REGIONS for k in ("luminance_offset", "luminance_std", "log_laplacian_var"))


def component_measures(image: Image, face: Face, *, neutral: float | None = None,
                       other_face_area: float | None = None) -> dict[str, QualityMeasure]:
    """Every component measure of ``face`` (which needs a mesh). ``neutral`` is the expression model's
    neutral probability and ``other_face_area`` the area of the largest other face in the image
    relative to this one (0 when alone); each measure is not assessed when its input is ``None``."""
    return measure_face(image, face, neutral=neutral, other_face_area=other_face_area)[0]


def measure_face(image: Image, face: Face, *, neutral: float | None = None,
                 other_face_area: float | None = None) -> tuple[dict[str, QualityMeasure], F64]:
    """:func:`component_measures` and the :func:`region_features` of the same aligned crop."""
    if face.mesh is None:
        raise ValueError("the quality measures need the face's mesh")
    h, w = image.shape[:2]
    aligned = aligned_face(image, face.mesh)
    out = capture_measures(aligned)
    b = blockiness(image, _mesh_box(face.mesh))
    # Blockiness: about 1.0-1.15 on LFW's JPEGs, 1.5 and more at JPEG quality 10.
    out["compression_artifacts"] = NOT_ASSESSED if b is None else _measure(b, ramp(b, 1.6, 1.1))
    out.update(mesh_measures(face.mesh, (w, h)))
    out["expression_neutrality"] = NOT_ASSESSED if neutral is None else _measure(neutral, 100.0 * neutral)
    out["single_face_present"] = (NOT_ASSESSED if other_face_area is None else
                                  _measure(1.0 - min(other_face_area, 1.0), 100.0 * (1.0 - min(other_face_area, 1.0))))
    return {name: out[name] for name in COMPONENTS}, region_features(aligned)


def _mesh_box(mesh: npt.ArrayLike) -> F64:
    p = np.asarray(mesh, np.float64)[:, :2]
    return np.concatenate([p.min(0), p.max(0)])
