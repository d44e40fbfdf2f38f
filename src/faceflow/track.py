"""Multi-object tracking of faces across frames (VIDEO and STREAM modes), ByteTrack style.

Each frame's detections are associated with the existing tracks in two stages:

1. detections scoring at least :attr:`TrackerOptions.high_threshold` are matched to every live track
   (confirmed and lost), by IoU between each track's Kalman-predicted box and the detection;
2. the remaining low-scoring detections (between ``low_threshold`` and ``high_threshold``) may only
   continue tracks that stage 1 left unmatched, with a stricter IoU. They never start a track: a
   face that fades (blur, a turn, partial occlusion) keeps its identity, while a weak blip on the
   wallpaper stays anonymous.

Matching is optimal (Hungarian, :func:`scipy.optimize.linear_sum_assignment` on ``1 - IoU``). A new
track is *tentative* until it has been matched ``min_hits`` times in a row; it gets its ``track_id``
only then, so ids are dense (1, 2, 3, ...) and a one-frame false positive never consumes one. A
confirmed track that misses frames is *lost*: its box keeps moving with its estimated velocity and
it can be picked up again within ``max_lost_frames`` frames (or ``max_lost_seconds``); after that it
is removed and its id is never reused.

A pair whose heights differ by more than ``max_scale_change`` never matches, whatever its IoU: a big
face passing in front of a small one would otherwise take over its id.

The motion model is a constant-velocity Kalman filter on (centre x, centre y, aspect w/h, height),
the parameterisation of SORT/DeepSORT, with noise proportional to the box height so that it behaves
the same for small and large faces.

What :meth:`Tracker.update` returns: every face it was given, in the same order, with ``track_id``
set on faces that belong to a confirmed track and ``None`` on the others (tentative, or scoring
below ``low_threshold``). Nothing is withheld: filtering is the caller's choice.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.optimize import linear_sum_assignment

from faceflow.detect.base import iou_matrix
from faceflow.errors import ConfigError
from faceflow.types import Face

Vector = npt.NDArray[np.float64]
Matrix = npt.NDArray[np.float64]


@dataclass(frozen=True)
class TrackerOptions:
    """How detections become tracks. The defaults suit faceflow's detectors at their default thresholds."""

    high_threshold: float = 0.6
    """Detections scoring at least this are matched first, against every live track."""
    low_threshold: float = 0.1
    """Detections below this are ignored; those between this and ``high_threshold`` only continue tracks."""
    new_track_threshold: float = 0.6
    """A detection unmatched after both stages starts a new (tentative) track only if it scores this much.
    Equal to ``high_threshold`` by default: ``min_hits`` consecutive matches, not a higher score, is
    what keeps one-off false positives from becoming tracks (a real face that a detector scores 0.65
    frame after frame deserves an id)."""
    match_iou: float = 0.2
    """Minimum IoU between a predicted track box and a high-score detection for them to match."""
    low_match_iou: float = 0.5
    """Minimum IoU for a low-score detection (stricter: these are more often false positives)."""
    tentative_match_iou: float = 0.3
    """Minimum IoU for a detection to continue a tentative track."""
    max_scale_change: float = 1.4
    """A detection may continue a track only if its height is within this factor of the track's
    predicted height: a face does not grow by half between two frames, but a big face moving in
    front of a small one overlaps it enough to steal its id by IoU alone."""
    min_hits: int = 3
    """Consecutive matches after which a tentative track is confirmed and given its id."""
    max_lost_frames: int = 30
    """Updates a confirmed track may go unmatched before it is removed (when no time is given)."""
    max_lost_seconds: float | None = None
    """If set and :meth:`Tracker.update` gets ``time``, the lost buffer in seconds instead of frames."""
    confirm_first_frame: bool = True
    """Confirm tracks born on the very first update at once, so faces present from the start have ids
    from frame 0 (as ByteTrack does)."""

    def __post_init__(self) -> None:
        if not 0 <= self.low_threshold <= self.high_threshold:
            raise ConfigError("tracker thresholds must satisfy 0 <= low_threshold <= high_threshold")
        if self.max_scale_change < 1:
            raise ConfigError("tracker max_scale_change must be >= 1")
        if self.min_hits < 1 or self.max_lost_frames < 0:
            raise ConfigError("tracker min_hits must be >= 1 and max_lost_frames >= 0")
        for name in ("match_iou", "low_match_iou", "tentative_match_iou"):
            if not 0 < getattr(self, name) <= 1:
                raise ConfigError(f"tracker {name} must be in (0, 1]")


def box_to_xyah(box: npt.ArrayLike) -> Vector:
    """``[x1, y1, x2, y2]`` -> ``[centre x, centre y, width / height, height]``."""
    x1, y1, x2, y2 = np.asarray(box, dtype=np.float64).reshape(4)
    h = max(y2 - y1, 1e-6)
    return np.array([(x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / h, h])


def xyah_to_box(xyah: npt.ArrayLike) -> Vector:
    """Inverse of :func:`box_to_xyah`."""
    cx, cy, a, h = np.asarray(xyah, dtype=np.float64).reshape(-1)[:4]
    w = a * h
    return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])


class KalmanBoxFilter:
    """Constant-velocity Kalman filter on ``(cx, cy, a, h)`` and their velocities (per frame step).

    Position noise is ``1/20`` of the box height and velocity noise ``1/160`` of it per step (the
    weights SORT and DeepSORT use); the aspect ratio gets small fixed noise as it barely changes.
    """

    POSITION_WEIGHT = 1.0 / 20
    VELOCITY_WEIGHT = 1.0 / 160

    def __init__(self) -> None:
        self.transition = np.eye(8)
        self.transition[:4, 4:] = np.eye(4)
        self.observation = np.eye(4, 8)

    def _position_std(self, h: float) -> Vector:
        return np.array([self.POSITION_WEIGHT * h, self.POSITION_WEIGHT * h, 1e-2, self.POSITION_WEIGHT * h])

    def _velocity_std(self, h: float) -> Vector:
        return np.array([self.VELOCITY_WEIGHT * h, self.VELOCITY_WEIGHT * h, 1e-5, self.VELOCITY_WEIGHT * h])

    def initiate(self, measurement: npt.ArrayLike) -> tuple[Vector, Matrix]:
        """State and covariance of a new track from its first ``(cx, cy, a, h)``; velocity unknown."""
        z = np.asarray(measurement, dtype=np.float64).reshape(4)
        mean = np.concatenate([z, np.zeros(4)])
        std = np.concatenate([2 * self._position_std(z[3]), 10 * self._velocity_std(z[3])])
        return mean, np.diag(std**2)

    def predict(self, mean: Vector, cov: Matrix) -> tuple[Vector, Matrix]:
        """One frame step ahead."""
        h = float(mean[3])
        q = np.diag(np.concatenate([self._position_std(h), self._velocity_std(h)]) ** 2)
        mean = self.transition @ mean
        cov = self.transition @ cov @ self.transition.T + q
        return mean, cov

    def update(self, mean: Vector, cov: Matrix, measurement: npt.ArrayLike) -> tuple[Vector, Matrix]:
        """Correct a predicted state with a measured ``(cx, cy, a, h)``."""
        z = np.asarray(measurement, dtype=np.float64).reshape(4)
        r = np.diag(self._position_std(float(mean[3])) ** 2)
        s = self.observation @ cov @ self.observation.T + r
        gain = np.linalg.solve(s, self.observation @ cov).T
        mean = mean + gain @ (z - self.observation @ mean)
        cov = cov - gain @ s @ gain.T
        return mean, cov


TENTATIVE, CONFIRMED, LOST = "tentative", "confirmed", "lost"


class _Track:
    """One object's filter state and bookkeeping."""

    __slots__ = ("cov", "hits", "last_step", "last_time", "mean", "state", "track_id")

    def __init__(self, mean: Vector, cov: Matrix, step: int, time: float | None) -> None:
        self.mean, self.cov = mean, cov
        self.hits = 1
        self.state = TENTATIVE
        self.track_id: int | None = None
        self.last_step, self.last_time = step, time

    @property
    def box(self) -> Vector:
        return xyah_to_box(self.mean[:4])


@dataclass(frozen=True, slots=True)
class LostBox:
    """Where a confirmed track that the detector missed is expected to be now (see :meth:`Tracker.lost_boxes`)."""

    track_id: int
    box: Vector
    """The Kalman-predicted ``[x1, y1, x2, y2]``, grown for the uncertainty of the frames missed."""
    frames_lost: int
    """Frame steps since the track was last matched (1 on the first frame missed)."""


class Tracker:
    """Gives each face a ``track_id`` that stays the same from frame to frame.

    >>> tracker = Tracker()
    >>> for frame in frames:                                   # doctest: +SKIP
    ...     faces = tracker.update(analyzer.analyze_array(frame.image), time=frame.time)

    One tracker follows one video or stream; it is not thread-safe.
    """

    def __init__(self, options: TrackerOptions | None = None) -> None:
        self.options = options or TrackerOptions()
        self.kalman = KalmanBoxFilter()
        self.tracks: list[_Track] = []
        self._next_id = 1
        self._step = 0
        self._last_time: float | None = None
        self._gaps: list[float] = []

    @property
    def confirmed_ids(self) -> list[int]:
        """Ids of the tracks alive now (confirmed or lost, not yet removed)."""
        return sorted(t.track_id for t in self.tracks if t.track_id is not None)

    @property
    def ids_issued(self) -> int:
        """How many track ids this tracker has handed out so far."""
        return self._next_id - 1

    def lost_boxes(self, max_frames: int, grow: float = 0.1) -> list[LostBox]:
        """Predicted boxes of the confirmed tracks missed on the latest update, lost for at most
        ``max_frames`` frame steps, by track id.

        What a privacy filter covers when the detector blinks: each box is the motion model's
        prediction, grown on every side by the distance the centre moves per step and by ``grow``
        of the box's size, both times the steps missed (the longer a face goes unseen, the less
        sure its place; a moving face gets more room along its motion than a still one).
        """
        out: list[LostBox] = []
        for track in self.tracks:
            if track.state != LOST or track.track_id is None:
                continue
            lost = self._step - track.last_step
            if lost < 1 or lost > max_frames:
                continue
            box = track.box.copy()
            w, h = box[2] - box[0], box[3] - box[1]
            vx, vy = abs(float(track.mean[4])), abs(float(track.mean[5]))
            dx, dy = lost * (vx + grow * w), lost * (vy + grow * h)
            box += np.array([-dx, -dy, dx, dy])
            out.append(LostBox(track.track_id, box, lost))
        return sorted(out, key=lambda b: b.track_id)

    def end_tracks(self) -> None:
        """End every track now (a scene cut: no box after it continues one from before). Ids are
        never reused, so faces seen after the cut get new ones."""
        self.tracks = []

    def _steps_since_last(self, time: float | None) -> int:
        """Frame steps since the previous update: 1, or more when ``time`` shows skipped frames.

        The frame interval is the median of the last 20 gaps, so a dropped frame in a stream counts
        as two steps (the motion model moves the boxes twice as far) while the jitter of sampling by
        timestamp (``iter_frames(fps=...)``) does not.
        """
        if time is None or self._last_time is None:
            return 1
        gap = time - self._last_time
        if gap <= 0:
            return 1
        self._gaps = [*self._gaps[-19:], gap]
        return max(1, min(round(gap / float(np.median(self._gaps))), self.options.max_lost_frames + 1))

    def _expired(self, track: _Track, time: float | None) -> bool:
        o = self.options
        if o.max_lost_seconds is not None and time is not None and track.last_time is not None:
            return time - track.last_time > o.max_lost_seconds
        return self._step - track.last_step > o.max_lost_frames

    def _match(self, tracks: list[_Track], faces: list[Face], min_iou: float) -> list[tuple[int, int]]:
        """Optimal (track index, face index) pairs with IoU of at least ``min_iou``."""
        if not tracks or not faces:
            return []
        track_boxes, face_boxes = np.stack([t.box for t in tracks]), np.stack([f.box for f in faces])
        iou = iou_matrix(track_boxes, face_boxes)
        scale = (face_boxes[None, :, 3] - face_boxes[None, :, 1]) / (track_boxes[:, None, 3] - track_boxes[:, None, 1])
        limit = self.options.max_scale_change
        iou[(scale > limit) | (scale < 1 / limit)] = 0.0
        rows, cols = linear_sum_assignment(1.0 - iou)
        return [(int(r), int(c)) for r, c in zip(rows, cols, strict=True) if iou[r, c] >= min_iou]

    def _continue(self, track: _Track, face: Face, time: float | None) -> None:
        track.mean, track.cov = self.kalman.update(track.mean, track.cov, box_to_xyah(face.box))
        track.last_step, track.last_time = self._step, time
        if track.state == TENTATIVE:
            track.hits += 1
            if track.hits >= self.options.min_hits:
                self._confirm(track)
        else:
            track.state = CONFIRMED
        face.track_id = track.track_id

    def _confirm(self, track: _Track) -> None:
        track.state = CONFIRMED
        track.track_id = self._next_id
        self._next_id += 1

    def update(self, faces: list[Face], time: float | None = None) -> list[Face]:
        """Associate this frame's ``faces`` with the tracks; set and return their ``track_id``.

        ``time`` (seconds) is optional: it lets the motion model account for skipped frames and
        :attr:`TrackerOptions.max_lost_seconds` apply. Returns ``faces`` themselves, in order.
        """
        o = self.options
        first = self._step == 0
        steps = self._steps_since_last(time)
        self._step += steps
        if time is not None:
            self._last_time = time
        for face in faces:
            face.track_id = None
        self.tracks = [t for t in self.tracks if t.state == TENTATIVE or not self._expired(t, time)]
        for track in self.tracks:
            for _ in range(steps):
                track.mean, track.cov = self.kalman.predict(track.mean, track.cov)

        high = [f for f in faces if f.score >= o.high_threshold]
        low = [f for f in faces if o.low_threshold <= f.score < o.high_threshold]
        live = [t for t in self.tracks if t.state != TENTATIVE]
        tentative = [t for t in self.tracks if t.state == TENTATIVE]

        # Stage 1: confident detections against every confirmed or lost track.
        pairs = self._match(live, high, o.match_iou)
        for ti, fi in pairs:
            self._continue(live[ti], high[fi], time)
        matched_tracks = {id(live[ti]) for ti, _ in pairs}
        matched_faces = {id(high[fi]) for _, fi in pairs}
        # Stage 2: weak detections may only continue tracks that were seen last frame and missed now.
        remaining = [t for t in live if id(t) not in matched_tracks and t.state == CONFIRMED]
        for ti, fi in self._match(remaining, low, o.low_match_iou):
            self._continue(remaining[ti], low[fi], time)
            matched_tracks.add(id(remaining[ti]))
        # Tentative tracks take what is left of the confident detections.
        unmatched_high = [f for f in high if id(f) not in matched_faces]
        pairs = self._match(tentative, unmatched_high, o.tentative_match_iou)
        for ti, fi in pairs:
            self._continue(tentative[ti], unmatched_high[fi], time)
            matched_tracks.add(id(tentative[ti]))
            matched_faces.add(id(unmatched_high[fi]))

        survivors: list[_Track] = []
        for track in self.tracks:
            if id(track) in matched_tracks:
                survivors.append(track)
            elif track.state == TENTATIVE:
                continue  # a tentative track must be matched on every frame until confirmed
            else:
                track.state = LOST  # kept until the buffer runs out (checked at the next update)
                survivors.append(track)
        # Births: confident detections nobody claimed.
        for face in high:
            if id(face) in matched_faces or face.score < o.new_track_threshold:
                continue
            mean, cov = self.kalman.initiate(box_to_xyah(face.box))
            track = _Track(mean, cov, self._step, time)
            if o.min_hits <= 1 or (first and o.confirm_first_frame):
                self._confirm(track)
                face.track_id = track.track_id
            survivors.append(track)
        self.tracks = survivors
        return faces

