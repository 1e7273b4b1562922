"""One JSON error envelope for every failure: ``status, code, detail, field, request_id``.

Client mistakes get 4xx with a machine-readable ``code``; only our own bugs are 500.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from opencir.data.images import ImageLoadError
from opencir.index.manifest import GalleryIndexError
from opencir.index.search import QueryError
from opencir.index.store import UnknownItemError

log = logging.getLogger(__name__)

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

    def __init__(self, status: int, code: str, detail: str, field: str | None = None) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.field = status, code, detail, field


def envelope(
    status: int, code: str, detail: str, field: str | None, request_id: str | None
) -> dict[str, Any]:
    return {
        "status": status,
        "code": code,
        "detail": detail,
        "field": field,
        "request_id": request_id,
    }


def error_response(request: Request, error: ApiError) -> JSONResponse:
    request_id = getattr(request.state, "request_id", None)
    body = envelope(error.status, error.code, error.detail, error.field, request_id)
    return JSONResponse(body, status_code=error.status)


def _validation(request: Request, exc: RequestValidationError, max_k: int) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {}
    location = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path")]
    field = location[-1] if location else None
    if field == "k":
        detail = f"k must be an integer from 1 to {max_k}"
        return error_response(request, ApiError(422, "k_out_of_range", detail, "k"))
    message = first.get("msg", "invalid input")
    detail = f"{field}: {message}" if field else message
    return error_response(request, ApiError(422, "invalid_field", detail, field))


def install_error_handlers(app: FastAPI, max_k: int) -> None:
    """Map every exception type a request can raise onto the envelope."""

    async def api_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return error_response(request, exc)

    async def query_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, QueryError)
        return error_response(request, ApiError(422, exc.code, str(exc), exc.field))

    async def unknown_item(request: Request, exc: Exception) -> JSONResponse:
        return error_response(request, ApiError(404, "unknown_id", str(exc), "id"))

    async def gallery_file(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ImageLoadError)  # uploads never get here: they become ApiError
        log.warning("gallery image unavailable: %s", exc)
        code = "image_file_missing" if exc.reason == "missing" else "image_unreadable"
        detail = f"the gallery file of this id is unavailable ({exc.reason})"
        return error_response(request, ApiError(404, code, detail, "id"))

    async def index_error(request: Request, exc: Exception) -> JSONResponse:
        log.error("index error: %s", exc)
        return error_response(request, ApiError(503, "index_error", str(exc)))

    async def validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return _validation(request, exc, max_k)

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        return error_response(request, ApiError(exc.status_code, code, str(exc.detail)))

    async def internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error in %s %s", request.method, request.url.path)
        return error_response(request, ApiError(500, "internal_error", "internal server error"))

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(QueryError, query_error)
    app.add_exception_handler(UnknownItemError, unknown_item)
    app.add_exception_handler(GalleryIndexError, index_error)
    app.add_exception_handler(ImageLoadError, gallery_file)
    app.add_exception_handler(RequestValidationError, validation)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, internal)
