"""Face image quality: the ``quality`` stage fills ``face.quality`` with the ISO/IEC 29794-5
component measures (:mod:`faceflow.quality.measures`) and the unified utility score
(:mod:`faceflow.quality.model`); :mod:`faceflow.quality.profile` checks a document-photo profile."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from faceflow.models.runtime import Runtime, default_runtime
from faceflow.quality.measures import COMPONENTS, measure_face
from faceflow.quality.model import ALL_FOLDS, UtilityModel, features
from faceflow.quality.network import network_quality
from faceflow.stage import Stage, StageSpec, option
from faceflow.types import Face, Image, Quality

MODEL_NAME = "quality_utility"
"""The registry's name of the packaged utility model."""


def packaged_utility_model(runtime: Runtime | None = None) -> UtilityModel:
    """The registry's ``quality_utility`` (checked against its sha256), loaded once per runtime."""
    rt = runtime or default_runtime()
    return rt.load((MODEL_NAME,), lambda: UtilityModel.from_bytes(rt.path(MODEL_NAME).read_bytes()))


def embedding_norms(image: Image, faces: Sequence[Face], runtime: Runtime) -> npt.NDArray[np.float64]:
    """The norm of each face's SFace embedding before normalisation (the unified score's other input)."""
    from faceflow.recognize import SFaceEmbedder

    embedder = SFaceEmbedder(flip=False, runtime=runtime)
    return np.asarray(embedder.embed_crops_with_norms(embedder.crops(image, faces))[1], np.float64)


def other_face_areas(faces: Sequence[Face]) -> list[float]:
    """For each face, the area of the largest other face relative to its own (0 when alone)."""
    areas = [f.width * f.height for f in faces]
    out = []
    for i, a in enumerate(areas):
        others = areas[:i] + areas[i + 1:]
        out.append(max(others, default=0.0) / max(a, 1e-6))
    return out


@dataclass(frozen=True)
class QualityOptions:
    """Settings of the ``quality`` stage."""

    unified: bool = option(True, "Also compute the unified utility score (the packaged model).")


class QualityStage(Stage):
    """Fills ``face.quality``: the component measures and, with ``unified``, the utility score.

    The expression model runs here for faces that no stage gave an expression (it is cheap), and
    ``single_face_present`` compares each face with the other faces the detector found. The unified
    score also reads the detector's score, the norm of the face's SFace embedding (one SFace pass per
    face: the stage's largest cost) and, when its trees read it, the QualityFace network's score of the
    detector's box: it was trained on YuNet's faces (the default detector), so with another detector it
    is less reliable."""

    name = "quality"

    def __init__(self, options: QualityOptions | None = None, runtime: Runtime | None = None) -> None:
        self.options = options or QualityOptions()
        self.runtime = runtime or default_runtime()

    def neutral(self, image: Image, faces: Sequence[Face]) -> list[float]:
        """Each face's neutral-expression probability (its own expression, else the model's)."""
        missing = [f for f in faces if f.expression is None]
        computed: dict[int, float] = {}
        if missing:
            from faceflow.attributes import ExpressionStage
            from faceflow.types import EXPRESSIONS

            scores = ExpressionStage(runtime=self.runtime).scores(image, missing)
            computed = {id(f): float(s[EXPRESSIONS.index("neutral")]) for f, s in zip(missing, scores, strict=True)}
        return [computed[id(f)] if f.expression is None else f.expression.scores["neutral"] for f in faces]

    def assess(self, image: Image, faces: Sequence[Face]) -> list[Quality]:
        """The quality of each face (each needs a mesh)."""
        model = packaged_utility_model(self.runtime) if self.options.unified else None
        reads_network = model is not None and model.reads("qualityface")
        network = network_quality(image, faces, self.runtime) if reads_network else np.zeros(len(faces))
        norms = embedding_norms(image, faces, self.runtime) if model is not None else np.zeros(len(faces))
        out = []
        for face, neutral, other, net, norm in zip(faces, self.neutral(image, faces), other_face_areas(faces),
                                                   network, norms, strict=True):
            comps, regions = measure_face(image, face, neutral=neutral, other_face_area=other)
            unified = None
            if model is not None:
                assert face.mesh is not None
                x = features(comps, face.mesh, regions, face.score, float(net))
                unified = float(model.score(x, [norm], ALL_FOLDS)[0])
            out.append(Quality(None if unified is None else round(unified, 2), comps))
        return out

    def run(self, image: Image, faces: list[Face]) -> list[Face]:
        for face, quality in zip(faces, self.assess(image, faces), strict=True):
            face.quality = quality
        return faces


def _label(face: Face) -> str | None:
    if face.quality is None or face.quality.unified is None:
        return None
    return f"Q{face.quality.unified:.0f}"


STAGE = StageSpec(
    name="quality",
    help="Face image quality: ISO/IEC 29794-5 component measures and a unified utility score (0-100).",
    options=QualityOptions,
    factory=QualityStage,
    needs=("mesh",),
    provides=("quality",),
    after=("expression", "landmarks5"),
    label=_label,
)

__all__ = ["COMPONENTS", "MODEL_NAME", "STAGE", "QualityOptions", "QualityStage", "packaged_utility_model"]
