"""Video liveness: per-frame scores aggregated per track, with two temporal cues from the face mesh.

Frames are sampled (``fps``, default 10 a second, enough to catch most blinks), faces detected,
meshed, tracked (:mod:`faceflow.track`) and scored by a liveness model. Per track:

* ``score``: the mean of its frames' liveness scores;
* ``blinks``: dips of the eye aspect ratio (mean of both eyes, from the mesh) below
  :data:`BLINK_RATIO` times the track's median, each followed by a recovery;
* ``nonrigid``: how far the face's shape departs from a 2-D similarity of its first sampled frame
  (90th percentile over frames of the RMS residual of the 468 mesh points after the best rotation,
  scale and shift, in units of the distance between the eyes). A photo or a screen moved in front of
  the camera (panned, scaled, rotated in plane, re-lit) stays near the mesh's own jitter; a live head
  turns and moves its face.

The track is live when its mean score reaches the model's threshold *and* it shows a temporal sign of
life (a blink, or ``nonrigid`` >= :data:`NONRIGID_MIN`); its reported score is the lower of the mean
score and the temporal score (1 with a blink, else ``threshold * nonrigid / NONRIGID_MIN``), so the
decision at the model's threshold is that rule. Limits: a replayed *video* of a live person blinks and
moves, so the temporal cues do not catch it (only the per-frame model can); a person who holds still
without blinking for the whole clip is refused; :data:`NONRIGID_MIN` was set from faceflow's three
sample clips and synthesised replayed-photo clips, not from a benchmark (there are no spoof videos here).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from faceflow.align import similarity_transform
from faceflow.liveness import LivenessOptions, LivenessStage
from faceflow.models.runtime import Runtime
from faceflow.types import FloatArray, Image, Liveness

BLINK_RATIO = 0.7
NONRIGID_MIN = 0.02
"""Minimum non-rigid shape change (fraction of the eye distance) counted as a sign of life."""
MIN_FRAMES = 3

_LEFT_EYE = (33, 160, 158, 133, 153, 144)
_RIGHT_EYE = (362, 385, 387, 263, 373, 380)


def eye_aspect_ratio(mesh: npt.ArrayLike) -> float:
    """Mean eye aspect ratio of both eyes (Soukupova and Cech, 2016) from the 468-point mesh."""
    m = np.asarray(mesh, np.float64)[:, :2]
    out = []
    for p1, p2, p3, p4, p5, p6 in (_LEFT_EYE, _RIGHT_EYE):
        width = float(np.linalg.norm(m[p1] - m[p4]))
        height = float(np.linalg.norm(m[p2] - m[p6]) + np.linalg.norm(m[p3] - m[p5]))
        out.append(height / (2 * max(width, 1e-6)))
    return float(np.mean(out))


def count_blinks(ear: npt.ArrayLike, ratio: float = BLINK_RATIO) -> int:
    """Dips below ``ratio`` times the median that come back above it (one blink per dip)."""
    e = np.asarray(ear, np.float64)
    if len(e) < MIN_FRAMES:
        return 0
    low = e < ratio * float(np.median(e))
    return int(np.sum(low[:-1] & ~low[1:]))


def nonrigid_motion(meshes: Iterable[npt.ArrayLike]) -> float:
    """90th percentile over frames of the RMS mesh residual after the best 2-D similarity onto the first
    frame, divided by the first frame's eye distance."""
    ms = [np.asarray(m, np.float64)[:, :2] for m in meshes]
    if len(ms) < 2:
        return 0.0
    ref = ms[0]
    eyes = np.linalg.norm(ref[list(_LEFT_EYE)].mean(0) - ref[list(_RIGHT_EYE)].mean(0))
    res = []
    for m in ms[1:]:
        t = similarity_transform(m, ref)
        moved = m @ t[:, :2].T + t[:, 2]
        res.append(float(np.sqrt(((moved - ref) ** 2).sum(1).mean())) / max(float(eyes), 1e-6))
    return float(np.percentile(res, 90))


@dataclass
class TrackLiveness:
    """What one track showed over the sampled frames, and the verdict."""

    track_id: int
    frames: int = 0
    first_time: float = 0.0
    last_time: float = 0.0
    scores: list[float] = field(default_factory=list)
    ear: list[float] = field(default_factory=list)
    meshes: list[FloatArray] = field(default_factory=list)
    result: Liveness | None = None
    blinks: int = 0
    nonrigid: float = 0.0

    def decide(self, threshold: float, model: str) -> Liveness:
        """The track's :class:`Liveness` (see the module docstring for the rule)."""
        self.blinks = count_blinks(self.ear)
        self.nonrigid = nonrigid_motion(self.meshes)
        mean = float(np.mean(self.scores)) if self.scores else 0.0
        temporal = 1.0 if self.blinks else min(1.0, threshold * self.nonrigid / NONRIGID_MIN)
        reasons = []
        if mean < threshold:
            reasons.append(f"mean frame score {mean:.2f} below {threshold:.2f}")
        if temporal < threshold:
            reasons.append(f"no blink and rigid motion only (non-rigid {100 * self.nonrigid:.1f} % of eye "
                           f"distance < {100 * NONRIGID_MIN:.0f} %)")
        if not reasons:
            reasons.append(f"{self.blinks} blink(s)" if self.blinks else
                           f"non-rigid motion {100 * self.nonrigid:.1f} % of eye distance")
        if self.frames < MIN_FRAMES:
            reasons.append(f"only {self.frames} frame(s)")
            temporal = min(temporal, 0.0)
        self.result = Liveness(min(mean, temporal), threshold, f"{model}+temporal", "; ".join(reasons))
        return self.result

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"track_id": self.track_id, "frames": self.frames,
                               "start": round(self.first_time, 2), "end": round(self.last_time, 2),
                               "mean_frame_score": round(float(np.mean(self.scores)), 4) if self.scores else None,
                               "blinks": self.blinks, "nonrigid": round(self.nonrigid, 4)}
        if self.result is not None:
            out["liveness"] = self.result.to_dict()
        return out


def video_liveness(frames: Iterable[tuple[float, Image]], *, options: LivenessOptions | None = None,
                   runtime: Runtime | None = None, detector: str | None = None) -> list[TrackLiveness]:
    """Liveness per track over ``(time, image)`` frames (already sampled)."""
    from faceflow.detect import DetectorOptions, create_detector
    from faceflow.landmarks import MeshStage
    from faceflow.track import Tracker

    rt = runtime or Runtime()
    det = create_detector(detector, DetectorOptions() if detector is None else DetectorOptions(detector=detector),
                          rt)
    mesh = MeshStage(runtime=rt)
    stage = LivenessStage(options, rt)
    tracker = Tracker()
    tracks: dict[int, TrackLiveness] = {}
    for t, image in frames:
        faces = tracker.update(det.detect(image), t)
        faces = [f for f in faces if f.track_id is not None]
        if not faces:
            continue
        mesh.run(image, faces)
        stage.run(image, faces)
        for f in faces:
            assert f.track_id is not None and f.liveness is not None and f.mesh is not None
            tr = tracks.setdefault(f.track_id, TrackLiveness(f.track_id, first_time=t))
            tr.frames += 1
            tr.last_time = t
            tr.scores.append(f.liveness.score)
            tr.ear.append(eye_aspect_ratio(f.mesh))
            tr.meshes.append(f.mesh)
    threshold = stage.model.threshold if stage.options.threshold is None else stage.options.threshold
    for tr in tracks.values():
        tr.decide(threshold, stage.model.name)
    return sorted(tracks.values(), key=lambda tr: tr.track_id)


def file_liveness(path: str | Path, *, fps: float = 10.0, **kwargs: Any) -> list[TrackLiveness]:
    """:func:`video_liveness` over a video file sampled at ``fps`` frames a second."""
    from faceflow.video import iter_frames

    return video_liveness(((fr.time, fr.image) for fr in iter_frames(path, fps=fps)), **kwargs)


def replayed_photo(image: Image, *, frames: int = 40, size: tuple[int, int] = (640, 480),
                   seed: int = 0) -> list[Image]:
    """A synthetic replay attack: the still ``image`` moved like a photo held in front of a camera
    (panned, scaled, rotated a little in plane) and re-lit (gain and a colour cast drifting), over a
    grey background, with sensor noise. For tests and demonstrations."""
    import cv2

    rng = np.random.default_rng(seed)
    w, h = size
    out = []
    src_h, src_w = image.shape[:2]
    base = 0.75 * min(w / src_w, h / src_h)
    for i in range(frames):
        phase = 2 * np.pi * i / frames
        scale = base * (1 + 0.12 * np.sin(phase))
        angle = 4 * np.sin(2 * phase)
        cx = w / 2 + 0.08 * w * np.sin(phase)
        cy = h / 2 + 0.05 * h * np.cos(phase)
        m = np.asarray(cv2.getRotationMatrix2D((src_w / 2, src_h / 2), angle, scale), np.float64)
        m[:, 2] += np.array([cx - src_w / 2, cy - src_h / 2])
        frame = cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR, borderValue=(90, 90, 90))
        gain = 1 + 0.25 * np.sin(phase + 1.0)
        cast = np.array([1 + 0.05 * np.sin(phase), 1.0, 1 - 0.05 * np.sin(phase)])
        lit = frame.astype(np.float32) * gain * cast + rng.normal(0, 2.0, frame.shape)
        out.append(np.clip(lit, 0, 255).astype(np.uint8))
    return out
