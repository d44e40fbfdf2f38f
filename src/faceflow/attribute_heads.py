"""Age and gender heads trained on UTKFace over features of faceflow's own models.

The heads read, for each face, what the other stages' models compute anyway, for the face and for
its mirror image (the "raw blocks", :data:`RAW_BLOCKS`): the SFace embedding and SFace's last
convolutional layer averaged over the face, the dlib embedding, and the Cydral age and gender
networks' penultimate activations and probabilities. :func:`assemble` turns them into feature
vectors, and :class:`AttributeHeads` maps those to an age (an ensemble of small ReLU networks, or a
ridge regression, on the square root of the age) and a gender (a logistic regression).

The weights ship as package data (:data:`HEADS_FILE`, under 1 MiB, pinned by :data:`HEADS_SHA256`);
``training/train_attribute_heads.py`` rebuilds them bit for bit from the committed UTKFace split.
UTKFace is non-commercial research data, and so are heads derived from it. The heads were trained on
features of YuNet's faces (five points), SFace, dlib's ResNet and the Cydral networks as they are at
training time: retrain them when any of those changes.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from faceflow.attributes import AgeGenderStage, AttributesOptions, AttributesStage, ExpressionStage, _blob
from faceflow.models.registry import HEADS_FILE as _HEADS
from faceflow.models.runtime import Runtime, default_runtime
from faceflow.recognize import DlibEmbedder, SFaceEmbedder, l2_normalize
from faceflow.stage import Stage
from faceflow.types import Estimate, Face, FloatArray, Image

HEADS_FILE = _HEADS.name
"""The trained heads, in ``faceflow/data/``."""
HEADS_SHA256 = _HEADS.sha256
"""sha256 of :data:`HEADS_FILE` as ``training/train_attribute_heads.py`` builds it."""

_BLOCKS = {
    "sface": 128, "sface_conv": 1024, "dlib": 128, "age_feat": 256, "age_p": 81, "gender_feat": 16, "gender_p": 2
}
RAW_BLOCKS: dict[str, int] = {k + flip: n for k, n in _BLOCKS.items() for flip in ("", "_flip")}
"""What :class:`HeadFeatureExtractor` computes per face (``_flip``: of the mirror image), and its width."""

_TAPS: dict[str, tuple[str, str, str]] = {
    "sface": ("data", "conv_14_relu", "fc1"),
    "age": ("images", "layer_1_flatten", "probabilities"),
    "gender": ("images", "layer_1_flatten", "probabilities"),
}
"""Per ONNX model: its input, the inner layer also read (SFace 1024x7x7, age 256, gender 16) and its output."""


def _mirror(images: Sequence[Image]) -> list[Image]:
    return [np.ascontiguousarray(im[:, ::-1]) for im in images]


class HeadFeatureExtractor:
    """Computes :data:`RAW_BLOCKS` for faces with a box (and ``landmarks5``, or their box estimate)."""

    def __init__(self, *, runtime: Runtime | None = None) -> None:
        self.runtime = runtime or default_runtime()
        self.sface = SFaceEmbedder(runtime=self.runtime)
        self.dlib = DlibEmbedder(runtime=self.runtime)
        self.chips = AgeGenderStage(runtime=self.runtime)

    def _session(self, name: str) -> Any:
        """An ONNX Runtime session of a registered model that also returns its :data:`_TAPS` layer."""
        return self.runtime.onnx(name, taps=(_TAPS[name][1],))

    def _run(self, name: str, blob: FloatArray) -> tuple[FloatArray, FloatArray]:
        """The tapped layer (averaged over its spatial axes, if any) and the output, one row per input."""
        data, inner, output = _TAPS[name]
        feat, out = self._session(name).run([inner, output], {data: blob})
        feat = np.asarray(feat, np.float32).reshape(len(blob), feat.shape[1], -1).mean(2)
        return np.asarray(feat, np.float32), np.asarray(out, np.float32)

    def raw(self, image: Image, faces: Sequence[Face]) -> dict[str, FloatArray]:
        """``{block: (len(faces), width)}`` for every block of :data:`RAW_BLOCKS`."""
        out: dict[str, FloatArray] = {}
        crops = self.sface.crops(image, faces)
        age_chips, gender_chips = self.chips.chips(image, faces)
        dlib_crops = self.dlib.crops(image, faces)
        for flip in ("", "_flip"):
            if flip:
                crops, age_chips, gender_chips, dlib_crops = map(_mirror, (crops, age_chips, gender_chips, dlib_crops))
            conv, emb = self._run("sface", np.stack(crops).transpose(0, 3, 1, 2).astype(np.float32))
            out["sface" + flip], out["sface_conv" + flip] = l2_normalize(emb), conv
            out["dlib" + flip] = self.dlib.embed_crops(dlib_crops)
            for name, chips in (("age", age_chips), ("gender", gender_chips)):
                out[f"{name}_feat{flip}"], out[f"{name}_p{flip}"] = self._run(name, _blob(chips))
        return out


# -- from raw blocks to feature vectors ----------------------------------------------------------------


def _flip_mean(raw: Mapping[str, FloatArray], name: str) -> FloatArray:
    return np.asarray((raw[name] + raw[f"{name}_flip"]) / 2, np.float32)


def _log_p(raw: Mapping[str, FloatArray], name: str) -> FloatArray:
    """Mean log-probability of face and mirror, centred per face (the network's logits, up to a shift)."""
    logp = np.log(np.maximum(_flip_mean(raw, name), 1e-7))
    return np.asarray(logp - logp.mean(1, keepdims=True), np.float32)


FEATURES: dict[str, Any] = {
    "sface": lambda r: l2_normalize(r["sface"] + r["sface_flip"]),
    "sface_conv": lambda r: np.log1p(_flip_mean(r, "sface_conv")),
    "dlib": lambda r: l2_normalize(r["dlib"] + r["dlib_flip"]),
    "age_feat": lambda r: _flip_mean(r, "age_feat"),
    "age_logp": lambda r: _log_p(r, "age_p"),
    "gender_feat": lambda r: _flip_mean(r, "gender_feat"),
    "gender_logp": lambda r: _log_p(r, "gender_p"),
}
"""Feature blocks a head may use, each computed from the raw blocks of the face and its mirror."""


def assemble(raw: Mapping[str, FloatArray], blocks: Sequence[str]) -> FloatArray:
    """The feature matrix ``(N, d)``: the named :data:`FEATURES` side by side, in order."""
    return np.concatenate([np.asarray(FEATURES[b](raw), np.float32) for b in blocks], axis=1)


# -- the heads ----------------------------------------------------------------------------------------

AGE_TARGETS: dict[str, tuple[Any, Any]] = {
    "identity": (lambda a: a, lambda z: z),
    "log1p": (np.log1p, np.expm1),
    "sqrt": (np.sqrt, lambda z: np.square(np.maximum(z, 0.0))),
}
"""What the age head regresses (forward transform of the age in years) and how to turn it back."""
AGE_RANGE = (0.0, 116.0)
"""Predicted ages are clipped to UTKFace's label range."""


def _encode(a: npt.ArrayLike) -> dict[str, Any]:
    """An array as JSON: its shape and its little-endian float32 bytes in base64 (exact and compact)."""
    x = np.asarray(a, "<f4")
    return {"shape": list(x.shape), "float32": base64.b64encode(x.tobytes()).decode("ascii")}


def _decode(d: Mapping[str, Any]) -> FloatArray:
    return np.frombuffer(base64.b64decode(d["float32"]), "<f4").reshape(d["shape"]).astype(np.float32)


@dataclass(frozen=True)
class Head:
    """Dense layers with ReLU between them over :func:`assemble`'s features of ``blocks``.

    The training standardisation is folded into the first layer and the output scaling into the last,
    so the input is the feature vector and the output the head's target; a one-layer head is a linear
    model, and an ensemble of one-hidden-layer networks is one network (hidden units side by side,
    output weights divided by their number).
    """

    blocks: tuple[str, ...]
    layers: tuple[tuple[FloatArray, FloatArray], ...]

    def __call__(self, raw: Mapping[str, FloatArray]) -> npt.NDArray[np.float64]:
        """The head's output per face ``(N,)`` (a transformed age, or a gender logit)."""
        x = assemble(raw, self.blocks).astype(np.float64)
        for i, (w, b) in enumerate(self.layers):
            x = x @ w.astype(np.float64) + b.astype(np.float64)
            if i < len(self.layers) - 1:
                x = np.maximum(x, 0.0)
        return np.asarray(x.reshape(len(x)), np.float64)

    def to_dict(self) -> dict[str, Any]:
        return {
            "blocks": list(self.blocks),
            "layers": [{"weights": _encode(w), "bias": _encode(b)} for w, b in self.layers],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Head:
        layers = tuple((_decode(x["weights"]), _decode(x["bias"])) for x in d["layers"])
        return cls(tuple(d["blocks"]), layers)


@dataclass(frozen=True)
class AgeConfidence:
    """P(\\|true - predicted age\\| <= 5 years), measured on the val part per range of the predicted age:
    ``within[i]`` holds for predictions below ``edges[i]`` (and the last for everything above)."""

    edges: tuple[float, ...]
    within: tuple[float, ...]

    def __call__(self, ages: npt.ArrayLike) -> npt.NDArray[np.float64]:
        return np.asarray(self.within, np.float64)[np.searchsorted(self.edges, np.asarray(ages), side="right")]


@dataclass(frozen=True)
class AttributeHeads:
    """The age head (a transformed age), the gender head (logit of female) and the age confidence."""

    age: Head
    gender: Head
    age_target: str
    age_confidence: AgeConfidence
    info: Mapping[str, Any]
    """How they were trained: data, split, hyper-parameters, val figures (not used to predict)."""

    def predict(self, raw: Mapping[str, FloatArray]) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """Ages in years and probabilities of female, one per face of ``raw``."""
        ages = np.clip(AGE_TARGETS[self.age_target][1](self.age(raw)), *AGE_RANGE)
        return ages, 1.0 / (1.0 + np.exp(-self.gender(raw)))

    def estimates(self, raw: Mapping[str, FloatArray]) -> list[tuple[Estimate, Estimate]]:
        """``(age, gender)`` estimates per face, with the conventions of :mod:`faceflow.attributes`."""
        ages, female = self.predict(raw)
        conf = self.age_confidence(ages)
        return [
            (Estimate(float(a), float(c)), Estimate("female", float(p)) if p >= 0.5 else Estimate("male", float(1 - p)))
            for a, c, p in zip(ages, conf, female, strict=True)
        ]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "faceflow-attribute-heads/1",
            "age": {**self.age.to_dict(), "target": self.age_target},
            "gender": self.gender.to_dict(),
            "age_confidence": {"edges": list(self.age_confidence.edges), "within": list(self.age_confidence.within)},
            "info": dict(self.info),
        }

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, no spaces), the bytes that :data:`HEADS_SHA256` pins."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")) + "\n"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AttributeHeads:
        conf = d["age_confidence"]
        return cls(
            Head.from_dict(d["age"]), Head.from_dict(d["gender"]), d["age"]["target"],
            AgeConfidence(tuple(conf["edges"]), tuple(conf["within"])), d.get("info", {}),
        )

    @classmethod
    def load(cls, path: str | Path | None = None, runtime: Runtime | None = None) -> AttributeHeads:
        """The heads in ``path``, or the packaged ones (checked against :data:`HEADS_SHA256`)."""
        if path is not None:
            return cls.from_dict(json.loads(Path(path).read_text()))
        data = (runtime or default_runtime()).path("attribute_heads").read_bytes()
        return cls.from_dict(json.loads(data))


class AttributeHeadsStage(Stage):
    """Fills ``face.age`` and ``face.gender`` from the trained heads (a drop-in for ``AgeGenderStage``)."""

    name = "age_gender"
    needs: tuple[str, ...] = ("box",)
    provides: tuple[str, ...] = ("age", "gender")

    def __init__(self, *, runtime: Runtime | None = None, heads: AttributeHeads | None = None) -> None:
        self.runtime = runtime or default_runtime()
        self.features = HeadFeatureExtractor(runtime=self.runtime)
        self.heads = heads

    def run(self, image: Image, faces: list[Face]) -> list[Face]:
        if not faces:
            return faces
        heads = self.heads or self.runtime.load(("attribute_heads",), lambda: AttributeHeads.load(runtime=self.runtime))
        for face, (age, gender) in zip(faces, heads.estimates(self.features.raw(image, faces)), strict=True):
            face.age, face.gender = age, gender
        return faces


class HeadAttributesStage(AttributesStage):
    """The ``attributes`` stage with age and gender from the trained heads, expression as before."""

    parts: ClassVar[tuple[type[Stage], ...]] = (AttributeHeadsStage, ExpressionStage)


def attributes_stage(options: AttributesOptions, runtime: Runtime) -> Stage:
    """The ``attributes`` stage for ``options.age_gender``: Cydral's networks or the trained heads."""
    if options.age_gender == "heads":
        return HeadAttributesStage(options, runtime)
    return AttributesStage(options, runtime)
