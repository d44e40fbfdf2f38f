"""face-api.js's 68-point landmark network (``FaceLandmark68Net``) rebuilt as an ONNX graph from its
TF.js weights file, and a numpy reference of the same layers to check the graph against.

The weights (``face_landmark_68_model.bin`` and its ``-weights_manifest.json``, as shipped in the
``@vladmandic/face-api`` npm package) are a bare list of named tensors: the architecture lives in
face-api.js's code, and is rebuilt here from how that code uses the names::

    input: a square RGB crop resized to 112x112, (pixel - mean RGB) / 255
    dense0 .. dense3 (each halves the side: 112 -> 56 -> 28 -> 14 -> 7), a block being
        out1 = relu(conv0(x, stride 2))         (dense0: a plain 3x3 conv; the others separable)
        out2 = sep(out1)
        out3 = sep(relu(out1 + out2))
        out4 = sep(relu(out1 + out2 + out3))
        y    = relu(out1 + out2 + out3 + out4)
    average pool 7x7, stride 2 (-> 1x1x256), then fc (256 -> 136)

where ``sep`` is a separable convolution (3x3 depthwise, then 1x1 pointwise plus bias, stride 1) and
every convolution pads like TF's ``SAME`` (the odd pixel after). The 136 outputs are 68 (x, y) pairs
in [0, 1] of the crop (iBUG order; face-api scales them by the crop's side).

The ONNX graph reads ``input`` ``[N, 3, 112, 112]``: RGB in 0..255 (the mean and the scale are in
the graph), and gives ``landmarks`` ``[N, 136]``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from faceflow.errors import CheckpointError
from faceflow.models.onnx_build import GraphBuilder
from faceflow.models.tfjs import decode_weights, ref_conv2d, same_pads

F64 = npt.NDArray[np.float64]

FACEAPI_INPUT = 112
FACEAPI_POINTS = 68
MEAN_RGB = (122.782, 117.001, 104.298)
"""face-api's per-channel mean, subtracted before the division by 255."""
BLOCKS = ("dense0", "dense1", "dense2", "dense3")
CHANNELS = (32, 64, 128, 256)


def expected_shapes() -> dict[str, tuple[int, ...]]:
    """Every tensor the network reads, by its name in the manifest, and its TF shape."""
    shapes: dict[str, tuple[int, ...]] = {}
    c_in = 3
    for block, c in zip(BLOCKS, CHANNELS, strict=True):
        for k in range(4):
            p = f"{block}/conv{k}"
            if block == "dense0" and k == 0:
                shapes[f"{p}/filters"] = (3, 3, c_in, c)
            else:
                src = c_in if k == 0 else c
                shapes[f"{p}/depthwise_filter"] = (3, 3, src, 1)
                shapes[f"{p}/pointwise_filter"] = (1, 1, src, c)
            shapes[f"{p}/bias"] = (c,)
        c_in = c
    shapes["fc/weights"] = (CHANNELS[-1], 2 * FACEAPI_POINTS)
    shapes["fc/bias"] = (2 * FACEAPI_POINTS,)
    return shapes


def load_weights(manifest: Path, *shards: Path) -> dict[str, F64]:
    """The network's tensors (dequantised, float64) from the weights manifest and its shards;
    :class:`CheckpointError` when a tensor is missing, extra or of another shape."""
    try:
        groups = json.loads(Path(manifest).read_text())
        raw = decode_weights(groups, [Path(s).read_bytes() for s in shards])
    except (ValueError, KeyError, TypeError, StopIteration) as exc:
        why = f"{type(exc).__name__}: {exc}"
        raise CheckpointError(f"{manifest}: not a readable TF.js weights manifest ({why})") from None
    want = expected_shapes()
    if set(raw) != set(want):
        missing, extra = sorted(set(want) - set(raw)), sorted(set(raw) - set(want))
        raise CheckpointError(f"{manifest}: not FaceLandmark68Net's weights (missing {missing}, unexpected {extra})")
    for name, shape in want.items():
        if raw[name].shape != shape:
            raise CheckpointError(f"{manifest}: {name} has shape {raw[name].shape}, expected {shape}")
    return {k: np.asarray(v, np.float64) for k, v in raw.items()}


# -- numpy reference (NHWC, float64) -------------------------------------------------------------------
def ref_depthwise(x: F64, w: F64, stride: int) -> F64:
    """TF's depthwise convolution (channel multiplier 1, ``SAME``), NHWC input, ``[kh, kw, C, 1]`` filter."""
    kh, kw = w.shape[:2]
    (pt, pb), (pl, pr) = same_pads(x.shape[1], kh, stride), same_pads(x.shape[2], kw, stride)
    x = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    oh, ow = (x.shape[1] - kh) // stride + 1, (x.shape[2] - kw) // stride + 1
    out = np.zeros((x.shape[0], oh, ow, x.shape[3]))
    for i in range(kh):
        for j in range(kw):
            out += x[:, i:i + stride * (oh - 1) + 1:stride, j:j + stride * (ow - 1) + 1:stride, :] * w[i, j, :, 0]
    return out


def _ref_conv(weights: dict[str, F64], x: F64, prefix: str, stride: int) -> F64:
    if f"{prefix}/filters" in weights:
        y = ref_conv2d(x, weights[f"{prefix}/filters"], (stride, stride), "SAME")
    else:
        y = ref_conv2d(ref_depthwise(x, weights[f"{prefix}/depthwise_filter"], stride),
                       weights[f"{prefix}/pointwise_filter"], (1, 1), "SAME")
    return np.asarray(y + weights[f"{prefix}/bias"], np.float64)


def reference(weights: dict[str, F64], rgb: npt.ArrayLike) -> F64:
    """The network's 136 outputs for ``rgb`` (``[N, 112, 112, 3]``, 0..255), computed layer by layer
    in numpy as face-api.js defines them: what the ONNX graph is tested against."""
    x = (np.asarray(rgb, np.float64) - np.array(MEAN_RGB)) / 255.0
    for block in BLOCKS:
        outs = [np.maximum(_ref_conv(weights, x, f"{block}/conv0", 2), 0)]
        for k in (1, 2, 3):
            inp = outs[0] if k == 1 else np.maximum(sum(outs), 0)
            outs.append(_ref_conv(weights, inp, f"{block}/conv{k}", 1))
        x = np.maximum(sum(outs), 0)
    if x.shape[1:3] != (7, 7):
        raise ValueError(f"expected a 112x112 input, got one giving {x.shape[1:3]} features")
    pooled = x.mean(axis=(1, 2))  # a 7x7 valid window on a 7x7 map: one output
    return np.asarray(pooled @ weights["fc/weights"] + weights["fc/bias"], np.float64)


# -- ONNX ----------------------------------------------------------------------------------------------
def _conv(g: GraphBuilder, x: str, w: F64, b: F64 | None, size: int, stride: int, group: int, hint: str) -> str:
    """A convolution with ONNX weights ``w`` ``[out, in / group, kh, kw]``, padded like TF's ``SAME``
    for a ``size`` x ``size`` input."""
    kh, kw = (int(k) for k in w.shape[2:])
    (pt, pb), (pl, pr) = same_pads(size, kh, stride), same_pads(size, kw, stride)
    inputs = [x, g.const(hint + "_w", w)] + ([g.const(hint + "_b", b)] if b is not None else [])
    return g.op("Conv", inputs, hint, kernel_shape=[kh, kw], strides=[stride, stride], pads=[pt, pl, pb, pr],
                group=group)


def _tf_conv(g: GraphBuilder, weights: dict[str, F64], x: str, prefix: str, size: int, stride: int) -> str:
    """face-api's ``conv0`` of ``dense0`` (a plain conv) or a separable conv, with its bias."""
    bias = weights[f"{prefix}/bias"]
    if f"{prefix}/filters" in weights:
        return _conv(g, x, weights[f"{prefix}/filters"].transpose(3, 2, 0, 1), bias, size, stride, 1, prefix)
    dw = weights[f"{prefix}/depthwise_filter"]
    y = _conv(g, x, dw.transpose(2, 3, 0, 1), None, size, stride, dw.shape[2], prefix + "_dw")
    out = -(-size // stride)
    return _conv(g, y, weights[f"{prefix}/pointwise_filter"].transpose(3, 2, 0, 1), bias, out, 1, 1, prefix + "_pw")


def landmark68_graph(weights: dict[str, F64]) -> Any:
    """The ONNX model of FaceLandmark68Net with these weights (see the module's docstring)."""

    g = GraphBuilder()
    centred = g.op("Sub", ["input", g.const("mean", np.array(MEAN_RGB).reshape(1, 3, 1, 1))], "centre")
    x = g.op("Mul", [centred, g.scalar("scale", 1.0 / 255.0)], "scale")
    size = FACEAPI_INPUT
    for block in BLOCKS:
        outs = [g.op("Relu", [_tf_conv(g, weights, x, f"{block}/conv0", size, 2)], f"{block}_out1")]
        size = -(-size // 2)
        for k in (1, 2, 3):
            if k == 1:
                inp = outs[0]
            else:
                inp = g.op("Relu", [g.op("Sum", outs, f"{block}_in{k + 1}_sum")], f"{block}_in{k + 1}")
            outs.append(_tf_conv(g, weights, inp, f"{block}/conv{k}", size, 1))
        x = g.op("Relu", [g.op("Sum", outs, f"{block}_sum")], f"{block}_out")
    pooled = g.op("AveragePool", [x], "avg_pool", kernel_shape=[7, 7], strides=[2, 2])
    flat = g.op("Flatten", [pooled], "flatten")
    g.op("Gemm", [flat, g.const("fc_w", weights["fc/weights"]), g.const("fc_b", weights["fc/bias"])], "fc",
         output="landmarks")
    return g.model("faceapi_landmark68", ("input", ["batch", 3, FACEAPI_INPUT, FACEAPI_INPUT]),
                   ("landmarks", ["batch", 2 * FACEAPI_POINTS]))


def faceapi_landmark68_to_onnx(manifest: Path, dest: Path, *shards: Path) -> None:
    """Derived-file transform: face-api.js's 68-point landmark weights (manifest, then its shards) as
    an ONNX graph at ``dest``."""
    import onnx

    model = landmark68_graph(load_weights(manifest, *shards))
    onnx.checker.check_model(model)
    dest.write_bytes(model.SerializeToString())
