"""The FastAPI application: :func:`create_app` wires settings, shared state, limits, errors and routes.

``uvicorn --factory faceflow.service.app:app_from_environment`` builds it from the settings sources
alone (what each ``--workers`` process does); ``faceflow serve`` is the usual way in.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from faceflow.errors import FaceflowError
from faceflow.service import routes_galleries, routes_images
from faceflow.service.errors import ApiError, from_library
from faceflow.service.limits import BodyLimit
from faceflow.service.schemas import ErrorBody
from faceflow.service.settings import ServeSettings
from faceflow.service.state import ServiceState

STATIC_DIR = Path(__file__).with_name("static")
PAGE_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
               "connect-src 'self'; media-src 'self' blob:; object-src 'none'; base-uri 'none'; "
               "form-action 'self'; frame-ancestors 'none'")
"""The web page's Content-Security-Policy header: index.html's <meta> policy plus frame-ancestors,
which only a header can carry (the page holds an API key: no other site may frame it)."""
log = logging.getLogger("faceflow.service")

_ERROR_STATUSES = {400: "Bad request", 401: "No or invalid API key", 403: "Scope too weak",
                   404: "Not found (also a gallery this key may not touch)", 409: "Conflict",
                   413: "Body over the upload limit", 422: "Unprocessable (bad image, no face, invalid value)",
                   429: "Rate limited (Retry-After)", 503: "Busy or unavailable (Retry-After)",
                   504: "Timed out"}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text} for code, text in _ERROR_STATUSES.items()}


def _json_error(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


def _http_code(status: int) -> str:
    return {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
            413: "too_large", 415: "unsupported_media_type", 422: "invalid_request",
            429: "rate_limited"}.get(status, "error" if status < 500 else "internal")


def create_app(settings: ServeSettings | None = None, *, state: ServiceState | None = None) -> FastAPI:
    """The service for ``settings`` (default: read from the settings sources).

    ``state`` supplies ready-made shared objects (tests); otherwise they are made at start-up and
    closed at shutdown, after the requests in flight have finished.
    """
    settings = settings or ServeSettings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        shared = state or ServiceState(settings)
        app.state.faceflow = shared
        loader = None
        if settings.load_models:
            loader = asyncio.get_running_loop().run_in_executor(None, shared.load_default_models)
        else:
            shared.ready = True
        try:
            yield
        finally:
            if loader is not None:
                with contextlib.suppress(Exception):
                    await loader
            shared.close()

    # docs_url and redoc_url off: FastAPI's pages load their scripts from CDNs; /docs is served offline below
    app = FastAPI(title="faceflow", version="1", lifespan=lifespan, responses=ERROR_RESPONSES, docs_url=None,
                  redoc_url=None,
                  description="Face analysis over HTTP: analyse, verify, embed, galleries and identification. "
                              "Authenticate with `Authorization: Bearer <key>` (or `X-API-Key`).")

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _json_error(exc)

    @app.exception_handler(FaceflowError)
    async def library_error(request: Request, exc: FaceflowError) -> JSONResponse:
        error = from_library(exc)
        if error.status >= 500:
            log.error("request %s %s failed: %s", request.method, request.url.path, exc)
        return _json_error(error)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for e in exc.errors()[:5]:
            where = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "request"
            problems.append(f"{where}: {e.get('msg', 'invalid')}")
        return _json_error(ApiError(422, "invalid_request", "; ".join(problems) or "invalid request"))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "request refused"
        return JSONResponse({"code": _http_code(exc.status_code), "message": message}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error in %s %s", request.method, request.url.path)
        return JSONResponse({"code": "internal", "message": "internal error"}, status_code=500)

    app.include_router(routes_images.router, responses=ERROR_RESPONSES)
    app.include_router(routes_galleries.router, responses=ERROR_RESPONSES)

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        page = STATIC_DIR / "index.html"
        if not page.is_file():
            return JSONResponse({"code": "not_found", "message": "no web page installed"}, status_code=404)
        return FileResponse(page, media_type="text/html", headers={"Content-Security-Policy": PAGE_POLICY})

    if STATIC_DIR.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    _offline_docs(app)
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["*"],
                           allow_headers=["Authorization", "X-API-Key", "Content-Type"])
    app.add_middleware(BodyLimit, limit=settings.max_upload_bytes)
    app.add_middleware(Observe)  # refusals by the limits are counted too
    app.add_middleware(SecurityHeaders)  # outermost: every answer has them, refusals included
    return app


def _offline_docs(app: FastAPI) -> None:
    """``/docs``: Swagger UI over ``/openapi.json``, its scripts served from the installed
    ``swagger-ui-bundle`` package rather than a CDN, so the page works on a machine with no network."""
    from fastapi.openapi.docs import get_swagger_ui_html
    from swagger_ui_bundle import swagger_ui_path

    app.mount("/docs-assets", StaticFiles(directory=str(swagger_ui_path)), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> Response:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="faceflow API",
                                   swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-assets/swagger-ui.css",
                                   swagger_favicon_url="/docs-assets/favicon-32x32.png")


class SecurityHeaders:
    """ASGI middleware: every answer is neither content-sniffed nor framed, nor sends a referrer."""

    HEADERS = ((b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
               (b"referrer-policy", b"no-referrer"))

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def add(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers") or [])
                present = {name.lower() for name, _ in headers}
                headers += [h for h in self.HEADERS if h[0] not in present]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, add)


class Observe:
    """ASGI middleware: each answer counted and timed in the process's metrics, by route template."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500

        async def watch(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            shared: ServiceState | None = getattr(scope["app"].state, "faceflow", None)
            if shared is not None:
                template = getattr(scope.get("route"), "path", None) or "unmatched"
                shared.metrics.observe(template, scope["method"], status, time.perf_counter() - t0)


def app_from_environment() -> FastAPI:
    """The app with settings from ``serve.toml`` and ``FACEFLOW_SERVE_*`` alone (a uvicorn factory)."""
    return create_app(ServeSettings())
