"""Response models: they document the API in OpenAPI and fix the JSON shapes."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class Problem(BaseModel):
    """Every error response: RFC 9457 problem details (``application/problem+json``)."""

    type: str = Field(description="`urn:opencir:problem:` + `code`: one URI per kind of problem")
    title: str = Field(description="the HTTP status phrase, e.g. `Unprocessable Entity`")
    status: int = Field(description="HTTP status, repeated for clients that lose it")
    detail: str = Field(description="what was wrong with this request, in words")
    code: str = Field(description="machine-readable reason, e.g. `k_out_of_range`")
    field: str | None = Field(None, description="the request field at fault, if any")
    request_id: str | None = Field(None, description="also in the `X-Request-ID` header")


class GalleryItem(BaseModel):
    id: int
    name: str
    image_url: str
    thumbnail_url: str
    metadata: dict[str, Any] = Field(default_factory=dict)


class SearchHit(GalleryItem):
    rank: int
    score: float = Field(description="cosine similarity of query and image embeddings")


class QueryEcho(BaseModel):
    text: str = Field(description="the text as searched (whitespace normalised)")
    text_truncated: bool = Field(description="true if the text exceeded the model's token window")
    k: int
    reference: GalleryItem | None = Field(None, description="the gallery reference, if by id")
    uploaded: bool = Field(description="true if the reference was an uploaded image")


class SearchResponse(BaseModel):
    request_id: str
    query: QueryEcho
    results: list[SearchHit]
    timings_ms: dict[str, float]


class GalleryPage(BaseModel):
    total: int
    offset: int
    items: list[GalleryItem]


class IndexInfo(BaseModel):
    count: int
    dim: int
    model: str
    factory: str
    max_k: int
    default_k: int
    max_text_chars: int
    max_upload_bytes: int
    formats: list[str]


class Health(BaseModel):
    status: str
    detail: str = ""
