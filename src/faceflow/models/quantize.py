"""Static int8 quantisation for ONNX Runtime's CPU provider: SFace (``sface_int8``, the fast embedder)
and the deep-tree liveness network (``deeptree_int8``, converted from TFLite first, see the end).

SFace's fp32 graph spends most of its time in convolutions; ONNX Runtime runs int8 convolutions
(QDQ, per-channel weights, uint8 activations) about 2.5x faster on CPUs with VNNI. What blocks the
gain is ``PRelu``: left in float between a DequantizeLinear and a QuantizeLinear, ORT's broadcasting
PRelu kernel costs more than the int8 convolutions save. :func:`prepare_sface` therefore folds the
batch norms into the convolutions (ORT's basic optimiser, as ``quant_pre_process`` does) and writes
each ``PRelu(x, a)`` as ``x + (a - 1) * min(x, 0)``, three cheap element-wise kernels, exact for any
slope (SFace's range from -0.81 to 1.12, so ``max(x, a*x)`` would not do).

The activation ranges come from a packaged calibration file (``sface_int8_ranges.json``, MinMax over
aligned UTKFace train-split faces, never LFW; rebuilt by ``training/calibrate_sface_int8.py``), so
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
    """Derived-file transform: fp32 SFace -> QDQ int8 (per-channel weights) with the packaged ranges."""
    with tempfile.TemporaryDirectory(prefix="faceflow-q-") as tmp:
        cache = Path(tmp) / "ranges.json"  # a copy: ORT rewrites a cache that does not match
        shutil.copyfile(ranges, cache)
        _quantise(src, dest, cache, None)


def _quantise(src: Path, dest: Path, cache: Path, reader: Any, *,
              prepare: Callable[[Path, Path], None] | None = None,
              op_types: tuple[str, ...] = QUANTISED_OPS) -> None:
    """Prepare ``src`` (default :func:`prepare_sface`) and quantise it to ``dest``: ranges from ``reader``
    (written to ``cache``), or read from ``cache`` when ``reader`` is None."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    with tempfile.TemporaryDirectory(prefix="faceflow-q-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        (prepare or prepare_sface)(src, prepared)
        quantize_static(
            str(prepared), str(dest), reader, quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            op_types_to_quantize=list(op_types), calibrate_method=CalibrationMethod.MinMax,
            calibration_cache_path=str(cache),
        )


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
    """The converted deep-tree graph after ONNX Runtime's basic optimiser (identities removed)."""
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
