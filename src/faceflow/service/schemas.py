"""Request and response bodies of the API (they make the OpenAPI schema at ``/openapi.json``)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictStr


class ErrorBody(BaseModel):
    code: str = Field(description="Stable machine-readable code (see faceflow.service.errors).")
    message: str = Field(description="What went wrong, for people.")


class Status(BaseModel):
    status: str


class KeyInfo(BaseModel):
    id: str
    name: str
    scope: str
    galleries: list[str] | None = Field(description="Galleries the key may touch; null: all.")


class ModelInfo(BaseModel):
    name: str
    task: str
    licence: str
    default: bool
    loaded: bool = Field(description="Its files were opened by this process (the model is in memory).")


class AnalyzeResponse(BaseModel):
    width: int
    height: int
    faces: list[dict[str, Any]] = Field(description="One object per face, as faces.jsonl writes it.")


class VerifyFace(BaseModel):
    box: list[float] = Field(description="The face compared (the largest of the image), [x1, y1, x2, y2].")
    faces_found: int


class VerifyResponse(BaseModel):
    similarity: float
    decision: bool = Field(description="True: the same person.")
    threshold: float
    model: str
    far: float | None = Field(description="False-accept rate measured at the threshold (LFW).")
    faces: list[VerifyFace]


class EmbeddedFace(BaseModel):
    box: list[float]
    score: float
    embedding: list[float]


class EmbedResponse(BaseModel):
    model: str
    width: int
    height: int
    faces: list[EmbeddedFace]


class GalleryCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: StrictStr = Field(min_length=1, max_length=200)
    model: StrictStr | None = Field(default=None, description="Recognition model: sface, dlib or fused (default: the "
                                                      "server's gallery_model).")
    threshold: float | None = Field(default=None, ge=-1.0, le=1.0,
                                    description="Open-set threshold (default: the model's).")


class GalleryOut(BaseModel):
    name: str
    model: str
    dim: int
    threshold: float | None
    subjects: int
    faces: int
    created_at: float


class SubjectOut(BaseModel):
    name: str
    faces: int
    created_at: float


class FaceOut(BaseModel):
    id: int
    subject: str
    box: list[float] | None
    quality: float | None
    created_at: float | None
    upload: str | None = Field(description="The file name the photo was uploaded under (a label).")


class Failure(BaseModel):
    name: str
    reason: str


class EnrolResponse(BaseModel):
    subject: str
    enrolled: list[int] = Field(description="Ids of the faces stored, one per photo that worked.")
    failed: list[Failure]
    notes: list[Failure]


class Deleted(BaseModel):
    deleted: int


class Match(BaseModel):
    subject: str
    similarity: float


class IdentifiedFace(BaseModel):
    box: list[float]
    score: float
    subject: str | None = Field(description="The subject identified, or null (unknown: below the threshold).")
    similarity: float | None
    threshold: float
    matches: list[Match]


class IdentifyResponse(BaseModel):
    width: int
    height: int
    faces: list[IdentifiedFace]
