"""The output layout of a batch: mirrored names, collision-free annotated names, stale cleanup, safe writes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from faceflow.errors import ConfigError
from faceflow.outputs import (
    MANIFEST,
    AnnotatedWriter,
    annotated_names,
    common_folder,
    display_path,
    json_line,
    prepare_out_dir,
    result_paths,
)


def test_result_paths_mirror_below_the_common_folder(tmp_path: Path) -> None:
    (tmp_path / "in" / "a").mkdir(parents=True)
    (tmp_path / "in" / "b").mkdir()
    files = [tmp_path / "in" / "a" / "x.jpg", tmp_path / "in" / "b" / "x.jpg"]
    assert result_paths([tmp_path / "in"], files) == [Path("a/x.jpg"), Path("b/x.jpg")]
    # Two files named on their own, in different folders: the common folder of both parents.
    assert result_paths(files, files) == [Path("a/x.jpg"), Path("b/x.jpg")]


def test_common_folder_is_the_one_result_paths_mirrors_below(tmp_path: Path) -> None:
    """The Ray engine names annotated images in one pass over its list (no list in memory): the same
    relative paths as :func:`result_paths` given the folders and files the user named."""
    (tmp_path / "in" / "a").mkdir(parents=True)
    (tmp_path / "other").mkdir()
    files = [tmp_path / "in" / "a" / "x.jpg", tmp_path / "in" / "y.jpg", tmp_path / "other" / "z.jpg"]
    for named in ([tmp_path / "in" / "a", *files[1:]], [tmp_path / "in", files[2]], files[:2], [files[0]]):
        folders = [p for p in named if p.suffix != ".jpg"]
        mirrored = [f for f in files if any(f == n or n in f.parents for n in named)]
        common = common_folder(folders, iter(mirrored))
        assert common is not None
        assert [Path(os.path.relpath(f, common)) for f in mirrored] == result_paths(named, mirrored)
    assert common_folder([], []) is None


def test_result_paths_of_a_link_to_a_file_outside_the_folder(tmp_path: Path) -> None:
    """The link keeps its own name below the folder (the old version resolved it and raised ValueError)."""
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "o.jpg").write_bytes(b"x")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "link.jpg").symlink_to(tmp_path / "outside" / "o.jpg")
    assert result_paths([tmp_path / "in"], [tmp_path / "in" / "link.jpg"]) == [Path("link.jpg")]


def test_annotated_names_never_collide() -> None:
    rel = [Path(p) for p in ("a.gif", "a.webp", "x.png", "x.tif", "x.tif.png", "k.jpg", "k.jpg", "K.JPG",
                             "d/a.bmp", "e/a.bmp")]
    names = annotated_names(rel)
    assert [str(n) for n in names] == ["a.gif.png", "a.webp.png", "x.png", "x.tif.png", "x.tif~2.png", "k.jpg",
                                       "k~2.jpg", "K~3.JPG", "d/a.bmp.png", "e/a.bmp.png"]
    assert len({str(n).casefold() for n in names}) == len(names)


def test_json_line_of_a_name_that_is_not_utf8() -> None:
    name = os.fsdecode(b"/photos/caf\xe9 \xff.jpg")  # Latin-1 bytes: lone surrogates in Python
    line = json_line({"path": name, "width": None, "height": None, "faces": [],
                      "error": f"{name}: not a recognised image format"})
    line.encode("utf-8")  # the old line carried lone surrogates, which no UTF-8 writer accepts
    record = json.loads(line)
    assert record["path"] == "/photos/caf\\xe9 \\xff.jpg" == display_path(name)
    assert record["error"].startswith("/photos/caf\\xe9 \\xff.jpg: ")


def test_prepare_out_dir_refuses_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match="not a folder"):
        prepare_out_dir(tmp_path / "f")
    with pytest.raises(ConfigError, match="cannot be created"):
        prepare_out_dir(tmp_path / "f" / "sub")
    prepare_out_dir(tmp_path / "new" / "deep")
    assert (tmp_path / "new" / "deep").is_dir()


def _run(out: Path, inputs: list[Path], files: list[Path]) -> AnnotatedWriter:
    writer = AnnotatedWriter(out, inputs, files)
    writer.start()
    for f in files:
        assert writer.save(writer.next_target(str(f)), b"img:" + f.name.encode()) is None
    return writer


def test_rerun_removes_only_its_own_stale_images(tmp_path: Path) -> None:
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    files = [src / "a.jpg", src / "sub" / "b.png"]
    out = tmp_path / "out"
    _run(out, [src], files)
    assert (out / "annotated" / "sub" / "b.png").read_bytes() == b"img:b.png"
    (out / "annotated" / "mine.txt").write_text("a file of the user's")
    _run(out, [src], files[:1])
    assert not (out / "annotated" / "sub").exists()  # b.png removed, then its emptied folder
    assert (out / "annotated" / "a.jpg").is_file()
    assert (out / "annotated" / "mine.txt").is_file()  # not in the manifest: left alone
    assert (out / "annotated" / MANIFEST).read_bytes() == b"a.jpg\n"


def test_stale_cleanup_never_removes_an_input(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "annotated").mkdir(parents=True)
    victim = out / "annotated" / "v.jpg"
    victim.write_bytes(b"precious")
    (out / "annotated" / MANIFEST).write_bytes(b"v.jpg\n../../escape.jpg\n")
    (tmp_path / "escape.jpg").write_bytes(b"precious")
    writer = AnnotatedWriter(out, [victim], [victim])
    assert writer.start() == []
    assert victim.read_bytes() == b"precious" and (tmp_path / "escape.jpg").is_file()


def test_a_failed_write_is_a_reason_not_an_exception(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    files = [src / "a.jpg", src / "b.jpg"]
    out = tmp_path / "out"
    writer = AnnotatedWriter(out, [src], files)
    writer.start()
    (out / "annotated" / "a.jpg").mkdir()  # something in the way of the first image
    reason = writer.save(writer.next_target(str(files[0])), b"x")
    assert reason is not None and "annotated image not written" in reason and "a.jpg" in reason
    assert writer.save(writer.next_target(str(files[1])), b"y") is None
    assert (out / "annotated" / "b.jpg").read_bytes() == b"y"
    assert [p.name for p in (out / "annotated").iterdir() if p.name.endswith(".tmp")] == []


def test_the_same_file_twice_gets_two_names(tmp_path: Path) -> None:
    f = tmp_path / "a.jpg"
    writer = _run(tmp_path / "out", [f, f], [f, f])
    assert sorted(p.name for p in writer.root.iterdir()) == [MANIFEST, "a.jpg", "a~2.jpg"]


def test_a_name_at_the_length_limit_is_written(tmp_path: Path) -> None:
    """The temporary file was "<name>.tmp": 5 bytes more than a 251-byte name, over the 255 limit."""
    f = tmp_path / ("n" * 247 + ".jpg")
    writer = AnnotatedWriter(tmp_path / "out", [f], [f])
    writer.start()
    assert writer.save(writer.next_target(str(f)), b"x") is None
    assert (writer.root / f.name).read_bytes() == b"x"
    mode = (writer.root / f.name).stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask  # not mkstemp's 0600


def test_a_name_planned_but_never_written_is_not_removed_later(tmp_path: Path) -> None:
    """The manifest listed every planned name, written or not: a later run into the same folder then
    deleted the user's own file that sat at the name of an image that had failed."""
    src = tmp_path / "in"
    src.mkdir()
    files = [src / "a.jpg", src / "b.jpg"]
    out = tmp_path / "out"
    (out / "annotated").mkdir(parents=True)
    mine = out / "annotated" / "b.jpg"
    mine.write_bytes(b"a file of the user's")
    writer = AnnotatedWriter(out, [src], files)
    writer.start()
    assert writer.save(writer.next_target(str(files[0])), b"img:a") is None
    writer.next_target(str(files[1]))  # b.jpg failed to load: nothing is written for it
    assert (out / "annotated" / MANIFEST).read_bytes() == b"a.jpg\n"
    _run(out, [src], files[:1])
    assert mine.read_bytes() == b"a file of the user's"


def test_an_input_at_its_own_target_is_never_listed_nor_removed(tmp_path: Path) -> None:
    """Writing into the input folder itself (``anonymize photos --out photos``): each target is its
    input, so nothing is written, and a rerun on fewer files must not delete the others."""
    files = [tmp_path / "a.jpg", tmp_path / "b.jpg"]
    for f in files:
        f.write_bytes(b"precious " + f.name.encode())
    writer = AnnotatedWriter(tmp_path, [tmp_path], files, subdir="")
    writer.start()
    for f in files:
        assert "is an input" in (writer.save(writer.next_target(str(f)), b"x") or "")
    again = AnnotatedWriter(tmp_path, [files[0]], files[:1], subdir="")
    assert again.start() == []
    assert [f.read_bytes() for f in files] == [b"precious a.jpg", b"precious b.jpg"]


def test_a_file_of_the_users_at_a_target_is_not_replaced(tmp_path: Path) -> None:
    """``--out`` pointed at a folder that already holds a file of the same name: the user's file stays,
    the image is reported as not written, and the rest of the batch is written; a rerun still replaces
    what the first run wrote."""
    src = tmp_path / "in"
    src.mkdir()
    files = [src / "a.jpg", src / "b.jpg"]
    out = tmp_path / "out"
    out.mkdir()
    mine = out / "a.jpg"
    mine.write_bytes(b"a file of the user's")
    writer = AnnotatedWriter(out, [src], files, subdir="")
    writer.start()
    reason = writer.save(writer.next_target(str(files[0])), b"img:a")
    assert reason is not None and "no earlier faceflow run wrote it" in reason
    assert writer.save(writer.next_target(str(files[1])), b"img:b") is None
    assert mine.read_bytes() == b"a file of the user's"
    again = AnnotatedWriter(out, [src], files, subdir="")
    again.start()
    assert again.save(again.next_target(str(files[0])), b"img:a") is not None
    assert again.save(again.next_target(str(files[1])), b"img:b2") is None
    assert (out / "b.jpg").read_bytes() == b"img:b2" and mine.read_bytes() == b"a file of the user's"
