"""Decode anything a user may hand us into an RGB ``uint8`` array, or raise :class:`ImageError`.

Accepts a path, ``bytes``, a PIL image or a numpy array (taken as RGB / RGBA / grayscale).
EXIF orientation is applied; palette, grayscale, RGBA, CMYK, 16-bit and float images are converted;
animated formats give their first frame; a pixel-count limit stops decompression bombs before any
pixel is decoded.
"""

from __future__ import annotations

import contextlib
import io as _io
import os
import stat
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image as PILImage
from PIL import ImageOps, UnidentifiedImageError

from faceflow.errors import ImageError, ImageTooLarge
from faceflow.types import Image

ImageSource = str | os.PathLike[str] | bytes | bytearray | memoryview | PILImage.Image | npt.NDArray[Any]
"""Everything :func:`load_image` accepts."""

DEFAULT_MAX_PIXELS = 100_000_000
"""Largest image (width x height) decoded unless ``FACEFLOW_MAX_PIXELS`` or ``max_pixels`` says otherwise."""

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".avif",
                            ".heic", ".heif"})
"""File suffixes that folder walks treat as images (those Pillow cannot decode get an error each)."""

_NO_DECODER = {".heic": "HEIC", ".heif": "HEIF", ".avif": "AVIF"}
"""Formats that a Pillow build may lack a decoder for: named in the error instead of "not an image"."""


def max_pixels_default() -> int:
    value = os.environ.get("FACEFLOW_MAX_PIXELS")
    return int(value) if value else DEFAULT_MAX_PIXELS


def load_image(source: ImageSource, *, max_pixels: int | None = None) -> Image:
    """Return ``source`` as a contiguous RGB ``uint8`` array of shape ``(h, w, 3)``."""
    limit = max_pixels if max_pixels is not None else max_pixels_default()
    if isinstance(source, np.ndarray):
        return _from_array(source, limit)
    if isinstance(source, PILImage.Image):
        _check_size(source.width, source.height, limit, None)
        return _from_pil(source, None)
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
        if not data:
            raise ImageError("empty input (0 bytes)")
        return _decode(_io.BytesIO(data), limit, None)
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        name = str(source)
        _check_regular_file(path, name)
        try:
            with open(path, "rb") as fh:
                return _decode(fh, limit, name, path.suffix.lower())
        except OSError as exc:  # unreadable after all: permissions, I/O error, vanished meanwhile
            raise ImageError(f"cannot read file: {exc.strerror or exc}", name) from None
    raise ImageError(f"unsupported input type {type(source).__name__}")


def _check_regular_file(path: Path, name: str) -> None:
    """Refuse what is not a readable regular file before opening it (a FIFO would block forever)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ImageError("broken symbolic link" if path.is_symlink() else "file not found", name) from None
    except OSError as exc:  # a link loop (ELOOP), a name too long, a folder we may not enter
        raise ImageError(f"cannot read file: {exc.strerror or exc}", name) from None
    if stat.S_ISDIR(st.st_mode):
        raise ImageError("is a directory, not an image file", name)
    if not stat.S_ISREG(st.st_mode):
        kind = "FIFO" if stat.S_ISFIFO(st.st_mode) else "device or socket"
        raise ImageError(f"not a regular file ({kind})", name)
    if st.st_size == 0:
        raise ImageError("empty file (0 bytes)", name)


def _check_size(width: int, height: int, limit: int, name: str | None) -> None:
    if width <= 0 or height <= 0:
        raise ImageError(f"image has no pixels ({width}x{height})", name)
    if width * height > limit:
        raise ImageTooLarge(
            f"image is {width}x{height} = {width * height:,} pixels, over the limit of {limit:,} "
            "(possible decompression bomb; raise FACEFLOW_MAX_PIXELS to allow it)",
            name,
        )


def _decode(stream: Any, limit: int, name: str | None, suffix: str = "") -> Image:
    with warnings.catch_warnings():
        # We enforce our own limit below; PIL's bomb warning/error would be a second, vaguer one.
        warnings.simplefilter("ignore", PILImage.DecompressionBombWarning)
        saved = PILImage.MAX_IMAGE_PIXELS
        try:
            PILImage.MAX_IMAGE_PIXELS = None
            try:
                img = PILImage.open(stream)
            except UnidentifiedImageError:
                if suffix in _NO_DECODER:
                    raise ImageError(f"unsupported format {_NO_DECODER[suffix]}: this installation cannot decode "
                                     "it (convert it to JPEG or PNG)", name) from None
                raise ImageError("not a recognised image format", name) from None
            except (OSError, SyntaxError, ValueError) as exc:
                raise ImageError(f"cannot read image header: {exc}", name) from None
        finally:
            PILImage.MAX_IMAGE_PIXELS = saved
        _check_size(img.width, img.height, limit, name)
        if img.format == "JPEG":
            _check_jpeg_data(stream, name)
        try:
            img.seek(0)
            img.load()
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            reason = str(exc) or type(exc).__name__
            if "truncated" in reason.lower() or isinstance(exc, EOFError):
                reason = f"truncated or corrupt image data ({reason})"
            else:
                reason = f"corrupt image data ({reason})"
            raise ImageError(reason, name) from None
        return _from_pil(img, name)


_ARITHMETIC_SOF = frozenset({0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


def _check_jpeg_data(stream: Any, name: str | None) -> None:
    """Refuse a JPEG whose coded data is too short for the size its header declares.

    libjpeg decodes a stream cut short but ended with an EOI marker into a grey picture of the
    declared size and only warns, which Pillow drops: a 600-byte file would give 81 megapixels of
    grey. A Huffman-coded scan needs at least one bit per MCU (8x8 pixels per sampling unit), so
    fewer coded bytes than ``MCUs / 8`` after the first SOS can only mean missing data. Arithmetic
    coding can go below that bound and is not checked.
    """
    start = stream.tell()
    try:
        stream.seek(0, _io.SEEK_END)
        total = stream.tell()
        pos = 2
        frame: tuple[int, int, int, int, int] | None = None  # marker, width, height, hmax, vmax
        while pos + 4 <= total:
            stream.seek(pos)
            head = stream.read(4)
            if len(head) < 4 or head[0] != 0xFF:
                return  # not a plain marker sequence: leave the judgement to the decoder
            marker, length = head[1], int.from_bytes(head[2:4], "big")
            if marker == 0xFF:
                pos += 1  # fill byte
                continue
            if marker == 0x01 or 0xD0 <= marker <= 0xD8:
                pos += 2  # a marker without a length
                continue
            if length < 2:
                return  # malformed: the decoder will say so
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                seg = stream.read(length - 2)
                if len(seg) >= 6:
                    height, width, ncomp = int.from_bytes(seg[1:3], "big"), int.from_bytes(seg[3:5], "big"), seg[5]
                    factors = [seg[6 + 3 * i + 1] for i in range(ncomp) if 6 + 3 * i + 1 < len(seg)]
                    hmax = max((f >> 4 for f in factors), default=1) or 1
                    vmax = max((f & 15 for f in factors), default=1) or 1
                    frame = (marker, width, height, hmax, vmax)
            if marker == 0xDA:
                if frame is None or frame[0] in _ARITHMETIC_SOF:
                    return
                _, width, height, hmax, vmax = frame
                mcus = -(-width // (8 * hmax)) * -(-height // (8 * vmax))
                coded = total - (pos + 2 + length)
                if coded * 8 < mcus:
                    raise ImageError(
                        f"truncated image data: {width}x{height} declared but only {max(coded, 0):,} bytes of "
                        f"coded data (at least {-(-mcus // 8):,} needed)", name)
                return
            pos += 2 + length
    finally:
        stream.seek(start)


def _from_pil(img: PILImage.Image, name: str | None) -> Image:
    with contextlib.suppress(Exception):  # a malformed EXIF block must not lose the picture
        img = ImageOps.exif_transpose(img) or img
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img)
        return _from_array(arr, None)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = PILImage.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = PILImage.alpha_composite(white, rgba)
    try:
        rgb = img.convert("RGB")
    except (OSError, ValueError) as exc:
        raise ImageError(f"cannot convert {mode} image to RGB: {exc}", name) from None
    return np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8))


def _from_array(arr: npt.NDArray[Any], limit: int | None) -> Image:
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise ImageError(f"array of shape {arr.shape} is not an image (need HxW, HxWx3 or HxWx4)")
    if limit is not None:
        _check_size(arr.shape[1], arr.shape[0], limit, None)
    if arr.dtype == np.uint8:
        out = arr
    elif arr.dtype == np.uint16:
        out = (arr >> 8).astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.integer):
        top = max(int(arr.max()), 1)
        scale = 255.0 / (65535 if top > 255 else 255)
        out = np.clip(arr.astype(np.float64) * scale, 0, 255).astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise ImageError("float image contains NaN or infinity")
        peak = float(arr.max()) if arr.size else 0.0
        fscale = 255.0 if peak <= 1.0 else 1.0
        out = np.clip(np.rint(arr * fscale), 0, 255).astype(np.uint8)
    elif arr.dtype == np.bool_:
        out = arr.astype(np.uint8) * 255
    else:
        raise ImageError(f"unsupported array dtype {arr.dtype}")
    if out.ndim == 2:
        out = np.stack([out] * 3, axis=-1)
    elif out.shape[2] == 4:
        alpha = out[:, :, 3:4].astype(np.float32) / 255.0
        out = (out[:, :, :3].astype(np.float32) * alpha + 255.0 * (1 - alpha)).round().astype(np.uint8)
    return np.ascontiguousarray(out)


def iter_image_files(
    paths: list[str] | list[Path], *, exclude: list[Path] | tuple[Path, ...] = (), unreadable: bool = False
) -> list[Path]:
    """Expand files and folders (recursively, sorted) into the image files to process.

    A file named explicitly is always kept, whatever its suffix, so that a bad file given by name
    gets its own error instead of vanishing. In folders, regular files with an image suffix are
    kept; with ``unreadable`` also every other image-suffixed entry that is not a folder (dangling
    or looping links, FIFOs), so that a batch gives each its own error instead of silently nothing.
    Linked folders are followed, each physical folder at most once (a link loop ends there).
    Folders in ``exclude`` (say, the output folder inside an input folder) are skipped.
    """
    skip = {os.path.realpath(p) for p in exclude}
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(_walk(p, skip, unreadable))
        else:
            out.append(p)
    return out


def _walk(root: Path, skip: set[str], unreadable: bool) -> list[Path]:
    seen: set[tuple[int, int]] = set()
    found: list[Path] = []

    def visit(folder: Path) -> None:
        try:
            st = folder.stat()
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            return  # a folder we may not list is not an input; the walk goes on
        if (st.st_dev, st.st_ino) in seen:
            return
        seen.add((st.st_dev, st.st_ino))
        for entry in entries:
            path = folder / entry.name
            try:
                is_dir, is_file = entry.is_dir(), entry.is_file()
            except OSError:
                is_dir = is_file = False
            if is_dir:
                if os.path.realpath(path) not in skip:
                    visit(path)
            elif Path(entry.name).suffix.lower() in IMAGE_SUFFIXES and (is_file or unreadable):
                found.append(path)

    visit(root)
    return found
