"""Face recognition: embeddings (SFace, dlib ResNet, both fused), the ``embed`` stage, 1:1 verification.

Every embedder returns L2-normalised float32 vectors, and :func:`verify` compares two of them by
cosine similarity for every model, so that one scale (-1..1, higher = more alike) holds everywhere.
``fused`` (256-d) is the accurate configuration, ``sface_int8`` (128-d, SFace with int8 kernels) the
fast one; ``sface`` (fp32) stays the embed stage's default, so existing galleries keep matching. The decision
thresholds below were calibrated on LFW View 2 (see :data:`CALIBRATION`).
"""

from __future__ import annotations

import hashlib
import json
import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from faceflow.align import align_crop
from faceflow.errors import ConfigError, NoFaceFound
from faceflow.models.runtime import Runtime, default_runtime
from faceflow.stage import Stage, StageSpec, option
from faceflow.types import Face, FloatArray, Image, largest_face

# -- geometry shared by the embedders (and by the attributes stage) ---------------------------------

BOX_LANDMARKS5: FloatArray = np.array(
    [[0.260, 0.371], [0.740, 0.371], [0.500, 0.571], [0.297, 0.724], [0.703, 0.724]], dtype=np.float32
)
"""Where the five points sit inside a face box, as fractions of its width and height.

Used when a face has a box but no ``landmarks5``. The values are the (left/right-symmetrised) medians
of YuNet 2023mar's own points relative to its boxes over the 7,701 LFW View 2 images
(``box_landmarks5`` in the output of ``benchmarks/calibrate_verify.py``);
they assume an upright, frontal face and YuNet-style boxes (brow to chin, a little taller than wide).
"""

# A dlib-style square box from the five points: centre = their centroid + (dx, dy) * s and
# side = k * s, where s is the distance from the eyes' midpoint to the mouth's. Fitted (medians) to
# dlib's HOG boxes on 150 LFW faces, so dlib's 5-point predictor starts from the box it was trained on.
_DLIB_BOX_FROM_POINTS = (-0.09, -0.03, 2.43)


def box_landmarks5(box: npt.ArrayLike) -> FloatArray:
    """Approximate the five points of an upright frontal face from its box (see :data:`BOX_LANDMARKS5`)."""
    x1, y1, x2, y2 = np.asarray(box, dtype=np.float32).reshape(4)
    return np.asarray(BOX_LANDMARKS5 * [x2 - x1, y2 - y1] + [x1, y1], dtype=np.float32)


def face_landmarks5(face: Face) -> FloatArray:
    """The face's five points, or their box-based approximation when a detector gave none."""
    return face.landmarks5 if face.landmarks5 is not None else box_landmarks5(face.box)


def dlib_box(face: Face) -> tuple[int, int, int, int]:
    """The square box dlib's 5-point predictor expects (left, top, right, bottom), from the five points.

    A face from dlib's own HOG detector without five points keeps its box as it is.
    """
    if face.landmarks5 is None and face.detector == "dlib_hog":
        x1, y1, x2, y2 = (round(float(v)) for v in face.box)
        return x1, y1, x2 - 1, y2 - 1  # dlib's right and bottom are inclusive
    pts = face_landmarks5(face).astype(np.float64)
    s = float(np.linalg.norm(pts[3:].mean(0) - pts[:2].mean(0)))
    dx, dy, k = _DLIB_BOX_FROM_POINTS
    cx, cy = pts.mean(0) + np.array([dx, dy]) * s
    half = k * s / 2
    return round(cx - half), round(cy - half), round(cx + half) - 1, round(cy + half) - 1


def dlib_shapes(image: Image, faces: Sequence[Face], runtime: Runtime | None = None) -> list[Any]:
    """dlib 5-point shapes (eye corners, nose base) for each face; internal to dlib-aligned models."""
    import dlib

    predictor = (runtime or default_runtime()).dlib("dlib_shape5", "shape_predictor")
    return [predictor(image, dlib.rectangle(*dlib_box(f))) for f in faces]


def l2_normalize(x: npt.ArrayLike) -> FloatArray:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    a = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(a, axis=-1, keepdims=True)
    return np.asarray(a / np.maximum(norm, 1e-12), dtype=np.float32)


# -- embedders --------------------------------------------------------------------------------------

FAST_GRAPHS: dict[str, str] = {"sface": "sface_nchwc", "dlib": "dlib_resnet_onnx"}
"""Registry names of the faster, output-identical graphs an embedder runs when they are registered.

``sface_nchwc``: SFace with each ``PRelu`` split so ONNX Runtime keeps its NCHWc layout
(:func:`faceflow.models.speedups.onnx_prelu_split`; about 14 instead of 26 ms per face on one core).
``dlib_resnet_onnx``: dlib's ResNet converted to ONNX (:func:`faceflow.models.dlib_resnet.dlib_resnet_to_onnx`;
about 6 instead of 76 ms per face, since dlib-bin has no BLAS). Both agree with the original to
about 5e-7, so calibrations and galleries stay valid; without them the original graphs run.
"""


def _fast_graph(model: str) -> str | None:
    from faceflow.models.registry import MODELS

    name = FAST_GRAPHS.get(model)
    return name if name in MODELS else None


@dataclass(frozen=True)
class EmbeddingIdentity:
    """What an embedder's vectors are: its name, the version of the weights behind them, their size.

    Two vectors are comparable only when their identities' :attr:`key` are equal; galleries store
    this key with every embedding and refuse vectors of any other (``faceflow.errors.ModelMismatch``).
    """

    name: str
    version: str
    """The first 12 hex of the weights' sha256 (for ``fused``: of its parts' keys and weights), with
    ``+flip`` when mirrored crops are averaged in."""
    dim: int
    flip: bool = False
    """Whether the vectors average each face with its mirror image (part of :attr:`version`)."""

    @property
    def key(self) -> str:
        """``"name@version"``, e.g. ``"sface@d1b9fcf732a4"``."""
        return f"{self.name}@{self.version}"


class Embedder(ABC):
    """Turns the faces of an image into unit-norm embeddings ``(len(faces), dim)``.

    ``flip=True`` also embeds the mirror image of each aligned face and averages the two (each
    normalised, then re-normalised): slower, a little more robust to pose and lighting asymmetry.
    ``flip=None`` takes the model's own default (:attr:`default_flip`).
    """

    name: ClassVar[str]
    dim: ClassVar[int] = 128
    needs: ClassVar[tuple[str, ...]] = ("box",)
    default_flip: ClassVar[bool] = False
    weights: ClassVar[str] = ""
    """Registry name of the model file whose bytes define the vectors (the original weights; a faster
    graph of :data:`FAST_GRAPHS` gives the same vectors)."""

    @classmethod
    def weights_version(cls) -> str:
        """12 hex of what defines this model's vectors (the weights' sha256), without flip."""
        from faceflow.models.registry import get

        return get(cls.weights).files[0].sha256[:12]

    @classmethod
    def identity_for(cls, flip: bool | None = None) -> EmbeddingIdentity:
        """The identity of the vectors this model makes with ``flip`` (``None``: its default)."""
        use_flip = cls.default_flip if flip is None else flip
        return EmbeddingIdentity(cls.name, cls.weights_version() + ("+flip" if use_flip else ""), cls.dim, use_flip)

    @property
    def identity(self) -> EmbeddingIdentity:
        """The identity of the vectors this embedder makes."""
        return self.identity_for(self.flip)

    def __init__(self, *, flip: bool | None = None, runtime: Runtime | None = None) -> None:
        self.flip = self.default_flip if flip is None else flip
        self.runtime = runtime or default_runtime()

    @abstractmethod
    def embed(self, image: Image, faces: Sequence[Face]) -> FloatArray:
        """Unit-norm embeddings ``(len(faces), dim)`` of the faces of one RGB image."""

    def embed_many(self, items: Sequence[tuple[Image, Sequence[Face]]]) -> FloatArray:
        """Embeddings of the faces of several images, stacked in order (batched where the model gains)."""
        parts = [self.embed(image, faces) for image, faces in items]
        return np.concatenate(parts) if parts else np.zeros((0, self.dim), np.float32)


class AlignedEmbedder(Embedder):
    """An embedder that aligns one crop per face, then runs one batched forward pass."""

    @abstractmethod
    def crops(self, image: Image, faces: Sequence[Face]) -> list[Image]:
        """One aligned RGB crop per face, in the layout this model was trained on."""

    @abstractmethod
    def _forward(self, crops: npt.NDArray[np.uint8]) -> FloatArray:
        """Raw embeddings of a stack of aligned crops ``(N, h, w, 3)``."""

    def _run_onnx(self, model: str, crops: npt.NDArray[np.uint8]) -> FloatArray:
        """Raw embeddings from the registry's ONNX graph ``model``, whose input ``data`` takes the crops
        as float NCHW, 0..255 (SFace and the converted dlib network alike)."""
        blob = crops.transpose(0, 3, 1, 2).astype(np.float32)
        return np.asarray(self.runtime.onnx(model).run(None, {"data": blob})[0], dtype=np.float32)

    def embed_crops(self, crops: Sequence[Image]) -> FloatArray:
        """Unit-norm embeddings ``(N, dim)`` of already aligned crops (as :meth:`crops` makes them)."""
        return self.embed_crops_with_norms(crops)[0]

    def embed_crops_with_norms(self, crops: Sequence[Image]) -> tuple[FloatArray, FloatArray]:
        """:meth:`embed_crops` and the L2 norm of each crop's raw embedding before normalisation (of the
        crop as given, not mirrored): a face the model finds hard to read tends to get a smaller norm,
        which the quality stage uses (:mod:`faceflow.quality.model`)."""
        if len(crops) == 0:
            return np.zeros((0, self.dim), np.float32), np.zeros(0, np.float32)
        stack = np.ascontiguousarray(np.stack(crops))
        raw = self._forward(stack)
        out = l2_normalize(raw)
        if self.flip:
            out = l2_normalize(out + l2_normalize(self._forward(np.ascontiguousarray(stack[:, :, ::-1]))))
        return out, np.linalg.norm(raw, axis=1).astype(np.float32)

    def embed(self, image: Image, faces: Sequence[Face]) -> FloatArray:
        return self.embed_crops(self.crops(image, faces))

    def embed_many(self, items: Sequence[tuple[Image, Sequence[Face]]]) -> FloatArray:
        return self.embed_crops([c for image, faces in items for c in self.crops(image, faces)])


class SFaceEmbedder(AlignedEmbedder):
    """OpenCV Zoo's SFace (2021dec) in ONNX Runtime: ArcFace-aligned 112x112 RGB, 0..255, no mean.

    This is what OpenCV's ``FaceRecognizerSF`` feeds it (``blobFromImage(swapRB=True)`` of the BGR
    crop). Faces without ``landmarks5`` are aligned from :func:`box_landmarks5`.
    """

    name = "sface"
    needs = ("box", "landmarks5")
    weights = "sface"

    def crops(self, image: Image, faces: Sequence[Face]) -> list[Image]:
        return [align_crop(image, face_landmarks5(f), 112) for f in faces]

    def _forward(self, crops: npt.NDArray[np.uint8]) -> FloatArray:
        return self._run_onnx(_fast_graph("sface") or "sface", crops)


class SFaceInt8Embedder(SFaceEmbedder):
    """SFace with int8 kernels (``sface_int8``): the fast configuration's embedder.

    Same crops and input as :class:`SFaceEmbedder`; the graph is the fp32 one statically quantised
    (QDQ, per-channel int8 weights, uint8 activations calibrated on UTKFace faces, PRelus on uint8, see
    :mod:`faceflow.models.quantize`): about 7 instead of 14 ms per face on one core here. Its vectors
    are close to SFace's (cosine about 0.98) but not equal, so they carry their own identity.
    """

    name = "sface_int8"
    weights = "sface_int8"

    def _forward(self, crops: npt.NDArray[np.uint8]) -> FloatArray:
        return self._run_onnx("sface_int8", crops)


_dlib_net_lock = threading.Lock()  # dlib's DNN keeps per-call state: one forward pass at a time


class DlibEmbedder(AlignedEmbedder):
    """dlib's ResNet (face_recognition's model): dlib 5-point shape on the box, 150x150 chip, 0.25 pad.

    Needs only a box (``landmarks5`` place the starting box more precisely when present). The network
    runs in ONNX Runtime when its converted graph is registered (see :data:`FAST_GRAPHS`), else in dlib.
    """

    name = "dlib"
    weights = "dlib_resnet"
    chip_size: ClassVar[int] = 150
    chip_padding: ClassVar[float] = 0.25

    def crops(self, image: Image, faces: Sequence[Face]) -> list[Image]:
        import dlib

        img = np.ascontiguousarray(image)
        shapes = dlib_shapes(img, faces, self.runtime)
        return [dlib.get_face_chip(img, s, self.chip_size, self.chip_padding) for s in shapes]

    def _forward(self, crops: npt.NDArray[np.uint8]) -> FloatArray:
        graph = _fast_graph("dlib")
        if graph is not None:
            return self._run_onnx(graph, crops)
        net = self.runtime.dlib("dlib_resnet", "face_recognition_model_v1")
        with _dlib_net_lock:
            vectors = net.compute_face_descriptor([np.ascontiguousarray(c) for c in crops])
        return np.asarray([np.asarray(v) for v in vectors], dtype=np.float32)


class DlibInt8Embedder(DlibEmbedder):
    """dlib's ResNet with int8 kernels (``dlib_int8``): the same chips, the ONNX conversion statically
    quantised (QDQ, per-channel weights, ranges calibrated on UTKFace faces, see
    :mod:`faceflow.models.quantize`), about 3 instead of 7 ms per face on one core here. Its vectors are
    close to dlib's (cosine about 0.999) but not equal, so they carry their own identity."""

    name = "dlib_int8"
    weights = "dlib_int8"

    def _forward(self, crops: npt.NDArray[np.uint8]) -> FloatArray:
        return self._run_onnx("dlib_int8", crops)


# Fusion weights for "fused", calibrated 2026-11-28 on LFW View 2, ALL 6,000 pairs (so LFW figures of
# the fixed weights would not be test-clean; `faceflow eval lfw --model fused` refits them per fold on
# the nine training folds instead): the z-norm sum rule of faceflow.eval.fusion.impostor_weights,
# w_m = (1/sigma_m) / sum_k (1/sigma_k) with sigma_m the std of model m's cosine over the 3,000 impostor
# pairs, with flip (the fused default): 0.2818 / 0.7182 (without flip 0.2845 / 0.7155; the per-fold
# fits range over 0.280-0.285). Same detections and crops as CALIBRATION below.
FUSION_WEIGHTS: dict[str, float] = {"sface": 0.2818, "dlib": 0.7182}
"""Weight of each part's cosine in the fused score (they sum to 1). Fitted on LFW View 2, all 6,000
pairs (the comment above): ``faceflow eval lfw`` refits them per fold, but the LFW gallery figures of
``fused`` (``eval identification|clustering``) use these, fitted on the same images."""


class FusedEmbedder(Embedder):
    """SFace and dlib together: the concatenation ``[sqrt(w_m) * u_m]`` of their unit-norm embeddings.

    Because each part has unit norm and the weights :data:`FUSION_WEIGHTS` sum to 1, the vector has
    unit norm and the cosine of two such vectors is exactly the fused score ``sum_m w_m * cos_m``, so
    galleries, search and :func:`verify` work on it unchanged. Flip is on by default (the accurate
    configuration), for both parts. :meth:`embed_parts` gives the unweighted parts, for refitting the
    weights (LFW evaluation).
    """

    name = "fused"
    dim = SFaceEmbedder.dim + DlibEmbedder.dim
    needs = tuple(dict.fromkeys(SFaceEmbedder.needs + DlibEmbedder.needs))
    default_flip = True
    part_weights: ClassVar[dict[str, float]] = FUSION_WEIGHTS
    """The parts (embedder names, in order) and their weights."""

    @classmethod
    def weights_version(cls) -> str:
        """12 hex of the parts' identities (without flip) and the fusion weights."""
        text = json.dumps({m: [EMBEDDERS[m].identity_for(False).key, w] for m, w in sorted(cls.part_weights.items())})
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def __init__(self, *, flip: bool | None = None, runtime: Runtime | None = None) -> None:
        super().__init__(flip=flip, runtime=runtime)
        self.parts: list[Embedder] = [EMBEDDERS[m](flip=self.flip, runtime=self.runtime) for m in self.part_weights]
        weights = [self.part_weights[p.name] for p in self.parts]
        self.scale = np.sqrt(np.repeat(weights, self.part_dims)).astype(np.float32)

    @property
    def part_dims(self) -> list[int]:
        return [p.dim for p in self.parts]

    def embed_parts(self, image: Image, faces: Sequence[Face]) -> FloatArray:
        """The parts' unit-norm embeddings side by side ``(len(faces), 256)``, unweighted."""
        return np.concatenate([p.embed(image, faces) for p in self.parts], axis=1)

    def embed(self, image: Image, faces: Sequence[Face]) -> FloatArray:
        return np.asarray(self.embed_parts(image, faces) * self.scale, dtype=np.float32)

    def embed_many(self, items: Sequence[tuple[Image, Sequence[Face]]]) -> FloatArray:
        parts = np.concatenate([p.embed_many(items) for p in self.parts], axis=1)
        return np.asarray(parts * self.scale, dtype=np.float32)


FUSION_WEIGHTS_INT8: dict[str, float] = {"sface_int8": 0.282, "dlib_int8": 0.718}
"""Weights of ``fused_int8``'s parts: the z-norm rule over all 6,000 LFW View 2 pairs with flip, as for
:data:`FUSION_WEIGHTS` (``benchmarks/calibrate_verify.py --model fused_int8``); ``faceflow eval lfw``
refits them per fold (0.279-0.284 for SFace)."""


class FusedInt8Embedder(FusedEmbedder):
    """``fused`` with int8 kernels in both parts (``fused_int8``: ``sface_int8`` and ``dlib_int8``): the
    accurate configuration at about half the CPU time, with its own vectors and weights
    (:data:`FUSION_WEIGHTS_INT8`)."""

    name = "fused_int8"
    part_weights = FUSION_WEIGHTS_INT8


EMBEDDERS: dict[str, type[Embedder]] = {
    "sface": SFaceEmbedder, "sface_int8": SFaceInt8Embedder, "dlib": DlibEmbedder, "fused": FusedEmbedder,
    "dlib_int8": DlibInt8Embedder, "fused_int8": FusedInt8Embedder,
}
"""Embedder names (keys of ``Face.embeddings``, ``--model``) and their classes."""


def create_embedder(model: str = "sface", *, flip: bool | None = None, runtime: Runtime | None = None) -> Embedder:
    """The embedder called ``model`` (see :data:`EMBEDDERS`); ``flip=None`` takes the model's default."""
    return embedder_class(model)(flip=flip, runtime=runtime)


def embedder_class(model: str) -> type[Embedder]:
    """The embedder class called ``model``; :class:`ConfigError` naming the known ones otherwise."""
    try:
        return EMBEDDERS[model]
    except KeyError:
        raise ConfigError(f"unknown recognition model {model!r}; choose one of: {', '.join(EMBEDDERS)}") from None


def embedding_identity(model: str, *, flip: bool | None = None) -> EmbeddingIdentity:
    """The identity of ``model``'s vectors with ``flip`` (``None``: the model's default)."""
    return embedder_class(model).identity_for(flip)


@dataclass(frozen=True)
class EmbedOptions:
    """Settings of the ``embed`` stage."""

    models: tuple[str, ...] = option(("sface",), "Recognition models, comma-separated: sface, dlib, fused, "
                                              "or their faster int8 builds sface_int8, dlib_int8, fused_int8.",
                                     flag="embedders", choices=tuple(EMBEDDERS))
    flip: bool | None = option(False, "Average each embedding with the mirrored face's (slower, slightly "
                                      "more accurate); unset: the model's own default.", flag="flip")


class EmbedStage(Stage):
    """Fills ``face.embeddings[model]`` for each requested model (each batched over the image's faces)."""

    name = "embed"

    def __init__(self, options: EmbedOptions | None = None, runtime: Runtime | None = None) -> None:
        self.options = options or EmbedOptions()
        models = self.options.models
        if isinstance(models, str):
            models = (models,)
        if not models:
            raise ConfigError("the embed stage needs at least one recognition model")
        self.embedders = [create_embedder(m, flip=self.options.flip, runtime=runtime) for m in models]
        self.needs = embed_needs(self.options)

    def run(self, image: Image, faces: list[Face]) -> list[Face]:
        if not faces:
            return faces
        for embedder in self.embedders:
            for face, vector in zip(faces, embedder.embed(image, faces), strict=True):
                face.embeddings[embedder.name] = vector
        return faces


def embed_needs(options: EmbedOptions) -> tuple[str, ...]:
    """The Face fields the chosen models read (SFace aligns by the five points; dlib needs a box)."""
    models = (options.models,) if isinstance(options.models, str) else options.models
    for m in models:
        if m not in EMBEDDERS:
            raise ConfigError(f"unknown recognition model {m!r}; choose one of: {', '.join(EMBEDDERS)}")
    return tuple(dict.fromkeys(n for m in models for n in EMBEDDERS[m].needs))


STAGE = StageSpec(
    name="embed",
    help="Recognition embeddings (unit-norm vectors) for verification, galleries and clustering.",
    options=EmbedOptions,
    factory=EmbedStage,
    needs=embed_needs,
    provides=("embeddings",),
)


# -- verification -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Calibration:
    """A model's decision threshold on cosine similarity and what it gave where it was measured."""

    threshold: float
    fmr: float
    """False-match rate at ``threshold`` on the calibration data."""
    tmr: float
    """True-match rate at ``threshold`` on the calibration data."""
    accuracy: float
    """Accuracy over all calibration pairs at ``threshold``."""


# Thresholds on cosine similarity, calibrated 2026-11-28 by ``benchmarks/calibrate_verify.py``:
# LFW View 2 (pairs.txt: 3,000 genuine + 3,000 impostor pairs over 7,701 deep-funneled images), the face
# nearest the centre found by faceflow's YuNet (default options; it found a face in all 7,701 images),
# faces as the embedders align them, flip=False. Operating point: FMR = 1e-3 over all 3,000 impostor
# pairs (the midpoint between the 4th and 3rd highest impostor scores, rounded up to 4 places: exactly
# 3 impostors match). TMR is over the 3,000 genuine pairs, accuracy over all 6,000 pairs (no folds).
#   sface: threshold 0.3461 -> FMR 0.10 % (3/3000), TMR 99.00 %, accuracy 99.45 %.
#          (max-accuracy threshold 0.3317: 99.48 %, FMR 0.17 %; standard 10-fold accuracy
#          99.42 +- 0.35 %, TAR@FAR=1e-3 98.87 %, AUC 0.9990.)
#   sface_int8 (calibrated 2026-12-07, same protocol, the graph with its PRelus in uint8): threshold
#          0.3364 -> FMR 0.10 % (3/3000), TMR 99.07 %, accuracy 99.48 % (also the max-accuracy threshold;
#          10-fold 99.47 +- 0.41 %, TAR@FAR=1e-3 98.90 %, AUC 0.9991).
#   dlib:  threshold 0.9192 -> FMR 0.10 % (3/3000), TMR 96.07 %, accuracy 97.98 %.
#          (max-accuracy threshold 0.9060: 98.97 %, FMR 1.10 %; 10-fold accuracy 98.82 +- 0.47 %,
#          TAR@FAR=1e-3 95.50 %, AUC 0.9993. dlib's customary Euclidean 0.6 is cosine ~0.82: far laxer.)
#   dlib_int8 (2026-12-07, same protocol): threshold 0.9162 -> FMR 0.10 % (3/3000), TMR 97.00 %, accuracy
#          98.45 % (max-accuracy threshold 0.9086: 98.97 %; 10-fold 98.82 +- 0.37 %, TAR@FAR=1e-3 95.83 %,
#          AUC 0.9993).
#   fused (flip=True, its default; weights FUSION_WEIGHTS, fitted on the same 6,000 pairs): threshold
#          0.7517 -> FMR 0.10 % (3/3000), TMR 99.20 %, accuracy 99.55 % (max-accuracy threshold 0.7378:
#          99.65 %). Without flip (weights 0.2845/0.7155): 0.7443 -> TMR 99.20 %. Its test-clean 10-fold
#          figures, weights refitted per fold: 99.58 +- 0.31 %, TAR@FAR=1e-3 99.17 %, AUC 0.9997.
#   fused_int8 (2026-12-07; flip; weights FUSION_WEIGHTS_INT8 from the same 6,000 pairs, the script's
#          --model fused_int8): threshold 0.7471 -> FMR 0.10 % (3/3000), TMR 99.30 %, accuracy 99.60 %
#          (max-accuracy threshold 0.7414: 99.67 %). Test-clean 10-fold with the `fast` detector, weights
#          refitted per fold (`faceflow eval lfw --model fused_int8 --detector fast`): 99.63 +- 0.30 %,
#          TAR@FAR=1e-3 99.37 %, AUC 0.9998.
# Reproduce: FACEFLOW_THREADS=2 nice .venv/bin/python benchmarks/calibrate_verify.py --model sface
# (then --model dlib; "fused" applies faceflow.eval.fusion.impostor_weights and that script's threshold
# rule to the two models' scores, with flip from the embeddings of the mirrored crops); LFW is research
# data, so these figures describe LFW-like photos, not any deployment.
CALIBRATION: dict[str, Calibration] = {
    "sface": Calibration(threshold=0.3461, fmr=1e-3, tmr=0.9900, accuracy=0.9945),
    "sface_int8": Calibration(threshold=0.3364, fmr=1e-3, tmr=0.9907, accuracy=0.9948),
    "dlib": Calibration(threshold=0.9192, fmr=1e-3, tmr=0.9607, accuracy=0.9798),
    "dlib_int8": Calibration(threshold=0.9162, fmr=1e-3, tmr=0.9700, accuracy=0.9845),
    "fused": Calibration(threshold=0.7517, fmr=1e-3, tmr=0.9920, accuracy=0.9955),
    "fused_int8": Calibration(threshold=0.7471, fmr=1e-3, tmr=0.9930, accuracy=0.9960),
}
"""Each model's threshold (for its default flip) and the false-match rate, true-match rate and accuracy
measured on LFW there. Fitted on LFW View 2, all 6,000 pairs (``benchmarks/calibrate_verify.py``; the
comment above), so these rates are not held-out figures; ``faceflow eval lfw`` does not use these
thresholds (it picks one per fold on the nine other folds)."""


@dataclass(frozen=True)
class Verification:
    """The answer to "same person?": cosine similarity, the decision, and the threshold behind it."""

    similarity: float
    same: bool
    threshold: float
    far: float | None
    """False-accept (false-match) rate measured at ``threshold`` on LFW; ``None`` for a custom threshold."""
    boxes: tuple[list[float], list[float]] | None = None
    """The box of the face compared in each image (:func:`verify_images`); ``None`` for embeddings."""
    faces_found: tuple[int, int] | None = None
    """How many faces each image showed (:func:`verify_images`): above 1, the largest was compared."""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "similarity": round(self.similarity, 6),
            "same": self.same,
            "threshold": self.threshold,
            "far": self.far,
        }
        if self.boxes is not None:
            out["boxes"] = [[round(v, 2) for v in b] for b in self.boxes]
        if self.faces_found is not None:
            out["faces_found"] = list(self.faces_found)
        return out


def _vector(x: Face | npt.ArrayLike, model: str) -> FloatArray:
    if isinstance(x, Face):
        if model not in x.embeddings:
            raise ConfigError(f"this face has no {model!r} embedding (run the embed stage with it)")
        x = x.embeddings[model]
    v = np.asarray(x, dtype=np.float32).reshape(-1)
    if v.shape != (EMBEDDERS[model].dim,):
        raise ConfigError(f"a {model} embedding has {EMBEDDERS[model].dim} values, got {v.shape[0]}")
    return l2_normalize(v)


def similarity(a: Face | npt.ArrayLike, b: Face | npt.ArrayLike, model: str = "sface") -> float:
    """Cosine similarity of two embeddings (or two faces' ``model`` embeddings)."""
    if model not in CALIBRATION:
        raise ConfigError(f"unknown recognition model {model!r}; choose one of: {', '.join(CALIBRATION)}")
    return float(np.dot(_vector(a, model), _vector(b, model)))


def verify(
    a: Face | npt.ArrayLike, b: Face | npt.ArrayLike, model: str = "sface", threshold: float | None = None
) -> Verification:
    """Decide whether two embeddings (or faces) show the same person, at the model's LFW threshold."""
    sim = similarity(a, b, model)
    cal = CALIBRATION[model]
    t = cal.threshold if threshold is None else float(threshold)
    return Verification(sim, sim >= t, t, cal.fmr if threshold is None else None)


def verify_images(
    image_a: str | Path | Image, image_b: str | Path | Image, model: str = "sface", runtime: Runtime | None = None,
    *, detector: Any = None,
) -> Verification:
    """Detect (YuNet) the largest face of each image, embed both with ``model`` and :func:`verify`.

    The result says which face was compared in each image (``boxes``) and how many there were
    (``faces_found``), so that a caller can warn when a group photo made the choice ambiguous.
    Raises :class:`~faceflow.errors.NoFaceFound` for an image without a face. ``detector`` reuses a
    YuNet detector built before (a server answering many calls); by default one is built for the call.
    """
    from faceflow.detect import create_detector
    from faceflow.io import load_image

    embedder = create_embedder(model, runtime=runtime)
    detector = detector or create_detector("yunet", runtime=runtime)
    vectors, boxes, counts = [], [], []
    for source in (image_a, image_b):
        image = load_image(source)
        faces = detector.detect(image)
        face = largest_face(faces)
        if face is None:
            raise NoFaceFound(None if isinstance(source, np.ndarray) else str(source))
        vectors.append(embedder.embed(image, [face])[0])
        boxes.append([float(v) for v in face.box])
        counts.append(len(faces))
    v = verify(vectors[0], vectors[1], model)
    return Verification(v.similarity, v.same, v.threshold, v.far, (boxes[0], boxes[1]), (counts[0], counts[1]))
