"""Browser tests of the web page (``faceflow serve``'s ``/``) in a real headless Chromium.

Debian's ``chromium`` is driven by Playwright for Python through ``executable_path`` (Playwright's own
browser download is not used; ``scripts/setup_browser.sh`` installs both). The real service runs in a
subprocess on 127.0.0.1 and a free port, with a fresh ``FACEFLOW_HOME`` (its own key store and
gallery database) and the cached models. The live mode's camera is Chromium's fake capture device fed
from a sample clip, converted to ``.y4m`` with PyAV at test time. Screenshots and the JSON answers they
are checked against are saved under ``out/test-artifacts/web/`` (``FACEFLOW_TEST_ARTIFACTS`` to move
it). The module skips, saying why, when chromium or playwright is absent.
"""

from __future__ import annotations

import base64
import io
import json
import mimetypes
import os
import shutil
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO

if TYPE_CHECKING:
    from tests.service_server import Server

CHROMIUM = os.environ.get("FACEFLOW_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None or not os.access(CHROMIUM, os.X_OK):
    pytest.skip(f"no chromium ({CHROMIUM or 'none on PATH'}; scripts/setup_browser.sh installs Debian's, "
                "FACEFLOW_CHROMIUM names another)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (scripts/setup_browser.sh)")

ARTIFACTS = Path(os.environ.get("FACEFLOW_TEST_ARTIFACTS") or REPO / "out" / "test-artifacts") / "web"
BOX_RGB = (0, 229, 255)
"""The colour app.js draws boxes in (COLOR.box), looked for in the screenshots."""
UI_TIMEOUT_MS = 30_000


# -- the service ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Service:
    server: Server
    key: str
    """An admin key."""
    reader: str
    """A key with the read scope only."""

    @property
    def url(self) -> str:
        return self.server.url


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """``faceflow serve`` on a free loopback port with a fresh home and an admin key made for the tests."""
    pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install -e '.[serve]')")
    from faceflow.service.keys import KeyStore
    from tests.service_server import start_server

    home = tmp_path_factory.mktemp("web-home")
    with KeyStore(home / "keys.db") as keys:
        key = keys.create("web-tests", "admin")[0]
        reader = keys.create("web-reader", "read")[0]
    server = start_server(home)
    try:
        yield Service(server, key, reader)
    finally:
        server.stop()


# -- the browser ---------------------------------------------------------------------------------------


def _clip_to_y4m(src: Path, dst: Path, seconds: float = 2.0, fps: int = 10) -> int:
    """The first ``seconds`` of a video as raw YUV 4:2:0 ``.y4m`` at ``fps`` (what Chromium's fake
    camera reads, looping it); returns the number of frames written."""
    import av

    written = 0
    with av.open(str(src)) as container, open(dst, "wb") as out:
        stream = container.streams.video[0]
        out.write(f"YUV4MPEG2 W{stream.width} H{stream.height} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for frame in container.decode(stream):
            if frame.time is None or frame.time < written / fps:
                continue
            if frame.time >= seconds:
                break
            out.write(b"FRAME\n")
            out.write(frame.reformat(format="yuv420p").to_ndarray().tobytes())
            written += 1
    return written


@pytest.fixture(scope="module")
def camera_clip(dataset: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two seconds of ``samples/videos/short_hamilton_clip.mp4`` (two faces) as the fake camera's feed."""
    dst = tmp_path_factory.mktemp("camera") / "hamilton.y4m"
    assert _clip_to_y4m(dataset("samples", "videos", "short_hamilton_clip.mp4"), dst) == 20
    return dst


BROWSER_ARGS = ["--no-sandbox", "--disable-dev-shm-usage"]


@pytest.fixture(scope="module")
def playwright() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright: Any) -> Iterator[Any]:
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS, timeout=60_000)
    yield browser
    browser.close()


@pytest.fixture(scope="module")
def camera_browser(playwright: Any, camera_clip: Path) -> Iterator[Any]:
    """Chromium whose camera is the sample clip, granted without asking."""
    args = [*BROWSER_ARGS, "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-video-capture={camera_clip}"]
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=args, timeout=60_000)
    yield browser
    browser.close()


@contextmanager
def open_page(browser: Any, service: Service, name: str) -> Iterator[Any]:
    """A fresh page on the service's ``/``; JavaScript errors, Content-Security-Policy refusals (the
    page declares a strict policy) and any request to another origin (the page works offline, no CDN)
    fail the test. The page's last state is saved as a screenshot."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(UI_TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if "Content Security Policy" in msg.text else None)
    page.on("request", lambda r: None if r.url.startswith((service.url + "/", "data:", "blob:"))
            else errors.append(f"request outside the service: {r.url}"))
    page.goto(service.url + "/")
    try:
        yield page
    finally:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"{name}-end.png"), full_page=True)
        context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


@pytest.fixture
def page(browser: Any, service: Service, request: pytest.FixtureRequest) -> Iterator[Any]:
    with open_page(browser, service, request.node.name) as page:
        yield page


@pytest.fixture
def camera_page(camera_browser: Any, service: Service, request: pytest.FixtureRequest) -> Iterator[Any]:
    with open_page(camera_browser, service, request.node.name) as page:
        yield page


def sign_in(page: Any, key: str) -> None:
    page.fill("#api-key", key)
    page.click("#signin")
    page.wait_for_selector("#signed-in", state="visible")


def drop_files(page: Any, selector: str, paths: list[Path]) -> None:
    """Drop files on an element as a user's drag and drop does (a DataTransfer in a drop event)."""
    files = [{"name": p.name, "type": mimetypes.guess_type(p.name)[0] or "application/octet-stream",
              "b64": base64.b64encode(p.read_bytes()).decode()} for p in paths]
    page.evaluate("""([selector, files]) => {
        const data = new DataTransfer();
        for (const f of files) {
            const bytes = Uint8Array.from(atob(f.b64), (c) => c.charCodeAt(0));
            data.items.add(new File([bytes], f.name, { type: f.type }));
        }
        const zone = document.querySelector(selector);
        for (const type of ["dragenter", "dragover", "drop"]) {
            zone.dispatchEvent(new DragEvent(type, { dataTransfer: data, bubbles: true, cancelable: true }));
        }
    }""", [selector, files])


def save_artifact(name: str, data: bytes | dict[str, Any]) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    path.write_bytes(data if isinstance(data, bytes) else json.dumps(data, indent=1).encode())
    return path


# -- reading boxes back from a screenshot --------------------------------------------------------------


def box_edges_seen(png: bytes, boxes: list[list[float]], scale: float, *, min_run: int = 12,
                   tol: float = 4.0, cover: float = 0.6) -> tuple[list[int], list[tuple[int, int, int]]]:
    """Find the boxes drawn in a screenshot: horizontal runs of the box colour at least ``min_run``
    pixels long. Returns, per expected box (image pixels times ``scale``), how many of its two
    horizontal edges (top, bottom) such runs cover for at least ``cover`` of their length, and the
    runs that lie on no expected box's edge."""
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int16)
    mask = ((np.abs(rgb[..., 0] - BOX_RGB[0]) < 70) & (np.abs(rgb[..., 1] - BOX_RGB[1]) < 60)
            & (np.abs(rgb[..., 2] - BOX_RGB[2]) < 60))
    runs: list[tuple[int, int, int]] = []
    for y, row in enumerate(mask):
        edges = np.flatnonzero(np.diff(np.concatenate(([0], row.view(np.int8), [0]))))
        runs += [(y, int(a), int(b)) for a, b in zip(edges[::2], edges[1::2], strict=True) if b - a >= min_run]
    scaled = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) * scale
    covered = np.zeros((len(scaled), 2, mask.shape[1]), dtype=bool)  # box, (top, bottom), x
    stray = []
    for y, a, b in runs:
        hit = False
        for i, (x1, y1, x2, y2) in enumerate(scaled):
            if a >= x1 - tol and b <= x2 + tol:
                for side, edge in enumerate((y1, y2)):
                    if abs(y - edge) <= tol:
                        covered[i, side, a:b] = True
                        hit = True
        if not hit:
            stray.append((y, a, b))
    seen = [sum(int(covered[i, side].sum() >= cover * (x2 - x1)) for side in (0, 1))
            for i, (x1, _, x2, _) in enumerate(scaled)]
    return seen, stray


# -- the scenarios -------------------------------------------------------------------------------------


def test_sign_in_shows_the_services_message_for_a_wrong_key_and_keeps_the_key_per_tab(
        page: Any, service: Service) -> None:
    with service.server.client("ff_000000000000_" + "x" * 43) as client:
        refused = client.get("/v1/me")
    assert refused.status_code == 401
    page.fill("#api-key", "ff_000000000000_" + "x" * 43)
    page.click("#signin")
    page.wait_for_selector("#signin-error", state="visible")
    assert page.inner_text("#signin-error") == refused.json()["message"]
    assert page.is_visible("#signin-form") and not page.is_visible("#signed-in")
    assert page.evaluate("sessionStorage.getItem('faceflow.key')") is None

    sign_in(page, service.key)
    assert page.evaluate("sessionStorage.getItem('faceflow.key')") == service.key
    assert page.evaluate("localStorage.length") == 0
    page.reload()  # same tab: still signed in
    page.wait_for_selector("#signed-in", state="visible")
    page.click("#signout")
    page.wait_for_selector("#signin-form", state="visible")
    assert page.evaluate("sessionStorage.getItem('faceflow.key')") is None


def test_analyze_draws_the_six_faces_of_t1_as_the_api_answers(
        page: Any, service: Service, dataset: Callable[..., Path]) -> None:
    photo = dataset("samples", "insightface_data", "t1.jpg")
    sign_in(page, service.key)
    with page.expect_response(lambda r: "/v1/analyze" in r.url) as answer:
        page.set_input_files("#analyze-file", str(photo))
    assert answer.value.status == 200
    data = answer.value.json()
    save_artifact("analyze-t1.json", data)
    page.wait_for_selector("#analyze-canvas[data-boxes]")
    faces = data["faces"]
    assert len(faces) == 6
    assert page.get_attribute("#analyze-canvas", "data-boxes") == "6"
    assert page.locator("#analyze-table tbody tr").count() == 6
    assert {"landmarks5", "pose", "age", "gender", "expression"} <= set(faces[0])
    first = page.locator("#analyze-table tbody tr").first.locator("td").all_inner_texts()
    assert first[3].startswith(f"{faces[0]['pose']['yaw']:.0f}°") and first[5] == faces[0]["gender"]["value"]

    canvas = page.locator("#analyze-canvas")
    png = canvas.screenshot()
    save_artifact("analyze-t1-canvas.png", png)
    scale = canvas.bounding_box()["width"] / data["width"]
    edges, stray = box_edges_seen(png, [f["box"] for f in faces], scale)
    assert edges == [2] * len(faces), f"top and bottom edge of each face's box drawn: {edges}"
    assert stray == [], f"box-coloured lines where the API found no face: {stray[:5]}"


def test_gallery_enrol_by_drop_search_names_and_delete(
        page: Any, service: Service, dataset: Callable[..., Path]) -> None:
    knn = dataset("samples", "face_recognition", "examples", "knn_examples")
    sign_in(page, service.key)
    page.click("#tab-gallery")
    page.fill("#gallery-name", "web_friends")
    page.click("#gallery-create-btn")
    page.wait_for_selector("#gallery-select option[value=web_friends]", state="attached")
    assert page.input_value("#gallery-select") == "web_friends"

    for who in ("kit_harington", "rose_leslie"):
        photos = sorted((knn / "train" / who).iterdir())
        page.fill("#enrol-subject", who)
        drop_files(page, "#enrol-drop", photos)
        page.wait_for_selector(f"#subject-list li[data-subject={who}]")
        assert page.inner_text(f"#subject-list li[data-subject={who}] span") == f"{who} ({len(photos)} faces)"
    assert page.locator("#face-list li").count() == 4
    with page.expect_download() as download:
        page.click("#gallery-export")
    with zipfile.ZipFile(download.value.path()) as exported:
        assert exported.namelist(), "the exported gallery is an empty zip"

    with page.expect_response(lambda r: r.url.endswith("/identify")) as answer:
        drop_files(page, "#search-drop", [knn / "test" / "kit_with_rose.jpg"])
    data = answer.value.json()
    save_artifact("identify-kit_with_rose.json", data)
    page.wait_for_selector("#search-canvas[data-boxes]")
    names = [f["subject"] for f in data["faces"]]
    assert sorted(names) == ["kit_harington", "rose_leslie"]
    assert json.loads(page.get_attribute("#search-canvas", "data-names")) == names
    assert page.locator("[data-testid=match-subject]").all_inner_texts() == names
    canvas = page.locator("#search-canvas")
    png = canvas.screenshot()
    save_artifact("identify-kit_with_rose-canvas.png", png)
    edges, stray = box_edges_seen(png, [f["box"] for f in data["faces"]], canvas.bounding_box()["width"]
                                  / Image.open(knn / "test" / "kit_with_rose.jpg").width)
    assert edges == [2, 2] and stray == []

    save_artifact("gallery-search.png", page.screenshot(full_page=True))

    # delete one face, then the gallery (after the confirmation dialog)
    page.locator("#face-list [data-testid=face-delete]").first.click()
    page.wait_for_function("() => document.querySelectorAll('#face-list li').length === 3")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#gallery-delete")
    page.wait_for_selector("#gallery-select option[value=web_friends]", state="detached")
    with service.server.client(service.key) as client:
        galleries = client.get("/v1/galleries")
    assert galleries.status_code == 200 and "web_friends" not in {g["name"] for g in galleries.json()}
    assert page.get_attribute("#search-canvas", "data-names") is None, "the deleted gallery's answer is gone"


def test_compare_two_photos(page: Any, service: Service, dataset: Callable[..., Path]) -> None:
    train = dataset("samples", "face_recognition", "examples", "knn_examples", "train")
    sign_in(page, service.key)
    page.click("#tab-verify")
    for first, second, verdict in (("obama/obama.jpg", "obama/obama2.jpg", "same"),
                                   ("obama/obama.jpg", "biden/biden.jpg", "different")):
        page.set_input_files("#verify-file1", str(train / first))
        page.set_input_files("#verify-file2", str(train / second))
        with page.expect_response(lambda r: r.url.endswith("/v1/verify")) as answer:
            page.click("#verify-run")
        data = answer.value.json()
        page.wait_for_selector(f"#verify-result[data-decision={verdict}]")
        assert f"{data['similarity']:.3f}" in page.inner_text("#verify-result")
        assert data["decision"] is (verdict == "same")
        for slot, name in ((1, first), (2, second)):  # the face compared in each photo is boxed
            canvas = page.locator(f"#verify-canvas{slot}")
            page.wait_for_selector(f"#verify-canvas{slot}[data-boxes='1']")
            edges, stray = box_edges_seen(canvas.screenshot(), [data["faces"][slot - 1]["box"]],
                                          canvas.bounding_box()["width"] / Image.open(train / name).width)
            assert edges == [2] and stray == [], f"{name}: box edges {edges}, stray lines {stray[:3]}"
    save_artifact("verify-obama-biden.png", page.screenshot(full_page=True))


def test_errors_show_the_apis_message(page: Any, service: Service, dataset: Callable[..., Path]) -> None:
    sign_in(page, service.key)
    page.set_input_files("#analyze-file", str(dataset("samples", "insightface_data", "t1.jpg")))
    page.wait_for_selector("#analyze-canvas[data-boxes]")
    with page.expect_response(lambda r: "/v1/analyze" in r.url) as answer:
        page.set_input_files("#analyze-file", str(dataset("samples", "broken", "text.jpg")))
    assert answer.value.status == 422
    page.wait_for_selector("#analyze-error", state="visible")
    assert page.inner_text("#analyze-error") == "text.jpg: " + answer.value.json()["message"]
    assert not page.is_visible("#analyze-canvas"), "the previous photo's drawing is not left beside the error"
    assert not page.is_visible("#analyze-table")

    page.click("#signout")
    sign_in(page, service.reader)
    assert page.inner_text("#whoami") == "Signed in as web-reader (read)"
    page.click("#tab-gallery")
    page.fill("#gallery-name", "not_allowed")
    with page.expect_response(lambda r: r.url.endswith("/v1/galleries") and r.request.method == "POST") as answer:
        page.click("#gallery-create-btn")
    assert answer.value.status == 403
    page.wait_for_selector("#gallery-error", state="visible")
    assert page.inner_text("#gallery-error") == answer.value.json()["message"]


def test_keyboard_alone_signs_in_switches_tabs_and_reaches_the_file_input(page: Any, service: Service) -> None:
    page.keyboard.press("Tab")  # the skip link
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "api-key"
    page.keyboard.type(service.key)
    page.keyboard.press("Enter")
    page.wait_for_selector("#signed-in", state="visible")
    page.focus("#tab-analyze")
    page.keyboard.press("ArrowRight")
    assert page.evaluate("document.activeElement.id") == "tab-verify"
    assert page.is_visible("#panel-verify") and not page.is_visible("#panel-analyze")
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("Tab")  # into the panel: the first focusable control of Analyze
    for _ in range(12):  # stages, detector, then the drop zone's file input
        if page.evaluate("document.activeElement.id") == "analyze-file":
            break
        page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "analyze-file"  # a real file input: Enter opens it
    outline = page.eval_on_selector("#analyze-drop", "(zone) => getComputedStyle(zone).outlineStyle")
    assert outline == "solid", "the drop zone shows where the keyboard focus is"


def test_live_mode_sends_fake_camera_frames_one_at_a_time_and_draws_boxes(camera_page: Any, service: Service) -> None:
    page = camera_page
    sign_in(page, service.key)
    in_flight = {"now": 0, "most": 0, "sent": 0}

    def started(request: Any) -> None:
        if "/v1/analyze" in request.url:
            in_flight["now"] += 1
            in_flight["sent"] += 1
            in_flight["most"] = max(in_flight["most"], in_flight["now"])

    def ended(request: Any) -> None:
        if "/v1/analyze" in request.url:
            in_flight["now"] -= 1

    page.on("request", started)
    page.on("requestfinished", ended)
    page.on("requestfailed", ended)
    # Answers slower than the frame rate (250 ms of added latency against 10 frames/s): a client
    # without its one-in-flight rule would have two or three frames out at once.
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send("Network.emulateNetworkConditions", {"offline": False, "latency": 250, "downloadThroughput": -1,
                                                  "uploadThroughput": -1})
    page.click("#tab-live")
    page.select_option("#live-rate", "10")
    started_at = time.monotonic()
    page.click("#live-start")
    page.wait_for_function("() => Number(document.getElementById('live-canvas').dataset.answers || 0) >= 5"
                           " && Number(document.getElementById('live-canvas').dataset.boxes) >= 1")
    elapsed = time.monotonic() - started_at
    canvas = page.locator("#live-canvas")
    save_artifact("live-canvas.png", canvas.screenshot())
    page.click("#live-stop")
    assert page.evaluate("document.getElementById('live-video').srcObject.getTracks()"
                         ".every((t) => t.readyState === 'ended')")
    assert in_flight["most"] == 1, "never more than one frame in flight"
    assert in_flight["sent"] <= 10 * elapsed + 2, f"{in_flight['sent']} frames in {elapsed:.1f} s at 10 frames/s"
    assert "face" in page.inner_text("#live-stats")


def test_a_key_entered_before_the_script_runs_stays_out_of_the_url_and_the_log(browser: Any, service: Service) -> None:
    """Enter pressed in the key field while app.js is not (yet) running submits the form the browser's
    way: the key must not become a query parameter (address bar, history, the server's access log)."""
    context = browser.new_context()
    try:
        page = context.new_page()
        page.set_default_timeout(UI_TIMEOUT_MS)
        page.route("**/static/app.js", lambda route: route.abort())  # a slow or failed script load
        page.goto(service.url + "/")
        page.fill("#api-key", service.key)
        with page.expect_navigation():
            page.press("#api-key", "Enter")
        assert service.key not in page.url
    finally:
        context.close()
    assert service.key not in service.server.stdout.read_text(errors="replace")
    assert service.key not in service.server.logs()


def test_a_file_that_is_not_an_image_gets_a_message_not_silence(page: Any, service: Service, tmp_path: Path) -> None:
    """A PDF chosen through the file dialog's "all files" (or dropped) is answered with the service's
    reason, in place of an earlier message, rather than ignored without a word."""
    sign_in(page, service.key)
    text = tmp_path / "notes.txt"
    text.write_bytes(b"no pixels here")
    page.set_input_files("#analyze-file", str(text))
    page.wait_for_selector("#analyze-error", state="visible", timeout=15_000)
    first = page.inner_text("#analyze-error")
    pdf = tmp_path / "minutes.pdf"
    pdf.write_bytes(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj << >> endobj\ntrailer << >>\n%%EOF\n")
    with page.expect_response(lambda r: "/v1/analyze" in r.url, timeout=15_000) as answer:
        page.set_input_files("#analyze-file", str(pdf))
    assert answer.value.status == 422
    page.wait_for_function("(old) => document.getElementById('analyze-error').innerText !== old", arg=first)
    assert page.inner_text("#analyze-error") == "minutes.pdf: " + answer.value.json()["message"]
    assert page.inner_text("#analyze-status") == ""


def test_a_right_to_left_override_in_a_subject_name_cannot_reorder_the_text_around_it(
        page: Any, service: Service, dataset: Callable[..., Path]) -> None:
    """A subject named with U+202E (right-to-left override, which the service accepts) is shown as
    itself: the face count after it and the face's number stay to its right, as for any name."""
    name = "\u202eeve"
    sign_in(page, service.key)
    page.click("#tab-gallery")
    page.fill("#gallery-name", "web_bidi")
    page.click("#gallery-create-btn")
    page.wait_for_selector("#gallery-select option[value=web_bidi]", state="attached")
    page.fill("#enrol-subject", name)
    with page.expect_response(lambda r: r.url.endswith("/faces") and r.request.method == "POST", timeout=30_000):
        page.set_input_files("#enrol-file", str(dataset("samples", "face_recognition", "examples", "knn_examples",
                                                        "train", "obama", "obama.jpg")))
    page.wait_for_selector("#face-list li", timeout=15_000)
    # x of each character of the list entry's text as drawn: the name's then what follows it
    where = """([span, name]) => {
        const walker = document.createTreeWalker(span, NodeFilter.SHOW_TEXT);
        const xs = [];
        for (let node = walker.nextNode(); node; node = walker.nextNode()) {
            for (let i = 0; i < node.length; i++) {
                const range = document.createRange();
                range.setStart(node, i);
                range.setEnd(node, i + 1);
                const r = range.getBoundingClientRect();
                if (r.width > 0) xs.push([node.data[i], r.left, r.right]);
            }
        }
        const shown = [...name].filter((c) => c !== "\\u202e").length;
        return { name: xs.slice(0, shown), rest: xs.slice(shown) };
    }"""
    for selector in ("#subject-list li span", "#face-list li span"):
        span = page.locator(selector).first
        assert span.inner_text().startswith(name)
        xs = page.evaluate(where, [span.element_handle(), name])
        name_right = max(r for _, _, r in xs["name"])
        assert all(left >= name_right - 0.5 for _, left, _ in xs["rest"]), (selector, xs)
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#gallery-delete")
    page.wait_for_selector("#gallery-select option[value=web_bidi]", state="detached")
