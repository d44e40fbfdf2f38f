"""Gallery routes: create, list, delete; subjects and their faces; enrol photos; identify; export.

A gallery the key may not touch is answered exactly as one that does not exist (404 ``not_found``,
the same message), so that a key cannot learn which galleries others have.
"""

from __future__ import annotations

import io
import tempfile
import zipfile
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from faceflow.errors import FaceflowError, NotFound
from faceflow.gallery.io import export_gallery
from faceflow.gallery.store import GalleryInfo, check_name
from faceflow.gallery.workflows import Photo, create_gallery, enroll, identify_result
from faceflow.io import load_image
from faceflow.service.deps import image_body, json_body, read_json, read_uploads, require, state_of
from faceflow.service.errors import ApiError, gallery_not_found
from faceflow.service.keys import ApiKey
from faceflow.service.schemas import (
    Deleted,
    EnrolResponse,
    FaceOut,
    GalleryCreate,
    GalleryOut,
    IdentifyResponse,
    SubjectOut,
)
from faceflow.service.state import ServiceState
from faceflow.types import ImageResult

router = APIRouter(prefix="/v1/galleries", tags=["galleries"])

Reader = Annotated[ApiKey, Depends(require("read"))]
Writer = Annotated[ApiKey, Depends(require("write"))]
GalleryName = Annotated[str, PathParam(description="Gallery name.", min_length=1, max_length=200)]
SubjectName = Annotated[str, PathParam(description="Subject name (may contain '/', percent-encoded).",
                                       min_length=1, max_length=400)]


def _gallery_out(g: GalleryInfo) -> dict[str, Any]:
    return {"name": g.name, "model": g.model, "dim": g.dim, "threshold": g.threshold,
            "subjects": g.subjects, "faces": g.faces, "created_at": g.created_at}


async def _gallery(state: ServiceState, key: ApiKey, name: str, *, counts: bool = False) -> GalleryInfo:
    """The gallery ``name`` if it exists and ``key`` may touch it; the same 404 otherwise."""
    try:
        clean = check_name(name, "gallery")
    except FaceflowError:
        raise gallery_not_found(name) from None
    try:  # looked up whatever the key may touch, so that both answers take the same path
        info: GalleryInfo = await run_in_threadpool(state.store.gallery, clean, counts=counts)
    except NotFound:  # store.gallery looks up the gallery alone
        raise gallery_not_found(name) from None
    if not key.may_touch(info.name):
        raise gallery_not_found(name)
    return info


@router.get("", response_model=list[GalleryOut], summary="The galleries this key may touch")
async def list_galleries(request: Request, key: Reader) -> list[dict[str, Any]]:
    state = state_of(request)
    galleries = await run_in_threadpool(state.store.galleries)
    return [_gallery_out(g) for g in galleries if key.may_touch(g.name)]


@router.post("", response_model=GalleryOut, status_code=201, summary="Create an empty gallery",
             openapi_extra=json_body(GalleryCreate))
async def create(request: Request, key: Writer) -> dict[str, Any]:
    state = state_of(request)
    body = await read_json(request, GalleryCreate)
    name = check_name(body.name, "gallery")
    if not key.may_touch(name):
        raise ApiError(403, "forbidden", "this key may not create a gallery of that name")
    model = body.model or state.settings.gallery_model
    info = await run_in_threadpool(create_gallery, state.store, name, model, threshold=body.threshold)
    return _gallery_out(info)


@router.get("/{gallery}", response_model=GalleryOut, summary="One gallery with its counts")
async def get_gallery(request: Request, key: Reader, gallery: GalleryName) -> dict[str, Any]:
    return _gallery_out(await _gallery(state_of(request), key, gallery, counts=True))


@router.delete("/{gallery}", response_model=Deleted, summary="Delete a gallery with its subjects and faces")
async def delete_gallery(request: Request, key: Writer, gallery: GalleryName) -> dict[str, int]:
    state = state_of(request)
    info = await _gallery(state, key, gallery)
    await run_in_threadpool(state.store.delete_gallery, info.name)
    state.forget_gallery(info.name)
    return {"deleted": 1}


@router.get("/{gallery}/subjects", response_model=list[SubjectOut], summary="The subjects of a gallery")
async def subjects(request: Request, key: Reader, gallery: GalleryName) -> list[dict[str, Any]]:
    state = state_of(request)
    info = await _gallery(state, key, gallery)
    found = await run_in_threadpool(state.store.subjects, info.name)
    return [{"name": s.name, "faces": s.faces, "created_at": s.created_at} for s in found]


@router.delete("/{gallery}/subjects/{subject:path}", response_model=Deleted,
               summary="Delete a subject and all its faces")
async def delete_subject(request: Request, key: Writer, gallery: GalleryName, subject: SubjectName) -> dict[str, int]:
    state = state_of(request)
    info = await _gallery(state, key, gallery)
    await run_in_threadpool(state.store.delete_subject, info.name, subject)
    return {"deleted": 1}


@router.post("/{gallery}/subjects/{subject:path}/faces", response_model=EnrolResponse, status_code=201,
             openapi_extra=image_body("image", repeated=True), summary="Enrol photos of a subject")
async def enrol(request: Request, key: Writer, gallery: GalleryName, subject: SubjectName,
                largest: Annotated[bool, Query(description="Take the largest face of a photo with several "
                                                           "(else such a photo fails).")] = False) -> dict[str, Any]:
    """Each photo (multipart field ``image``, repeated) must show one face (or use ``largest``); the
    subject is created with its first face. Photos that fail are listed; if none worked, 422."""
    state = state_of(request)
    name = check_name(subject)
    uploads = (await read_uploads(request, ("image",), repeated=True))["image"]
    info = await _gallery(state, key, gallery)

    def work() -> Any:
        analyzer = state.gallery_analyzer(info)
        return enroll(state.store, info.name, [(name, Photo(u.name, u.data)) for u in uploads], analyzer,
                      largest=largest)

    report = await state.pool.run(state.settings.request_timeout, work)
    failed = [{"name": f.path, "reason": f.reason} for f in report.failed]
    if not report.face_ids:
        raise ApiError(422, "unprocessable", "no photo enrolled: " + "; ".join(f["reason"] for f in failed))
    return {"subject": name, "enrolled": report.face_ids, "failed": failed,
            "notes": [{"name": f.path, "reason": f.reason} for f in report.notes]}


@router.get("/{gallery}/faces", response_model=list[FaceOut], summary="The faces of a gallery (or of one subject)")
async def faces(request: Request, key: Reader, gallery: GalleryName,
                subject: Annotated[str | None, Query(max_length=400)] = None) -> list[dict[str, Any]]:
    state = state_of(request)
    info = await _gallery(state, key, gallery)
    found = await run_in_threadpool(lambda: state.store.faces(info.name, subject=subject))
    return [{"id": f.id, "subject": f.subject, "box": None if f.box is None else list(f.box), "quality": f.quality,
             "created_at": f.created_at, "upload": f.metadata.get("upload")} for f in found]


@router.delete("/{gallery}/faces/{face_id}", response_model=Deleted, summary="Delete one face")
async def delete_face(request: Request, key: Writer, gallery: GalleryName,
                      face_id: Annotated[int, PathParam(ge=0, le=2**62)]) -> dict[str, int]:
    state = state_of(request)
    info = await _gallery(state, key, gallery)
    count = await run_in_threadpool(state.store.delete_faces, info.name, [face_id])
    if not count:
        raise ApiError(404, "not_found", f"no face {face_id} in gallery {info.name!r}")
    return {"deleted": count}


@router.post("/{gallery}/identify", response_model=IdentifyResponse, openapi_extra=image_body("image", raw=True),
             summary="Who the faces of a photo are (open-set)")
async def identify(request: Request, key: Reader, gallery: GalleryName,
                   top_k: Annotated[int, Query(ge=1, le=100, description="Candidates per face.")] = 5
                   ) -> dict[str, Any]:
    """Each face with the best subject if its similarity reaches the gallery's threshold (else null)
    and the ``top_k`` best subjects."""
    state = state_of(request)
    upload = (await read_uploads(request, ("image",), raw=True))["image"][0]
    info = await _gallery(state, key, gallery)

    def work() -> dict[str, Any]:
        analyzer = state.gallery_analyzer(info)
        image = load_image(upload.data, max_pixels=state.settings.max_pixels)
        result = ImageResult(upload.name, int(image.shape[1]), int(image.shape[0]), analyzer.analyze_array(image))
        answer = identify_result(state.searcher(info), result, top=top_k, strict=True)
        faces = []
        for face, ident in zip(result.faces, answer.answers, strict=True):
            faces.append({"box": [round(float(x), 2) for x in face.box], "score": round(face.score, 4),
                          "subject": ident.subject,
                          "similarity": None if ident.similarity is None else round(ident.similarity, 6),
                          "threshold": ident.threshold,
                          "matches": [{"subject": c.subject, "similarity": round(c.similarity, 6)}
                                      for c in ident.candidates]})
        return {"width": result.width, "height": result.height, "faces": faces}

    return await state.pool.run(state.settings.request_timeout, work)


@router.get("/{gallery}/export", response_class=Response, summary="The gallery as a zip of JSONL and npy files",
            responses={200: {"content": {"application/zip": {}}}})
async def export(request: Request, key: Reader, gallery: GalleryName) -> Response:
    state = state_of(request)
    info = await _gallery(state, key, gallery)

    def work() -> bytes:
        with tempfile.TemporaryDirectory(prefix="faceflow-export-") as tmp:
            out = export_gallery(state.store, info.name, Path(tmp) / "gallery")
            buffer = io.BytesIO()
            with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
                for path in sorted(out.rglob("*")):
                    if path.is_file():
                        zf.write(path, path.relative_to(out).as_posix())
            return buffer.getvalue()

    data = await state.pool.run(state.settings.request_timeout, work)
    # headers are Latin-1: an ASCII file name for every client, the real one percent-encoded (RFC 6266)
    safe = "".join(c if c.isascii() and (c.isalnum() or c in "-_.") else "_" for c in info.name)
    encoded = quote(info.name + ".zip", safe="")
    return Response(data, media_type="application/zip", headers={
        "Content-Disposition": f"attachment; filename=\"{safe}.zip\"; filename*=UTF-8''{encoded}"})

