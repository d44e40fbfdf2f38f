"""QualityFace (``qualityface`` 1.0.3 on PyPI, MIT): a face-image quality network, rebuilt as an ONNX
graph without torch.

The package ships ``checkpoints/last.pth``, a legacy-format torch ``state_dict`` of its ``QualityNet``
wrapped in ``nn.DataParallel``, read by :func:`faceflow.models.torch_reader.load_legacy_state_dict`.
``QualityNet`` (``qualityface/models.py``) is torchvision's MobileNetV2 ``features`` (reached through
``siriusbackbone``'s ``IntermediateLayerGetter``, so every weight is stored twice, under
``module.backbone.net.`` and ``module.backbone.backbone.``; the first copy is read), the spatial mean
of the last feature map (1280 channels) and ``Linear(1280, 1)``::

    features.0     3x3 conv /2, BN, ReLU6                                           3 -> 32
    features.1-17  inverted residuals (torchvision's settings, :data:`SETTINGS`):
                   [1x1 expand, BN, ReLU6] (absent when t = 1), 3x3 depthwise (stride s on a group's
                   first block), BN, ReLU6, 1x1 project, BN; plus the input when stride 1 and the
                   channel count is kept
    features.18    1x1 conv, BN, ReLU6                                              320 -> 1280
    mean over height and width, classify (Linear 1280 -> 1)

The strides are not in a ``state_dict``; they are torchvision's, and every weight's shape is checked
against the layer the architecture puts there. Batch norms (eps 1e-5, torchvision's) are folded into
the convolutions in float64 and stored as float32; ReLU6 is ``Clip(0, 6)``.

Input ``input`` ``[N, 3, 128, 128]``: RGB, ``(x / 255 - 0.5) / 0.5``, a face crop (the package trained
on 128 x 128 crops of WIDER FACE faces, labelled for quality from that data set); output ``quality``
``[N, 1]``, unbounded, higher for a better face.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from faceflow.errors import CheckpointError
from faceflow.models.onnx_build import F64, GraphBuilder, fold_batch_norm
from faceflow.models.torch_reader import load_legacy_state_dict

QUALITYFACE_INPUT = 128
PREFIX = "module.backbone.net.features."
HEAD = "module.classify."
SETTINGS: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1),
)
"""torchvision MobileNetV2's inverted-residual groups: expansion t, output channels c, blocks n, first stride s."""
STEM, LAST = 32, 1280
BN_EPS = 1e-5


class _Weights:
    """The ``state_dict`` arrays, each taken once and checked for the shape the architecture needs."""

    def __init__(self, arrays: Mapping[str, npt.NDArray[Any]]) -> None:
        self.arrays = arrays
        self.used: set[str] = set()

    def get(self, name: str, shape: tuple[int, ...]) -> F64:
        a = self.arrays.get(name)
        if a is None:
            raise CheckpointError(f"qualityface: the checkpoint has no {name}")
        if tuple(a.shape) != shape:
            raise CheckpointError(f"qualityface: {name} has shape {tuple(a.shape)}, expected {shape}")
        self.used.add(name)
        return np.asarray(a, np.float64)


def _conv_bn(g: GraphBuilder, wts: _Weights, x: str, conv: str, bn: str, shape: tuple[int, int, int, int],
             hint: str, *, stride: int = 1, group: int = 1, relu6: bool = True) -> str:
    """Bias-free ``conv`` (weights of ``shape``) with the batch norm ``bn`` folded in, then ReLU6."""
    c = shape[0]
    w, b = fold_batch_norm(wts.get(conv + ".weight", shape), np.zeros(c), wts.get(bn + ".weight", (c,)),
                           wts.get(bn + ".bias", (c,)), wts.get(bn + ".running_mean", (c,)),
                           wts.get(bn + ".running_var", (c,)), BN_EPS)
    y = g.conv(x, w, b, hint, stride=stride, group=group)
    if not relu6:
        return y
    return g.op("Clip", [y, g.scalar(hint + "_lo", 0.0), g.scalar(hint + "_hi", 6.0)], hint + "_relu6")


def qualityface_graph(arrays: Mapping[str, npt.NDArray[Any]]) -> Any:
    """The ONNX model of QualityFace's ``state_dict`` (as :func:`load_legacy_state_dict` reads it)."""

    g, wts = GraphBuilder(), _Weights(arrays)
    x = _conv_bn(g, wts, "input", PREFIX + "0.0", PREFIX + "0.1", (STEM, 3, 3, 3), "features0", stride=2)
    channels, index = STEM, 1
    for t, c, n, s in SETTINGS:
        for i in range(n):
            stride, hidden, p = (s if i == 0 else 1), channels * t, f"{PREFIX}{index}.conv."
            hint = f"features{index}"
            y, layer = x, 0
            if t != 1:
                y = _conv_bn(g, wts, y, f"{p}0.0", f"{p}0.1", (hidden, channels, 1, 1), hint + "_expand")
                layer = 1
            y = _conv_bn(g, wts, y, f"{p}{layer}.0", f"{p}{layer}.1", (hidden, 1, 3, 3), hint + "_dw",
                         stride=stride, group=hidden)
            y = _conv_bn(g, wts, y, f"{p}{layer + 1}", f"{p}{layer + 2}", (c, hidden, 1, 1), hint + "_project",
                         relu6=False)
            x = g.op("Add", [x, y], hint + "_res") if stride == 1 and channels == c else y
            channels, index = c, index + 1
    x = _conv_bn(g, wts, x, f"{PREFIX}{index}.0", f"{PREFIX}{index}.1", (LAST, channels, 1, 1), f"features{index}")
    pooled = g.op("Flatten", [g.op("GlobalAveragePool", [x], "pool")], "pool_flat")
    w, b = wts.get(HEAD + "weight", (1, LAST)), wts.get(HEAD + "bias", (1,))
    g.op("Gemm", [pooled, g.const("classify_w", w), g.const("classify_b", b)], "classify", output="quality", transB=1)
    left = sorted(k for k in arrays if k.startswith(PREFIX) and k not in wts.used
                  and not k.endswith("num_batches_tracked"))
    if left:
        raise CheckpointError(f"qualityface: {len(left)} weights the architecture does not use, e.g. {left[0]}")
    return g.model("qualityface", ("input", ["batch", 3, QUALITYFACE_INPUT, QUALITYFACE_INPUT]),
                   ("quality", ["batch", 1]))


def qualityface_to_onnx(src: Path, dest: Path) -> None:
    """Derived-file transform: QualityFace's ``last.pth`` ``src`` as an ONNX graph at ``dest``."""
    import onnx

    model = qualityface_graph(load_legacy_state_dict(src))
    onnx.checker.check_model(model)
    dest.write_bytes(model.SerializeToString())
