"""The face tracker on synthetic moving boxes with known identities, and its Kalman motion model."""

from __future__ import annotations

import numpy as np
import pytest

from faceflow.errors import ConfigError
from faceflow.track import KalmanBoxFilter, Tracker, TrackerOptions, box_to_xyah, xyah_to_box
from faceflow.types import Face


def box(cx: float, cy: float, size: float) -> list[float]:
    return [cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2]


def ids(faces: list[Face]) -> list[int | None]:
    return [f.track_id for f in faces]


def test_xyah_round_trip() -> None:
    b = np.array([10.0, 20.0, 50.0, 100.0])
    assert box_to_xyah(b) == pytest.approx([30, 60, 0.5, 80])
    assert xyah_to_box(box_to_xyah(b)) == pytest.approx(b)


def test_kalman_learns_constant_velocity_and_predicts_ahead() -> None:
    kf = KalmanBoxFilter()
    mean, cov = kf.initiate(box_to_xyah(box(100, 200, 60)))
    for step in range(1, 15):
        mean, cov = kf.predict(mean, cov)
        mean, cov = kf.update(mean, cov, box_to_xyah(box(100 + 7 * step, 200 - 3 * step, 60)))
    assert mean[4:6] == pytest.approx([7, -3], abs=0.3)
    uncertainty = np.trace(cov[:4, :4])
    for _ in range(5):  # five frames without a measurement: extrapolate along the velocity
        mean, cov = kf.predict(mean, cov)
    assert mean[:2] == pytest.approx([100 + 7 * 19, 200 - 3 * 19], abs=2.5)
    assert mean[3] == pytest.approx(60, abs=1)
    assert np.trace(cov[:4, :4]) > uncertainty  # and grow less sure while doing so


def test_steady_face_keeps_one_id_from_the_first_frame() -> None:
    tracker = Tracker()
    seen = [ids(tracker.update([Face(box(100 + 2 * t, 100, 80), score=0.9)]))[0] for t in range(20)]
    assert seen == [1] * 20


def test_two_faces_crossing_keep_their_ids() -> None:
    """A walks right in front, B walks left behind A: while they overlap, B is hidden for 4 frames."""
    tracker = Tracker()
    first: dict[str, int] = {}
    for t in range(40):
        a = Face(box(50 + 10 * t, 200, 100), score=0.95)
        b = Face(box(450 - 10 * t, 190, 80), score=0.9)
        faces = [a] if abs(a.center[0] - b.center[0]) < 40 else [a, b]  # B occluded
        tracker.update(faces)
        for name, face in (("A", a), ("B", b)):
            if face in faces:
                first.setdefault(name, face.track_id)  # type: ignore[arg-type]
                assert face.track_id == first[name], (t, name)
    assert first == {"A": 1, "B": 2}
    assert tracker.ids_issued == 2


def test_crossing_in_plain_view_keeps_ids() -> None:
    """Both stay visible and overlap heavily while passing (same size, a small vertical offset)."""
    tracker = Tracker()
    for t in range(30):
        a, b = Face(box(100 + 12 * t, 200, 90), score=0.9), Face(box(448 - 12 * t, 215, 90), score=0.9)
        tracker.update([b, a])  # listed in the other order: ids follow boxes, not list positions
        assert (a.track_id, b.track_id) == (2, 1), t


def test_a_big_face_passing_in_front_does_not_take_a_small_ones_id() -> None:
    """As in the Hamilton clip (frames 72-76): a close-up face enters over a small face in the crowd,
    which it hides; the first boxes of the close-up overlap the small face's track by IoU >= 0.3."""
    tracker = Tracker()
    for _ in range(10):
        small = Face([433, 153, 490, 245], score=0.8)
        tracker.update([small])
    assert small.track_id == 1
    entering = [[445, 133, 528, 275], [429, 103, 588, 338], [437, 120, 583, 344], [439, 135, 576, 343]]
    from faceflow.detect.base import iou_matrix

    assert iou_matrix([[433, 153, 490, 245]], entering[:1])[0, 0] > TrackerOptions().match_iou
    got = [ids(tracker.update([Face(b, score=0.65)]))[0] for b in entering]
    assert 1 not in got
    assert tracker.ids_issued <= 2


def test_fast_motion_is_followed_by_prediction() -> None:
    """A face speeding up to 30 px per frame with a 40 px box: at the end consecutive boxes overlap
    by IoU 0.14, below the 0.2 gate, so only the motion model keeps the match."""
    tracker = Tracker()
    x, speed, boxes = 50.0, 2.0, []
    for _ in range(40):
        boxes.append(box(x, 100, 40))
        x, speed = x + speed, min(30.0, speed + 1.0)
    seen = [tracker.update([Face(b, score=0.9)])[0].track_id for b in boxes]
    assert seen == [1] * 40
    from faceflow.detect.base import iou_matrix

    assert iou_matrix([boxes[-2]], [boxes[-1]])[0, 0] < TrackerOptions().match_iou


def test_occluded_face_keeps_its_id_and_expires_after_the_buffer() -> None:
    tracker = Tracker(TrackerOptions(max_lost_frames=10))
    for t in range(10):
        tracker.update([Face(box(100 + 3 * t, 100, 80), score=0.9)])
    for _ in range(6):  # hidden for six frames
        assert tracker.update([]) == []
    back = tracker.update([Face(box(100 + 3 * 16, 100, 80), score=0.9)])
    assert ids(back) == [1]
    for _ in range(11):
        tracker.update([])
    assert tracker.confirmed_ids == []
    assert ids(tracker.update([Face(box(100 + 3 * 28, 100, 80), score=0.9)])) == [None]  # a new, tentative track


def test_lost_buffer_in_seconds() -> None:
    tracker = Tracker(TrackerOptions(max_lost_seconds=1.0))
    for t in range(5):
        tracker.update([Face(box(100, 100, 80), score=0.9)], time=t * 0.1)
    assert ids(tracker.update([Face(box(100, 100, 80), score=0.9)], time=1.3)) == [1]  # 0.9 s unseen
    assert ids(tracker.update([Face(box(100, 100, 80), score=0.9)], time=2.5)) == [None]  # 1.2 s unseen


def test_new_face_gets_a_new_id_after_min_hits() -> None:
    tracker = Tracker(TrackerOptions(min_hits=3))
    for _ in range(5):
        tracker.update([Face(box(100, 100, 80), score=0.9)])
    got = []
    for t in range(5):
        old, new = Face(box(100, 100, 80), score=0.9), Face(box(400 + t, 300, 70), score=0.85)
        tracker.update([old, new])
        got.append((old.track_id, new.track_id))
    assert got == [(1, None), (1, None), (1, 2), (1, 2), (1, 2)]


def test_low_score_blips_never_start_tracks_but_continue_them() -> None:
    tracker = Tracker()
    rng = np.random.default_rng(0)
    for t in range(30):
        blips = [Face(box(*rng.uniform(50, 600, 2), 40), score=float(rng.uniform(0.1, 0.6))) for _ in range(3)]
        real = Face(box(300 + 2 * t, 300, 90), score=0.95 if t < 20 else 0.3)  # fades after frame 20
        tracker.update([*blips, real])
        assert real.track_id == 1, t
        assert ids(blips) == [None, None, None]
    assert tracker.ids_issued == 1


def test_one_frame_false_positive_consumes_no_id() -> None:
    tracker = Tracker(TrackerOptions(confirm_first_frame=False))
    tracker.update([Face(box(500, 500, 50), score=0.9)])  # there once, never again
    for _ in range(5):
        tracker.update([Face(box(100, 100, 80), score=0.9)])
    assert tracker.confirmed_ids == [1] and tracker.ids_issued == 1


def test_skipped_frames_in_time_move_the_prediction_further() -> None:
    """A stream that drops two frames: the tracker steps the motion model three times."""
    tracker = Tracker()
    for t in range(10):
        tracker.update([Face(box(50 + 20 * t, 100, 40), score=0.9)], time=t / 30)
    # Jump 3 frames ahead (60 px): IoU with a 1-step prediction would be 0 for 40 px boxes.
    after_gap = Face(box(50 + 20 * 12, 100, 40), score=0.9)
    assert ids(tracker.update([after_gap], time=12 / 30)) == [1]


def test_bad_options_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="low_threshold"):
        TrackerOptions(low_threshold=0.8, high_threshold=0.5)
    with pytest.raises(ConfigError, match="min_hits"):
        TrackerOptions(min_hits=0)


def test_end_tracks_gives_faces_after_a_cut_new_ids() -> None:
    tracker = Tracker()
    for _ in range(5):
        tracker.update([Face(box(100, 100, 80), score=0.9)])
    tracker.end_tracks()
    assert tracker.confirmed_ids == []
    got = [ids(tracker.update([Face(box(100, 100, 80), score=0.9)]))[0] for _ in range(4)]
    assert got == [None, None, 2, 2]  # tentative again, then a new id; 1 is never reused


def test_sampling_jitter_is_not_taken_for_dropped_frames() -> None:
    """Frames sampled at about 5/s from 25 fps come 0.16, 0.24 or 0.2 s apart: each is one step, so
    a face hidden for 9 analysed frames is still within a 10-frame lost buffer (counting a 0.24 s
    gap as two steps would use the buffer up early)."""
    tracker = Tracker(TrackerOptions(max_lost_frames=10))
    times = np.cumsum([0.0] + [0.16, 0.24, 0.2] * 8).tolist()
    for t in times[:12]:
        tracker.update([Face(box(100, 100, 80), score=0.9)], time=t)
    for t in times[12:21]:
        tracker.update([], time=t)
    assert ids(tracker.update([Face(box(100, 100, 80), score=0.9)], time=times[21])) == [1]



def test_lost_boxes_follow_a_missed_face_and_grow_with_motion_until_the_limit() -> None:
    tracker = Tracker()
    for step in range(10):  # a face moving right 8 px per frame
        tracker.update([Face(box=box(100 + 8 * step, 200, 60), score=0.9)])
    assert tracker.lost_boxes(5) == []  # seen on the latest frame: nothing predicted
    widths = []
    for missed in range(1, 8):
        tracker.update([])
        lost = tracker.lost_boxes(5)
        if missed > 5:
            assert lost == []  # beyond the limit the filter no longer covers it
            continue
        assert [b.track_id for b in lost] == [1] and lost[0].frames_lost == missed
        b = lost[0].box
        centre = 100 + 8 * (9 + missed)
        assert (b[0] + b[2]) / 2 == pytest.approx(centre, abs=8)  # moved on with the face (velocity still converging)
        assert b[0] < centre - 30 and b[2] > centre + 30  # still holds the whole 60 px face
        # grown more along the motion (x) than across it (y)
        assert (b[2] - b[0]) - 60 > (b[3] - b[1]) - 60
        widths.append(b[2] - b[0])
    assert widths == sorted(widths) and widths[-1] > widths[0]  # less sure with every frame missed


def test_lost_boxes_skip_tentative_tracks() -> None:
    tracker = Tracker()
    tracker.update([])
    tracker.update([Face(box=box(100, 100, 50), score=0.9)])  # born after the first frame: tentative
    tracker.update([])
    assert tracker.lost_boxes(10) == []
