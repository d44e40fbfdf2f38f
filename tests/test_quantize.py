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


def _conv_prelu_net(path: Path) -> None:
    """Conv -> PRelu (a negative slope steep enough to need a wider range) -> Conv -> PRelu (one slope
    above 1) -> Conv: a small stand-in for SFace's blocks, every path of :func:`prelu_in_uint8`."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(7)
    weights = {
        "w1": rng.normal(0, 0.5, (4, 3, 3, 3)), "b1": rng.normal(0, 0.1, 4),
        "a1": np.array([-2.5, 0.0, 0.35, 1.0]).reshape(4, 1, 1),
        "w2": rng.normal(0, 0.5, (4, 4, 3, 3)), "b2": rng.normal(0, 0.1, 4),
        "a2": np.array([1.2, 0.5, -0.3, 0.9]).reshape(4, 1, 1),
        "w3": rng.normal(0, 0.5, (2, 4, 1, 1)), "b3": rng.normal(0, 0.1, 2),
    }
    nodes = [
        helper.make_node("Conv", ["data", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("PRelu", ["c1", "a1"], ["p1"]),
        helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("PRelu", ["c2", "a2"], ["p2"]),
        helper.make_node("Conv", ["p2", "w3", "b3"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes, "net", [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 12, 12])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 2, 12, 12])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def test_prelu_in_uint8_keeps_what_the_network_computes(tmp_path: Path) -> None:
    """PRelus with every slope <= 1 become Max(q, QLinearMul(q, a)) in uint8, with their input's range
    widened where a negative slope needs it; a PRelu with a slope above 1 stays float. Outputs stay as
    close to the float network as the plain int8 graph's."""
    import onnx

    from faceflow.models.quantize import _quantise, _reader, prelu_in_uint8

    src, qdq, uint8 = tmp_path / "net.onnx", tmp_path / "qdq.onnx", tmp_path / "u8.onnx"
    _conv_prelu_net(src)
    rng = np.random.default_rng(0)
    _quantise(src, qdq, tmp_path / "ranges.json", _reader("data", rng.normal(0, 1, (64, 3, 12, 12)).astype(np.float32)))
    model = onnx.load(str(qdq))
    prelu_in_uint8(model)
    onnx.checker.check_model(model)
    onnx.save(model, str(uint8))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QLinearMul") == 1 and ops.count("Max") == 1 and ops.count("Min") == 1
    x = rng.normal(0, 1, (1, 3, 12, 12)).astype(np.float32)
    ref, before, after = (_run(p, x) for p in (src, qdq, uint8))
    scale = np.abs(ref).max()
    assert np.abs(after - ref).max() < 0.06 * scale  # a few uint8 steps
    assert np.abs(after - ref).mean() < 1.5 * np.abs(before - ref).mean() + 1e-3 * scale
    # every convolution still runs as ORT's fused int8 kernel (a consumer's bias is requantised to match)
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "optimised.onnx")
    ort.InferenceSession(str(uint8), opts, providers=["CPUExecutionProvider"])
    optimised = [n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node]
    assert optimised.count("QLinearConv") == 3 and "Conv" not in optimised
