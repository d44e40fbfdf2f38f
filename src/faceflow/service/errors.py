"""Errors as JSON ``{"code", "message"}`` with stable codes and the HTTP status of each; never a trace.

Library errors (:mod:`faceflow.errors`) are mapped here, and only here, to a status and a code:

=================  ======  ======================================================================
code               status  when
=================  ======  ======================================================================
bad_request        400     unknown stage, detector or model; a malformed multipart body
unauthorized       401     no API key, or one that is wrong or revoked
forbidden          403     the key's scope does not allow the call
not_found          404     no such route, gallery (also a gallery the key may not touch), subject
                           or face
conflict           409     the gallery exists already; embeddings of another model
too_large          413     the request body is over the upload limit
image_too_large    422     the image is over the pixel limit (refused from its header)
bad_image          422     not an image, truncated or corrupt
no_face            422     an image that had to show a face shows none
invalid_name       422     a gallery or subject name that cannot be stored
invalid_request    422     a parameter of the wrong type or out of range; a missing upload
unprocessable      422     another refusal of the library (e.g. no photo of an enrolment worked)
rate_limited       429     the key's request rate is over its limit (``Retry-After``)
internal           500     a bug: the message says no more
busy               503     the work queue is full (``Retry-After``)
not_ready          503     the default models are still loading
unavailable        503     a model file or the gallery store cannot be reached
timeout            504     the request took longer than the timeout
=================  ======  ======================================================================
"""

from __future__ import annotations

import re

from faceflow.errors import (
    ConfigError,
    FaceflowError,
    GalleryError,
    ImageError,
    ImageTooLarge,
    InvalidName,
    ModelMismatch,
    ModelUnavailable,
    NoFaceFound,
    StageError,
    StoreUnavailable,
)


class ApiError(Exception):
    """An answer other than success: status, stable code, message, extra headers (``Retry-After``)."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}

    def body(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


_GALLERY_LIST = re.compile(r" \(galleries: .*\)$", re.DOTALL)


def _clean(message: str) -> str:
    """A library message fit for any client: never the names of other galleries."""
    return _GALLERY_LIST.sub("", message)


def from_library(exc: FaceflowError) -> ApiError:
    """The API error for a library error (the table of the module docstring)."""
    message = _clean(str(exc))
    if isinstance(exc, ImageTooLarge):
        return ApiError(422, "image_too_large", message)
    if isinstance(exc, ImageError):
        return ApiError(422, "bad_image", message)
    if isinstance(exc, NoFaceFound):
        return ApiError(422, "no_face", message)
    if isinstance(exc, InvalidName):
        return ApiError(422, "invalid_name", message)
    if isinstance(exc, ModelMismatch):
        return ApiError(409, "conflict", message)
    if isinstance(exc, StoreUnavailable):
        return ApiError(503, "unavailable", "the gallery store is unavailable")
    if isinstance(exc, ModelUnavailable):
        return ApiError(503, "unavailable", message)
    if isinstance(exc, StageError):
        return ApiError(500, "internal", "internal error")
    if isinstance(exc, ConfigError):
        return ApiError(400, "bad_request", message)
    if isinstance(exc, GalleryError):
        if "already exists" in message:
            return ApiError(409, "conflict", message)
        if message.startswith("no "):
            return ApiError(404, "not_found", message)
    return ApiError(422, "unprocessable", message)


def gallery_not_found(name: str) -> ApiError:
    """The one answer for a gallery that does not exist and for one the key may not touch."""
    return ApiError(404, "not_found", f"no gallery named {name!r}")
