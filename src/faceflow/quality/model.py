"""The unified utility score: gradient-boosted regression trees over normalised landmarks and the
component measures (and, as a candidate input, the QualityFace network's score), evaluated in numpy
(no scikit-learn at run time), blended with the norm of the face's SFace embedding before normalisation.

The registry's ``quality_utility`` (``faceflow/data/quality_utility.npz``, built by
``training/train_quality.py``) is a :class:`UtilityModel`: eleven tree ensembles of the same shape,
blended with the SFace embedding's norm (see :class:`UtilityModel`): ensemble ``k`` (0-9)
was trained on the images of the people in LFW View 2 folds other than ``k`` (the folds are
identity-disjoint), so :mod:`faceflow.eval.quality` scores each image with the ensemble that never
saw it; ensemble 10 was trained on all ten and is the one the ``quality`` stage uses. Each tree is
stored complete to a fixed depth (a node that did not split sends everything left), so evaluation
is ``depth`` vectorised steps. The regression target is the CR-FIQA-style utility of
:func:`faceflow.eval.quality.utility_labels`; a prediction becomes a score in [0, 100] through the
ensemble's own training predictions: the score is the percentage of its training images predicted
lower (linear between percentiles).
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from faceflow.landmarks import MESH_TO_68
from faceflow.models.npz import npz_bytes
from faceflow.quality.measures import COMPONENTS, mesh_landmarks5, region_feature_names
from faceflow.types import QualityMeasure

F64 = npt.NDArray[np.float64]

MISSING = -999.0
"""Feature value for a component that was not assessed."""

ALL_FOLDS = 10
"""Index of the ensemble trained on every fold: the one used outside evaluation."""

FRAMING: frozenset[str] = frozenset({"head_size", "leftward_crop", "rightward_crop", "margin_above", "margin_below"})
"""Components that describe how the picture is framed, left out of the model's inputs: LFW's images
are all the same 250 x 250 crop of the same framing, so the model could learn nothing true about them
there, and a photo framed otherwise (a face a fifth of the picture's height) would land outside
everything it saw (the first model, which read them, scored scikit-image's astronaut 11 points lower
for its head size alone)."""

MODEL_COMPONENTS: tuple[str, ...] = tuple(n for n in COMPONENTS if n not in FRAMING)
"""The components whose raw values the model reads."""


LANDMARK_POINTS: tuple[int, ...] = (30, 48, 54, 8, 27, 0, 16)
"""The iBUG points (through :data:`~faceflow.landmarks.MESH_TO_68`) whose normalised positions the model
reads: nose tip, mouth corners, chin, nose bridge, the jaw's ends. A compact set: with all 68 points
(x, y, z) the model ranked worse on the development folds (see ``training/train_quality.py``)."""


def landmark_features(mesh: npt.ArrayLike) -> F64:
    """The :data:`LANDMARK_POINTS` (x, y) in a frame where the eye centres sit at (-0.5, 0) and
    (0.5, 0): translation, scale and roll removed."""
    m = np.asarray(mesh, np.float64)
    l5 = mesh_landmarks5(m).astype(np.float64)
    mid = (l5[0] + l5[1]) / 2
    d = l5[1] - l5[0]
    scale = max(float(np.hypot(*d)), 1e-6)
    c, s = d / scale
    rot = np.array([[c, s], [-s, c]])
    pts = m[[MESH_TO_68[i] for i in LANDMARK_POINTS], :2]
    return np.asarray(((pts - mid) @ rot.T / scale).ravel(), np.float64)


def feature_names() -> tuple[str, ...]:
    """Names of :func:`features`' values, in order."""
    marks = tuple(f"ibug{i}_{a}" for i in LANDMARK_POINTS for a in "xy")
    return (*MODEL_COMPONENTS, *marks, *region_feature_names(), "detector_score", "qualityface")


def features(components: Mapping[str, QualityMeasure], mesh: npt.ArrayLike, regions: npt.ArrayLike,
             detector_score: float, network: float) -> F64:
    """The model's input: the raw value of each of :data:`MODEL_COMPONENTS` (:data:`MISSING` when not assessed), the
    normalised landmarks, the face parts' appearance (:func:`~faceflow.quality.measures.region_features`,
    :data:`MISSING` for NaN), the detector's score and the QualityFace network's raw score
    (:func:`~faceflow.quality.network.network_quality`)."""
    raw = [MISSING if components[n].value is None else float(components[n].value)  # type: ignore[arg-type]
           for n in MODEL_COMPONENTS]
    parts = np.nan_to_num(np.asarray(regions, np.float64), nan=MISSING)
    return np.concatenate([np.asarray(raw, np.float64), landmark_features(mesh), parts,
                           [float(detector_score), float(network)]])


@dataclass(frozen=True)
class TreeEnsembles:
    """Several gradient-boosted ensembles of complete trees of one depth.

    ``feature`` and ``threshold`` are ``(models, trees, 2**depth - 1)`` (heap order: the children of
    node ``i`` are ``2i + 1`` and ``2i + 2``; ``x[feature] > threshold`` goes right), ``leaf`` is
    ``(models, trees, 2**depth)`` already multiplied by the learning rate, ``base`` the initial
    prediction ``(models,)`` and ``quantiles`` ``(models, 101)`` the percentiles of each model's
    training predictions."""

    feature: npt.NDArray[np.int16]
    threshold: npt.NDArray[np.float64]
    leaf: npt.NDArray[np.float32]
    base: npt.NDArray[np.float64]
    quantiles: npt.NDArray[np.float64]

    @property
    def depth(self) -> int:
        return int(math.log2(self.leaf.shape[2]))

    @property
    def n_features(self) -> int:
        return int(self.feature.max()) + 1

    def predict(self, x: npt.ArrayLike, model: int = ALL_FOLDS) -> F64:
        """Raw predictions (utility units) of ensemble ``model`` for ``x`` of shape ``(n, features)``."""
        # As scikit-learn does: inputs rounded to float32, compared with float64 thresholds.
        a = np.asarray(x, np.float32).astype(np.float64)
        a = a[None] if a.ndim == 1 else a
        feat, thr, leaf = self.feature[model], self.threshold[model], self.leaf[model]
        trees = np.arange(feat.shape[0])[None, :]
        idx = np.zeros((a.shape[0], feat.shape[0]), np.int64)
        rows = np.arange(a.shape[0])[:, None]
        for _ in range(self.depth):
            f = feat[trees, idx]
            go_right = a[rows, f] > thr[trees, idx]
            idx = 2 * idx + 1 + go_right
        values = leaf[trees, idx - (feat.shape[1])]
        return np.asarray(self.base[model] + values.sum(axis=1), np.float64)

    def score(self, x: npt.ArrayLike, model: int = ALL_FOLDS) -> F64:
        """Scores in [0, 100]: the percentile of each prediction among the model's training predictions."""
        return np.asarray(np.interp(self.predict(x, model), self.quantiles[model], np.linspace(0, 100, 101)),
                          np.float64)

    def to_bytes(self) -> bytes:
        """A zip of ``.npy`` arrays with fixed timestamps: the same model gives the same bytes."""
        return npz_bytes({name: getattr(self, name) for name in ("feature", "threshold", "leaf", "base", "quantiles")})

    @classmethod
    def from_bytes(cls, data: bytes) -> TreeEnsembles:
        with np.load(io.BytesIO(data)) as z:
            return cls(np.asarray(z["feature"], np.int16), np.asarray(z["threshold"], np.float64),
                       np.asarray(z["leaf"], np.float32), np.asarray(z["base"], np.float64),
                       np.asarray(z["quantiles"], np.float64))


@dataclass(frozen=True)
class UtilityModel:
    """The unified score: a weighted mean of two percentiles, each taken among the training images of
    the same ensemble ``k``: the trees' prediction (:class:`TreeEnsembles`, weight :attr:`tree_weight`)
    and the norm of the face's SFace embedding before normalisation (weight ``1 - tree_weight``;
    ``norm_quantiles`` ``(models, 101)`` holds the percentiles of those training images' norms). The
    weight was chosen on LFW View 2 folds 0-4 (``training/train_quality.py --select``)."""

    trees: TreeEnsembles
    norm_quantiles: npt.NDArray[np.float64]
    tree_weight: float

    def score(self, x: npt.ArrayLike, norms: npt.ArrayLike, model: int = ALL_FOLDS) -> F64:
        """Scores in [0, 100] of the faces with features ``x`` ``(n, features)`` and embedding norms ``(n,)``."""
        tree = self.trees.score(x, model)
        norm = np.interp(np.asarray(norms, np.float64).reshape(-1), self.norm_quantiles[model],
                         np.linspace(0, 100, 101))
        return np.asarray(self.tree_weight * tree + (1.0 - self.tree_weight) * norm, np.float64)

    def reads(self, name: str) -> bool:
        """Whether any tree splits on the feature called ``name`` (one of :func:`feature_names`): the
        stage skips computing an input no tree reads."""
        i = feature_names().index(name)
        return bool(np.any((self.trees.feature == i) & np.isfinite(self.trees.threshold)))

    def to_bytes(self) -> bytes:
        """A zip of ``.npy`` arrays with fixed timestamps: the same model gives the same bytes."""
        arrays = {name: getattr(self.trees, name) for name in ("feature", "threshold", "leaf", "base", "quantiles")}
        arrays["norm_quantiles"] = self.norm_quantiles
        arrays["tree_weight"] = np.array([self.tree_weight], np.float64)
        return npz_bytes(arrays)

    @classmethod
    def from_bytes(cls, data: bytes) -> UtilityModel:
        with np.load(io.BytesIO(data)) as z:
            return cls(TreeEnsembles(np.asarray(z["feature"], np.int16), np.asarray(z["threshold"], np.float64),
                                     np.asarray(z["leaf"], np.float32), np.asarray(z["base"], np.float64),
                                     np.asarray(z["quantiles"], np.float64)),
                       np.asarray(z["norm_quantiles"], np.float64), float(z["tree_weight"][0]))
