"""A stage from outside faceflow: the mean brightness (0..255) of each face's box, or of its inner
part between the eyes and the mouth when the five points are there.

It exists to show (and test) that a stage is one module plus one entry point: no edit to faceflow.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from faceflow.models.runtime import Runtime
from faceflow.stage import Stage, StageSpec, option
from faceflow.types import Face, Image


@dataclass(frozen=True)
class BrightnessOptions:
    """Settings of the ``brightness`` stage."""

    inner: bool = option(True, "Measure between the eyes and the mouth (when the five points are known).")


class BrightnessStage(Stage):
    """Fills ``face.extra["brightness"]`` with the mean grey level of the face."""

    name = "brightness"

    def __init__(self, options: BrightnessOptions, runtime: Runtime) -> None:
        self.options = options

    def run(self, image: Image, faces: list[Face]) -> list[Face]:
        grey = image.mean(axis=2)
        for face in faces:
            x1, y1, x2, y2 = face.box
            if self.options.inner and face.landmarks5 is not None:
                pts = face.landmarks5
                x1, x2 = pts[:, 0].min(), pts[:, 0].max()
                y1, y2 = pts[:, 1].min(), pts[:, 1].max()
            patch = grey[int(y1) : max(int(y1) + 1, int(y2)), int(x1) : max(int(x1) + 1, int(x2))]
            face.extra["brightness"] = round(float(np.mean(patch)), 2)
        return faces


STAGE = StageSpec(
    name="brightness",
    help="Mean brightness (0..255) of each face.",
    options=BrightnessOptions,
    factory=BrightnessStage,
    needs=("box",),
    provides=("brightness",),
    after=("landmarks5",),
    label=lambda face: f"b{face.extra['brightness']:.0f}" if "brightness" in face.extra else None,
)
