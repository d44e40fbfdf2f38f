"""Static int8 quantisation for ONNX Runtime's CPU provider: SFace (``sface_int8``, the fast embedder),
the deep-tree liveness network (``deeptree_int8``, converted from TFLite first) and dlib's ResNet
(``dlib_int8``, the accurate configuration's second part; see the end).

SFace's fp32 graph spends most of its time in convolutions; ONNX Runtime runs int8 convolutions
(QDQ, per-channel weights, uint8 activations) about 2.5x faster on CPUs with VNNI. What blocks the
gain is ``PRelu``: left in float between a DequantizeLinear and a QuantizeLinear, ORT's broadcasting
PRelu kernel costs more than the int8 convolutions save. :func:`prepare_sface` therefore folds the
batch norms into the convolutions (ORT's basic optimiser, as ``quant_pre_process`` does) and writes
each ``PRelu(x, a)`` as ``x + (a - 1) * min(x, 0)``, three cheap element-wise kernels, exact for any
slope (SFace's range from -0.81 to 1.12, so ``max(x, a*x)`` would not do).

The activation ranges come from a packaged calibration file (``sface_int8_ranges.json``, MinMax over
aligned UTKFace train-split faces, never LFW; rebuilt by ``training/calibrate_int8.py sface``), so
deriving the file needs no data set and gives the same bytes every time.

The deep tree (:func:`onnx_deeptree_int8`) gets int8 convolutions, LeakyRelu, Add and pooling, so its
activations stay uint8 between convolutions; its routing tail (the tree nodes' fully connected layers,
comparisons and leaf masks) stays float, where int8 rounding would send a face down another branch.
Its ranges (``deeptree_int8_ranges.json``) are MinMax over 100 LFW faces, no liveness data
(``training/calibrate_deeptree_int8.py``).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from faceflow.models.speedups import rewrite_prelu

QUANTISED_OPS = ("Conv", "Gemm")
"""Operators given int8 kernels; everything else (the PRelu rewrite, the input scaling) stays float."""


def prepare_sface(src: Path, dest: Path) -> None:
    """The fp32 SFace graph made ready for quantisation: batch norms folded, PRelu rewritten."""
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    with tempfile.TemporaryDirectory(prefix="faceflow-q-") as tmp:
        optimised = Path(tmp) / "basic.onnx"
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        opts.optimized_model_filepath = str(optimised)
        opts.log_severity_level = 3
        ort.InferenceSession(str(src), opts, providers=["CPUExecutionProvider"])
        model = onnx.load(str(optimised))
    g = model.graph
    g.initializer.append(numpy_helper.from_array(np.zeros((), np.float32), "prelu_zero"))

    def min_form(x: str, out: str, slope: npt.NDArray[np.float32]) -> tuple[list[Any], list[Any]]:
        """``prelu(x) = x + (a - 1) * min(x, 0)``."""
        initializers = [numpy_helper.from_array((slope - 1).astype(np.float32), f"{out}_slope_minus_1")]
        return initializers, [
            helper.make_node("Min", [x, "prelu_zero"], [f"{out}_neg"]),
            helper.make_node("Mul", [f"{out}_neg", f"{out}_slope_minus_1"], [f"{out}_scaled"]),
            helper.make_node("Add", [x, f"{out}_scaled"], [out]),
        ]

    rewrite_prelu(g, min_form)
    used = {name for n in g.node for name in n.input}
    keep = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    onnx.checker.check_model(model)
    dest.write_bytes(model.SerializeToString())


def onnx_sface_int8(src: Path, dest: Path, ranges: Path) -> None:
    """Derived-file transform: fp32 SFace -> QDQ int8 (per-channel weights) with the packaged ranges, its
    PRelus then moved into uint8 (:func:`prelu_in_uint8`)."""
    import onnx

    with tempfile.TemporaryDirectory(prefix="faceflow-q-") as tmp:
        cache = Path(tmp) / "ranges.json"  # a copy: ORT rewrites a cache that does not match
        shutil.copyfile(ranges, cache)
        qdq = Path(tmp) / "qdq.onnx"
        _quantise(src, qdq, cache, None)
        model = onnx.load(str(qdq))
    prelu_in_uint8(model)
    onnx.checker.check_model(model)
    dest.write_bytes(model.SerializeToString())


def _uint8_params(lo: float, hi: float) -> tuple[np.float32, np.uint8]:
    """Scale and zero point of a uint8 tensor covering ``[lo, hi]`` (which includes 0), as ORT sets them."""
    scale = np.float32((hi - lo) / 255.0)
    return scale, np.uint8(np.clip(np.rint(-lo / scale), 0, 255))


def prelu_in_uint8(model: Any) -> None:
    """Run each rewritten ``PRelu`` of a quantised SFace on its uint8 input, in place.

    After :func:`_quantise` every PRelu is ``Q(x + (a - 1) min(DQ(q), 0))``: five float passes over the
    feature map, most of ``sface_int8``'s time once the convolutions are int8. Where every slope is at most
    1 (all of SFace's but its first two PRelus), ``prelu(x) = max(x, a x)``, which is computed here as
    ``Max(q, QLinearMul(q, a))``: two uint8 passes, the output kept in the input's scale and zero point.
    The input's range is widened where a negative slope maps its most negative value above its top, so
    nothing saturates; the slopes are quantised over ``[min(a, 0), max(a, 0)]`` (uint8); each consumer's
    DequantizeLinear takes the new parameters, and a consuming convolution's int32 bias is requantised to
    the new input scale times its weight scale, as ORT's fused int8 convolution requires.
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    values = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def only(name: str, op: str) -> Any | None:
        found = consumers.get(name, [])
        return found[0] if len(found) == 1 and found[0].op_type == op else None

    def add(name: str, value: npt.ArrayLike) -> str:
        array = np.asarray(value)
        graph.initializer.append(numpy_helper.from_array(array, name))
        values[name] = array
        return name

    replaced: dict[int, list[Any]] = {}
    dropped: set[int] = set()
    for minimum in [n for n in graph.node if n.op_type == "Min"]:
        dq = producer.get(minimum.input[0])
        mul = only(minimum.output[0], "Mul")
        add_node = only(mul.output[0], "Add") if mul is not None else None
        q_out = only(add_node.output[0], "QuantizeLinear") if add_node is not None else None
        q_in = producer.get(dq.input[0]) if dq is not None else None
        if dq is None or mul is None or q_out is None or q_in is None or q_in.op_type != "QuantizeLinear":
            continue
        slope = values[mul.input[1]].reshape(-1).astype(np.float64) + 1
        readers = consumers.get(q_out.output[0], [])
        if slope.max() > 1 or not readers or any(r.op_type != "DequantizeLinear" for r in readers):
            continue  # max(x, a x) needs a <= 1; such PRelus keep the float form
        tag = minimum.output[0]
        scale, zero = float(values[q_in.input[1]]), int(values[q_in.input[2]])
        lo, hi = scale * (0 - zero), scale * (255 - zero)
        top = max(hi, float(np.max(slope * lo)))  # a negative slope sends lo up to a * lo
        new_scale, new_zero = _uint8_params(lo, top) if top > hi else (np.float32(scale), np.uint8(zero))
        s_name, z_name = add(f"{tag}_u8_scale", new_scale), add(f"{tag}_u8_zero", new_zero)
        q_in.input[1], q_in.input[2] = s_name, z_name
        for other in consumers[q_in.output[0]]:
            if other is not dq and other.op_type == "DequantizeLinear":
                other.input[1], other.input[2] = s_name, z_name
        a_lo, a_hi = min(float(slope.min()), 0.0), max(float(slope.max()), 0.0)
        a_scale, a_zero = _uint8_params(a_lo, a_hi)
        a_q = np.clip(np.rint(slope / a_scale) + int(a_zero), 0, 255).astype(np.uint8).reshape(1, -1, 1, 1)
        a_names = [add(f"{tag}_u8_slope", a_q), add(f"{tag}_u8_slope_scale", a_scale),
                   add(f"{tag}_u8_slope_zero", a_zero)]
        q = q_in.output[0]
        replaced[id(q_out)] = [
            helper.make_node("QLinearMul", [q, s_name, z_name, *a_names, s_name, z_name], [f"{tag}_u8_ax"],
                             domain="com.microsoft"),
            helper.make_node("Max", [q, f"{tag}_u8_ax"], [q_out.output[0]]),
        ]
        dropped |= {id(dq), id(minimum), id(mul), id(add_node), id(q_out)}
        for reader in readers:
            reader.input[1], reader.input[2] = s_name, z_name
            for user in consumers.get(reader.output[0], []):
                if user.op_type in ("Conv", "Gemm") and len(user.input) > 2 and user.input[2]:
                    _requantise_bias(user, float(new_scale), producer, values, add)
    nodes = []
    for node in graph.node:
        nodes += replaced.get(id(node), [])
        if id(node) not in dropped:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    if replaced and not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    used = {name for node in graph.node for name in node.input}
    keep = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)


def _requantise_bias(user: Any, input_scale: float, producer: dict[str, Any],
                     values: dict[str, npt.NDArray[Any]], add: Callable[[str, npt.ArrayLike], str]) -> None:
    """Give ``user``'s int32 bias the scale ``input_scale * weight scale`` (per output channel)."""
    weight_dq, bias_dq = producer[user.input[1]], producer[user.input[2]]
    weight_scale = values[weight_dq.input[1]].astype(np.float64)
    bias = values[bias_dq.input[0]].astype(np.float64) * values[bias_dq.input[1]].astype(np.float64)
    scale = (np.float32(input_scale) * weight_scale.astype(np.float32)).astype(np.float32)
    tag = user.output[0]
    bias_dq.input[0] = add(f"{tag}_u8_bias", np.rint(bias / scale).astype(np.int32))
    bias_dq.input[1] = add(f"{tag}_u8_bias_scale", scale)


def _quantise(src: Path, dest: Path, cache: Path, reader: Any, *,
              prepare: Callable[[Path, Path], None] | None = None,
              op_types: tuple[str, ...] = QUANTISED_OPS) -> None:
    """Prepare ``src`` (default :func:`prepare_sface`) and quantise it to ``dest``: ranges from ``reader``
    (written to ``cache``), or read from ``cache`` when ``reader`` is None."""
    import logging

    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    root = logging.getLogger()
    level = root.level
    with tempfile.TemporaryDirectory(prefix="faceflow-q-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        (prepare or prepare_sface)(src, prepared)
        root.setLevel(max(level, logging.ERROR))  # its "consider pre-processing" advice: done above
        try:
            quantize_static(
                str(prepared), str(dest), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                op_types_to_quantize=list(op_types), calibrate_method=CalibrationMethod.MinMax,
                calibration_cache_path=str(cache),
            )
        finally:
            root.setLevel(level)


def calibrate_sface(src: Path, crops: np.ndarray[Any, Any], dest: Path) -> None:
    """Write the MinMax activation ranges of the prepared SFace over ``crops`` (N, 3, 112, 112 float32)
    to ``dest``, in the calibration-cache format that :func:`onnx_sface_int8` reads."""
    dest.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="faceflow-q-") as tmp:
        _quantise(src, Path(tmp) / "int8.onnx", dest, _reader("data", crops))


def _reader(input_name: str, batches: np.ndarray[Any, Any]) -> Any:
    """An ONNX Runtime calibration reader feeding ``batches`` one item at a time."""
    from onnxruntime.quantization import CalibrationDataReader

    class _Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.items = iter([{input_name: batches[i : i + 1]} for i in range(len(batches))])

        def get_next(self) -> dict[str, Any] | None:
            return next(self.items, None)

    return _Reader()


# -- the deep-tree liveness network -------------------------------------------------------------------
DEEPTREE_OPS = ("Conv", "LeakyRelu", "Add", "MaxPool", "AveragePool")
"""The deep-tree graph's operators given int8 kernels: convolutions and the element-wise and pooling
operators between them, so activations stay uint8 from one convolution to the next. The routing tail
(the nodes' fully connected layers, comparisons, casts, leaf masks) stays float: with int8 Gemm too,
the int8 spoof score's correlation with the float one over the 266 antispoof images fell from 0.80 to
0.76."""


def prepare_deeptree(src: Path, dest: Path) -> None:
    """A graph after ONNX Runtime's basic optimiser (identities removed, constants folded): the deep tree's
    and dlib's ResNet's preparation."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.optimized_model_filepath = str(dest)
    opts.log_severity_level = 3
    ort.InferenceSession(str(src), opts, providers=["CPUExecutionProvider"])


def onnx_deeptree_int8(src: Path, dest: Path, ranges: Path) -> None:
    """Derived-file transform: the converted deep-tree ONNX graph -> QDQ int8 with the packaged ranges."""
    with tempfile.TemporaryDirectory(prefix="faceflow-q-") as tmp:
        cache = Path(tmp) / "ranges.json"
        shutil.copyfile(ranges, cache)
        _quantise(src, dest, cache, None, prepare=prepare_deeptree, op_types=DEEPTREE_OPS)


def calibrate_deeptree(src: Path, crops: np.ndarray[Any, Any], dest: Path) -> None:
    """Write the MinMax activation ranges of the converted deep-tree graph over ``crops`` (N, 256, 256, 3
    float32 in [0, 1]) to ``dest``, for :func:`onnx_deeptree_int8`."""
    dest.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="faceflow-q-") as tmp:
        _quantise(src, Path(tmp) / "int8.onnx", dest, _reader("input", crops), prepare=prepare_deeptree,
                  op_types=DEEPTREE_OPS)


# -- dlib's ResNet (face_recognition's embedder) ------------------------------------------------------
DLIB_OPS = ("Conv", "Relu", "Add", "Pad", "MaxPool", "AveragePool", "GlobalAveragePool", "MatMul")
"""dlib ResNet operators given int8 kernels: its 29 convolutions with their ReLUs, the residual
additions, the zero padding, the pooling and the final projection, so activations stay uint8 from the
first convolution to the 128-d output (without ``Pad`` and ``Relu`` the graph keeps 35 float
quantise/dequantise pairs and is about 15 % slower, and a little further from the fp32 vectors)."""


def onnx_dlib_int8(src: Path, dest: Path, ranges: Path) -> None:
    """Derived-file transform: dlib's ResNet as ONNX -> QDQ int8 (per-channel weights), packaged ranges."""
    with tempfile.TemporaryDirectory(prefix="faceflow-q-") as tmp:
        cache = Path(tmp) / "ranges.json"
        shutil.copyfile(ranges, cache)
        _quantise(src, dest, cache, None, prepare=prepare_deeptree, op_types=DLIB_OPS)


def calibrate_dlib(src: Path, crops: np.ndarray[Any, Any], dest: Path) -> None:
    """Write the MinMax activation ranges of dlib's ResNet graph over ``crops`` (N, 3, 150, 150 float32,
    dlib face chips) to ``dest``, for :func:`onnx_dlib_int8`."""
    dest.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="faceflow-q-") as tmp:
        _quantise(src, Path(tmp) / "int8.onnx", dest, _reader("data", crops), prepare=prepare_deeptree,
                  op_types=DLIB_OPS)
