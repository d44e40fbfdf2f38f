"""Picking one face of several: the largest, the nearest a point; JSON from faces and results."""

from __future__ import annotations

import json
import math

import numpy as np

from faceflow.types import (
    Estimate,
    Expression,
    Face,
    ImageResult,
    Liveness,
    Pose,
    Quality,
    QualityMeasure,
    largest_face,
    nearest_face,
)


def test_largest_and_nearest_face() -> None:
    small, big, wide = Face([0, 0, 10, 10]), Face([100, 100, 140, 150]), Face([200, 0, 260, 20])
    faces = [small, big, wide]
    assert largest_face(faces) is big  # 2,000 px² beats 1,200 and 100
    assert largest_face([]) is None
    assert largest_face([Face([0, 0, 5, 5]), Face([10, 10, 15, 15])]).box[0] == 0  # type: ignore[union-attr]
    assert nearest_face(faces, (6, 4)) is small
    assert nearest_face(faces, (231, 11)) is wide
    assert nearest_face(faces, (120, 125)) is big
    assert nearest_face([], (0, 0)) is None


def test_to_dict_gives_plain_json_numbers_and_null_for_non_finite_ones() -> None:
    """NumPy scalars a user put in become plain floats; NaN and inf become null (strict JSON has no
    NaN). Before, a NumPy float32 was not json.dumps-able and a NaN box, score or pose gave 'NaN'."""
    f32 = np.float32
    face = Face(box=[1, 2, 3, 4], score=f32(0.9), landmarks5=np.ones((5, 2)), track_id=np.int64(3),  # type: ignore[arg-type]
                pose=Pose(f32(1.5), f32(-2), f32(0.25)), age=Estimate(f32(31.5), f32(0.8)),  # type: ignore[arg-type]
                gender=Estimate("female", f32(0.7)),  # type: ignore[arg-type]
                expression=Expression("happy", {"happy": f32(0.6), "sad": np.float64(0.4)}),  # type: ignore[dict-item]
                quality=Quality(f32(50), {"blur": QualityMeasure(f32(0.5), f32(80))}),  # type: ignore[arg-type]
                liveness=Liveness(f32(0.9), f32(0.5), "m"),  # type: ignore[arg-type]
                embeddings={"m": np.array([0.6, 0.8], np.float32)})
    d = face.to_dict(embeddings=True)
    assert json.loads(json.dumps(d, allow_nan=False)) == d
    assert d["pose"] == {"yaw": 1.5, "pitch": -2.0, "roll": 0.25} and type(d["pose"]["yaw"]) is float
    assert d["age"] == {"value": 31.5, "confidence": 0.8} and type(d["age"]["value"]) is float
    assert d["gender"]["value"] == "female" and d["track_id"] == 3 and type(d["track_id"]) is int
    assert d["expression"]["scores"] == {"happy": 0.6, "sad": 0.4}
    assert d["liveness"]["decision"] == "live" and d["quality"]["components"]["blur"]["score"] == 80.0

    nan, inf = math.nan, math.inf
    broken = Face(box=[nan, 0, 10, inf], score=nan, pose=Pose(nan, inf, 0.0), age=Estimate(f32(nan), 0.5))
    result = ImageResult(path="a.jpg", width=10, height=10, faces=[broken])
    d = json.loads(json.dumps(result.to_dict(), allow_nan=False))["faces"][0]
    assert d["box"] == [None, 0.0, 10.0, None] and d["score"] is None
    assert d["pose"] == {"yaw": None, "pitch": None, "roll": 0.0} and d["age"] == {"value": None, "confidence": 0.5}
