"""Embedding identities and the galleries bound to them (no model is run here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from faceflow import recognize
from faceflow.errors import ConfigError, ModelMismatch
from faceflow.gallery import open_gallery_store
from faceflow.gallery.workflows import analyzer_for, create_gallery
from faceflow.models.registry import get
from faceflow.recognize import EMBEDDERS, embedding_identity


def test_each_embedder_states_its_vectors_identity() -> None:
    sface = embedding_identity("sface")
    assert (sface.name, sface.dim, sface.flip) == ("sface", 128, False)
    assert sface.key == f"sface@{get('sface').files[0].sha256[:12]}"  # the weights' bytes define the vectors
    assert embedding_identity("dlib").key == f"dlib@{get('dlib_resnet').files[0].sha256[:12]}"
    assert embedding_identity("sface", flip=True).key == sface.key + "+flip"
    fused = embedding_identity("fused")
    assert fused.flip and fused.dim == 256 and fused.key.endswith("+flip")  # flip is fused's default
    for name, cls in EMBEDDERS.items():  # the class and an instance agree
        assert cls(flip=False).identity == embedding_identity(name, flip=False)
    with pytest.raises(ConfigError, match="unknown recognition model 'arcface'"):
        embedding_identity("arcface")


def test_a_gallery_of_other_fusion_weights_is_a_model_mismatch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with open_gallery_store(tmp_path / "g.db") as store:
        g = create_gallery(store, "staff")  # fused, with today's weights
        assert g.model == embedding_identity("fused").key and g.dim == 256
        # A faceflow whose fusion weights were refitted makes other vectors: the gallery must say so.
        monkeypatch.setitem(recognize.FUSION_WEIGHTS, "sface", 0.3)
        monkeypatch.setitem(recognize.FUSION_WEIGHTS, "dlib", 0.7)
        assert embedding_identity("fused").key != g.model
        with pytest.raises(ModelMismatch, match=r"holds fused@.* embeddings, which this faceflow cannot make"):
            analyzer_for(store.gallery("staff"))
        again = create_gallery(store, "staff", exist_ok=True)  # joining it keeps its own model
        assert again.model == g.model
