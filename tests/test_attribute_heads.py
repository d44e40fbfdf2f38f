"""The UTKFace-trained age and gender heads: features, the model format, the packaged weights, the stage,
and the committed split they were trained on."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from faceflow.attribute_heads import (
    HEADS_SHA256,
    RAW_BLOCKS,
    AgeConfidence,
    AttributeHeads,
    AttributeHeadsStage,
    Head,
    HeadAttributesStage,
    HeadFeatureExtractor,
    assemble,
)
from faceflow.detect import create_detector
from faceflow.io import load_image
from faceflow.models.store import sha256_file
from faceflow.types import FloatArray, Image

REPO = Path(__file__).resolve().parents[1]
SPLITS = REPO / "training" / "splits"


def split_module() -> ModuleType:
    """``training/utkface_split.py``, imported from its path (training/ is not a package)."""
    spec = importlib.util.spec_from_file_location("utkface_split", REPO / "training" / "utkface_split.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_part(part: str) -> list[str]:
    lines = (SPLITS / f"utkface_{part}.txt").read_text().splitlines()
    return [ln for ln in lines if ln and not ln.startswith("#")]


def random_raw(n: int, seed: int = 0) -> dict[str, FloatArray]:
    rng = np.random.default_rng(seed)
    raw = {k: rng.random((n, w)).astype(np.float32) for k, w in RAW_BLOCKS.items()}
    for k in ("age_p", "age_p_flip", "gender_p", "gender_p_flip"):
        raw[k] /= raw[k].sum(1, keepdims=True)
    return raw


def test_assemble_orders_blocks_and_averages_the_mirror() -> None:
    raw = random_raw(3)
    x = assemble(raw, ("age_feat", "sface", "gender_logp"))
    assert x.shape == (3, 256 + 128 + 2)
    np.testing.assert_allclose(x[:, :256], (raw["age_feat"] + raw["age_feat_flip"]) / 2, rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(x[:, 256:384], axis=1), 1.0, rtol=1e-5)
    logit = np.log((raw["gender_p"] + raw["gender_p_flip"]) / 2)
    np.testing.assert_allclose(x[:, 385] - x[:, 384], logit[:, 1] - logit[:, 0], rtol=1e-5)


def tiny_heads() -> AttributeHeads:
    rng = np.random.default_rng(2)
    age = Head(("age_logp",), ((rng.normal(size=(81, 1)).astype(np.float32), np.array([3.0], np.float32)),))
    gender = Head(
        ("gender_logp", "gender_feat"),
        (
            (rng.normal(size=(18, 4)).astype(np.float32), np.zeros(4, np.float32)),
            (rng.normal(size=(4, 1)).astype(np.float32), np.array([0.1], np.float32)),
        ),
    )
    return AttributeHeads(age, gender, "log1p", AgeConfidence((10.0, 40.0), (0.9, 0.6, 0.4)), {"note": "test"})


def test_heads_round_trip_through_json_exactly() -> None:
    heads, raw = tiny_heads(), random_raw(5)
    again = AttributeHeads.from_dict(json.loads(heads.to_json()))
    for a, b in zip(heads.predict(raw), again.predict(raw), strict=True):
        np.testing.assert_array_equal(a, b)
    assert again.to_json() == heads.to_json()


def test_estimates_follow_the_attribute_conventions() -> None:
    heads, raw = tiny_heads(), random_raw(6)
    ages, female = heads.predict(raw)
    assert np.all((ages >= 0) & (ages <= 116))
    for (age, gender), a, p in zip(heads.estimates(raw), ages, female, strict=True):
        assert age.value == pytest.approx(a)
        assert age.confidence == (0.9 if a < 10 else 0.6 if a < 40 else 0.4)
        assert gender.value == ("female" if p >= 0.5 else "male")
        assert 0.5 <= gender.confidence <= 1.0


def test_packaged_heads_match_their_pin_and_stay_small() -> None:
    path = REPO / "src" / "faceflow" / "data" / "attribute_heads.json"
    assert sha256_file(path) == HEADS_SHA256
    assert path.stat().st_size < 1 << 20
    heads = AttributeHeads.load()
    assert heads.info["split"]["test"] == sha256_file(SPLITS / "utkface_test.txt")


def test_split_files_are_what_the_script_writes_and_session_disjoint() -> None:
    mod = split_module()
    parts = {p: read_part(p) for p in ("train", "val", "test")}
    names = [n for v in parts.values() for n in v]
    assert len(names) == len(set(names)) == 4000
    assert mod.split_names(names, mod.read_links()) == parts
    groups = {p: {mod.group_of(n) for n in v} for p, v in parts.items()}
    assert not (groups["train"] & groups["val"] or groups["train"] & groups["test"] or groups["val"] & groups["test"])
    part_of = {n: p for p, v in parts.items() for n in v}
    links = mod.read_links()
    assert len(links) > 100 and all(part_of[a] == part_of[b] for a, b in links)
    assert 580 <= len(parts["test"]) <= 660 and 580 <= len(parts["val"]) <= 660


def test_stage_on_utkface_test_images(dataset) -> None:  # type: ignore[no-untyped-def]
    root = dataset("utkface")
    adults = [n for n in read_part("test") if 25 <= int(n.split("_")[0]) <= 60][:8]
    detector, stage = create_detector("yunet"), AttributeHeadsStage()
    errors, right = [], 0
    for name in adults:
        image = load_image(root / name)
        faces = stage.run(image, detector.detect(image)[:1])
        assert faces and faces[0].age is not None and faces[0].gender is not None
        assert 0.0 <= faces[0].age.confidence <= 1.0
        errors.append(abs(float(faces[0].age.value) - int(name.split("_")[0])))
        right += faces[0].gender.value == ("female" if name.split("_")[1] == "1" else "male")
    assert np.mean(errors) < 10 and right >= 7


def test_feature_blocks_and_attributes_stage_on_the_astronaut(astronaut: Image) -> None:
    faces = create_detector("yunet").detect(astronaut)[:1]
    raw = HeadFeatureExtractor().raw(astronaut, faces)
    assert {k: v.shape for k, v in raw.items()} == {k: (1, w) for k, w in RAW_BLOCKS.items()}
    HeadAttributesStage().run(astronaut, faces)
    face = faces[0]
    assert face.gender is not None and face.gender.value == "female"  # Eileen Collins, 42 when photographed
    assert face.age is not None and 25 <= float(face.age.value) <= 60
    assert face.expression is not None
