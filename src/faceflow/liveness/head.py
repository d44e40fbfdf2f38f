"""``human_head``: a logistic regression trained here (:mod:`faceflow.liveness.texture`) on the hidden
layers of Human's antispoof and liveness networks (128 + 64 ReLU units of the dense layer before each
classifier, read as extra outputs of the same graphs). Their own outputs were trained on other data;
this head keeps their learned representation and refits only the decision. Kept apart from
:mod:`faceflow.liveness.models`, whose source keys the evaluation's cache of the networks' scores.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from faceflow.liveness.models import Boxes, HumanAntispoof, HumanLiveness, TrainedLinearModel, _crops
from faceflow.liveness.texture import layout
from faceflow.types import Image

F64 = npt.NDArray[np.float64]

HEAD_MODEL = "liveness_human_head"
HEAD_TAPS = {"human_antispoof": "StatefulPartitionedCall/sequential/activation_3/Relu__32",
             "human_liveness": "StatefulPartitionedCall/sequential_1/activation_5/Relu__63"}
"""The hidden layer read in each of Human's networks: the ReLU output of the dense layer before the
classifier."""
HEAD_BLOCKS = layout({"hemb": 128, "lemb": 64})
"""Where each network's hidden layer sits in :meth:`HumanHead.features`' vector."""


class HumanHead(TrainedLinearModel):
    """The head on Human's hidden layers."""

    name = "human_head"
    registry_models = ("human_antispoof", "human_liveness", HEAD_MODEL)
    linear_file = HEAD_MODEL

    def features(self, image: Image, boxes: Boxes) -> F64:
        """The two hidden layers per face, side by side (:data:`HEAD_BLOCKS`)."""
        if not len(boxes):
            return np.zeros((0, HEAD_BLOCKS["lemb"].stop))
        parts = []
        for net in (HumanAntispoof, HumanLiveness):
            name = net.registry_models[0]
            x = _crops(image, boxes, net.size, net.crop_scale) / 255.0
            hidden = self.runtime.onnx(name, taps=(HEAD_TAPS[name],)).run(None, {"input": x})[0]
            parts.append(np.asarray(hidden, np.float64).reshape(len(boxes), -1))
        return np.hstack(parts)
