"""Picking one face of several: the largest, the nearest a point."""

from __future__ import annotations

from faceflow.types import Face, largest_face, nearest_face


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
