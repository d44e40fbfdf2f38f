"""The REST service end to end: a real ``faceflow serve`` on 127.0.0.1, real models, real photos.

Every abuse of the issue's list gets its documented status and code, and the server keeps answering
afterwards (each test ends by checking that it does).
"""

from __future__ import annotations

import concurrent.futures
import io
import json
import re
import socket
import struct
import time
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from faceflow.service.keys import KeyStore
from tests.conftest import ASTRONAUT_FACE_BOX
from tests.service_server import Server, jpeg_bytes, start_server

pytest.importorskip("fastapi")


def iou(a: list[float], b: tuple[float, ...]) -> float:
    x1, y1, x2, y2 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


class Keys:
    """The keys the tests use, made before the server starts (so it makes no admin key of its own)."""

    def __init__(self, home: Path) -> None:
        with KeyStore(home / "keys.db") as store:
            self.admin = store.create("admin", "admin")[0]
            self.writer = store.create("writer", "write")[0]
            self.reader = store.create("reader", "read")[0]
            self.only_a = store.create("only-a", "write", ["team-a"])[0]
            self.burst = store.create("burst", "read")[0]
            self.revoked, record = store.create("revoked", "read")
            store.revoke(record.id)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("serve-home")


@pytest.fixture(scope="module")
def keys(home: Path) -> Keys:
    return Keys(home)


@pytest.fixture(scope="module")
def server(home: Path, keys: Keys) -> Iterator[Server]:
    srv = start_server(home, max_upload_bytes=8 * 1024 * 1024, rate_limit=20, rate_burst=40, threads=2,
                       queue_size=32, request_timeout=60)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def astronaut_jpeg(astronaut: np.ndarray) -> bytes:
    return jpeg_bytes(astronaut)


@pytest.fixture(scope="module")
def people(dataset) -> Path:  # type: ignore[no-untyped-def]
    return dataset("samples", "face_recognition", "examples", "knn_examples")  # type: ignore[no-any-return]


def still_answers(server: Server, key: str, image: bytes) -> None:
    """The server is alive and still analyses a photo."""
    assert server.alive(), server.logs()
    with server.client(key) as c:
        r = c.post("/v1/analyze", content=image, params={"stages": "detect"})
    assert r.status_code == 200, r.text
    assert len(r.json()["faces"]) == 1


def png_header(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares ``width`` x ``height`` (a decompression bomb's calling card)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


# -- what works ----------------------------------------------------------------------------------


def test_health_ready_metrics_and_page(server: Server) -> None:
    assert httpx.get(server.url + "/healthz").json() == {"status": "ok"}
    assert httpx.get(server.url + "/readyz").json() == {"status": "ready"}
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    metrics = httpx.get(server.url + "/metrics").text
    assert 'faceflow_requests_total{method="GET",route="/readyz",status="200"}' in metrics
    load = next(line for line in metrics.splitlines() if line.startswith("faceflow_model_load_seconds "))
    assert float(load.split()[1]) > 0
    assert "faceflow_queue_depth" in metrics


def test_page_is_served_with_protective_headers(server: Server) -> None:
    """The page holds an API key: no other site may frame it (clickjacking; a <meta> policy cannot say
    frame-ancestors), no answer is content-sniffed, no address leaks as a referrer."""
    page = httpx.get(server.url + "/")
    policy = page.headers.get("content-security-policy", "")
    assert "frame-ancestors 'none'" in policy and "script-src 'self'" in policy, policy
    assert page.headers.get("x-frame-options") == "DENY"
    assert page.headers.get("referrer-policy") == "no-referrer"
    for path in ("/", "/static/app.js", "/healthz", "/v1/me"):
        assert httpx.get(server.url + path).headers.get("x-content-type-options") == "nosniff", path


def test_docs_page_works_offline(server: Server) -> None:
    page = httpx.get(server.url + "/docs")
    assert page.status_code == 200 and "/openapi.json" in page.text
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert assets and all(a.startswith("/docs-assets/") for a in assets), assets  # nothing from elsewhere
    for asset in assets:
        assert httpx.get(server.url + asset).status_code == 200, asset
    # FastAPI's ReDoc page would load its script and fonts from CDNs: not served at all
    redoc = httpx.get(server.url + "/redoc")
    assert redoc.status_code == 404 and redoc.json()["code"] == "not_found"


def test_analyze_matches_the_library(server: Server, keys: Keys, astronaut: np.ndarray, astronaut_jpeg: bytes) -> None:
    from faceflow.pipeline import Analyzer

    with server.client(keys.reader) as c:
        multipart = c.post("/v1/analyze", files={"image": ("astronaut.jpg", astronaut_jpeg, "image/jpeg")})
        raw = c.post("/v1/analyze", content=astronaut_jpeg, params={"stages": "detect,pose", "detector": "yunet"})
        via_header = httpx.post(server.url + "/v1/analyze", content=astronaut_jpeg,
                                headers={"X-API-Key": keys.reader}, params={"stages": "detect"}, timeout=60)
    assert multipart.status_code == 200, multipart.text
    body = multipart.json()
    assert (body["width"], body["height"]) == (512, 512)
    assert len(body["faces"]) == 1
    face = body["faces"][0]
    assert iou(face["box"], ASTRONAUT_FACE_BOX) > 0.8
    for field in ("landmarks5", "pose", "age", "gender", "expression"):
        assert field in face
    # the same dict the library gives for the same decoded image
    from faceflow.io import load_image

    with Analyzer() as analyzer:
        expected = [f.to_dict() for f in analyzer.analyze_array(load_image(astronaut_jpeg))]
    assert body["faces"] == expected
    assert set(raw.json()["faces"][0]) >= {"box", "pose"} and "age" not in raw.json()["faces"][0]
    assert via_header.status_code == 200


def test_verify_and_embed(server: Server, keys: Keys, astronaut: np.ndarray, astronaut_jpeg: bytes,
                          people: Path) -> None:
    mirrored = jpeg_bytes(np.ascontiguousarray(astronaut[:, ::-1]))
    obama = (people / "train" / "obama" / "obama.jpg").read_bytes()
    with server.client(keys.reader) as c:
        same = c.post("/v1/verify", files={"image1": ("a.jpg", astronaut_jpeg), "image2": ("b.jpg", mirrored)})
        other = c.post("/v1/verify", files={"image1": ("a.jpg", astronaut_jpeg), "image2": ("o.jpg", obama)})
        emb = c.post("/v1/embed", files={"image": ("a.jpg", astronaut_jpeg)})
        no_face = c.post("/v1/verify", files={"image1": ("a.jpg", astronaut_jpeg),
                                              "image2": ("g.jpg", jpeg_bytes(np.full((64, 64, 3), 90, np.uint8)))})
    assert same.status_code == 200, same.text
    s = same.json()
    assert s["decision"] is True and s["model"] == "sface" and s["similarity"] > s["threshold"]
    assert [f["faces_found"] for f in s["faces"]] == [1, 1]
    o = other.json()
    assert o["decision"] is False and o["similarity"] < o["threshold"]
    e = emb.json()
    assert e["model"] == "sface" and len(e["faces"]) == 1
    vector = np.array(e["faces"][0]["embedding"])
    assert vector.shape == (128,) and abs(np.linalg.norm(vector) - 1) < 1e-3
    assert no_face.status_code == 422 and no_face.json()["code"] == "no_face"


def test_gallery_lifecycle_identify_and_export(server: Server, keys: Keys, people: Path) -> None:
    train, test = people / "train", people / "test"
    with server.client(keys.writer) as c:
        r = c.post("/v1/galleries", json={"name": "friends", "model": "sface"})
        assert r.status_code == 201, r.text
        assert c.post("/v1/galleries", json={"name": "friends"}).json()["code"] == "conflict"
        ids = {}
        for person in ("obama", "biden"):
            photos = [("image", (p.name, p.read_bytes(), "image/jpeg")) for p in sorted((train / person).iterdir())]
            r = c.post(f"/v1/galleries/friends/subjects/{person}/faces", files=photos)
            assert r.status_code == 201, r.text
            assert len(r.json()["enrolled"]) == 2 and r.json()["failed"] == []
            ids[person] = r.json()["enrolled"]
        subjects = {s["name"]: s["faces"] for s in c.get("/v1/galleries/friends/subjects").json()}
        assert subjects == {"obama": 2, "biden": 2}
        found = c.post("/v1/galleries/friends/identify", content=(test / "obama1.jpg").read_bytes()).json()
        assert [f["subject"] for f in found["faces"]] == ["obama"]
        assert found["faces"][0]["matches"][0]["subject"] == "obama"
        unknown = c.post("/v1/galleries/friends/identify", files={"image": ("a.jpg",
                         (test / "alex_lacamoire1.jpg").read_bytes())}, params={"top_k": 1}).json()
        assert [f["subject"] for f in unknown["faces"]] == [None]
        assert len(unknown["faces"][0]["matches"]) == 1
        pair = c.post("/v1/galleries/friends/identify", content=(test / "obama_and_biden.jpg").read_bytes()).json()
        # the photo shows a third person, in the background: unknown to the gallery
        assert sorted(str(f["subject"]) for f in pair["faces"]) == ["None", "biden", "obama"]
        faces = c.get("/v1/galleries/friends/faces").json()
        assert sorted(f["id"] for f in faces) == sorted(ids["obama"] + ids["biden"])
        assert {f["upload"] for f in faces} == {"obama.jpg", "obama2.jpg", "biden.jpg", "biden2.jpg"}
        export = c.get("/v1/galleries/friends/export")
        assert export.status_code == 200 and export.headers["content-type"] == "application/zip"
        with zipfile.ZipFile(io.BytesIO(export.content)) as zf:
            header = json.loads(zf.read("gallery.json"))
            assert header["faces"] == 4 and header["subjects"] == 2
            assert len(zf.read("faces.jsonl").splitlines()) == 4
        assert c.delete(f"/v1/galleries/friends/faces/{ids['obama'][0]}").json() == {"deleted": 1}
        assert c.delete(f"/v1/galleries/friends/faces/{ids['obama'][0]}").json()["code"] == "not_found"
        assert c.delete("/v1/galleries/friends/subjects/biden").json() == {"deleted": 1}
        assert {s["name"] for s in c.get("/v1/galleries/friends/subjects").json()} == {"obama"}
        assert c.delete("/v1/galleries/friends").json() == {"deleted": 1}
        assert c.get("/v1/galleries/friends/subjects").status_code == 404


def test_enrol_refuses_photos_without_one_face(server: Server, keys: Keys, people: Path, astronaut_jpeg: bytes) -> None:
    with server.client(keys.writer) as c:
        assert c.post("/v1/galleries", json={"name": "strict", "model": "sface"}).status_code == 201
        group = (people / "test" / "obama_and_biden.jpg").read_bytes()
        r = c.post("/v1/galleries/strict/subjects/x/faces", files=[("image", ("group.jpg", group)),
                                                                   ("image", ("blank.jpg", b"not an image"))])
        assert r.status_code == 422 and r.json()["code"] == "unprocessable"
        message = r.json()["message"]
        assert "3 faces found, expected one" in message and "not a recognised image format" in message
        r = c.post("/v1/galleries/strict/subjects/x/faces", files=[("image", ("group.jpg", group)),
                                                                   ("image", ("a.jpg", astronaut_jpeg))])
        assert r.status_code == 201 and len(r.json()["enrolled"]) == 1 and r.json()["failed"][0]["name"] == "group.jpg"
        assert c.delete("/v1/galleries/strict").status_code == 200


def test_models_and_me(server: Server, keys: Keys) -> None:
    with server.client(keys.only_a) as c:
        me = c.get("/v1/me").json()
        models = c.get("/v1/models").json()
    assert me["scope"] == "write" and me["galleries"] == ["team-a"] and me["name"] == "only-a"
    by_name = {m["name"]: m for m in models}
    assert by_name["sface"]["licence"] and by_name["sface"]["default"] is True
    loaded = {m["name"] for m in models if m["loaded"]}
    # the default stages' models were loaded at start (the detector too, which OpenCV holds); the 68 points'
    # default is refined from the fused landmarker + PFLD regression, so the older mesh is not among them
    assert {"yunet", "face_landmarker", "pfld106", "age", "gender", "expression"} <= loaded, loaded
    assert "face_mesh" not in loaded
    assert "dlib_resnet" not in loaded  # nothing asked for it


# -- abuse ---------------------------------------------------------------------------------------


def test_missing_wrong_and_revoked_keys_get_401(server: Server, keys: Keys, astronaut_jpeg: bytes) -> None:
    cases = {
        "none": {},
        "empty bearer": {"Authorization": "Bearer"},
        "garbage": {"Authorization": "Bearer hello"},
        "right id, wrong secret": {"Authorization": "Bearer " + keys.reader[:-4] + "AAAA"},
        "revoked": {"Authorization": "Bearer " + keys.revoked},
        "basic scheme": {"Authorization": "Basic " + keys.reader},
        "wrong x-api-key": {"X-API-Key": keys.reader + "x"},
    }
    for label, headers in cases.items():
        r = httpx.post(server.url + "/v1/analyze", content=astronaut_jpeg, headers=headers, timeout=60)
        assert r.status_code == 401, label
        assert r.json()["code"] == "unauthorized", label
        assert "Traceback" not in r.text
    still_answers(server, keys.reader, astronaut_jpeg)


def test_revoking_a_key_takes_effect_at_once(server: Server, home: Path) -> None:
    with KeyStore(home / "keys.db") as store:
        key, record = store.create("short-lived", "read")
    with server.client(key) as c:
        assert c.get("/v1/me").status_code == 200
        with KeyStore(home / "keys.db") as store:  # another process would do the same: faceflow keys revoke
            store.revoke(record.id)
        assert c.get("/v1/me").status_code == 401


def test_wrong_scope_gets_403(server: Server, keys: Keys, astronaut_jpeg: bytes) -> None:
    with server.client(keys.reader) as c:
        assert c.post("/v1/galleries", json={"name": "nope"}).json()["code"] == "forbidden"
        r = c.post("/v1/galleries/any/subjects/x/faces", files={"image": ("a.jpg", astronaut_jpeg)})
        assert r.status_code == 403 and r.json()["code"] == "forbidden"
    with server.client(keys.only_a) as c:  # write scope, but not for this name
        assert c.post("/v1/galleries", json={"name": "team-b"}).status_code == 403
    with server.client(keys.admin) as c:
        assert c.get("/v1/galleries").status_code == 200
    still_answers(server, keys.reader, astronaut_jpeg)


def test_foreign_gallery_is_indistinguishable_from_a_missing_one(server: Server, keys: Keys,
                                                                 astronaut_jpeg: bytes) -> None:
    requests = [("GET", "/v1/galleries/{g}", None), ("GET", "/v1/galleries/{g}/subjects", None),
                ("GET", "/v1/galleries/{g}/faces", None), ("GET", "/v1/galleries/{g}/export", None),
                ("DELETE", "/v1/galleries/{g}", None), ("DELETE", "/v1/galleries/{g}/faces/1", None),
                ("DELETE", "/v1/galleries/{g}/subjects/x", None),
                ("POST", "/v1/galleries/{g}/identify", astronaut_jpeg)]

    def answers(client: httpx.Client) -> list[tuple[int, str, dict[str, str]]]:
        out = []
        for method, path, body in requests:
            r = client.request(method, path.format(g="secret"), content=body)
            headers = {k: v for k, v in r.headers.items() if k not in ("date",)}
            out.append((r.status_code, r.text, headers))
        r = client.post("/v1/galleries/secret/subjects/x/faces", files={"image": ("a.jpg", astronaut_jpeg)})
        out.append((r.status_code, r.text, {k: v for k, v in r.headers.items() if k != "date"}))
        return out

    with server.client(keys.admin) as admin:
        assert admin.post("/v1/galleries", json={"name": "secret", "model": "sface"}).status_code == 201
        assert admin.post("/v1/galleries/secret/subjects/x/faces",
                          files={"image": ("a.jpg", astronaut_jpeg)}).status_code == 201
    with server.client(keys.only_a) as c:
        foreign = answers(c)
        listed = [g["name"] for g in c.get("/v1/galleries").json()]
    with server.client(keys.admin) as admin:
        assert admin.delete("/v1/galleries/secret").status_code == 200
    with server.client(keys.only_a) as c:
        missing = answers(c)
    assert "secret" not in listed
    assert all(status == 404 for status, _, _ in foreign)
    assert foreign == missing
    with server.client(keys.admin) as admin:  # and the gallery the key may touch works
        assert admin.post("/v1/galleries", json={"name": "team-a", "model": "sface"}).status_code == 201
    with server.client(keys.only_a) as c:
        assert c.get("/v1/galleries/team-a/subjects").json() == []
        assert [g["name"] for g in c.get("/v1/galleries").json()] == ["team-a"]
    still_answers(server, keys.reader, astronaut_jpeg)


def test_50_megabyte_upload_gets_413(server: Server, keys: Keys, astronaut_jpeg: bytes) -> None:
    big = b"\xff" * (50 * 1024 * 1024)
    with server.client(keys.reader) as c:
        t0 = time.monotonic()
        r = c.post("/v1/analyze", content=big)
        assert r.status_code == 413 and r.json()["code"] == "too_large"

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
            for _ in range(50):
                yield b"\0" * (1024 * 1024)

        try:
            r = c.post("/v1/analyze", content=chunks())
            assert r.status_code == 413 and r.json()["code"] == "too_large"
        except (httpx.WriteError, httpx.RemoteProtocolError, httpx.ReadError):
            pass  # the server answered 413 and closed while the client was still sending: also a refusal
        assert time.monotonic() - t0 < 30
        r = c.post("/v1/analyze", files={"image": ("big.jpg", big[: 20 * 1024 * 1024])})
        assert r.status_code == 413
    assert 'status="413"' in httpx.get(server.url + "/metrics").text  # refusals are counted too
    still_answers(server, keys.reader, astronaut_jpeg)


def test_pixel_bomb_is_refused_from_its_header(server: Server, keys: Keys, astronaut_jpeg: bytes) -> None:
    bomb = png_header(30000, 30000)
    assert len(bomb) < 200
    with server.client(keys.reader) as c:
        t0 = time.monotonic()
        r = c.post("/v1/analyze", content=bomb)
        seconds = time.monotonic() - t0
        r2 = c.post("/v1/galleries/none/identify", content=bomb)
    assert r.status_code == 422 and r.json()["code"] == "image_too_large"
    assert "30000x30000" in r.json()["message"]
    assert seconds < 5  # 900 megapixels were never decoded (that would take minutes and 2.7 GB)
    assert r2.status_code == 404
    still_answers(server, keys.reader, astronaut_jpeg)


def test_truncated_and_non_images_get_422(server: Server, keys: Keys, astronaut_jpeg: bytes, datasets: Path) -> None:
    truncated = astronaut_jpeg[: len(astronaut_jpeg) // 3]
    broken = datasets / "samples" / "broken"
    with server.client(keys.reader) as c:
        for name, data in [("cut.jpg", truncated), ("cut-tiny.jpg", astronaut_jpeg[:700] + b"\xff\xd9"),
                           ("text", b"hello, I am not a picture"),
                           *((p.name, p.read_bytes()) for p in sorted(broken.iterdir()) if p.name != "zero_faces.png")]:
            r = c.post("/v1/analyze", files={"image": (name, data)})
            expected = "image_too_large" if name == "bomb.png" else "bad_image"
            assert r.status_code == 422, (name, r.text)
            assert r.json()["code"] == expected, (name, r.text)
        r = c.post("/v1/analyze", files={"image": ("zero.png", (broken / "zero_faces.png").read_bytes())})
        assert r.status_code == 200 and r.json()["faces"] == []
    still_answers(server, keys.reader, astronaut_jpeg)


def test_wrong_json_types_and_parameters_get_422(server: Server, keys: Keys, astronaut_jpeg: bytes) -> None:
    with server.client(keys.writer) as c:
        for body in ({"name": 5}, {"name": None}, {"name": ["a"]}, {"name": {"x": 1}}, {"name": True},
                     {"name": "ok", "threshold": "high"}, {"name": "ok", "threshold": 3}, {"name": "ok", "extra": 1},
                     [], "name", 42, {}):
            r = c.post("/v1/galleries", json=body)
            assert r.status_code == 422, (body, r.text)
            assert r.json()["code"] == "invalid_request"
        r = c.post("/v1/galleries", content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 422 and r.json()["code"] == "invalid_request"
        assert c.post("/v1/galleries", json={"name": "  "}).json()["code"] == "invalid_name"
        assert c.post("/v1/galleries", json={"name": "a/b"}).json()["code"] == "invalid_name"
        assert c.post("/v1/galleries", json={"name": "x", "model": "nope"}).json()["code"] == "bad_request"
        r = c.post("/v1/galleries/x/identify", params={"top_k": "many"}, content=astronaut_jpeg)
        assert r.status_code == 422 and r.json()["code"] == "invalid_request"
        assert c.post("/v1/galleries/x/identify", params={"top_k": 0}, content=astronaut_jpeg).status_code == 422
        assert c.post("/v1/analyze", params={"stages": "detect,telepathy"}, content=astronaut_jpeg).json()["code"] \
            == "bad_request"
        assert c.post("/v1/analyze", params={"detector": "magic"}, content=astronaut_jpeg).json()["code"] \
            == "bad_request"
        assert c.post("/v1/verify", params={"model": "magic"}, files={"image1": ("a", astronaut_jpeg),
                                                                       "image2": ("b", astronaut_jpeg)}).status_code \
            == 400
        assert c.post("/v1/verify", files={"image1": ("a", astronaut_jpeg)}).json()["code"] == "invalid_request"
        assert c.post("/v1/analyze").json()["code"] == "invalid_request"
        assert c.delete("/v1/galleries/x/faces/abc").json()["code"] == "invalid_request"
    still_answers(server, keys.reader, astronaut_jpeg)


@pytest.mark.parametrize("subject", ["../../etc/passwd", "x'; DROP TABLE faces; --",
                                     "Robert'); DELETE FROM subjects;--", "..", "%2e%2e", "C:\\Windows\\system32",
                                     "名前 😀"])
def test_path_and_sql_like_subject_names_are_only_names(server: Server, keys: Keys, astronaut_jpeg: bytes,
                                                        subject: str, tmp_path: Path) -> None:
    from urllib.parse import quote

    quoted = quote(subject, safe="").replace(".", "%2E")  # else a client folds "/../" out of the URL
    # nine requests per name, seven names: a key of its own each, so the per-key rate limit stays out of it
    with KeyStore(server.home / "keys.db") as store:
        writer = store.create(f"names-{tmp_path.name}", "write")[0]
    before = {p for p in server.home.parent.rglob("*") if "galleries.db" not in p.name}
    with server.client(writer) as c:
        c.post("/v1/galleries", json={"name": "names", "model": "sface"})
        r = c.post(f"/v1/galleries/names/subjects/{quoted}/faces", files={"image": ("a.jpg", astronaut_jpeg)})
        assert r.status_code == 201, r.text
        assert r.json()["subject"] == subject
        assert subject in {s["name"] for s in c.get("/v1/galleries/names/subjects").json()}
        found = c.post("/v1/galleries/names/identify", content=astronaut_jpeg).json()
        assert found["faces"][0]["subject"] == subject
        faces = c.get("/v1/galleries/names/faces", params={"subject": subject}).json()
        assert [f["subject"] for f in faces] == [subject]
        assert c.delete(f"/v1/galleries/names/subjects/{quoted}").json() == {"deleted": 1}
        assert subject not in {s["name"] for s in c.get("/v1/galleries/names/subjects").json()}
        assert c.get("/v1/galleries").status_code == 200  # the tables are all still there
    assert {p for p in server.home.parent.rglob("*") if "galleries.db" not in p.name} == before  # no file made
    still_answers(server, keys.reader, astronaut_jpeg)


def test_a_thousand_rapid_requests_are_rate_limited_then_recover(server: Server, keys: Keys,
                                                                 astronaut_jpeg: bytes) -> None:
    statuses: list[int] = []
    retry_after: list[int] = []
    with server.client(keys.burst) as c:
        t0 = time.monotonic()
        for _ in range(1000):
            r = c.get("/v1/me")
            statuses.append(r.status_code)
            if r.status_code == 429:
                assert r.json()["code"] == "rate_limited"
                retry_after.append(int(r.headers["retry-after"]))
        seconds = time.monotonic() - t0
        ok = statuses.count(200)
        assert set(statuses) == {200, 429}
        # at most the burst plus what the rate refilled meanwhile got through
        assert 40 <= ok <= 40 + 20 * seconds + 1
        assert statuses[:40] == [200] * 40
        assert retry_after and all(1 <= s <= 2 for s in retry_after)
        with server.client(keys.reader) as other:  # another key is not held up
            assert other.get("/v1/me").status_code == 200
        time.sleep(max(retry_after))
        assert c.get("/v1/me").status_code == 200
    still_answers(server, keys.reader, astronaut_jpeg)


def test_client_disconnecting_mid_upload(server: Server, keys: Keys, astronaut_jpeg: bytes) -> None:
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
            head = (f"POST /v1/analyze HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {keys.reader}\r\n"
                    f"Content-Type: image/jpeg\r\nContent-Length: {len(astronaut_jpeg)}\r\n\r\n")
            s.sendall(head.encode() + astronaut_jpeg[: len(astronaut_jpeg) // 2])
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:  # multipart, cut short
            boundary = "xyz"
            part = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.jpg\"\r\n"
                    "Content-Type: image/jpeg\r\n\r\n").encode() + astronaut_jpeg
            head = (f"POST /v1/analyze HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {keys.reader}\r\n"
                    f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {len(part) + 100}"
                    "\r\n\r\n")
            s.sendall(head.encode() + part[: len(part) // 2])
    time.sleep(0.5)
    still_answers(server, keys.reader, astronaut_jpeg)
    assert "Traceback" not in server.logs()


def test_several_images_where_one_is_expected_get_422(server: Server, keys: Keys, astronaut_jpeg: bytes) -> None:
    """A second image in a one-image field is refused by name, not silently dropped (only enrolment repeats)."""
    two = [("image", ("a.jpg", astronaut_jpeg)), ("image", ("b.jpg", b"not a picture"))]
    with server.client(keys.admin) as c:
        assert c.post("/v1/galleries", json={"name": "one-image", "model": "sface"}).status_code == 201
        answers = {path: c.post(path, files=two) for path in ("/v1/analyze", "/v1/embed",
                                                                  "/v1/galleries/one-image/identify")}
        answers["/v1/verify"] = c.post("/v1/verify", files=[("image1", ("a.jpg", astronaut_jpeg)),
                                                             ("image1", ("b.jpg", b"not a picture")),
                                                             ("image2", ("c.jpg", astronaut_jpeg))])
        enrolled = c.post("/v1/galleries/one-image/subjects/ada/faces",
                          files=[two[0], ("image", ("c.jpg", astronaut_jpeg))])
        assert enrolled.status_code == 201 and len(enrolled.json()["enrolled"]) == 2  # enrolment takes several
        assert c.delete("/v1/galleries/one-image").status_code == 200
    for path, r in answers.items():
        assert r.status_code == 422, (path, r.text)
        assert r.json()["code"] == "invalid_request", (path, r.text)
        assert "one image" in r.json()["message"] and "got 2" in r.json()["message"], (path, r.text)
    still_answers(server, keys.reader, astronaut_jpeg)


def test_multipart_media_type_is_case_insensitive(server: Server, keys: Keys, astronaut_jpeg: bytes) -> None:
    """``Multipart/Form-Data`` is the same media type (RFC 9110): the upload is read as multipart, not
    handed to the decoder as one raw image."""
    boundary = "faceflow-boundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.jpg\"\r\n"
            "Content-Type: image/jpeg\r\n\r\n").encode() + astronaut_jpeg + f"\r\n--{boundary}--\r\n".encode()
    with server.client(keys.reader) as c:
        r = c.post("/v1/analyze", content=body, params={"stages": "detect"},
                   headers={"content-type": f"Multipart/Form-Data; boundary={boundary}"})
    assert r.status_code == 200, r.text
    assert len(r.json()["faces"]) == 1


def test_an_enrolment_sent_again_stores_its_photos_once(server: Server, keys: Keys, astronaut_jpeg: bytes) -> None:
    """A client that timed out (504) or lost the answer and sends the same enrolment again gets the same face
    ids, with a note, and the gallery holds each photo once; the same photo for another subject is its own face."""
    with server.client(keys.admin) as c:
        assert c.post("/v1/galleries", json={"name": "retry", "model": "sface"}).status_code == 201
        first = c.post("/v1/galleries/retry/subjects/ada/faces", files={"image": ("a.jpg", astronaut_jpeg)})
        again = c.post("/v1/galleries/retry/subjects/ada/faces", files={"image": ("renamed.jpg", astronaut_jpeg)})
        other = c.post("/v1/galleries/retry/subjects/bo/faces", files={"image": ("a.jpg", astronaut_jpeg)})
        info = c.get("/v1/galleries/retry").json()
        assert c.delete("/v1/galleries/retry").status_code == 200
    assert first.status_code == again.status_code == other.status_code == 201, (first.text, again.text, other.text)
    assert again.json()["enrolled"] == first.json()["enrolled"]
    assert any("already enrolled" in n["reason"] for n in again.json()["notes"]), again.text
    assert other.json()["enrolled"] != first.json()["enrolled"]
    assert info["faces"] == 2 and info["subjects"] == 2


def test_export_of_a_gallery_named_in_any_script(server: Server, keys: Keys, astronaut_jpeg: bytes) -> None:
    """A gallery name outside Latin-1 is exported like any other: the download's file name is ASCII, with the
    real name percent-encoded beside it (RFC 6266), never a header that cannot be written (a 500)."""
    from urllib.parse import quote, unquote

    name = "名前 😀 Zoë"
    with server.client(keys.admin) as c:
        assert c.post("/v1/galleries", json={"name": name, "model": "sface"}).status_code == 201
        path = f"/v1/galleries/{quote(name, safe='')}"
        assert c.post(path + "/subjects/ada/faces", files={"image": ("a.jpg", astronaut_jpeg)}).status_code == 201
        export = c.get(path + "/export")
        assert c.delete(path).status_code == 200
    assert export.status_code == 200, export.text
    disposition = export.headers["content-disposition"]
    assert disposition.isascii() and 'filename="' in disposition
    assert unquote(disposition.split("filename*=UTF-8''")[1]) == name + ".zip"
    with zipfile.ZipFile(io.BytesIO(export.content)) as zf:
        assert json.loads(zf.read("gallery.json"))["faces"] == 1
    assert "Traceback" not in server.logs()
    still_answers(server, keys.reader, astronaut_jpeg)


def test_an_image_sent_as_a_text_field_is_named_as_such(server: Server, keys: Keys, astronaut_jpeg: bytes) -> None:
    """A multipart part without a file name is a text field: its bytes were decoded as text and re-encoded, so a
    good JPEG was answered "not a recognised image format". It is refused for what it is."""
    boundary = "faceflow-boundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"\r\nContent-Type: image/jpeg\r\n\r\n"
            ).encode() + astronaut_jpeg + f"\r\n--{boundary}--\r\n".encode()
    with server.client(keys.reader) as c:
        r = c.post("/v1/analyze", content=body, headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert r.status_code == 422 and r.json()["code"] == "invalid_request", r.text
    assert "file name" in r.json()["message"]
    still_answers(server, keys.reader, astronaut_jpeg)


def test_cors_is_off_by_default(server: Server) -> None:
    r = httpx.options(server.url + "/v1/analyze", headers={"Origin": "https://evil.example",
                                                            "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in r.headers
    r = httpx.get(server.url + "/healthz", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in r.headers


def test_unknown_routes_and_methods_answer_json(server: Server, keys: Keys) -> None:
    r = httpx.get(server.url + "/v1/nothing-here")
    assert r.status_code == 404 and r.json()["code"] == "not_found"
    r = httpx.put(server.url + "/v1/analyze")
    assert r.status_code == 405 and r.json()["code"] == "method_not_allowed"


# -- limits of a small server ---------------------------------------------------------------------


def test_timeout_504_busy_503_and_graceful_shutdown(tmp_path: Path, astronaut_jpeg: bytes) -> None:
    with KeyStore(tmp_path / "keys.db") as store:
        key = store.create("k", "read")[0]
    srv = start_server(tmp_path, threads=1, queue_size=0, request_timeout=0.2, rate_burst=1000)
    try:
        headers = {"Authorization": f"Bearer {key}"}
        from skimage import data

        big = jpeg_bytes(np.tile(data.astronaut(), (6, 6, 1)))  # 3072 x 3072, 36 faces: seconds of work

        def post() -> httpx.Response:
            return httpx.post(srv.url + "/v1/analyze", content=big, headers=headers, timeout=60)

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda _: post(), range(4)))
        codes = sorted(r.status_code for r in answers)
        assert 504 in codes and 503 in codes, codes
        for r in answers:
            assert r.json()["code"] == {504: "timeout", 503: "busy"}[r.status_code]
            if r.status_code == 503:
                assert r.headers["retry-after"] == "1"
        metrics = httpx.get(srv.url + "/metrics").text
        assert 'status="504"' in metrics and 'status="503"' in metrics
        assert httpx.get(srv.url + "/healthz").status_code == 200
    finally:
        assert srv.stop() in (0, -15)  # uvicorn ends by re-raising the SIGTERM it handled
        assert "Application shutdown complete" in srv.logs()
    # graceful shutdown: a request in flight when SIGTERM comes is answered
    srv = start_server(tmp_path, threads=1, queue_size=4, request_timeout=60)
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pending = pool.submit(httpx.post, srv.url + "/v1/analyze", content=big,
                                  headers={"Authorization": f"Bearer {key}"}, timeout=60)
            time.sleep(0.3)
            srv.process.send_signal(__import__("signal").SIGTERM)
            answer = pending.result(60)
        assert answer.status_code == 200, answer.text
        assert srv.process.wait(30) in (0, -15)
        assert "Application shutdown complete" in srv.logs()
    finally:
        srv.stop()


def test_key_guessing_slowed_slow_uploads_timed_out_cors_when_asked(tmp_path: Path, astronaut_jpeg: bytes) -> None:
    with KeyStore(tmp_path / "keys.db") as store:
        key = store.create("k", "read")[0]
        fresh = store.create("fresh", "read")[0]
    srv = start_server(tmp_path, request_timeout=2, load_models=False, auth_failure_rate=0.5, auth_failure_burst=10,
                       cors_origins='["https://app.example"]')
    try:
        preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
        allowed = httpx.options(srv.url + "/v1/analyze", headers={"Origin": "https://app.example", **preflight})
        assert allowed.headers["access-control-allow-origin"] == "https://app.example"
        other = httpx.options(srv.url + "/v1/analyze", headers={"Origin": "https://evil.example", **preflight})
        assert "access-control-allow-origin" not in other.headers
        assert httpx.get(srv.url + "/v1/me", headers={"X-API-Key": key}).status_code == 200  # verified once
        wrong = key[:-6] + "AAAAAA"
        codes: list[int] = []
        t0 = time.monotonic()
        while 429 not in codes and len(codes) < 300:
            codes.append(httpx.get(srv.url + "/v1/me", headers={"X-API-Key": wrong}).status_code)
        seconds = time.monotonic() - t0
        assert codes[-1] == 429 and set(codes[:-1]) == {401}
        # each 401 cost the server a scrypt: 10 at once, then one per 2 s
        assert 10 <= len(codes) - 1 <= 10 + 0.5 * seconds + 1
        # while the address is held back, a key already verified here still works (no scrypt is spent on it);
        # one this process has not checked yet waits like a guess
        assert httpx.get(srv.url + "/v1/me", headers={"X-API-Key": key}).status_code == 200
        assert httpx.get(srv.url + "/v1/me", headers={"X-API-Key": fresh}).status_code == 429
        time.sleep(2.0)
        assert httpx.get(srv.url + "/v1/me", headers={"X-API-Key": fresh}).status_code == 200
        with socket.create_connection(("127.0.0.1", srv.port), timeout=20) as s:
            s.sendall((f"POST /v1/analyze HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
                       f"Content-Length: {len(astronaut_jpeg)}\r\n\r\n").encode() + astronaut_jpeg[:1000])
            t0 = time.monotonic()
            answer = s.recv(4096).decode(errors="replace")
            waited = time.monotonic() - t0
            while answer.count("\r\n\r\n") and '"}' not in answer:
                more = s.recv(4096).decode(errors="replace")
                if not more:
                    break
                answer += more
        assert answer.startswith("HTTP/1.1 504"), answer
        assert '"code":"timeout"' in answer and 1.5 < waited < 10
        assert httpx.get(srv.url + "/healthz").status_code == 200
    finally:
        srv.stop()


def test_json_body_is_read_after_the_key_and_within_the_timeout(tmp_path: Path) -> None:
    """POST /v1/galleries checks the key before it reads its JSON body: no key is 401 whatever the body, and a
    body that trickles in (a client holding the connection) gets 504 after the request timeout, as uploads do."""
    with KeyStore(tmp_path / "keys.db") as store:
        writer = store.create("w", "write")[0]
        reader = store.create("r", "read")[0]
    srv = start_server(tmp_path, request_timeout=2, load_models=False)
    try:
        bad = {"content-type": "application/json"}
        r = httpx.post(srv.url + "/v1/galleries", content=b"{not json", headers=bad, timeout=10)
        assert r.status_code == 401 and r.json()["code"] == "unauthorized", r.text
        r = httpx.post(srv.url + "/v1/galleries", content=b"{not json", timeout=10,
                       headers={**bad, "Authorization": f"Bearer {reader}"})
        assert r.status_code == 403 and r.json()["code"] == "forbidden", r.text
        for key, expected in ((None, "401"), (writer, "504")):
            auth = f"Authorization: Bearer {key}\r\n" if key else ""
            with socket.create_connection(("127.0.0.1", srv.port), timeout=20) as s:
                s.sendall((f"POST /v1/galleries HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\n"
                           "Content-Length: 100\r\n\r\n{\"name\": ").encode())
                t0 = time.monotonic()
                answer = s.recv(4096).decode(errors="replace")
                waited = time.monotonic() - t0
            assert answer.startswith(f"HTTP/1.1 {expected}"), answer
            assert waited < 10
        with srv.client(writer) as c:  # a body sent at once still works, and is still validated
            assert c.post("/v1/galleries", json={"name": "g", "model": "sface"}).status_code == 201
            assert c.post("/v1/galleries", json={"name": "g2", "threshold": 3}).json()["code"] == "invalid_request"
        assert "Traceback" not in srv.logs()
    finally:
        srv.stop()


def test_postgres_gallery_store(tmp_path: Path, people: Path, pg_url: str) -> None:
    """``--gallery-url postgresql://...``: the same gallery lifecycle on PostgreSQL + pgvector."""
    import psycopg

    home = tmp_path / "home"
    home.mkdir()
    keys = Keys(home)
    srv = start_server(home, "--gallery-url", pg_url)
    try:
        with srv.client(keys.writer) as c:
            assert c.post("/v1/galleries", json={"name": "pg", "model": "sface"}).status_code == 201
            for person in ("obama", "biden"):
                photos = [("image", (p.name, p.read_bytes(), "image/jpeg"))
                          for p in sorted((people / "train" / person).iterdir())]
                r = c.post(f"/v1/galleries/pg/subjects/{person}/faces", files=photos)
                assert r.status_code == 201 and len(r.json()["enrolled"]) == 2, r.text
            found = c.post("/v1/galleries/pg/identify", content=(people / "test" / "obama1.jpg").read_bytes()).json()
            assert [f["subject"] for f in found["faces"]] == ["obama"]
        with psycopg.connect(pg_url) as conn:  # the faces are in PostgreSQL itself
            (count,) = conn.execute("SELECT count(*) FROM faceflow.faces").fetchone()  # type: ignore[misc]
            assert count == 4
    finally:
        srv.stop()
