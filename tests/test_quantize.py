"""``sface_int8``: SFace statically quantised at pull time from packaged ranges (issue 22's fast embedder)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from faceflow.detect import create_detector
from faceflow.models import registry
from faceflow.models.quantize import onnx_sface_int8, prepare_sface
from faceflow.models.runtime import model_path
from faceflow.models.store import default_store
from faceflow.recognize import SFaceEmbedder, SFaceInt8Embedder, create_embedder, embedding_identity
from faceflow.types import Face, largest_face


@pytest.fixture(scope="module")
def face(astronaut: np.ndarray) -> Face:
    found = largest_face(create_detector("yunet").detect(astronaut))
    assert found is not None
    return found


def _blob(image: np.ndarray, face: Face) -> np.ndarray:
    return np.stack(SFaceEmbedder().crops(image, [face])).transpose(0, 3, 1, 2).astype(np.float32)


def _run(path: Path, blob: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"data": blob})[0])


def test_derivation_is_deterministic_and_matches_the_registry(tmp_path: Path) -> None:
    """Deriving again in this process gives the bytes the store derived (in another process) and checked."""
    ranges = default_store().fetch_file(registry.SFACE_INT8_RANGES_FILE)
    dest = tmp_path / "int8.onnx"
    onnx_sface_int8(model_path("sface"), dest, ranges)
    digest = hashlib.sha256(dest.read_bytes()).hexdigest()
    assert digest == registry.SFACE_INT8_STATIC_FILE.sha256
    assert digest == hashlib.sha256(model_path("sface_int8").read_bytes()).hexdigest()


def test_graph_has_int8_kernels_and_no_prelu() -> None:
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(model_path("sface_int8"))).graph
    ops = [n.op_type for n in graph.node]
    assert "PRelu" not in ops and ops.count("QuantizeLinear") >= 27 and ops.count("DequantizeLinear") >= 27
    arrays = [numpy_helper.to_array(i) for i in graph.initializer]
    int8_weights = [a for a in arrays if a.dtype == np.int8 and a.ndim >= 2]  # (int8 zero points are 1-D)
    assert len(int8_weights) == 28  # the 27 convolutions and the final Gemm
    assert not any(a.dtype == np.float32 and a.size > 4096 for a in arrays)  # no fp32 weights left


def test_prepared_graph_computes_what_the_fp32_one_does(tmp_path: Path, astronaut: np.ndarray, face: Face) -> None:
    """Folding the batch norms and rewriting PRelu as x + (a - 1) min(x, 0) changes no output."""
    import onnx

    prepared = tmp_path / "prepared.onnx"
    prepare_sface(model_path("sface"), prepared)
    assert not any(n.op_type == "PRelu" for n in onnx.load(str(prepared)).graph.node)
    blob = _blob(astronaut, face)
    ref = _run(model_path("sface"), blob)
    np.testing.assert_allclose(_run(prepared, blob), ref, rtol=0, atol=1e-4 * np.abs(ref).max())


def test_int8_embedding_is_close_to_fp32_on_a_real_face(astronaut: np.ndarray, face: Face) -> None:
    fp32 = create_embedder("sface").embed(astronaut, [face])
    int8 = create_embedder("sface_int8").embed(astronaut, [face])
    assert int8.shape == (1, 128) and np.linalg.norm(int8) == pytest.approx(1.0, abs=1e-5)
    cosine = float(fp32[0] @ int8[0])
    assert 0.95 < cosine < 0.99999  # close, yet not the same vectors (hence an identity of its own)
    flipped = np.ascontiguousarray(astronaut[:, ::-1])
    other = largest_face(create_detector("yunet").detect(flipped))
    assert other is not None
    mirror = create_embedder("sface_int8").embed(flipped, [other])
    assert float(mirror[0] @ int8[0]) > 0.8  # the same person, mirrored, still matches


def test_int8_vectors_carry_their_own_identity() -> None:
    int8, fp32 = embedding_identity("sface_int8"), embedding_identity("sface")
    assert int8.key != fp32.key and int8.dim == fp32.dim == 128
    assert int8.version == registry.SFACE_INT8_STATIC_FILE.sha256[:12]
    assert SFaceInt8Embedder.needs == SFaceEmbedder.needs
