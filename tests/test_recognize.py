"""Embedders (SFace, dlib, fused), their faster graphs, fold-fitted fusion and verification."""

from __future__ import annotations

import itertools
from pathlib import Path

import cv2
import numpy as np
import pytest

from faceflow.detect import create_detector
from faceflow.errors import ConfigError
from faceflow.eval.fusion import FoldFusionScorer, fold_scores, fuse, impostor_weights, pair_cosines
from faceflow.eval.lfw import cosine_scores
from faceflow.io import load_image
from faceflow.models import registry
from faceflow.models.runtime import model_path
from faceflow.recognize import (
    BOX_LANDMARKS5,
    CALIBRATION,
    EMBEDDERS,
    FUSION_WEIGHTS,
    FUSION_WEIGHTS_INT8,
    EmbedOptions,
    EmbedStage,
    FusedEmbedder,
    FusedInt8Embedder,
    Verification,
    box_landmarks5,
    create_embedder,
    dlib_box,
    embedding_identity,
    l2_normalize,
    verify,
    verify_images,
)
from faceflow.types import Face
from faceflow.types import largest_face as largest_face_of

MODELS = tuple(EMBEDDERS)


@pytest.fixture(scope="module")
def detector():  # type: ignore[no-untyped-def]
    return create_detector("yunet")


def largest_face(detector, image: np.ndarray) -> Face:  # type: ignore[no-untyped-def]
    face = largest_face_of(detector.detect(image))
    assert face is not None, "no face found"
    return face


@pytest.fixture(scope="module")
def astronaut_face(astronaut: np.ndarray, detector) -> Face:  # type: ignore[no-untyped-def]
    return largest_face(detector, astronaut)


def embed_one(model: str, image: np.ndarray, face: Face, **kw: bool) -> np.ndarray:
    return create_embedder(model, **kw).embed(image, [face])[0]


@pytest.mark.parametrize("model", MODELS)
def test_embedding_is_unit_norm_and_deterministic(model: str, astronaut, astronaut_face) -> None:
    a = embed_one(model, astronaut, astronaut_face)
    b = embed_one(model, astronaut, astronaut_face)
    assert a.shape == (EMBEDDERS[model].dim,) == ((256,) if model.startswith("fused") else (128,))
    assert a.dtype == np.float32
    assert np.linalg.norm(a) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("model", MODELS)
def test_same_face_mirrored_and_rescaled_verifies(model: str, astronaut, astronaut_face, detector) -> None:
    ref = embed_one(model, astronaut, astronaut_face)
    mirrored = np.ascontiguousarray(astronaut[:, ::-1])
    h, w = astronaut.shape[:2]
    smaller = cv2.resize(astronaut, (int(w * 0.7), int(h * 0.7)), interpolation=cv2.INTER_AREA)
    for image in (mirrored, smaller):
        v = verify(ref, embed_one(model, image, largest_face(detector, image)), model)
        assert v.same, v
        threshold = CALIBRATION[model].threshold
        assert v.similarity > threshold + (1 - threshold) / 2  # well above: past halfway to 1


@pytest.mark.parametrize("model", MODELS)
def test_flip_averaging_changes_little(model: str, astronaut, astronaut_face) -> None:
    plain = embed_one(model, astronaut, astronaut_face, flip=False)
    flipped = embed_one(model, astronaut, astronaut_face, flip=True)
    assert np.linalg.norm(flipped) == pytest.approx(1.0, abs=1e-5)
    assert not np.allclose(plain, flipped)
    assert float(plain @ flipped) > 0.9


@pytest.mark.parametrize("model", MODELS)
def test_known_people_same_and_different(model: str, dataset, detector) -> None:  # type: ignore[no-untyped-def]
    root = dataset("samples", "face_recognition", "examples", "knn_examples", "train")
    files = sorted(p for p in Path(root).glob("*/*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    embedder = create_embedder(model)
    vectors = []
    for path in files:
        image = load_image(path)
        vectors.append(embedder.embed(image, [largest_face(detector, image)])[0])
    n_same = 0
    for i, j in itertools.combinations(range(len(files)), 2):
        same_person = files[i].parent.name == files[j].parent.name
        n_same += same_person
        assert verify(vectors[i], vectors[j], model).same == same_person, (model, files[i], files[j])
    assert n_same >= 3


def test_sface_without_landmarks_uses_box_points(astronaut, astronaut_face) -> None:
    with_points = embed_one("sface", astronaut, astronaut_face)
    box_only = Face(box=astronaut_face.box)
    assert float(with_points @ embed_one("sface", astronaut, box_only)) > 0.8


def test_box_landmarks5_geometry() -> None:
    pts = box_landmarks5([10, 20, 110, 220])
    np.testing.assert_allclose(pts, BOX_LANDMARKS5 * [100, 200] + [10, 20], rtol=1e-6)
    assert pts[0, 0] < pts[2, 0] < pts[1, 0]  # image-left eye, nose, image-right eye
    assert pts[0, 1] < pts[2, 1] < pts[3, 1]  # eyes above nose above mouth
    np.testing.assert_allclose(BOX_LANDMARKS5[[1, 4], 0], 1 - BOX_LANDMARKS5[[0, 3], 0], atol=1e-6)


def test_dlib_box_is_square_around_the_points() -> None:
    hog = Face(box=[10, 20, 90, 100], detector="dlib_hog")
    assert dlib_box(hog) == (10, 20, 89, 99)  # dlib's right and bottom are inclusive
    face = Face(box=[0, 0, 100, 130], landmarks5=box_landmarks5([0, 0, 100, 130]), detector="yunet")
    x1, y1, x2, y2 = dlib_box(face)
    assert abs((x2 - x1) - (y2 - y1)) <= 1  # square up to rounding
    assert x1 < face.landmarks5[0, 0] and x2 > face.landmarks5[1, 0]
    assert y1 < face.landmarks5[0, 1] and y2 > face.landmarks5[3, 1]
    assert dlib_box(Face(box=face.box)) == (x1, y1, x2, y2)  # same points from the box alone


def test_embed_stage_fills_each_model(astronaut, astronaut_face) -> None:
    stage = EmbedStage(EmbedOptions(models=("sface", "dlib", "fused"), flip=None))
    assert stage.name == "embed" and set(stage.needs) == {"box", "landmarks5"}
    assert EmbedStage(EmbedOptions(models=("dlib",))).needs == ("box",)
    assert [e.flip for e in stage.embedders] == [False, False, True]  # each model's own default
    assert [e.flip for e in EmbedStage(EmbedOptions(models=("sface", "fused"), flip=False)).embedders] == [False, False]
    face = Face(box=astronaut_face.box, landmarks5=astronaut_face.landmarks5)
    assert stage.run(astronaut, []) == []
    stage.run(astronaut, [face])
    assert set(face.embeddings) == {"sface", "dlib", "fused"}
    assert face.embeddings["fused"].shape == (256,)
    for model in ("dlib", "fused"):
        assert verify(face, face, model).similarity == pytest.approx(1.0, abs=1e-5)


def test_verification_fields_and_thresholds() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=128), rng.normal(size=128)
    v = verify(a, a)
    assert isinstance(v, Verification) and v.same and v.similarity == pytest.approx(1.0, abs=1e-6)
    assert v.threshold == CALIBRATION["sface"].threshold and v.far == CALIBRATION["sface"].fmr
    assert set(v.to_dict()) == {"similarity", "same", "threshold", "far"}
    assert not verify(a, -a).same
    custom = verify(a, b, threshold=-1.0)
    assert custom.same and custom.far is None
    with pytest.raises(AttributeError):
        v.same = False  # type: ignore[misc]
    assert set(CALIBRATION) == set(EMBEDDERS)
    for cal in CALIBRATION.values():
        assert 0.0 < cal.threshold < 1.0 and cal.fmr <= 1e-3
        assert 0.9 < cal.tmr <= 1.0 and 0.9 < cal.accuracy <= 1.0


def test_unknown_model_and_bad_vectors_raise() -> None:
    with pytest.raises(ConfigError):
        verify(np.ones(128), np.ones(128), model="arcface")
    with pytest.raises(ConfigError):
        create_embedder("arcface")
    with pytest.raises(ConfigError):
        EmbedStage(EmbedOptions(models=("sface", "nope")))
    with pytest.raises(ConfigError):
        verify(np.ones(64), np.ones(64))
    with pytest.raises(ConfigError):
        verify(Face(box=[0, 0, 1, 1]), np.ones(128))


def test_verify_images_on_files(dataset) -> None:  # type: ignore[no-untyped-def]
    root = dataset("samples", "face_recognition", "examples", "knn_examples", "train")
    obama = sorted((root / "obama").iterdir())
    biden = sorted((root / "biden").iterdir())
    assert verify_images(obama[0], obama[1]).same
    assert not verify_images(obama[0], biden[0]).same


# -- fused model --------------------------------------------------------------------------------------


def test_fused_vector_is_weighted_concatenation(astronaut, astronaut_face) -> None:
    fused = create_embedder("fused")
    assert isinstance(fused, FusedEmbedder) and fused.flip and fused.part_dims == [128, 128]
    assert sum(FUSION_WEIGHTS.values()) == pytest.approx(1.0) and list(FUSION_WEIGHTS) == ["sface", "dlib"]
    vec = fused.embed(astronaut, [astronaut_face])[0]
    parts = [embed_one(m, astronaut, astronaut_face, flip=True) for m in FUSION_WEIGHTS]
    expected = np.concatenate([np.sqrt(w) * p for w, p in zip(FUSION_WEIGHTS.values(), parts, strict=True)])
    np.testing.assert_allclose(vec, expected, atol=1e-6)
    np.testing.assert_allclose(fused.embed_parts(astronaut, [astronaut_face])[0], np.concatenate(parts), atol=1e-6)


def test_fused_int8_is_the_weighted_concatenation_of_the_int8_parts(astronaut, astronaut_face) -> None:
    fused = create_embedder("fused_int8")
    assert isinstance(fused, FusedInt8Embedder) and fused.flip and fused.part_dims == [128, 128]
    assert list(FUSION_WEIGHTS_INT8) == ["sface_int8", "dlib_int8"]
    assert sum(FUSION_WEIGHTS_INT8.values()) == pytest.approx(1.0)
    vec = fused.embed(astronaut, [astronaut_face])[0]
    parts = [embed_one(m, astronaut, astronaut_face, flip=True) for m in FUSION_WEIGHTS_INT8]
    expected = np.concatenate([np.sqrt(w) * p for w, p in zip(FUSION_WEIGHTS_INT8.values(), parts, strict=True)])
    np.testing.assert_allclose(vec, expected, atol=1e-6)
    # its own identity: the int8 parts' vectors are close to the fp32 ones, not equal
    assert embedding_identity("fused_int8").key != embedding_identity("fused").key
    fp32 = embed_one("fused", astronaut, astronaut_face)
    assert 0.98 < float(vec @ fp32) < 0.99999


def test_dlib_int8_is_close_to_dlib(astronaut, astronaut_face) -> None:
    int8, fp32 = (embed_one(m, astronaut, astronaut_face) for m in ("dlib_int8", "dlib"))
    assert 0.995 < float(int8 @ fp32) < 0.99999
    assert embedding_identity("dlib_int8").version == registry.DLIB_INT8_FILE.sha256[:12]


def test_fused_cosine_equals_weighted_part_cosines() -> None:
    rng = np.random.default_rng(1)
    w = np.array(list(FUSION_WEIGHTS.values()))
    scale = np.sqrt(np.repeat(w, 128))
    a, b = l2_normalize(rng.normal(size=(2, 5, 128))), l2_normalize(rng.normal(size=(2, 5, 128)))
    fa, fb = np.concatenate(list(a), axis=1) * scale, np.concatenate(list(b), axis=1) * scale
    parts = pair_cosines(np.concatenate(list(a), axis=1), np.concatenate(list(b), axis=1), [128, 128])
    np.testing.assert_allclose(cosine_scores(fa, fb), fuse(parts, w), atol=1e-6)
    np.testing.assert_allclose(parts[1], cosine_scores(a[1], b[1]), atol=1e-12)
    assert verify(fa[0], fb[0], "fused").similarity == pytest.approx(fuse(parts, w)[0], abs=1e-5)
    with pytest.raises(ValueError):
        pair_cosines(fa, fb, [128, 64])


def test_embed_many_matches_per_image(astronaut, astronaut_face) -> None:
    mirrored = np.ascontiguousarray(astronaut[:, ::-1])
    w = astronaut.shape[1]
    x1, y1, x2, y2 = astronaut_face.box
    mirrored_face = Face(box=[w - x2, y1, w - x1, y2])
    items = [(astronaut, [astronaut_face]), (mirrored, []), (mirrored, [mirrored_face, astronaut_face])]
    for model in MODELS:
        e = create_embedder(model)
        many = e.embed_many(items)
        one = np.concatenate([e.embed(img, faces) for img, faces in items])
        assert many.shape == (3, e.dim)
        np.testing.assert_allclose(many, one, atol=1e-5)
    assert create_embedder("sface").embed_many([]).shape == (0, 128)


# -- fold-fitted fusion ------------------------------------------------------------------------------


def _toy_pairs(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.tile([True] * 30 + [False] * 30, 10)
    folds = np.repeat(np.arange(10), 60)
    spread = np.array([[0.1], [0.03]])  # model 0 spreads its impostors 3.3x wider than model 1
    scores = rng.normal(size=(2, labels.size)) * spread + np.array([[0.1], [0.8]]) + labels * np.array([[0.5], [0.15]])
    return scores, labels, folds


def test_impostor_weights_follow_impostor_spread() -> None:
    scores, labels, _ = _toy_pairs()
    w = impostor_weights(scores, labels)
    assert w.sum() == pytest.approx(1.0) and 0.15 < w[0] < 0.35  # 1/0.1 : 1/0.03 -> 0.23
    doubled = w[0] / (2 - w[0])  # model 0's impostor spread doubled halves its relative weight
    np.testing.assert_allclose(impostor_weights(scores * [[2.0], [1.0]], labels), [doubled, 1 - doubled])
    with pytest.raises(ValueError):
        impostor_weights(scores, np.ones(labels.size, bool))


def test_fold_scores_never_see_the_test_fold() -> None:
    scores, labels, folds = _toy_pairs()
    rows, weights = fold_scores(scores, labels, folds)
    assert rows.shape == (10, labels.size) and weights.shape == (10, 2)
    np.testing.assert_allclose(rows[3], fuse(scores, impostor_weights(scores[:, folds != 3], labels[folds != 3])))
    changed_scores, changed_labels = scores.copy(), labels.copy()
    test = folds == 3
    changed_scores[:, test] = np.random.default_rng(9).normal(size=(2, test.sum())) * 5
    changed_labels[test] = ~changed_labels[test]
    weights2 = fold_scores(changed_scores, changed_labels, folds)[1]
    np.testing.assert_array_equal(weights2[3], weights[3])  # fold 3's fit ignores fold 3 entirely
    assert not np.allclose(weights2[4], weights[4])  # the other folds' fits include fold 3


def test_fold_fusion_scorer_splits_and_records_weights() -> None:
    scores, labels, folds = _toy_pairs()
    rng = np.random.default_rng(2)
    base = l2_normalize(rng.normal(size=(2, labels.size, 8)))
    # second vectors with exactly the toy cosines: cos*u + sin*v with v orthogonal to u
    noise = rng.normal(size=base.shape)
    ortho = l2_normalize(noise - np.sum(noise * base, -1, keepdims=True) * base)
    c = np.clip(scores, -1, 1)[..., None]
    other = c * base + np.sqrt(1 - c**2) * ortho
    scorer = FoldFusionScorer([8, 8])
    rows = scorer(np.concatenate(list(base), axis=1), np.concatenate(list(other), axis=1), labels, folds)
    expected, weights = fold_scores(np.clip(scores, -1, 1), labels, folds)
    np.testing.assert_allclose(rows, expected, atol=1e-6)
    assert scorer.weights is not None
    np.testing.assert_allclose(scorer.weights, weights, atol=1e-6)


# -- faster graphs: same outputs as the originals ----------------------------------------------------


def test_dlib_resnet_onnx_matches_dlib(tmp_path: Path, astronaut, astronaut_face) -> None:
    import onnxruntime as ort

    from faceflow.models.dlib_resnet import dlib_resnet_to_onnx

    dest = tmp_path / "dlib.onnx"
    dlib_resnet_to_onnx(model_path("dlib_resnet"), dest)
    dlib = create_embedder("dlib", flip=False)
    chips = np.stack(dlib.crops(astronaut, [astronaut_face]) * 2)
    session = ort.InferenceSession(str(dest), providers=["CPUExecutionProvider"])
    ours = session.run(None, {"data": chips.transpose(0, 3, 1, 2).astype(np.float32)})[0]
    assert ours.shape == (2, 128)
    np.testing.assert_allclose(ours, dlib._forward(chips), atol=2e-5)


def test_dlib_resnet_reader_refuses_other_files(tmp_path: Path) -> None:
    from faceflow.models.dlib_resnet import read_dlib_resnet

    bogus = tmp_path / "bogus.dat"
    bogus.write_bytes(b"\x01\x05con_4" + bytes(64))  # a con_ token followed by a tensor of the wrong version
    with pytest.raises(ValueError):
        read_dlib_resnet(bogus)
    bogus.write_bytes(b"not a dlib network")
    with pytest.raises(ValueError, match="not dlib's face-recognition ResNet"):
        read_dlib_resnet(bogus)


def test_sface_prelu_split_matches_original(tmp_path: Path, astronaut, astronaut_face) -> None:
    import onnx
    import onnxruntime as ort

    from faceflow.models.speedups import onnx_prelu_split

    src, dest = model_path("sface"), tmp_path / "sface_nchwc.onnx"
    onnx_prelu_split(src, dest)
    crops = create_embedder("sface").crops(astronaut, [astronaut_face])
    blob = np.stack(crops).transpose(0, 3, 1, 2).astype(np.float32)
    ref, ours = (ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"data": blob})[0]
                 for p in (src, dest))
    assert not any(n.op_type == "PRelu" for n in onnx.load(str(dest)).graph.node)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5 * np.abs(ref).max())
