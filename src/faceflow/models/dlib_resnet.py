"""dlib's ResNet face-recognition model (``dlib_face_recognition_resnet_model_v1.dat``) as an ONNX graph.

dlib-bin is built without BLAS, so its own forward pass takes about 150 ms per face on one core; the
same network in ONNX Runtime takes a small fraction of that. :func:`dlib_resnet_to_onnx` reads the
weights from dlib's serialised network and writes an equivalent ONNX graph (a derived model file).

The network, as dlib's ``dnn_face_recognition_ex.cpp`` defines it (input side first)::

    input_rgb_image_sized<150>        (r, g, b - per-channel mean) / 256, planar RGB
    con 32 7x7 /2, affine, relu, max_pool 3x3 /2
    14 residual blocks                 conv 3x3 (/2 in a "down" block), affine, relu, conv 3x3, affine,
                                       plus the shortcut (a 2x2 /2 average pool in a down block), relu
    avg_pool_everything, fc_no_bias 128

Where a down block changes the channel count, dlib's ``add_prev`` adds tensors of different shapes:
the result has the larger size in every dimension and the smaller operand counts as zero outside
its extent. The graph reproduces that with zero ``Pad`` nodes (channels of the shortcut; bottom and
right rows of the convolution branch, which is smaller than the pooled shortcut at 8x8 -> 3x3 / 4x4).
Each ``affine`` (frozen batch norm) is folded into the convolution before it.

Serialisation facts used (dlib's ``serialize.h`` and ``tensor.h``): integers are one control byte
(low four bits: byte count; 0x80: negative) then that many little-endian bytes; strings are an
integer length then the bytes; floats outside tensors are a mantissa and an exponent integer
(``mantissa * 2**exponent``); a tensor is version 2, then num_samples, k, nr, nc, then raw
little-endian float32 values.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]

INPUT_SIZE = 150
"""Side of the aligned chip the network takes (``dlib.get_face_chip(..., size=150, padding=0.25)``)."""


class _Reader:
    """Sequential reader of dlib's binary serialisation format."""

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data = data
        self.pos = pos

    def int(self) -> int:
        control = self.data[self.pos]
        size = control & 0x0F
        value = int.from_bytes(self.data[self.pos + 1 : self.pos + 1 + size], "little")
        self.pos += 1 + size
        return -value if control & 0x80 else value

    def string(self) -> str:
        n = self.int()
        text = self.data[self.pos : self.pos + n].decode("ascii")
        self.pos += n
        return text

    def float(self) -> float:
        mantissa, exponent = self.int(), self.int()
        return float(np.ldexp(float(mantissa), exponent))

    def tensor(self) -> F32:
        if (version := self.int()) != 2:
            raise ValueError(f"dlib tensor version {version} at byte {self.pos}; expected 2 (raw float32)")
        shape = tuple(self.int() for _ in range(4))
        count = int(np.prod(shape))
        values = np.frombuffer(self.data, dtype="<f4", count=count, offset=self.pos)
        self.pos += 4 * count
        return values.astype(np.float32).reshape(shape)


@dataclass(frozen=True)
class Conv:
    """One ``con_`` layer with the ``affine_`` after it folded in."""

    weight: F32
    """``(out, in, kh, kw)``."""
    bias: F32
    stride: int
    padding: int


@dataclass(frozen=True)
class DlibResNet:
    """The weights of dlib's face-recognition ResNet, in network order (input side first)."""

    mean_rgb: tuple[float, float, float]
    convs: list[Conv]
    fc: F32
    """``(256, 128)``: ``embedding = pooled @ fc``."""


_TOKENS = re.compile(rb"\x01\x15input_rgb_image_sized|\x01\x05con_[45]|\x01\x07affine_|\x01\x04fc_2")


def read_dlib_resnet(path: Path | str) -> DlibResNet:
    """Parse the ``.dat`` file: the input means, every convolution (batch norm folded) and the fc matrix."""
    data = Path(path).read_bytes()
    mean: tuple[float, float, float] | None = None
    convs: list[Conv] = []
    pending: tuple[F32, F32, int, int] | None = None
    fc: F32 | None = None
    pos = 0
    while (m := _TOKENS.search(data, pos)) is not None:
        r = _Reader(data, m.start())
        kind = r.string()
        if kind == "input_rgb_image_sized":
            mean = (r.float(), r.float(), r.float())
        elif kind.startswith("con_"):
            params = r.tensor().reshape(-1)
            n_out, kh, kw = r.int(), r.int(), r.int()
            stride_y, stride_x, pad_y, pad_x = r.int(), r.int(), r.int(), r.int()
            if stride_y != stride_x or pad_y != pad_x or kh != kw or pending is not None:
                raise ValueError(f"unexpected dlib con_ layer at byte {m.start()}")
            n_in = (params.size - n_out) // (n_out * kh * kw)
            weight = params[: n_out * n_in * kh * kw].reshape(n_out, n_in, kh, kw)
            pending = (weight, params[n_out * n_in * kh * kw :], stride_y, pad_y)
        elif kind == "affine_":
            if pending is None:
                raise ValueError(f"dlib affine_ layer without a convolution before it at byte {m.start()}")
            gamma, beta = np.split(r.tensor().reshape(-1).astype(np.float64), 2)
            conv_w, conv_b, stride, pad = pending
            folded_w = conv_w.astype(np.float64) * gamma[:, None, None, None]
            folded_b = conv_b.astype(np.float64) * gamma + beta
            convs.append(Conv(folded_w.astype(np.float32), folded_b.astype(np.float32), stride, pad))
            pending = None
        else:  # fc_2
            n_out, n_in = r.int(), r.int()
            fc = r.tensor().reshape(n_in, n_out)
        pos = r.pos
    if mean is None or fc is None or pending is not None or len(convs) != 29:
        raise ValueError(f"{path}: not dlib's face-recognition ResNet ({len(convs)} conv+affine layers found)")
    return DlibResNet(mean, convs, fc)


def _conv_size(size: int, kernel: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - kernel) // stride + 1


def build_onnx(net: DlibResNet) -> object:
    """An ONNX model: ``data`` ``(batch, 3, 150, 150)`` RGB 0..255 float -> ``embedding`` ``(batch, 128)``.

    The output is dlib's descriptor before any normalisation (faceflow L2-normalises it).
    """
    from onnx import TensorProto, helper, numpy_helper

    nodes: list[object] = []
    inits: list[object] = []
    counter = iter(range(10_000))

    def const(array: npt.ArrayLike, dtype: type = np.float32) -> str:
        name = f"c{next(counter)}"
        inits.append(numpy_helper.from_array(np.asarray(array, dtype=dtype), name))
        return name

    def node(op: str, inputs: list[str], **attrs: Any) -> str:
        out = f"t{next(counter)}"
        nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    def conv(x: str, c: Conv) -> str:
        k = c.weight.shape[-1]
        return node("Conv", [x, const(c.weight), const(c.bias)], kernel_shape=[k, k],
                    strides=[c.stride, c.stride], pads=[c.padding] * 4)

    def pad(x: str, channels: int = 0, rows: int = 0) -> str:
        if not channels and not rows:
            return x
        return node("Pad", [x, const([0, 0, 0, 0, 0, channels, rows, rows], np.int64)], mode="constant")

    mean = np.asarray(net.mean_rgb, np.float32).reshape(1, 3, 1, 1)
    x = node("Mul", [node("Sub", ["data", const(mean)]), const(np.float32(1 / 256))])
    stem = net.convs[0]
    x = node("Relu", [conv(x, stem)])
    size = _conv_size(INPUT_SIZE, stem.weight.shape[-1], stem.stride, stem.padding)
    x = node("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2])
    size, channels = _conv_size(size, 3, 2, 0), stem.weight.shape[0]
    for first, second in zip(net.convs[1::2], net.convs[2::2], strict=True):
        branch = conv(node("Relu", [conv(x, first)]), second)
        out_channels = first.weight.shape[0]
        if first.stride == 1:
            x = node("Add", [x, branch])
        else:
            shortcut = node("AveragePool", [x], kernel_shape=[2, 2], strides=[2, 2])
            pooled = _conv_size(size, 2, 2, 0)
            branch_size = _conv_size(size, 3, first.stride, first.padding)
            grow = max(pooled, branch_size)
            shortcut = pad(shortcut, max(out_channels - channels, 0), grow - pooled)
            x = node("Add", [shortcut, pad(branch, 0, grow - branch_size)])
            size = grow
        x = node("Relu", [x])
        channels = max(channels, out_channels)
    pooled_vec = node("Flatten", [node("GlobalAveragePool", [x])], axis=1)
    nodes.append(helper.make_node("MatMul", [pooled_vec, const(net.fc)], ["embedding"]))
    graph = helper.make_graph(
        nodes,  # type: ignore[arg-type]
        "dlib_face_recognition_resnet_model_v1",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["batch", 3, INPUT_SIZE, INPUT_SIZE])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", net.fc.shape[1]])],
        inits,  # type: ignore[arg-type]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="faceflow")
    model.ir_version = 8
    return model


def dlib_resnet_to_onnx(src: Path, dest: Path) -> None:
    """Derived-file transform: dlib's ``.dat`` ResNet -> an ONNX graph with the same outputs."""
    import onnx

    model = build_onnx(read_dlib_resnet(src))
    onnx.checker.check_model(model)  # type: ignore[arg-type]
    dest.write_bytes(model.SerializeToString())  # type: ignore[attr-defined]
