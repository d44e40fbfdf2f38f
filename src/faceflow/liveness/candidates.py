"""The liveness candidates by name: what ``--liveness-model`` accepts and ``faceflow eval antispoof``
scores (the models themselves are in :mod:`faceflow.liveness.models`; keeping the list apart means
adding a candidate does not change the source that the evaluation cache keys the networks' scores by).
"""

from __future__ import annotations

from faceflow.errors import ConfigError
from faceflow.liveness.head import HumanHead
from faceflow.liveness.models import (
    Cdcn,
    Cdcn128,
    DeepTree,
    DeepTreeInt8,
    HumanAntispoof,
    HumanLiveness,
    LivenessModel,
    TextureModel,
)
from faceflow.models.runtime import Runtime

SINGLE: dict[str, type[LivenessModel]] = {
    m.name: m for m in (TextureModel, HumanHead, HumanAntispoof, HumanLiveness, DeepTree, DeepTreeInt8, Cdcn, Cdcn128)
}
"""The single candidates by name."""

NETWORKS: tuple[str, ...] = ("human_antispoof", "human_liveness", "deeptree", "deeptree_int8", "cdcn128", "cdcn")
"""Packaged networks ``faceflow eval antispoof`` scores by default (each is cached per image, so a rerun
costs nothing)."""


def create_model(name: str, runtime: Runtime) -> LivenessModel:
    """The candidate called ``name`` (one of :data:`SINGLE`; the fused model exists only inside
    ``faceflow eval antispoof``, fitted per protocol, since it measured no better than ``texture``)."""
    try:
        return SINGLE[name](runtime)
    except KeyError:
        raise ConfigError(f"unknown liveness model {name!r}; choose from: {', '.join(names())}") from None


def names() -> tuple[str, ...]:
    return tuple(SINGLE)
