"""Age and gender heads trained on UTKFace over features of faceflow's own models.

The heads read, for each face, what the other stages' models already compute (the "raw blocks",
:data:`RAW_BLOCKS`): SFace and dlib embeddings of the face and of its mirror image, the Cydral age
and gender networks' penultimate activations and probabilities (face and mirror), and the
MediaPipe mesh. :func:`assemble` turns them into one feature vector, and :class:`AttributeHeads`
maps it to an age (ridge regression on a transformed age) and a gender (logistic regression).

The weights are a small JSON file shipped as package data (:data:`HEADS_FILE`, pinned by
:data:`HEADS_SHA256`); ``training/train_attribute_heads.py`` rebuilds it bit for bit from the
committed UTKFace split. UTKFace is non-commercial research data, and so are heads derived from it.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from faceflow.attributes import AgeGenderStage, AttributesStage, ExpressionStage, _blob
from faceflow.errors import ChecksumMismatch, ModelUnavailable
from faceflow.landmarks import MESH_EYE_CORNERS, MESH_TO_68, MeshStage
from faceflow.models.runtime import LazyModel, model_path
from faceflow.models.store import ModelStore
from faceflow.recognize import DlibEmbedder, SFaceEmbedder, l2_normalize
from faceflow.types import Estimate, Face, FloatArray, Image, Stage

HEADS_FILE = "attribute_heads.json"
"""The trained heads, in ``faceflow/data/``."""
HEADS_SHA256 = ""
"""sha256 of :data:`HEADS_FILE` as ``training/train_attribute_heads.py`` builds it."""

RAW_BLOCKS: dict[str, tuple[int, ...]] = {
    "sface": (128,),
    "sface_flip": (128,),
    "dlib": (128,),
    "dlib_flip": (128,),
    "age_feat": (256,),
    "age_feat_flip": (256,),
    "age_p": (81,),
    "age_p_flip": (81,),
    "gender_feat": (16,),
    "gender_feat_flip": (16,),
    "gender_p": (2,),
    "gender_p_flip": (2,),
    "mesh": (468, 3),
}
"""What :class:`HeadFeatureExtractor` computes per face, and its shape."""

_CYDRAL_OUTPUTS = {"age": ("layer_1_flatten", "probabilities"), "gender": ("layer_1_flatten", "probabilities")}
"""Per Cydral network: the penultimate activations (age 256, gender 16 after its ReLU) and the output."""


def _mirror(images: Sequence[Image]) -> list[Image]:
    return [np.ascontiguousarray(im[:, ::-1]) for im in images]


class HeadFeatureExtractor:
    """Computes :data:`RAW_BLOCKS` for faces with a box and ``landmarks5`` (a mesh on the face is reused)."""

    def __init__(self, *, threads: int | None = None, store: ModelStore | None = None) -> None:
        self.threads = threads
        self.store = store
        self.sface = SFaceEmbedder(threads=threads, store=store)
        self.dlib = DlibEmbedder(threads=threads, store=store)
        self.chips = AgeGenderStage(threads=threads, store=store)
        self.mesh = MeshStage(threads=threads, store=store)
        self._sessions: dict[str, Any] = {}
        self._lock = threading.Lock()

    def _cydral(self, name: str) -> Any:
        """An ONNX Runtime session of a Cydral network that also returns its penultimate layer."""
        with self._lock:
            if name not in self._sessions:
                import onnx
                import onnxruntime as ort

                from faceflow.models.runtime import default_threads

                model = onnx.load(str(model_path(name, store=self.store)))
                model.graph.output.insert(0, onnx.ValueInfoProto(name=_CYDRAL_OUTPUTS[name][0]))
                opts = ort.SessionOptions()
                opts.intra_op_num_threads = default_threads() if self.threads is None else self.threads
                opts.inter_op_num_threads = 1
                opts.log_severity_level = 3
                self._sessions[name] = ort.InferenceSession(
                    model.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"]
                )
            return self._sessions[name]

    def _run_cydral(self, name: str, chips: Sequence[Image], out: dict[str, FloatArray], suffix: str) -> None:
        feat, prob = self._cydral(name).run(list(_CYDRAL_OUTPUTS[name]), {"images": _blob(chips)})
        out[f"{name}_feat{suffix}"] = np.asarray(feat, np.float32).reshape(len(chips), -1)
        out[f"{name}_p{suffix}"] = np.asarray(prob, np.float32)

    def raw(self, image: Image, faces: Sequence[Face]) -> dict[str, FloatArray]:
        """``{block: (len(faces), *shape)}`` for every block of :data:`RAW_BLOCKS`."""
        out: dict[str, FloatArray] = {}
        for name, embedder in (("sface", self.sface), ("dlib", self.dlib)):
            crops = embedder.crops(image, faces)
            out[name] = embedder.embed_crops(crops)
            out[f"{name}_flip"] = embedder.embed_crops(_mirror(crops))
        age_chips, gender_chips = self.chips.chips(image, faces)
        for name, chips in (("age", age_chips), ("gender", gender_chips)):
            self._run_cydral(name, chips, out, "")
            self._run_cydral(name, _mirror(chips), out, "_flip")
        meshes = [f.mesh if f.mesh is not None else self.mesh.predict(image, f)[0] for f in faces]
        out["mesh"] = np.asarray(meshes, np.float32).reshape(len(faces), 468, 3)
        return out


# -- from raw blocks to one feature vector ------------------------------------------------------------


def _flip_mean(raw: Mapping[str, FloatArray], name: str) -> FloatArray:
    return np.asarray((raw[name] + raw[f"{name}_flip"]) / 2, np.float32)


def _log_p(raw: Mapping[str, FloatArray], name: str) -> FloatArray:
    """Mean log-probability of face and mirror, centred per face (the network's logits, up to a shift)."""
    logp = np.log(np.maximum(_flip_mean(raw, name), 1e-7))
    return np.asarray(logp - logp.mean(1, keepdims=True), np.float32)


def mesh_geometry(mesh: npt.ArrayLike) -> FloatArray:
    """``(N, 204)``: the mesh's 68 iBUG-like vertices (x, y, z) with the outer eye corners' midpoint at
    the origin, the eye line level and the corners' distance as the unit (pose and scale removed in
    the image plane only)."""
    m = np.asarray(mesh, np.float64).reshape(-1, 468, 3)
    left, right = m[:, MESH_EYE_CORNERS[0]], m[:, MESH_EYE_CORNERS[1]]
    d = right[:, :2] - left[:, :2]
    scale = np.maximum(np.linalg.norm(d, axis=1), 1e-6)
    c, s = d[:, 0] / scale, d[:, 1] / scale
    p = m[:, list(MESH_TO_68)] - (left + right)[:, None] / 2
    x = c[:, None] * p[..., 0] + s[:, None] * p[..., 1]
    y = -s[:, None] * p[..., 0] + c[:, None] * p[..., 1]
    out = np.stack([x, y, p[..., 2]], axis=-1) / scale[:, None, None]
    return np.asarray(out.reshape(len(m), -1), np.float32)


FEATURES: dict[str, Any] = {
    "sface": lambda r: l2_normalize(r["sface"] + r["sface_flip"]),
    "dlib": lambda r: l2_normalize(r["dlib"] + r["dlib_flip"]),
    "age_feat": lambda r: _flip_mean(r, "age_feat"),
    "age_logp": lambda r: _log_p(r, "age_p"),
    "gender_feat": lambda r: _flip_mean(r, "gender_feat"),
    "gender_logp": lambda r: _log_p(r, "gender_p"),
    "geometry": lambda r: mesh_geometry(r["mesh"]),
}
"""Feature blocks a head may use, each computed from the raw blocks (face and mirror averaged)."""


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


def _to_floats(a: npt.ArrayLike) -> list[float]:
    """float32 values as the shortest decimals that read back to the same float32 (compact JSON)."""
    return [float(np.format_float_positional(v, unique=True)) for v in np.asarray(a, np.float32).ravel()]


@dataclass(frozen=True)
class Head:
    """Dense layers with ReLU between them over :func:`assemble`'s features of ``blocks``.

    The training standardisation is folded into the first layer, so the input is the raw feature
    vector; a one-layer head is a linear model.
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
            "layers": [
                {"shape": list(w.shape), "weights": _to_floats(w), "bias": _to_floats(b)} for w, b in self.layers
            ],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Head:
        layers = tuple(
            (np.asarray(x["weights"], np.float32).reshape(x["shape"]), np.asarray(x["bias"], np.float32))
            for x in d["layers"]
        )
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
    def load(cls, path: str | Path | None = None) -> AttributeHeads:
        """The heads in ``path``, or the packaged ones (checked against :data:`HEADS_SHA256`)."""
        if path is not None:
            return cls.from_dict(json.loads(Path(path).read_text()))
        try:
            data = resources.files("faceflow").joinpath("data", HEADS_FILE).read_bytes()
        except OSError as exc:
            raise ModelUnavailable(
                f"faceflow/data/{HEADS_FILE} is missing; rebuild it with training/train_attribute_heads.py"
            ) from exc
        digest = hashlib.sha256(data).hexdigest()
        if digest != HEADS_SHA256:
            raise ChecksumMismatch(f"faceflow/data/{HEADS_FILE} has sha256 {digest}, expected {HEADS_SHA256}")
        return cls.from_dict(json.loads(data))


_packaged = LazyModel(AttributeHeads.load)


class AttributeHeadsStage(Stage):
    """Fills ``face.age`` and ``face.gender`` from the trained heads (a drop-in for ``AgeGenderStage``)."""

    name = "age_gender"
    needs: tuple[str, ...] = ("box",)
    provides: tuple[str, ...] = ("age", "gender")

    def __init__(
        self, *, threads: int | None = None, store: ModelStore | None = None, heads: AttributeHeads | None = None
    ) -> None:
        self.features = HeadFeatureExtractor(threads=threads, store=store)
        self.heads = heads

    def run(self, image: Image, faces: list[Face]) -> list[Face]:
        if not faces:
            return faces
        heads = self.heads or _packaged.get()
        for face, (age, gender) in zip(faces, heads.estimates(self.features.raw(image, faces)), strict=True):
            face.age, face.gender = age, gender
        return faces


class HeadAttributesStage(AttributesStage):
    """The ``attributes`` stage with age and gender from the trained heads, expression as before."""

    parts: ClassVar[tuple[type[Stage], ...]] = (AttributeHeadsStage, ExpressionStage)
