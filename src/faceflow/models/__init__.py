"""The model store and the registry of every model faceflow can use."""

from faceflow.models.registry import MODELS, get
from faceflow.models.spec import Derived, ModelFile, ModelSpec, PackageMember, Url
from faceflow.models.store import ModelStore, default_store, faceflow_home, set_default_store

__all__ = [
    "MODELS",
    "Derived",
    "ModelFile",
    "ModelSpec",
    "ModelStore",
    "PackageMember",
    "Url",
    "default_store",
    "faceflow_home",
    "get",
    "set_default_store",
]
