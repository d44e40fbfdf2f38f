"""Emitting an ONNX graph from weights read without torch: fresh tensor names, float32 initialisers,
and a convolution with its batch norm folded in. Used by the checkpoint converters
(:mod:`faceflow.models.pfld`, :mod:`faceflow.models.qualityface`, :mod:`faceflow.models.faceapi`)."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]
OPSET = 17
"""The ONNX opset of every graph built here."""


def fold_batch_norm(w: F64, b: F64, gamma: F64, beta: F64, mean: F64, var: F64, eps: float) -> tuple[F64, F64]:
    """A convolution's weights and bias with the inference-time batch norm after it folded in
    (computed in float64; the caller rounds to float32 once, when it stores them)."""
    scale = gamma / np.sqrt(var + eps)
    return w * scale[:, None, None, None], (b - mean) * scale + beta


class GraphBuilder:
    """Nodes and initialisers being emitted, with fresh tensor names."""

    def __init__(self) -> None:
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self.count = 0

    def name(self, hint: str) -> str:
        self.count += 1
        return f"{hint}_{self.count}"

    def const(self, hint: str, value: npt.NDArray[Any]) -> str:
        """A float32 initialiser holding ``value``."""
        from onnx import numpy_helper

        name = self.name(hint)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(value, np.float32), name))
        return name

    def scalar(self, hint: str, value: float) -> str:
        """A float32 initialiser of empty shape (what ``Clip`` wants for its bounds)."""
        from onnx import numpy_helper

        name = self.name(hint)
        self.inits.append(numpy_helper.from_array(np.array(value, np.float32), name))
        return name

    def op(self, op_type: str, inputs: list[str], hint: str, output: str | None = None, **attrs: Any) -> str:
        """Add one node; its output is ``output`` (a graph output's name; the node is then called
        ``hint``) or a fresh name (the node's name too)."""
        from onnx import helper

        out = output or self.name(hint)
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=hint if output else out, **attrs))
        return out

    def conv(self, x: str, w: F64, b: F64, hint: str, *, stride: int = 1, pad: tuple[int, int] | None = None,
             group: int = 1) -> str:
        """A 2-D convolution with weights ``w`` (out, in / group, kh, kw) and bias ``b``; ``pad`` defaults
        to half the kernel (``(k - 1) // 2`` on each side)."""
        kh, kw = (int(k) for k in w.shape[2:])
        ph, pw = pad if pad is not None else ((kh - 1) // 2, (kw - 1) // 2)
        return self.op(
            "Conv", [x, self.const(hint + "_w", w), self.const(hint + "_b", b)], hint,
            kernel_shape=[kh, kw], strides=[stride, stride], pads=[ph, pw, ph, pw], group=group,
        )

    def model(self, name: str, inp: tuple[str, list[Any]], out: tuple[str, list[Any]]) -> Any:
        """The emitted nodes as a model: one float input and one float output, each ``(name, shape)``
        (a dimension may be a name, such as ``"batch"``); opset :data:`OPSET`, IR version 8."""
        from onnx import TensorProto, helper

        graph = helper.make_graph(self.nodes, name, [helper.make_tensor_value_info(inp[0], TensorProto.FLOAT, inp[1])],
                                  [helper.make_tensor_value_info(out[0], TensorProto.FLOAT, out[1])], self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="faceflow")
        model.ir_version = 8
        return model
