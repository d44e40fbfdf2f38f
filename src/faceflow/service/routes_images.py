"""Routes on images alone: analyse, verify, embed; and what the server is (models, health, the key)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response

from faceflow.io import load_image
from faceflow.recognize import CALIBRATION, verify_images
from faceflow.service.deps import image_body, read_uploads, require, state_of
from faceflow.service.errors import ApiError
from faceflow.service.keys import ApiKey
from faceflow.service.schemas import (
    AnalyzeResponse,
    EmbedResponse,
    KeyInfo,
    ModelInfo,
    Status,
    VerifyResponse,
)

router = APIRouter()

Reader = Annotated[ApiKey, Depends(require("read"))]
ModelQuery = Annotated[str | None, Query(description="Recognition model: sface, dlib or fused (default: the "
                                                      "server's verify_model).", max_length=20)]


def _stages(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    names = tuple(dict.fromkeys(s.strip() for s in text.split(",") if s.strip()))
    if not names:
        raise ApiError(422, "invalid_request", "stages: name at least one stage")
    return names


def _model(request: Request, model: str | None) -> str:
    name = model or state_of(request).settings.verify_model
    if name not in CALIBRATION:
        raise ApiError(400, "bad_request", f"unknown recognition model {name!r}; choose one of: "
                                           f"{', '.join(CALIBRATION)}")
    return name


@router.post("/v1/analyze", response_model=AnalyzeResponse, openapi_extra=image_body("image", raw=True),
             summary="Detect and analyse the faces of one image")
async def analyze(
    request: Request, key: Reader,
    stages: Annotated[str | None, Query(description="Comma-separated stages (default: the server's).",
                                        max_length=200)] = None,
    detector: Annotated[str | None, Query(description="Detector (default: the server's).", max_length=40)] = None,
    embeddings: Annotated[bool, Query(description="Include embeddings (with the embed stage).")] = False,
) -> dict[str, Any]:
    """The image's faces as ``faces.jsonl`` has them: multipart field ``image`` or the raw body."""
    state = state_of(request)
    upload = (await read_uploads(request, ("image",), raw=True))["image"][0]
    wanted = _stages(stages)

    def work() -> dict[str, Any]:
        analyzer = state.analyzer(wanted, detector)
        image = load_image(upload.data, max_pixels=state.settings.max_pixels)
        faces = analyzer.analyze_array(image)
        return {"width": int(image.shape[1]), "height": int(image.shape[0]),
                "faces": [f.to_dict(embeddings=embeddings) for f in faces]}

    return await state.pool.run(state.settings.request_timeout, work)


@router.post("/v1/verify", response_model=VerifyResponse, openapi_extra=image_body("image1", "image2"),
             summary="Whether two photos show the same person")
async def verify(request: Request, key: Reader, model: ModelQuery = None) -> dict[str, Any]:
    """The largest face of each photo compared at the model's calibrated threshold."""
    state = state_of(request)
    name = _model(request, model)
    uploads = await read_uploads(request, ("image1", "image2"))
    a, b = uploads["image1"][0], uploads["image2"][0]

    def work() -> dict[str, Any]:
        limit = state.settings.max_pixels
        v = verify_images(load_image(a.data, max_pixels=limit), load_image(b.data, max_pixels=limit),
                          model=name, runtime=state.runtime, detector=state.verify_detector())
        assert v.boxes is not None and v.faces_found is not None
        return {"similarity": round(v.similarity, 6), "decision": bool(v.same), "threshold": v.threshold,
                "model": name, "far": v.far,
                "faces": [{"box": [round(x, 2) for x in box], "faces_found": n}
                          for box, n in zip(v.boxes, v.faces_found, strict=True)]}

    return await state.pool.run(state.settings.request_timeout, work)


@router.post("/v1/embed", response_model=EmbedResponse, openapi_extra=image_body("image", raw=True),
             summary="Recognition embeddings of every face of one image")
async def embed(request: Request, key: Reader, model: ModelQuery = None) -> dict[str, Any]:
    """One unit-norm vector per face (the model's own dimension)."""
    state = state_of(request)
    name = _model(request, model)
    upload = (await read_uploads(request, ("image",), raw=True))["image"][0]

    def work() -> dict[str, Any]:
        analyzer = state.analyzer(("detect", "embed"), None, embed_model=name)
        image = load_image(upload.data, max_pixels=state.settings.max_pixels)
        faces = analyzer.analyze_array(image)
        return {"model": name, "width": int(image.shape[1]), "height": int(image.shape[0]),
                "faces": [{"box": [round(float(x), 2) for x in f.box], "score": round(f.score, 4),
                           "embedding": [round(float(x), 6) for x in f.embeddings[name]]} for f in faces]}

    return await state.pool.run(state.settings.request_timeout, work)


@router.get("/v1/models", response_model=list[ModelInfo], summary="The models faceflow knows and which are loaded")
async def models(request: Request, key: Reader) -> list[dict[str, Any]]:
    from faceflow.models import MODELS

    runtime = state_of(request).runtime
    loaded = set(runtime.models_used) | {part for entry in runtime.loaded for part in entry.split(":")}
    return [{"name": s.name, "task": s.task, "licence": s.licence, "default": bool(s.default),
             "loaded": s.name in loaded} for s in MODELS.values()]


@router.get("/v1/me", response_model=KeyInfo, summary="The API key of this request (for signing in)")
async def me(key: Reader) -> dict[str, Any]:
    return {"id": key.id, "name": key.name, "scope": key.scope,
            "galleries": None if key.galleries is None else list(key.galleries)}


@router.get("/healthz", response_model=Status, summary="Liveness: the process answers")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", response_model=Status, summary="Readiness: the default models are loaded",
            responses={503: {"description": "Models still loading (or failed to load)."}})
async def readyz(request: Request) -> Any:
    state = state_of(request)
    if state.ready:
        return {"status": "ready"}
    message = f"default models failed to load: {state.load_error}" if state.load_error else "loading models"
    return JSONResponse({"code": "not_ready", "message": message}, status_code=503, headers={"Retry-After": "1"})


@router.get("/metrics", response_class=Response, summary="Prometheus metrics of this process")
async def metrics(request: Request) -> Response:
    from prometheus_client import CONTENT_TYPE_LATEST

    return Response(state_of(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)
