"""A small TFLite -> ONNX converter for float graphs, so that a LiteRT model can run in ONNX Runtime
and be quantised to int8 there (LiteRT has no int8 path for a float graph without TensorFlow).

It reads the flatbuffer with LiteRT's own generated schema (no TensorFlow needed) and covers the
operators the deep-tree liveness network uses: CONV_2D, LEAKY_RELU, ADD, SUB, MUL, MAX_POOL_2D,
AVERAGE_POOL_2D, RESHAPE, STRIDED_SLICE, FULLY_CONNECTED, GREATER_EQUAL, LESS, CAST, CONCATENATION and
DEQUANTIZE (of float16 weights, folded into float32 constants). Any other operator or option it does
not handle raises :class:`~faceflow.errors.UnsupportedOp` naming it, rather than converting wrongly.

Layout: 4-D activations are kept NCHW inside the ONNX graph (the input is transposed once); a tensor
that leaves the 4-D world (RESHAPE, FULLY_CONNECTED) is transposed back to NHWC first, so flattening
orders match LiteRT's. The batch stays at the TFLite graph's (1). ``tests/test_models.py`` checks the
converted deep-tree graph against LiteRT on real faces.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from faceflow.errors import UnsupportedOp

OPSET = 17
_ACT_NONE, _ACT_RELU, _ACT_RELU6 = 0, 1, 3


def tflite_to_onnx(src: Path, dest: Path) -> None:
    """Derived-file transform: the float TFLite graph at ``src`` as an ONNX graph at ``dest`` (written only
    when the whole graph converts)."""
    data = Path(src).read_bytes()
    if data[4:8] != b"TFL3":
        raise UnsupportedOp(f"{src}: not a TFLite model (no TFL3 file identifier)")
    try:
        model = convert(data)
    except UnsupportedOp as exc:
        raise UnsupportedOp(f"{src}: {exc}") from None
    dest.write_bytes(model.SerializeToString())


def convert(data: bytes) -> Any:
    """The ONNX ``ModelProto`` of the TFLite flatbuffer ``data`` (first subgraph)."""
    import onnx
    from ai_edge_litert import schema_py_generated as fb
    from onnx import TensorProto, helper, numpy_helper

    model = fb.ModelT.InitFromPackedBuf(bytearray(data), 0)
    if len(model.subgraphs) != 1:
        raise UnsupportedOp(f"TFLite model has {len(model.subgraphs)} subgraphs; only one is supported")
    g = model.subgraphs[0]
    op_names = {v: k for k, v in vars(fb.BuiltinOperator).items() if not k.startswith("_")}
    np_types = {fb.TensorType.FLOAT32: np.float32, fb.TensorType.FLOAT16: np.float16,
                fb.TensorType.INT32: np.int32, fb.TensorType.INT64: np.int64, fb.TensorType.BOOL: np.bool_}
    onnx_types = {np.float32: TensorProto.FLOAT, np.int32: TensorProto.INT32, np.int64: TensorProto.INT64,
                  np.bool_: TensorProto.BOOL}

    def tname(i: int) -> str:
        return f"t{i}"

    def shape(i: int) -> list[int]:
        return [int(d) for d in g.tensors[i].shape] if g.tensors[i].shape is not None else []

    consts: dict[int, npt.NDArray[Any]] = {}
    for i, t in enumerate(g.tensors):
        buf = model.buffers[t.buffer].data if t.buffer < len(model.buffers) else None
        if buf is not None and len(buf):
            if t.type not in np_types:
                raise UnsupportedOp(f"tensor {t.name.decode()!r}: unsupported constant type {t.type} (a quantised "
                                    "graph?)")
            consts[i] = np.frombuffer(bytes(np.asarray(buf, np.uint8)), np_types[t.type]).reshape(shape(i))

    nodes: list[Any] = []
    inits: dict[str, npt.NDArray[Any]] = {}
    nchw: set[int] = set()  # tensors held NCHW in the ONNX graph
    counter = [0]

    def fresh(stem: str) -> str:
        counter[0] += 1
        return f"{stem}_{counter[0]}"

    def const(value: npt.NDArray[Any], stem: str = "c") -> str:
        name = fresh(stem)
        inits[name] = np.asarray(value)
        return name

    def ref(i: int) -> str:
        """The ONNX name of tensor ``i`` (a constant becomes an initializer on first use)."""
        if i in consts and tname(i) not in inits:
            inits[tname(i)] = consts[i].astype(np.float32) if consts[i].dtype == np.float16 else consts[i]
        return tname(i)

    def nhwc(i: int) -> str:
        """Tensor ``i`` in TFLite's own layout (transposed back when it is held NCHW)."""
        if i not in nchw:
            return ref(i)
        out = fresh("nhwc")
        nodes.append(helper.make_node("Transpose", [ref(i)], [out], perm=[0, 2, 3, 1]))
        return out

    def activation(x: str, out: str, fused: int) -> None:
        if fused == _ACT_NONE:
            nodes.append(helper.make_node("Identity", [x], [out]))
        elif fused == _ACT_RELU:
            nodes.append(helper.make_node("Relu", [x], [out]))
        elif fused == _ACT_RELU6:
            low, high = const(np.array(0, np.float32)), const(np.array(6, np.float32))
            nodes.append(helper.make_node("Clip", [x, low, high], [out]))
        else:
            raise UnsupportedOp(f"unsupported fused activation {fused}")

    def same_pads(size: list[int], kernel: list[int], stride: list[int], dilation: list[int]) -> list[int]:
        before, after = [], []
        for n, k, s, d in zip(size, kernel, stride, dilation, strict=True):
            out = -(-n // s)
            total = max((out - 1) * s + (k - 1) * d + 1 - n, 0)
            before.append(total // 2)
            after.append(total - total // 2)
        return before + after

    def pads(padding: int, size: list[int], kernel: list[int], stride: list[int],
             dilation: list[int]) -> list[int]:
        if padding == fb.Padding.SAME:
            return same_pads(size, kernel, stride, dilation)
        if padding == fb.Padding.VALID:
            return [0, 0, 0, 0]
        raise UnsupportedOp(f"unsupported padding {padding}")

    graph_inputs = []
    for i in g.inputs:
        t = g.tensors[i]
        if len(shape(i)) != 4:
            raise UnsupportedOp("only a 4-D NHWC input is supported")
        graph_inputs.append(helper.make_tensor_value_info(t.name.decode(), TensorProto.FLOAT, shape(i)))
        nodes.append(helper.make_node("Transpose", [t.name.decode()], [tname(i)], perm=[0, 3, 1, 2]))
        nchw.add(int(i))
    for op in g.operators:
        code = model.operatorCodes[op.opcodeIndex]
        kind = op_names.get(max(code.builtinCode, code.deprecatedBuiltinCode), "?")
        ins = [int(i) for i in op.inputs]
        outs = [int(i) for i in op.outputs]
        opt = op.builtinOptions
        o = outs[0]
        if kind == "DEQUANTIZE":
            if ins[0] not in consts or consts[ins[0]].dtype != np.float16:
                raise UnsupportedOp("DEQUANTIZE is supported only for float16 constants")
            consts[o] = consts[ins[0]].astype(np.float32)
        elif kind == "CONV_2D":
            x, w = ins[0], ins[1]
            if x not in nchw or w not in consts:
                raise UnsupportedOp("CONV_2D needs a 4-D activation and constant weights")
            weights = consts[w].astype(np.float32).transpose(0, 3, 1, 2)
            kernel = list(weights.shape[2:])
            stride = [opt.strideH, opt.strideW]
            dil = [opt.dilationHFactor or 1, opt.dilationWFactor or 1]
            inputs = [ref(x), const(weights, "w")]
            if len(ins) > 2 and ins[2] >= 0:
                inputs.append(ref(ins[2]))
            raw = fresh("conv")
            nodes.append(helper.make_node("Conv", inputs, [raw], kernel_shape=kernel, strides=stride,
                                          dilations=dil, pads=pads(opt.padding, shape(x)[1:3], kernel, stride, dil)))
            activation(raw, tname(o), opt.fusedActivationFunction)
            nchw.add(o)
        elif kind in ("MAX_POOL_2D", "AVERAGE_POOL_2D"):
            x = ins[0]
            kernel = [opt.filterHeight, opt.filterWidth]
            stride = [opt.strideH, opt.strideW]
            raw = fresh("pool")
            nodes.append(helper.make_node("MaxPool" if kind == "MAX_POOL_2D" else "AveragePool", [ref(x)], [raw],
                                          kernel_shape=kernel, strides=stride,
                                          pads=pads(opt.padding, shape(x)[1:3], kernel, stride, [1, 1])))
            activation(raw, tname(o), opt.fusedActivationFunction)
            nchw.add(o)
        elif kind == "LEAKY_RELU":
            alpha = float(opt.alpha) if opt is not None else 0.0
            nodes.append(helper.make_node("LeakyRelu", [ref(ins[0])], [tname(o)], alpha=alpha))
            if ins[0] in nchw:
                nchw.add(o)
        elif kind in ("ADD", "SUB", "MUL"):
            a, b = ins
            four = [i for i in (a, b) if i in nchw]
            names = []
            for i in (a, b):
                if four and i not in nchw and len(shape(i)) == 4:
                    if i not in consts:
                        raise UnsupportedOp(f"{kind}: mixes layouts")
                    names.append(const(consts[i].astype(np.float32).transpose(0, 3, 1, 2)))
                else:
                    names.append(ref(i))
            raw = fresh(kind.lower())
            nodes.append(helper.make_node(kind.capitalize(), names, [raw]))
            activation(raw, tname(o), getattr(opt, "fusedActivationFunction", _ACT_NONE))
            if four:
                nchw.add(o)
        elif kind == "RESHAPE":
            target = consts[ins[1]] if len(ins) > 1 and ins[1] in consts else np.asarray(opt.newShape)
            nodes.append(helper.make_node("Reshape", [nhwc(ins[0]), const(target.astype(np.int64))], [tname(o)]))
        elif kind == "STRIDED_SLICE":
            if opt.ellipsisMask or opt.newAxisMask or opt.shrinkAxisMask or ins[0] in nchw:
                raise UnsupportedOp("STRIDED_SLICE: only plain begin/end masks on a non-4-D tensor are supported")
            begin, end, step = (consts[i].astype(np.int64).copy() for i in ins[1:4])
            big = np.iinfo(np.int64).max
            for axis in range(len(begin)):
                if opt.beginMask >> axis & 1:
                    begin[axis] = 0
                if opt.endMask >> axis & 1:
                    end[axis] = big
            axes = np.arange(len(begin), dtype=np.int64)
            nodes.append(helper.make_node("Slice", [ref(ins[0]), const(begin), const(end), const(axes), const(step)],
                                          [tname(o)]))
        elif kind == "FULLY_CONNECTED":
            x, w = ins[0], ins[1]
            if w not in consts or getattr(opt, "keepNumDims", False):
                raise UnsupportedOp("FULLY_CONNECTED needs constant weights (and no keep_num_dims)")
            weights = consts[w].astype(np.float32)
            flat = fresh("flat")
            nodes.append(helper.make_node("Reshape", [nhwc(x), const(np.array([-1, weights.shape[1]], np.int64))],
                                          [flat]))
            inputs = [flat, const(weights, "fc")]
            if len(ins) > 2 and ins[2] >= 0:
                inputs.append(ref(ins[2]))
            raw = fresh("fc")
            nodes.append(helper.make_node("Gemm", inputs, [raw], transB=1))
            activation(raw, tname(o), opt.fusedActivationFunction)
        elif kind in ("GREATER_EQUAL", "LESS"):
            nodes.append(helper.make_node("GreaterOrEqual" if kind == "GREATER_EQUAL" else "Less",
                                          [ref(ins[0]), ref(ins[1])], [tname(o)]))
        elif kind == "CAST":
            to = onnx_types[np_types[g.tensors[o].type]]
            nodes.append(helper.make_node("Cast", [ref(ins[0])], [tname(o)], to=to))
        elif kind == "CONCATENATION":
            if any(i in nchw for i in ins):
                raise UnsupportedOp("CONCATENATION of 4-D activations is not supported")
            raw = fresh("concat")
            nodes.append(helper.make_node("Concat", [ref(i) for i in ins], [raw], axis=int(opt.axis)))
            activation(raw, tname(o), opt.fusedActivationFunction)
        else:
            raise UnsupportedOp(f"TFLite operator {kind} is not supported by faceflow's converter")

    outputs = []
    for i in g.outputs:
        t = g.tensors[i]
        nodes.append(helper.make_node("Identity", [nhwc(int(i))], [t.name.decode()]))
        outputs.append(helper.make_tensor_value_info(t.name.decode(), onnx_types[np_types[t.type]], shape(int(i))))
    graph = helper.make_graph(nodes, "tflite", graph_inputs, outputs,
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    out = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="faceflow")
    out.ir_version = 8
    onnx.checker.check_model(out)
    return out
