"""PFLD-106 (FaceX-Zoo's MobileNetV3 PFLD, as shipped pickled in ``xface``) rebuilt as an ONNX graph
without torch.

The checkpoint is a whole pickled ``PFLDInference`` module (legacy torch format); it is read by
:func:`faceflow.models.torch_reader.load_legacy_module`, which refuses any global but torch's module
classes and the architecture's own. The forward pass is the one of ``mobilev3_pfld.py`` (derived from
Hsintao/pfld_106_face_landmarks)::

    conv_bn1 (3x3 conv, BN, h-swish), conv_bn2, conv3_1, block3_2 .. block3_5   (MobileBottlenecks)
    conv4_1, conv5_1, block5_2 .. block5_4, conv6_1                               -> [16, 14, 14]
    x1 = avg_pool1 (14), x = conv7 (3x3 /2) -> [32, 7, 7], x2 = avg_pool2 (7), x3 = conv8 (7x7) -> 128
    fc(concat(x1, x2, x3)) -> 212 values: 106 (x, y) pairs in [0, 1] of the crop

A MobileBottleneck is 1x1 conv, BN, activation; depthwise conv, BN, squeeze-excitation (or identity),
activation; 1x1 conv, BN; plus its input when ``use_res_connect``. Every kernel size, stride,
padding, group count, epsilon and pooling size is read from the pickled modules, not assumed; each
batch norm is folded into the convolution before it (in float64, then rounded to float32). h-swish is
ONNX ``HardSwish``, h-sigmoid ``HardSigmoid(1/6, 1/2)``, which are the same functions.

Input ``input`` ``[N, 3, 112, 112]``: BGR / 255 of a square crop (FaceX-Zoo: 1.2x the detector
box's longer side around its centre); output ``landmarks`` ``[N, 212]``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from faceflow.errors import CheckpointError
from faceflow.models.onnx_build import GraphBuilder, fold_batch_norm
from faceflow.models.torch_reader import Module, Tensor, load_legacy_module

PFLD_INPUT = 112
PFLD_POINTS = 106
ARCH_MODULE = "models.network_def.mobilev3_pfld"
ALLOWED = ("torch.nn.modules.", ARCH_MODULE)
BACKBONE = ("conv_bn1", "conv_bn2", "conv3_1", "block3_2", "block3_3", "block3_4", "block3_5",
            "conv4_1", "conv5_1", "block5_2", "block5_3", "block5_4", "conv6_1")


def _kind(m: Module) -> str:
    return m.type_name.rsplit(".", 1)[-1]


def _array(t: Tensor | None) -> npt.NDArray[np.float64]:
    if t is None:
        raise CheckpointError("a layer the graph needs has no weights")
    return t.numpy().astype(np.float64)


def _conv(g: GraphBuilder, x: str, conv: Module, bn: Module | None, hint: str) -> str:
    """A Conv2d, with the BatchNorm2d after it (if any) folded into its weights and bias."""
    w = _array(conv._parameters["weight"])
    b = _array(conv._parameters["bias"]) if conv._parameters.get("bias") is not None else np.zeros(w.shape[0])
    if bn is not None:
        w, b = fold_batch_norm(w, b, _array(bn._parameters["weight"]), _array(bn._parameters["bias"]),
                               _array(bn._buffers["running_mean"]), _array(bn._buffers["running_var"]),
                               float(bn.eps))  # type: ignore[attr-defined]
    pad = tuple(int(p) for p in conv.padding)  # type: ignore[attr-defined]
    stride = tuple(int(s) for s in conv.stride)  # type: ignore[attr-defined]
    if getattr(conv, "padding_mode", "zeros") != "zeros" or tuple(conv.dilation) != (1, 1):  # type: ignore[attr-defined]
        raise CheckpointError(f"{hint}: unsupported convolution (padding mode or dilation)")
    if stride[0] != stride[1] or tuple(int(k) for k in conv.kernel_size) != w.shape[2:]:  # type: ignore[attr-defined]
        raise CheckpointError(f"{hint}: unsupported convolution (uneven stride or kernel size)")
    return g.conv(x, w, b, hint, stride=stride[0], pad=(pad[0], pad[1]), group=int(conv.groups))  # type: ignore[attr-defined]


def _hsigmoid(g: GraphBuilder, x: str, hint: str) -> str:
    return g.op("HardSigmoid", [x], hint, alpha=1.0 / 6.0, beta=0.5)


def _se(g: GraphBuilder, x: str, se: Module, hint: str) -> str:
    """Squeeze-excitation: global mean, two bias-free linears (as 1x1 convs) with ReLU and h-sigmoid,
    the input scaled channel-wise by the result."""
    layers = [c for _, c in se._modules["fc"].children()]
    if [_kind(c) for c in layers] != ["Linear", "ReLU", "Linear", "Hsigmoid"]:
        raise CheckpointError(f"{hint}: unexpected squeeze-excitation layers {[_kind(c) for c in layers]}")
    y = g.op("GlobalAveragePool", [x], hint + "_pool")
    for i, lin in ((0, layers[0]), (2, layers[2])):
        w = _array(lin._parameters["weight"])
        y = g.op("Conv", [y, g.const(f"{hint}_fc{i}", w[:, :, None, None])], f"{hint}_fc{i}", kernel_shape=[1, 1])
        y = g.op("Relu", [y], hint + "_relu") if i == 0 else _hsigmoid(g, y, hint + "_gate")
    return g.op("Mul", [x, y], hint + "_scaled")


def _sequential(g: GraphBuilder, x: str, seq: Module, hint: str) -> str:
    """The children of a Sequential in order; a BatchNorm2d right after a Conv2d is folded into it."""
    layers = [c for _, c in seq.children()]
    i = 0
    while i < len(layers):
        layer, kind, h = layers[i], _kind(layers[i]), f"{hint}_{i}"
        if kind == "Conv2d":
            bn = layers[i + 1] if i + 1 < len(layers) and _kind(layers[i + 1]) == "BatchNorm2d" else None
            x = _conv(g, x, layer, bn, h)
            i += 2 if bn is not None else 1
            continue
        if kind == "ReLU":
            x = g.op("Relu", [x], h)
        elif kind == "Hswish":
            x = g.op("HardSwish", [x], h)
        elif kind == "Hsigmoid":
            x = _hsigmoid(g, x, h)
        elif kind == "SEModule":
            x = _se(g, x, layer, h)
        elif kind != "Identity":
            raise CheckpointError(f"{h}: layer {layer.type_name} is not part of the known architecture")
        i += 1
    return x


def _block(g: GraphBuilder, x: str, block: Module, hint: str) -> str:
    if _kind(block) == "Sequential":
        return _sequential(g, x, block, hint)
    if _kind(block) != "MobileBottleneck":
        raise CheckpointError(f"{hint}: expected a MobileBottleneck, got {block.type_name}")
    y = _sequential(g, x, block._modules["conv"], hint)
    return g.op("Add", [x, y], hint + "_res") if bool(block.use_res_connect) else y  # type: ignore[attr-defined]


def _pool(g: GraphBuilder, x: str, pool: Module, hint: str) -> str:
    k, s = int(pool.kernel_size), int(pool.stride)  # type: ignore[attr-defined]
    y = g.op("AveragePool", [x], hint, kernel_shape=[k, k], strides=[s, s])
    return g.op("Flatten", [y], hint + "_flat")


def pfld_graph(root: Module) -> Any:
    """The ONNX model of a read ``PFLDInference`` module."""

    if root.type_name != f"{ARCH_MODULE}.PFLDInference":
        raise CheckpointError(f"expected {ARCH_MODULE}.PFLDInference, got {root.type_name}")
    mods = root._modules
    g = GraphBuilder()
    x = "input"
    for name in BACKBONE:
        x = _block(g, x, mods[name], name)
    x1 = _pool(g, x, mods["avg_pool1"], "avg_pool1")
    x = _conv(g, x, mods["conv7"], None, "conv7")
    x2 = _pool(g, x, mods["avg_pool2"], "avg_pool2")
    x3 = g.op("Flatten", [_conv(g, x, mods["conv8"], None, "conv8")], "conv8_flat")
    feats = g.op("Concat", [x1, x2, x3], "multi_scale", axis=1)
    fc = mods["fc"]
    w, b = _array(fc._parameters["weight"]), _array(fc._parameters["bias"])
    if w.shape != (2 * PFLD_POINTS, 176):
        raise CheckpointError(f"fc weight has shape {w.shape}, expected (212, 176)")
    g.op("Gemm", [feats, g.const("fc_w", w), g.const("fc_b", b)], "fc", output="landmarks", transB=1)
    return g.model("pfld106", ("input", ["batch", 3, PFLD_INPUT, PFLD_INPUT]),
                   ("landmarks", ["batch", 2 * PFLD_POINTS]))


def pfld_to_onnx(src: Path, dest: Path) -> None:
    """Derived-file transform: the pickled PFLD-106 checkpoint ``src`` as an ONNX graph at ``dest``."""
    import onnx

    model = pfld_graph(load_legacy_module(src, ALLOWED))
    onnx.checker.check_model(model)
    dest.write_bytes(model.SerializeToString())
