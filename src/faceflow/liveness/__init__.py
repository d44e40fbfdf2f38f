"""Liveness (presentation-attack detection): the ``liveness`` stage fills ``face.liveness`` with a live
score in [0, 1], the decision at a threshold, the threshold and the model's name.

The candidates share one interface (:mod:`faceflow.liveness.models`, listed in
:mod:`faceflow.liveness.candidates`); the default is the colour-texture model trained here
(:mod:`faceflow.liveness.texture`, 2-6 ms per face). ``training/select_liveness_default.py`` compares the
candidates within the 30 ms budget on shift folds inside each training source (NUAA's sessions,
MSU-MFSD's attack instruments); the two sources chose different candidates (``human_head`` and
``distortion``), so the rule left the default as it was. The deep networks are slower (their cost is
listed by ``faceflow models list``; ``deeptree_int8``, about 35-75 ms, is the cheapest of them).
``faceflow eval antispoof`` has the figures; read its cross-dataset ones before trusting any
single-image liveness decision. Video adds temporal cues per track (:mod:`faceflow.liveness.video`).
"""

from __future__ import annotations

from dataclasses import dataclass

from faceflow.errors import ConfigError
from faceflow.liveness.candidates import create_model, names
from faceflow.liveness.models import LivenessModel
from faceflow.models.runtime import Runtime, default_runtime
from faceflow.stage import Stage, StageSpec, option
from faceflow.types import Face, Image, Liveness

DEFAULT_MODEL = "texture"


@dataclass(frozen=True)
class LivenessOptions:
    """Settings of the ``liveness`` stage."""

    model: str = option(DEFAULT_MODEL, "Liveness model (slower ones are opt-in; see `faceflow models list`).",
                        flag="liveness-model", choices=names)
    threshold: float | None = option(None, "Live when the score is at least this (default: the model's own).",
                                     flag="liveness-threshold")

    def __post_init__(self) -> None:
        """Refuse at once what could only fail later (an unknown model) or never decide (scores lie in [0, 1])."""
        if self.model not in names():
            raise ConfigError(f"unknown liveness model {self.model!r}; choose from: {', '.join(names())}")
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise ConfigError(f"liveness threshold {self.threshold:g} is outside [0, 1], where the scores lie")


class LivenessStage(Stage):
    """Fills ``face.liveness`` for every face, from the face box (and the image around it)."""

    name = "liveness"

    def __init__(self, options: LivenessOptions | None = None, runtime: Runtime | None = None) -> None:
        self.options = options or LivenessOptions()
        self.runtime = runtime or default_runtime()
        self._model: LivenessModel | None = None

    @property
    def model(self) -> LivenessModel:
        if self._model is None:
            self._model = create_model(self.options.model, self.runtime)
        return self._model

    def assess(self, image: Image, faces: list[Face]) -> list[Liveness]:
        if not faces:
            return []
        model = self.model
        threshold = model.threshold if self.options.threshold is None else self.options.threshold
        scores = model.scores(image, [f.box for f in faces])
        return [Liveness(float(s), float(threshold), model.name) for s in scores]

    def run(self, image: Image, faces: list[Face]) -> list[Face]:
        for face, live in zip(faces, self.assess(image, faces), strict=True):
            face.liveness = live
        return faces


def _label(face: Face) -> str | None:
    if face.liveness is None:
        return None
    return f"{face.liveness.decision} {face.liveness.score:.2f}"


STAGE = StageSpec(
    name="liveness",
    help="Presentation-attack detection: live score in [0, 1], decision, threshold, model.",
    options=LivenessOptions,
    factory=LivenessStage,
    needs=("box",),
    provides=("liveness",),
    label=_label,
)

__all__ = ["DEFAULT_MODEL", "STAGE", "LivenessOptions", "LivenessStage"]
