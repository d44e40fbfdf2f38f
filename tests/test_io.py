"""Image decoding: every supported format and input kind, and one clear error per kind of bad input."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from PIL import features

from faceflow.errors import ImageError
from faceflow.io import iter_image_files, load_image


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    rng = np.random.default_rng(7)
    img = np.zeros((48, 64, 3), np.uint8)
    img[:, :32] = (200, 30, 30)
    img[:, 32:] = (20, 40, 220)
    img[20:28] = rng.integers(0, 255, (8, 64, 3))
    return img


def _encode(img: PILImage.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF", "WEBP", "JPEG", "GIF"])
def test_formats_decode_to_rgb(rgb: np.ndarray, fmt: str, tmp_path: Path) -> None:
    lossless = fmt in ("PNG", "BMP", "TIFF")
    kw = {"lossless": True} if fmt == "WEBP" else {}
    data = _encode(PILImage.fromarray(rgb), fmt, **kw)
    path = tmp_path / f"x.{fmt.lower()}"
    path.write_bytes(data)
    for src in (path, str(path), data):
        out = load_image(src)
        assert out.shape == rgb.shape and out.dtype == np.uint8
        if lossless or fmt == "WEBP":
            assert np.array_equal(out, rgb)
        else:  # lossy/palette: colours of the two halves survive
            assert abs(int(out[5, 5, 0]) - 200) < 30 and abs(int(out[5, 50, 2]) - 220) < 30


def test_gif_first_frame(rgb: np.ndarray) -> None:
    frames = [PILImage.fromarray(rgb), PILImage.fromarray(255 - rgb)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    out = load_image(buf.getvalue())
    assert abs(int(out[5, 5, 0]) - 200) < 30  # first frame, not the inverted second one


def test_exif_orientation_applied(rgb: np.ndarray) -> None:
    exif = PILImage.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    data = _encode(PILImage.fromarray(rgb), "JPEG", exif=exif.tobytes(), quality=95)
    out = load_image(data)
    assert out.shape == (64, 48, 3)
    # Orientation 6: the image's left half (red) ends up on top.
    assert out[5, 5, 0] > 150 and out[-5, 5, 2] > 150


def test_modes_grayscale_rgba_16bit_cmyk(rgb: np.ndarray) -> None:
    gray = load_image(_encode(PILImage.fromarray(rgb).convert("L"), "PNG"))
    assert gray.shape == (48, 64, 3) and np.array_equal(gray[..., 0], gray[..., 2])
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    rgba[0, 0, 3] = 0  # a transparent pixel is composited on white
    out = load_image(_encode(PILImage.fromarray(rgba, "RGBA"), "PNG"))
    assert out.shape == rgb.shape and tuple(out[0, 0]) == (255, 255, 255) and tuple(out[1, 1]) == tuple(rgb[1, 1])
    deep = (rgb[..., 0].astype(np.uint16) * 257)
    out16 = load_image(_encode(PILImage.fromarray(deep), "PNG"))
    assert out16.dtype == np.uint8 and abs(int(out16[5, 5, 0]) - 200) <= 1
    cmyk = load_image(_encode(PILImage.fromarray(rgb).convert("CMYK"), "JPEG", quality=95))
    assert cmyk.shape == rgb.shape and abs(int(cmyk[5, 5, 0]) - 200) < 30


def test_numpy_and_pil_inputs(rgb: np.ndarray) -> None:
    assert np.array_equal(load_image(rgb), rgb)
    assert np.array_equal(load_image(PILImage.fromarray(rgb)), rgb)
    assert load_image(rgb[..., 0]).shape == (48, 64, 3)
    assert load_image(rgb.astype(np.float32) / 255.0)[5, 5, 0] == 200
    assert load_image(rgb.astype(np.uint16) * 257)[5, 5, 0] == 200
    with pytest.raises(ImageError, match="shape"):
        load_image(np.zeros((4, 4, 5), np.uint8))
    with pytest.raises(ImageError, match="NaN"):
        load_image(np.full((4, 4), np.nan, np.float32))


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        ("empty.jpg", b"", "empty"),
        ("text.jpg", b"this is not an image\n" * 10, "not a recognised image"),
        ("bomb.png", _png_header_only(30000, 30000), "over the limit"),
    ],
)
def test_bad_files_raise_one_clear_error(tmp_path: Path, name: str, data: bytes, reason: str) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(ImageError, match=reason) as info:
        load_image(path)
    assert str(path) in str(info.value)


def test_truncated_jpeg(rgb: np.ndarray, tmp_path: Path) -> None:
    big = np.tile(rgb, (8, 8, 1))
    data = _encode(PILImage.fromarray(big), "JPEG", quality=90)
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="truncated"):
        load_image(path)


def test_missing_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="not found"):
        load_image(tmp_path / "nope.jpg")
    with pytest.raises(ImageError, match="directory"):
        load_image(tmp_path)
    with pytest.raises(ImageError, match="unsupported input"):
        load_image(42)  # type: ignore[arg-type]


def test_pixel_limit_is_configurable(rgb: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ImageError, match="over the limit"):
        load_image(rgb, max_pixels=100)
    monkeypatch.setenv("FACEFLOW_MAX_PIXELS", "100")
    with pytest.raises(ImageError):
        load_image(_encode(PILImage.fromarray(rgb), "PNG"))


def test_shared_broken_files(dataset) -> None:  # type: ignore[no-untyped-def]
    broken = dataset("samples", "broken")
    expected = {"empty.jpg": "empty", "truncated.jpg": "truncated", "text.jpg": "not a recognised",
                "bomb.png": "over the limit"}
    for name, reason in expected.items():
        with pytest.raises(ImageError, match=reason):
            load_image(broken / name)
    assert load_image(broken / "zero_faces.png").shape == (426, 640, 3)


def test_iter_image_files(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    for rel in ("a/1.jpg", "a/b/2.PNG", "a/notes.txt", "c.webp"):
        (tmp_path / rel).write_bytes(b"x")
    files = iter_image_files([tmp_path / "a", tmp_path / "c.webp", tmp_path / "a" / "notes.txt"])
    names = [f.name for f in files]
    assert names == ["1.jpg", "2.PNG", "c.webp", "notes.txt"]


def test_jpeg_declaring_more_pixels_than_its_data_holds(tmp_path: Path) -> None:
    """A 9000x9000 header with a few bytes of scan and an EOI marker: libjpeg gives 81 megapixels of
    grey and a warning Pillow drops; it must be a truncation error instead."""
    data = _encode(PILImage.new("RGB", (9000, 9000), (200, 30, 30)), "JPEG")
    sos = data.index(b"\xff\xda")
    path = tmp_path / "tiny.jpg"
    path.write_bytes(data[: sos + 20] + b"\xff\xd9")
    assert path.stat().st_size < 1000
    with pytest.raises(ImageError, match=r"truncated image data: 9000x9000 declared") as info:
        load_image(path)
    assert str(path) in str(info.value)
    with pytest.raises(ImageError, match="truncated"):
        load_image(path.read_bytes())


@pytest.mark.parametrize("subsampling", [0, 2])
def test_tiny_flat_jpegs_still_decode(subsampling: int) -> None:
    """The bound is one bit per MCU: the smallest honest JPEGs (one flat colour) stay well above it."""
    for size in ((1, 1), (7, 9), (2000, 1500)):
        data = _encode(PILImage.new("RGB", size, (90, 90, 90)), "JPEG", quality=1, subsampling=subsampling)
        assert load_image(data).shape == (size[1], size[0], 3)
    progressive = _encode(PILImage.new("RGB", (2000, 1500), (90, 90, 90)), "JPEG", quality=1, progressive=True)
    assert load_image(progressive).shape == (1500, 2000, 3)


def test_files_that_cannot_be_read_give_an_error_not_a_hang(tmp_path: Path) -> None:
    """Tests run as root, so permissions stop nothing: a FIFO (open would block), a dangling link and
    a link loop are what is unreadable here."""
    os.mkfifo(tmp_path / "pipe.jpg")
    (tmp_path / "dangling.jpg").symlink_to(tmp_path / "gone.jpg")
    (tmp_path / "loop.jpg").symlink_to(tmp_path / "loop.jpg")
    with pytest.raises(ImageError, match="not a regular file"):
        load_image(tmp_path / "pipe.jpg")
    with pytest.raises(ImageError, match="broken symbolic link"):
        load_image(tmp_path / "dangling.jpg")
    with pytest.raises(ImageError, match="cannot read file"):
        load_image(tmp_path / "loop.jpg")


def test_heic_is_named_as_unsupported(tmp_path: Path) -> None:
    # The start of a real HEIF file: an ftyp box with brand heic (Pillow has no decoder for it).
    path = tmp_path / "photo.HEIC"
    path.write_bytes(struct.pack(">I", 24) + b"ftypheic" + b"\0\0\0\0" + b"mif1heic" + b"\0" * 64)
    with pytest.raises(ImageError, match="unsupported format HEIC"):
        load_image(path)


@pytest.mark.skipif(not features.check("avif"), reason="this Pillow has no AVIF codec")
def test_avif_decodes(rgb: np.ndarray, tmp_path: Path) -> None:
    path = tmp_path / "x.avif"
    path.write_bytes(_encode(PILImage.fromarray(rgb), "AVIF", quality=95))
    out = load_image(path)
    assert out.shape == rgb.shape and np.abs(out.astype(int) - rgb).mean() < 12


def test_walk_lists_what_cannot_be_decoded_and_skips_the_output(tmp_path: Path) -> None:
    """Every image-suffixed entry that is not a folder can be listed (each will get its own error line);
    a folder linking to its parent ends the walk there; the excluded folder is not entered."""
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    (root / "out" / "annotated").mkdir(parents=True)
    for rel in ("a.jpg", "b.avif", "c.heic", "sub/d.HEIF", "out/annotated/a.jpg", "notes.txt"):
        (root / rel).write_bytes(b"x")
    os.mkfifo(root / "fifo.png")
    (root / "dangling.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (root / "sub" / "up").symlink_to(root)  # a link loop
    (root / "folder.jpg").mkdir()  # a folder named like an image is walked, not listed
    files = iter_image_files([root], exclude=[root / "out"], unreadable=True)
    assert [f.relative_to(root).as_posix() for f in files] == [
        "a.jpg", "b.avif", "c.heic", "dangling.jpg", "fifo.png", "sub/d.HEIF"]
    assert len(iter_image_files([root], unreadable=True)) == 7  # without the exclusion: the old output too
    # Other callers (gallery, bench) get regular files only, as before.
    assert [f.name for f in iter_image_files([root], exclude=[root / "out"])] == ["a.jpg", "b.avif", "c.heic",
                                                                                 "d.HEIF"]


def test_jpeg_check_survives_odd_marker_sequences(rgb: np.ndarray) -> None:
    """A fill byte and a segment of length 0 before SOS, both of which libjpeg accepts: the size check
    must neither hang nor raise a false alarm on them (a guard, not a regression test)."""
    data = _encode(PILImage.fromarray(rgb), "JPEG")
    assert load_image(data[:2] + b"\xff" + data[2:]).shape == rgb.shape
    assert load_image(data[:2] + b"\xff\xe0\x00\x00" + data[2:]).shape == rgb.shape
