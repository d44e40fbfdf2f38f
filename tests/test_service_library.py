"""What the service needed from the library, tested at the library: uploads as bytes, the pixel limit's
own error, models loaded ahead, enrolment from bytes, one identification step shared with the CLI."""

from __future__ import annotations

import hashlib
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from faceflow.errors import ImageError, ImageTooLarge
from faceflow.gallery import open_gallery_store
from faceflow.gallery.workflows import Photo, create_gallery, enroll, identify, identify_result, make_analyzer
from faceflow.io import load_image
from faceflow.pipeline import Analyzer
from faceflow.recognize import verify_images
from tests.service_server import jpeg_bytes


def png_claiming(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))


def test_the_pixel_limit_has_its_own_error() -> None:
    with pytest.raises(ImageTooLarge, match="30000x30000"):
        load_image(png_claiming(30000, 30000), max_pixels=40_000_000)
    with pytest.raises(ImageError) as caught:  # a corrupt image under the limit is another ImageError
        load_image(png_claiming(10, 10))
    assert not isinstance(caught.value, ImageTooLarge)


def test_analyze_source_on_bytes_equals_analyze_file(tmp_path: Path, astronaut: np.ndarray) -> None:
    data = jpeg_bytes(astronaut)
    path = tmp_path / "a.jpg"
    path.write_bytes(data)
    with Analyzer(stages=("detect", "pose")) as analyzer:
        from_file, _ = analyzer.analyze_file(path)
        from_bytes, image = analyzer.analyze_source(data, "upload.jpg")
        broken, none = analyzer.analyze_source(data[:500], "cut.jpg")
    assert from_bytes.path == "upload.jpg" and image is not None
    assert [f.to_dict() for f in from_bytes.faces] == [f.to_dict() for f in from_file.faces]
    assert len(from_bytes.faces) == 1
    assert none is None and broken.error and broken.error.startswith("cut.jpg: ")


def test_load_models_builds_every_stage_model_before_any_image() -> None:
    with Analyzer(stages=("detect", "landmarks", "pose", "attributes")) as analyzer:
        assert analyzer.runtime.loaded == []
        analyzer.load_models()
        loaded = set(analyzer.runtime.loaded)
    # the default 68 points fuse the 478-point landmarker and PFLD-106, each with its mapping to iBUG-68
    assert {"tflite:face_landmarker", "onnx:pfld106:()", "landmarker_to_68", "pfld_to_68", "onnx:age:()",
            "onnx:gender:()", "tflite:expression"} <= loaded


def test_enrol_photos_given_as_bytes(tmp_path: Path, astronaut: np.ndarray) -> None:
    data = jpeg_bytes(astronaut)
    with open_gallery_store(tmp_path / "g.db") as store:
        create_gallery(store, "g", "sface")
        analyzer = make_analyzer("sface")
        report = enroll(store, "g", [("ada", Photo("../../etc/passwd", data)), ("ada", Photo("bad.jpg", b"nope"))],
                        analyzer)
        assert report.enrolled == 1 and len(report.face_ids) == 1
        assert [f.path for f in report.failed] == ["bad.jpg"]
        face = store.faces("g")[0]
        assert face.id == report.face_ids[0]
        assert face.source is None  # a client's file name is never kept where a path would be read from
        assert face.metadata["upload"] == "../../etc/passwd"
        assert face.source_sha256 == hashlib.sha256(data).hexdigest()
        # one identification step, the same for the CLI's photos and the service's uploads
        path = tmp_path / "probe.jpg"
        path.write_bytes(data)
        by_cli = next(identify(store, "g", [path], analyzer))
        result, _ = analyzer.analyze_source(data, str(path))
        from faceflow.gallery import Searcher

        by_service = identify_result(Searcher(store, "g"), result)
        assert by_cli.to_dict() == by_service.to_dict()
        assert by_service.answers[0].subject == "ada"


def test_verify_images_reuses_a_detector(astronaut: np.ndarray) -> None:
    from faceflow.detect import create_detector
    from faceflow.models.runtime import Runtime

    mirrored = np.ascontiguousarray(astronaut[:, ::-1])
    with Runtime() as runtime:
        detector = create_detector("yunet", runtime=runtime)
        first = verify_images(astronaut, mirrored, runtime=runtime, detector=detector)
        model = detector.model
        second = verify_images(astronaut, mirrored, runtime=runtime, detector=detector)
        assert detector.model is model  # the same OpenCV net, not a new one per call
        fresh = verify_images(astronaut, mirrored, runtime=runtime)
    assert first == second == fresh and first.same
