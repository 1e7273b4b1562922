"""One error format for every failure: RFC 9457 problem details (``application/problem+json``).

Each body has the standard members ``type, title, status, detail`` and three of ours:
``code`` (machine-readable reason), ``field`` (the request field at fault) and
``request_id``. Client mistakes get 4xx; only our own bugs are 500. The exception handler
below and the middleware's own answers (413, Host refusals, 500) all build their responses
with :func:`problem_response`, so the format cannot drift between them.
"""

from __future__ import annotations

import logging
import sqlite3
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from opencir.data.images import ImageLoadError
from opencir.index.manifest import GalleryIndexError
from opencir.index.search import QueryError, QueryLimits
from opencir.index.store import UnknownItemError

log = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_TYPE_PREFIX = "urn:opencir:problem:"

_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
    422: "invalid_input",
    503: "not_ready",
}


class ApiError(Exception):
    """Raised by handlers for a client-facing error."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.field = status, code, detail, field
        self.headers = headers or {}


def problem(error: ApiError, request_id: str | None) -> dict[str, Any]:
    """The RFC 9457 body of ``error``: one ``type`` URN per ``code``."""
    try:
        title = HTTPStatus(error.status).phrase
    except ValueError:
        title = "Error"
    return {
        "type": PROBLEM_TYPE_PREFIX + error.code,
        "title": title,
        "status": error.status,
        "detail": error.detail,
        "code": error.code,
        "field": error.field,
        "request_id": request_id,
    }


def problem_response(error: ApiError, request_id: str | None) -> JSONResponse:
    """The response for ``error``: every error answer of the server is built here."""
    return JSONResponse(
        problem(error, request_id),
        status_code=error.status,
        headers=error.headers,
        media_type=PROBLEM_MEDIA_TYPE,
    )


def error_response(request: Request, error: ApiError) -> JSONResponse:
    return problem_response(error, getattr(request.state, "request_id", None))


def _validation_error(exc: RequestValidationError, limits: QueryLimits) -> ApiError:
    first = exc.errors()[0] if exc.errors() else {}
    location = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path")]
    field = location[-1] if location else None
    if field == "k":
        detail = f"k must be an integer from 1 to {limits.max_k}"
        return ApiError(422, "k_out_of_range", detail, "k")
    if field == "text" and first.get("type") == "string_too_long":  # refused before any work
        detail = f"text has {len(first['input'])} characters, the limit is {limits.max_text_chars}"
        return ApiError(422, "text_too_long", detail, "text")
    message = first.get("msg", "invalid input")
    detail = f"{field}: {message}" if field else message
    return ApiError(422, "invalid_field", detail, field)


def _as_api_error(exc: Exception, limits: QueryLimits) -> ApiError:
    """Every exception a request can raise, as the client-facing error it stands for."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, QueryError):
        return ApiError(422, exc.code, str(exc), exc.field)
    if isinstance(exc, UnknownItemError):
        return ApiError(404, "unknown_id", str(exc), "id")
    if isinstance(exc, ImageLoadError):  # uploads never get here: they become ApiError
        log.warning("gallery image unavailable: %s", exc)
        code = "image_file_missing" if exc.reason == "missing" else "image_unreadable"
        detail = f"the gallery file of this id is unavailable ({exc.reason})"
        return ApiError(404, code, detail, "id")
    if isinstance(exc, GalleryIndexError | sqlite3.DatabaseError):
        log.error("index error: %s", exc)
        return ApiError(503, "index_error", f"the index cannot answer: {exc}")
    if isinstance(exc, RequestValidationError):
        return _validation_error(exc, limits)
    if isinstance(exc, StarletteHTTPException):
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        return ApiError(exc.status_code, code, str(exc.detail), headers=dict(exc.headers or {}))
    raise TypeError(f"no error mapping for {type(exc).__name__}")  # pragma: no cover


HANDLED = (
    ApiError,
    QueryError,
    UnknownItemError,
    ImageLoadError,
    GalleryIndexError,
    sqlite3.DatabaseError,
    RequestValidationError,
    StarletteHTTPException,
)


def install_error_handlers(app: FastAPI, limits: QueryLimits) -> None:
    """One handler for every exception type a request can raise (unexpected ones: middleware)."""

    async def handle(request: Request, exc: Exception) -> JSONResponse:
        return error_response(request, _as_api_error(exc, limits))

    for exception_type in HANDLED:
        app.add_exception_handler(exception_type, handle)
