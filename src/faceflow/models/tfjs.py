"""A small converter from TF.js graph models (``model.json`` plus weight shards) to ONNX, and a numpy
reference that runs the same graph op by op, so that each converted operator can be checked.

It covers the operators of the small classifiers faceflow converts (Human's ``antispoof`` and
``liveness``): ``Placeholder``, ``Const``, ``Identity``, ``_FusedConv2D`` (with ``BiasAdd`` and an
optional ``Relu``), ``MaxPool``, ``Relu``, ``Reshape``, ``_FusedMatMul`` (``BiasAdd``, optional
``Relu``), ``Mul``, ``Add``/``AddV2``, ``Sigmoid`` and ``Softmax``. Anything else raises
:class:`UnsupportedOp` naming it: a graph is converted completely or not at all.

Layout: TF.js graphs are NHWC. The ONNX graph keeps the NHWC input (so callers feed the same array to
both), transposes once to NCHW for the convolutions and pooling, scales per-channel constants to
``[C, 1, 1]``, and transposes back to NHWC before a ``Reshape`` so that flattening keeps TF's order.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from faceflow.errors import UnsupportedOp

Array = npt.NDArray[Any]

SUPPORTED = frozenset({"Placeholder", "Const", "Identity", "_FusedConv2D", "MaxPool", "Relu", "Reshape",
                       "_FusedMatMul", "Mul", "Add", "AddV2", "Sigmoid", "Softmax"})

_DTYPES = {"float32": np.float32, "int32": np.int32, "float16": np.float16, "uint8": np.uint8,
           "uint16": np.uint16, "bool": np.bool_}


@dataclass
class Node:
    """One node of the graph: its op, name, inputs (names without ``:0``) and decoded attributes."""

    op: str
    name: str
    inputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass
class TfjsGraph:
    """A parsed TF.js graph model: nodes in file order, weights by name, and the input/output names."""

    nodes: list[Node]
    weights: dict[str, Array]
    inputs: list[str]
    outputs: list[str]
    input_shape: tuple[int, ...]


def _attr(value: dict[str, Any]) -> Any:
    """A TF AttrValue from the JSON: strings come base64-encoded, ints as strings."""
    if "s" in value:
        return base64.b64decode(value["s"]).decode()
    if "i" in value:
        return int(value["i"])
    if "f" in value:
        return float(value["f"])
    if "b" in value:
        return bool(value["b"])
    if "list" in value:
        lst = value["list"]
        if "s" in lst:
            return [base64.b64decode(s).decode() for s in lst["s"]]
        if "i" in lst:
            return [int(i) for i in lst["i"]]
        return []
    return value


def decode_weights(manifest: Sequence[dict[str, Any]], shards: Sequence[bytes]) -> dict[str, Array]:
    """Decode the weights of every group: shards are concatenated per group, entries read in order,
    float16- and affine-uint8/16-quantised entries dequantised to their original dtype."""
    out: dict[str, Array] = {}
    shard_iter = iter(shards)
    for group in manifest:
        buffer = b"".join(next(shard_iter) for _ in group["paths"])
        offset = 0
        for w in group["weights"]:
            shape = tuple(int(d) for d in w["shape"])
            count = int(np.prod(shape)) if shape else 1
            quant = w.get("quantization")
            stored = np.dtype(_DTYPES[quant["dtype"] if quant else w["dtype"]])
            nbytes = count * stored.itemsize
            if offset + nbytes > len(buffer):
                raise UnsupportedOp(f"weight {w['name']} runs past the end of its shards")
            raw = np.frombuffer(buffer, stored, count, offset).reshape(shape)
            offset += nbytes
            if quant and quant["dtype"] in ("uint8", "uint16"):
                value = raw.astype(np.float32) * np.float32(quant["scale"]) + np.float32(quant["min"])
            else:
                value = raw
            out[w["name"]] = np.asarray(value, _DTYPES[w["dtype"]])
    return out


def load_tfjs(model_json: Path | str, shards: Sequence[Path | str]) -> TfjsGraph:
    """Parse ``model.json`` and its weight shards (in the manifest's order); :class:`UnsupportedOp` for
    anything else than a TF.js graph model this converter handles."""
    try:
        return _load_tfjs(model_json, shards)
    except (ValueError, KeyError, TypeError, AttributeError, StopIteration) as exc:  # malformed JSON or manifest
        raise UnsupportedOp(f"{model_json}: not a readable TF.js graph model ({type(exc).__name__}: {exc})") from None


def _load_tfjs(model_json: Path | str, shards: Sequence[Path | str]) -> TfjsGraph:
    spec = json.loads(Path(model_json).read_text())
    if spec.get("format") != "graph-model":
        raise UnsupportedOp(f"{model_json}: only TF.js graph models are converted, not {spec.get('format')!r}")
    weights = decode_weights(spec["weightsManifest"], [Path(s).read_bytes() for s in shards])
    nodes = []
    for raw in spec["modelTopology"]["node"]:
        if raw["op"] not in SUPPORTED:
            raise UnsupportedOp(f"TF.js op {raw['op']!r} (node {raw['name']}) is not supported")
        attrs = {k: _attr(v) for k, v in raw.get("attr", {}).items() if k not in ("value", "dtype", "T", "shape")}
        if raw["op"] == "Placeholder":
            dims = raw["attr"]["shape"]["shape"]["dim"]
            attrs["shape"] = tuple(int(d["size"]) for d in dims)
        nodes.append(Node(raw["op"], raw["name"], [i.split(":")[0] for i in raw.get("input", [])], attrs))
    signature = spec.get("signature", {})
    inputs = [n.name for n in nodes if n.op == "Placeholder"]
    outputs = [v["name"].split(":")[0] for v in signature.get("outputs", {}).values()] or [nodes[-1].name]
    placeholder = next(n for n in nodes if n.op == "Placeholder")
    return TfjsGraph(nodes, weights, inputs, outputs, placeholder.attrs["shape"])


def _check(node: Node) -> None:
    """Refuse attribute values the converter does not implement."""
    if node.op in ("_FusedConv2D", "MaxPool"):
        if node.attrs.get("data_format", "NHWC") != "NHWC":
            raise UnsupportedOp(f"{node.name}: data_format {node.attrs['data_format']}")
        if node.attrs.get("padding") not in ("SAME", "VALID"):
            raise UnsupportedOp(f"{node.name}: padding {node.attrs.get('padding')}")
    if node.op == "_FusedConv2D" and any(d != 1 for d in node.attrs.get("dilations", [1, 1, 1, 1])):
        raise UnsupportedOp(f"{node.name}: dilated convolution")
    if node.op in ("_FusedConv2D", "_FusedMatMul"):
        fused = node.attrs.get("fused_ops", [])
        if not fused or fused[0] != "BiasAdd" or fused[1:] not in ([], ["Relu"]):
            raise UnsupportedOp(f"{node.name}: fused ops {fused}")
    if node.op == "_FusedMatMul" and (node.attrs.get("transpose_a") or node.attrs.get("transpose_b")):
        raise UnsupportedOp(f"{node.name}: transposed MatMul")


# -- numpy reference ---------------------------------------------------------------------------------
def same_pads(size: int, k: int, s: int) -> tuple[int, int]:
    """TF's SAME padding (before, after) of one axis of ``size`` for kernel ``k`` and stride ``s``:
    the odd pixel, if any, goes after."""
    out = -(-size // s)
    total = max((out - 1) * s + k - size, 0)
    return total // 2, total - total // 2


def ref_conv2d(x: Array, w: Array, stride: tuple[int, int], padding: str) -> Array:
    """TF Conv2D, NHWC input, HWIO filter, in float64 (the reference the ONNX graph is checked against)."""
    kh, kw = w.shape[:2]
    sh, sw = stride
    if padding == "SAME":
        (pt, pb), (pl, pr) = same_pads(x.shape[1], kh, sh), same_pads(x.shape[2], kw, sw)
        x = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    oh = (x.shape[1] - kh) // sh + 1
    ow = (x.shape[2] - kw) // sw + 1
    out = np.zeros((x.shape[0], oh, ow, w.shape[3]), np.float64)
    for i in range(kh):
        for j in range(kw):
            patch = x[:, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw, :]
            out += patch.astype(np.float64) @ w[i, j].astype(np.float64)
    return out


def ref_maxpool(x: Array, k: tuple[int, int], stride: tuple[int, int], padding: str) -> Array:
    """TF MaxPool, NHWC (SAME pads with -inf)."""
    kh, kw = k
    sh, sw = stride
    if padding == "SAME":
        (pt, pb), (pl, pr) = same_pads(x.shape[1], kh, sh), same_pads(x.shape[2], kw, sw)
        x = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)), constant_values=-np.inf)
    oh = (x.shape[1] - kh) // sh + 1
    ow = (x.shape[2] - kw) // sw + 1
    out = np.full((x.shape[0], oh, ow, x.shape[3]), -np.inf)
    for i in range(kh):
        for j in range(kw):
            out = np.maximum(out, x[:, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw, :])
    return out


def run_reference(graph: TfjsGraph, x: Array, *, upto: str | None = None) -> dict[str, Array]:
    """Execute ``graph`` on ``x`` (NHWC) in numpy float64; returns every node's value by name
    (stopping after ``upto`` when given)."""
    values: dict[str, Array] = {}
    for node in graph.nodes:
        _check(node)
        a = [values[i] for i in node.inputs]
        if node.op == "Placeholder":
            v: Array = np.asarray(x, np.float64)
        elif node.op == "Const":
            v = graph.weights[node.name]
        elif node.op == "Identity":
            v = a[0]
        elif node.op == "_FusedConv2D":
            st = node.attrs["strides"]
            v = ref_conv2d(a[0], a[1], (st[1], st[2]), node.attrs["padding"]) + a[2]
            if node.attrs["fused_ops"][1:] == ["Relu"]:
                v = np.maximum(v, 0)
        elif node.op == "MaxPool":
            k, st = node.attrs["ksize"], node.attrs["strides"]
            v = ref_maxpool(a[0], (k[1], k[2]), (st[1], st[2]), node.attrs["padding"])
        elif node.op == "Relu":
            v = np.maximum(a[0], 0)
        elif node.op == "Reshape":
            v = a[0].reshape(tuple(int(d) for d in a[1]))
        elif node.op == "_FusedMatMul":
            v = a[0] @ a[1].astype(np.float64) + a[2]
            if node.attrs["fused_ops"][1:] == ["Relu"]:
                v = np.maximum(v, 0)
        elif node.op == "Mul":
            v = a[0] * a[1]
        elif node.op in ("Add", "AddV2"):
            v = a[0] + a[1]
        elif node.op == "Sigmoid":
            v = 1 / (1 + np.exp(-a[0]))
        elif node.op == "Softmax":
            e = np.exp(a[0] - a[0].max(axis=-1, keepdims=True))
            v = e / e.sum(axis=-1, keepdims=True)
        else:  # pragma: no cover - load_tfjs refuses other ops
            raise UnsupportedOp(node.op)
        values[node.name] = np.asarray(v)
        if node.name == upto:
            break
    return values


# -- ONNX ------------------------------------------------------------------------------------------
def to_onnx(graph: TfjsGraph, *, outputs: Sequence[str] | None = None, opset: int = 17) -> Any:
    """An ``onnx.ModelProto`` computing ``graph`` (NHWC input ``input``, float32, symbolic batch);
    ``outputs`` names the TF nodes to expose (default: the graph's outputs), e.g. to test one op."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    wanted = list(outputs or graph.outputs)
    nodes: list[Any] = []
    inits: list[Any] = []
    nchw: set[str] = set()  # tensors held in NCHW layout
    names: dict[str, str] = {}  # TF name -> ONNX tensor name (NHWC or plain)
    counter = [0]

    def fresh(base: str) -> str:
        counter[0] += 1
        return f"{base}__{counter[0]}"

    def const(value: Array, base: str) -> str:
        name = fresh(base)
        inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def as_nchw(tf_name: str) -> str:
        t = names[tf_name]
        if t in nchw:
            return t
        out = fresh(tf_name + "_nchw")
        nodes.append(helper.make_node("Transpose", [t], [out], perm=[0, 3, 1, 2]))
        nchw.add(out)
        return out

    def as_plain(tf_name: str) -> str:
        t = names[tf_name]
        if t not in nchw:
            return t
        out = fresh(tf_name + "_nhwc")
        nodes.append(helper.make_node("Transpose", [t], [out], perm=[0, 2, 3, 1]))
        return out

    consts = {n.name for n in graph.nodes if n.op == "Const"}
    for node in graph.nodes:
        _check(node)
        out = fresh(node.name)
        if node.op == "Placeholder":
            names[node.name] = "input"
            continue
        if node.op == "Const":
            names[node.name] = node.name
            continue
        if node.op == "Identity":
            names[node.name] = names[node.inputs[0]]
            continue
        if node.op == "_FusedConv2D":
            x = as_nchw(node.inputs[0])
            w = const(graph.weights[node.inputs[1]].astype(np.float32).transpose(3, 2, 0, 1), "w")
            b = const(graph.weights[node.inputs[2]].astype(np.float32), "b")
            st = node.attrs["strides"]
            pad = "SAME_UPPER" if node.attrs["padding"] == "SAME" else "VALID"
            relu = node.attrs["fused_ops"][1:] == ["Relu"]
            conv = fresh(node.name + "_conv") if relu else out
            nodes.append(helper.make_node("Conv", [x, w, b], [conv], strides=[st[1], st[2]], auto_pad=pad))
            if relu:
                nodes.append(helper.make_node("Relu", [conv], [out]))
            nchw.add(out)
        elif node.op == "MaxPool":
            x = as_nchw(node.inputs[0])
            k, st = node.attrs["ksize"], node.attrs["strides"]
            pad = "SAME_UPPER" if node.attrs["padding"] == "SAME" else "VALID"
            nodes.append(helper.make_node("MaxPool", [x], [out], kernel_shape=[k[1], k[2]],
                                          strides=[st[1], st[2]], auto_pad=pad))
            nchw.add(out)
        elif node.op in ("Relu", "Sigmoid"):
            x = names[node.inputs[0]]
            nodes.append(helper.make_node(node.op, [x], [out]))
            if x in nchw:
                nchw.add(out)
        elif node.op == "Softmax":
            nodes.append(helper.make_node("Softmax", [as_plain(node.inputs[0])], [out], axis=-1))
        elif node.op == "Reshape":
            shape = graph.weights[node.inputs[1]].astype(np.int64)
            nodes.append(helper.make_node("Reshape", [as_plain(node.inputs[0]), const(shape, "shape")], [out]))
        elif node.op == "_FusedMatMul":
            w = const(graph.weights[node.inputs[1]].astype(np.float32), "w")
            b = const(graph.weights[node.inputs[2]].astype(np.float32), "b")
            mm = fresh(node.name + "_mm")
            relu = node.attrs["fused_ops"][1:] == ["Relu"]
            add = fresh(node.name + "_add") if relu else out
            nodes.append(helper.make_node("MatMul", [as_plain(node.inputs[0]), w], [mm]))
            nodes.append(helper.make_node("Add", [mm, b], [add]))
            if relu:
                nodes.append(helper.make_node("Relu", [add], [out]))
        elif node.op in ("Mul", "Add", "AddV2"):
            operands = []
            spatial = any(names[i] in nchw for i in node.inputs if i not in consts)
            for i in node.inputs:
                if i in consts:
                    c = graph.weights[i].astype(np.float32)
                    if spatial and c.ndim == 1:
                        c = c.reshape(-1, 1, 1)
                    elif spatial and c.ndim == 4:
                        c = c.transpose(0, 3, 1, 2)
                    operands.append(const(c, "k"))
                else:
                    operands.append(names[i] if spatial else as_plain(i))
            nodes.append(helper.make_node("Mul" if node.op == "Mul" else "Add", operands, [out]))
            if spatial:
                nchw.add(out)
        names[node.name] = out

    graph_outputs = []
    probe = run_reference(graph, np.zeros((1, *graph.input_shape[1:])))  # output shapes, batch of one
    for k, name in enumerate(wanted):
        final = f"output_{k}" if len(wanted) > 1 else "output"
        nodes.append(helper.make_node("Identity", [as_plain(name)], [final]))
        dims: list[int | str] = ["batch", *(int(d) for d in probe[name].shape[1:])]
        graph_outputs.append(helper.make_tensor_value_info(final, TensorProto.FLOAT, dims))
    in_dims: list[int | str] = ["batch", *graph.input_shape[1:]]
    model = helper.make_model(
        helper.make_graph(nodes, "tfjs", [helper.make_tensor_value_info("input", TensorProto.FLOAT, in_dims)],
                          graph_outputs, inits),
        opset_imports=[helper.make_opsetid("", opset)], producer_name="faceflow.models.tfjs",
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def tfjs_to_onnx(model_json: Path, dest: Path, *shards: Path) -> None:
    """Derived-file transform: convert a TF.js graph model (its JSON and weight shards) to ONNX."""
    model = to_onnx(load_tfjs(model_json, shards))
    dest.write_bytes(model.SerializeToString())
