"""Request plumbing shared by the routes: the process state, API-key checks, reading uploaded images and
JSON bodies."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from faceflow.service.errors import ApiError
from faceflow.service.keys import ApiKey
from faceflow.service.state import ServiceState

MAX_FILES = 32
"""Most images one multipart request may carry (an enrolment's photos)."""

Body = TypeVar("Body", bound=BaseModel)


def state_of(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.faceflow
    return state


def _presented_key(request: Request) -> str | None:
    auth = request.headers.get("authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    key = request.headers.get("x-api-key")
    return key.strip() if key else None


def require(scope: str) -> Callable[[Request], Awaitable[ApiKey]]:
    """A dependency: the request's API key if it is valid and covers ``scope``; 401, 403 or 429 otherwise."""

    async def check(request: Request) -> ApiKey:
        state = state_of(request)
        presented = _presented_key(request)
        if not presented:
            raise ApiError(401, "unauthorized", "an API key is required (Authorization: Bearer <key>)",
                           {"WWW-Authenticate": "Bearer"})
        client = "ip:" + (request.client.host if request.client else "unknown")
        # an address over its failure budget gets no new scrypt checks, but a key this process has
        # verified before still works from it (on loopback every local client shares one address)
        blocked = state.auth_failures.blocked(client)
        key = await run_in_threadpool(lambda: state.keys.authenticate(presented, cached_only=blocked))
        if key is None and blocked:
            raise ApiError(429, "rate_limited", "too many failed API keys from this address; retry later",
                           {"Retry-After": "1"})
        if key is None:
            state.auth_failures.take(client)
            raise ApiError(401, "unauthorized", "invalid or revoked API key", {"WWW-Authenticate": "Bearer"})
        state.limiter.take(key.id)
        if not key.allows(scope):
            raise ApiError(403, "forbidden", f"this key's scope is {key.scope}; this call needs {scope}")
        request.state.api_key = key
        return key

    return check


@dataclass(frozen=True)
class Upload:
    """An uploaded image: the name the client gave it (a label only, never opened) and its bytes."""

    name: str
    data: bytes


def _label(value: UploadFile, field: str) -> str:
    name = (value.filename or field).replace("\\", "/").rsplit("/", 1)[-1]
    return "".join(c for c in name if c.isprintable())[:200] or field


async def read_uploads(request: Request, fields: tuple[str, ...], *, raw: bool = False,
                       repeated: bool = False) -> dict[str, list[Upload]]:
    """The images of ``fields`` from a multipart body (with ``repeated``, each field may repeat; else a
    second image is 422 ``invalid_request`` rather than silently dropped); with ``raw``, a body that is
    not multipart is the one image of ``fields[0]``. A missing image is 422 ``invalid_request``; an
    upload slower than the request timeout 504 ``timeout``."""
    timeout = state_of(request).settings.request_timeout
    try:
        return await asyncio.wait_for(_read_uploads(request, fields, raw, repeated), timeout)
    except TimeoutError:
        raise ApiError(504, "timeout", f"the upload took longer than {timeout:g} s") from None


async def _read_uploads(request: Request, fields: tuple[str, ...], raw: bool,
                        repeated: bool) -> dict[str, list[Upload]]:
    content_type = request.headers.get("content-type", "").lower()  # media types ignore case (RFC 9110)
    out: dict[str, list[Upload]] = {f: [] for f in fields}
    try:
        if content_type.startswith("multipart/form-data"):
            form = await request.form(max_files=MAX_FILES, max_fields=MAX_FILES)
            try:
                for field in fields:
                    for value in form.getlist(field):
                        if not isinstance(value, UploadFile):  # its bytes were decoded as text: not the image
                            raise ApiError(422, "invalid_request", f"{field}: send the image as a file (a "
                                           "multipart part with a file name), not as a text field")
                        out[field].append(Upload(_label(value, field), await value.read()))
            finally:
                await form.close()
        elif raw:
            body = await request.body()
            if body:
                out[fields[0]].append(Upload(fields[0], body))
    except ClientDisconnect:
        raise ApiError(400, "bad_request", "the client went away during the upload") from None
    except HTTPException as exc:  # a malformed multipart body
        raise ApiError(400, "bad_request", f"malformed multipart body: {exc.detail}") from None
    for field in fields:
        if not out[field]:
            how = f"a multipart field {field!r}" + (" or the image as the raw body" if raw else "")
            raise ApiError(422, "invalid_request", f"missing image: send {how}")
        if not repeated and len(out[field]) > 1:
            raise ApiError(422, "invalid_request", f"{field}: send one image here, got {len(out[field])}")
        if any(not u.data for u in out[field]):
            raise ApiError(422, "bad_image", f"{field}: empty upload (0 bytes)")
    return out


def image_body(*fields: str, raw: bool = False, repeated: bool = False) -> dict[str, Any]:
    """The OpenAPI ``requestBody`` of a route that reads images with :func:`read_uploads`."""
    binary = {"type": "string", "format": "binary"}
    item: dict[str, Any] = {"type": "array", "items": binary} if repeated else binary
    content: dict[str, Any] = {"multipart/form-data": {"schema": {
        "type": "object", "properties": {f: item for f in fields}, "required": list(fields)}}}
    if raw:
        content["application/octet-stream"] = {"schema": binary}
        content["image/jpeg"] = {"schema": binary}
        content["image/png"] = {"schema": binary}
    return {"requestBody": {"required": True, "content": content}}


async def read_json(request: Request, model: type[Body]) -> Body:
    """The JSON body as ``model``, read by the route itself: after the key's check and within the request
    timeout like an upload (a body FastAPI declares is read before any dependency, so without a key and
    for as long as a client takes to trickle it in). A body that does not fit is 422 ``invalid_request``."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media and media != "application/json" and not (media.startswith("application/") and media.endswith("+json")):
        raise ApiError(422, "invalid_request", "send the body as JSON (Content-Type: application/json)")
    timeout = state_of(request).settings.request_timeout
    try:
        data = await asyncio.wait_for(request.body(), timeout)
    except TimeoutError:
        raise ApiError(504, "timeout", f"the body took longer than {timeout:g} s to arrive") from None
    except ClientDisconnect:
        raise ApiError(400, "bad_request", "the client went away while sending the body") from None
    try:
        return model.model_validate_json(data)
    except ValidationError as exc:  # answered by the app's handler, as FastAPI's own check would be
        raise RequestValidationError(exc.errors()) from None


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI ``requestBody`` of a route that reads ``model`` with :func:`read_json`."""
    return {"requestBody": {"required": True,
                            "content": {"application/json": {"schema": model.model_json_schema()}}}}
