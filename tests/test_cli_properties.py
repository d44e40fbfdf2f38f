"""Property tests of ``faceflow analyze`` as a hostile user drives it.

Hypothesis builds folder trees of odd names (Unicode, spaces, leading dashes, bytes that are not
UTF-8), symlinks inside and outside the tree, link loops, FIFOs, dangling links, corrupt images
(truncated, random bytes, the wrong suffix, a huge header over a few bytes) and output folders
nested inside the input, then runs the command. The invariant: every input gets exactly one JSON
line, the exit code is 0 when every line has no error, 1 when some have one, 2 only for a usage
error (``--out`` a file, no image at all), and nothing crashes. Runs are in-process (models load
once) except one property that runs the real process, where a crash (a signal) would show.
"""

from __future__ import annotations

import functools
import io
import json
import os
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from PIL import Image as PILImage
from typer.testing import CliRunner

from faceflow.cli import app

WALKED = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".avif", ".heic", ".heif"}
"""The suffixes a folder walk lists (faceflow.io.IMAGE_SUFFIXES, restated as the documented contract)."""

SUFFIXES = [".jpg", ".JPG", ".png", ".gif", ".webp", ".tif", ".heic", ".avif", ".txt", ""]
KINDS = ["face", "noise", "truncated", "random", "empty", "wrong_format", "huge_header", "text"]
LINKS = ["inside", "outside", "dangling", "loop", "fifo", "dir_loop", "dir_named_like_image"]


def _encode(img: PILImage.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def _face() -> PILImage.Image:
    from skimage import data

    return PILImage.fromarray(data.astronaut()).resize((160, 160))


FACE = _face()


@functools.cache
def _huge_header() -> bytes:
    """A JPEG header declaring 9000x9000 over a few bytes of scan and an EOI marker."""
    data = _encode(PILImage.new("RGB", (9000, 9000), (128, 0, 0)), "JPEG")
    return data[: data.index(b"\xff\xda") + 20] + b"\xff\xd9"


def content(kind: str, suffix: str, seed: int) -> bytes:
    """The bytes of one generated file."""
    rng = np.random.default_rng(seed)
    fmt = {".png": "PNG", ".gif": "GIF", ".webp": "WEBP", ".tif": "TIFF"}.get(suffix.lower(), "JPEG")
    if kind == "face":
        return _encode(FACE, fmt)
    if kind == "noise":
        return _encode(PILImage.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)), fmt)
    if kind == "truncated":
        data = _encode(FACE, fmt)
        return data[: int(len(data) * rng.uniform(0.05, 0.9))]
    if kind == "random":
        return rng.integers(0, 256, int(rng.integers(1, 400)), dtype=np.uint8).tobytes()
    if kind == "empty":
        return b""
    if kind == "wrong_format":  # a PNG named .jpg and the like: decodable, the suffix lies
        return _encode(FACE, "PNG" if fmt != "PNG" else "BMP")
    if kind == "huge_header":
        return _huge_header()
    return b"ceci n'est pas une image\n"


# File names: printable Unicode, spaces, leading dashes, or raw bytes that are not UTF-8.
text_names = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/\\"),
    min_size=1, max_size=12,
).filter(lambda s: s not in (".", "..") and len(s.encode()) < 60)
byte_names = st.binary(min_size=1, max_size=12).filter(lambda b: b"/" not in b and b"\0" not in b
                                                      and b not in (b".", b".."))
names = st.one_of(text_names, st.builds(lambda s: "-" + s, text_names), st.builds(lambda s: s + " ", text_names),
                  byte_names.map(os.fsdecode))


@dataclass
class Tree:
    """What a generated example holds, and what the walk must list."""

    files: list[tuple[int, str, str, str]] = field(default_factory=list)  # (folder, name, suffix, kind)
    links: list[tuple[int, str, str]] = field(default_factory=list)  # (folder, name, link kind)
    out: str = "outside"  # outside | inside | nested | file
    explicit: list[int] = field(default_factory=list)  # indexes of files also named on the command line
    workers: int = 1


trees = st.builds(
    Tree,
    files=st.lists(st.tuples(st.integers(0, 2), names, st.sampled_from(SUFFIXES), st.sampled_from(KINDS)),
                   min_size=1, max_size=6),
    links=st.lists(st.tuples(st.integers(0, 2), names, st.sampled_from(LINKS)), max_size=3),
    out=st.sampled_from(["outside", "inside", "nested", "file"]),
    explicit=st.lists(st.integers(0, 5), max_size=2),
    workers=st.sampled_from([1, 2]),
)

FOLDERS = ["", "sub", "sub/deeper"]


def build(tree: Tree, base: Path) -> tuple[list[Path], Path, list[Path]]:
    """Make the tree under ``base``; return (command-line inputs, --out, the inputs expected in faces.jsonl)."""
    root = base / "in"
    for folder in FOLDERS:
        (root / folder).mkdir(parents=True, exist_ok=True)
    (base / "elsewhere").mkdir()
    (base / "elsewhere" / "real.png").write_bytes(_encode(FACE, "PNG"))
    out = {"outside": base / "out", "inside": root / "out", "nested": root / "sub" / "results",
           "file": base / "out-file"}[tree.out]
    if tree.out == "file":
        out.write_text("I am a file")
    made: list[Path] = []
    listed: list[Path] = []
    taken = {os.fsencode(root / f).lower() for f in ("sub", "sub/deeper", "out", "sub/results")}

    def fresh(folder: int, name: str, suffix: str) -> Path | None:
        path = root / FOLDERS[folder] / (name + suffix)
        key = os.fsencode(path).lower()  # distinct names, none equal to a folder the example makes
        if key in taken or len(os.fsencode(path.name)) > 200:
            return None
        taken.add(key)
        return path

    for i, (folder, name, suffix, kind) in enumerate(tree.files):
        path = fresh(folder, name, suffix)
        if path is None:
            continue
        path.write_bytes(content(kind, suffix, seed=i))
        made.append(path)
        if suffix.lower() in WALKED:
            listed.append(path)
    for folder, name, kind in tree.links:
        suffix = "" if kind == "dir_loop" else ".jpg"
        path = fresh(folder, name, suffix)
        if path is None:
            continue
        if kind == "inside" and made:
            path.symlink_to(made[0])
        elif kind == "outside":
            path.symlink_to(base / "elsewhere" / "real.png")
        elif kind == "dangling" or (kind == "inside" and not made):
            path.symlink_to(base / "nowhere.jpg")
        elif kind == "loop":
            path.symlink_to(path)
        elif kind == "fifo":
            os.mkfifo(path)
        elif kind == "dir_loop":
            path.symlink_to(root)  # the walk must end here, not run forever
            continue
        elif kind == "dir_named_like_image":
            path.mkdir()  # walked as a folder, not listed
            continue
        listed.append(path)
    inputs = [root] + [made[i] for i in tree.explicit if i < len(made)]
    expected = listed + [made[i] for i in tree.explicit if i < len(made)]
    return inputs, out, expected


def as_json_path(path: Path) -> str:
    """How faces.jsonl spells a path: bytes that are not UTF-8 as \\xNN escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def check(code: int, out: Path, tree: Tree, expected: list[Path], stderr: str) -> None:
    assert code in (0, 1, 2), (code, stderr)
    if tree.out == "file":
        assert code == 2 and "not a folder" in stderr
        return
    if not expected:  # nothing with an image or video suffix and nothing named: a usage error, documented
        assert code == 2 and "no image or video files found" in stderr
        return
    assert code != 2, stderr
    lines = (out / "faces.jsonl").read_bytes().decode("utf-8").splitlines()  # strict UTF-8
    records = [json.loads(line) for line in lines]
    assert Counter(r["path"] for r in records) == Counter(map(as_json_path, expected))
    for r in records:
        assert set(r) == {"path", "width", "height", "faces", "error"}
        assert (r["error"] is None) == (r["width"] is not None) or r["error"].startswith("annotated")
    assert code == (1 if any(r["error"] for r in records) else 0)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=trees)
def test_every_input_gets_one_line_in_process(tree: Tree) -> None:
    """Run twice into the same --out: the second run sees the same inputs (not its own output)."""
    runner = CliRunner()
    with tempfile.TemporaryDirectory() as tmp:
        inputs, out, expected = build(tree, Path(tmp))
        args = ["analyze", *map(str, inputs), "--out", str(out), "--stages", "detect", "--workers", str(tree.workers)]
        for _ in range(2):
            res = runner.invoke(app, args)
            assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
            check(res.exit_code, out, tree, expected, res.stderr)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow],
          phases=[Phase.explicit, Phase.reuse, Phase.generate])
@given(tree=trees.filter(lambda t: t.out != "file"))
def test_every_input_gets_one_line_as_a_process(tree: Tree) -> None:
    """The real process: a crash in native code (a signal) or a traceback would show here.

    Not shrunk: each try starts a process, and shrinking one failure took over five minutes.
    """
    with tempfile.TemporaryDirectory() as tmp:
        inputs, out, expected = build(tree, Path(tmp))
        proc = subprocess.run([sys.executable, "-m", "faceflow.cli", "analyze", *inputs, "--out", out,
                               "--stages", "detect,landmarks"], capture_output=True, timeout=300)
        stderr = proc.stderr.decode("utf-8")  # strict: the messages are valid UTF-8 as well
        assert "Traceback" not in stderr
        check(proc.returncode, out, tree, expected, stderr)
