"""The FastAPI app factory: search API, gallery images, health probes, docs and the web page.

Nothing heavy happens at import or in :func:`create_app`: the index and model load in a
background thread once the server starts, ``/readyz`` says when they are ready, and search
answers 503 until then (or for good, with the reason, if loading failed). ``opencir serve``
instead opens them with :func:`open_searcher` before it serves, so a bad index stops it.
"""

import logging
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, File, Form, Query, Request, UploadFile
from fastapi.responses import FileResponse, HTMLResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image
from starlette.concurrency import run_in_threadpool

from opencir.data.images import DEFAULT_MAX_PIXELS
from opencir.index.search import QueryLimits, Searcher, SearchResult, check_k, clean_text
from opencir.index.store import Item
from opencir.serve import schemas
from opencir.serve.batching import DEFAULT_MAX_BATCH, PreparedQuery, QueryBatcher
from opencir.serve.errors import PROBLEM_MEDIA_TYPE, ApiError, install_error_handlers
from opencir.serve.hosts import AllowedHosts
from opencir.serve.images import Thumbnails, decode_upload, gallery_image
from opencir.serve.middleware import RequestMiddleware

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
MAX_ID = 2**63 - 1  # SQLite's largest integer: ids and offsets beyond it are refused
THUMBNAIL_SIZE = 256
FORM_MEDIA_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
# The page's own policy: its scripts, styles and images only (blob: is an upload's preview).
PAGE_CSP = (
    "default-src 'self'; img-src 'self' blob:; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)


@dataclass(frozen=True)
class ServeConfig:
    """Everything the server needs; the CLI builds one from its flags."""

    index: str | None = None
    model: str | None = None  # None: the model recorded in the index manifest
    host: str = "127.0.0.1"
    port: int = 8000
    max_upload_bytes: int = 10 * 2**20
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_k: int = 100
    default_k: int = 12
    max_text_chars: int = 500
    formats: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF", "BMP")
    verify: bool = False
    max_batch: int = DEFAULT_MAX_BATCH  # queries encoded together when requests overlap
    allowed_hosts: tuple[str, ...] = ()  # Host names answered besides the defaults (hosts.py)

    def __post_init__(self) -> None:
        if not 1 <= self.default_k <= self.max_k:
            raise ValueError(f"default_k must be in 1..max_k ({self.max_k}), got {self.default_k}")
        if self.max_upload_bytes < 1024:
            raise ValueError(f"max_upload_bytes must be at least 1024, got {self.max_upload_bytes}")
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {self.max_batch}")
        AllowedHosts.build(self.host, self.allowed_hosts)  # a malformed entry fails here

    @property
    def limits(self) -> QueryLimits:
        return QueryLimits(max_k=self.max_k, max_text_chars=self.max_text_chars)

    @property
    def max_text_field_chars(self) -> int:
        """The raw ``text`` field's cap: room for whitespace that normalising removes."""
        return 2 * self.max_text_chars

    @property
    def hosts(self) -> AllowedHosts:
        return AllowedHosts.build(self.host, self.allowed_hosts)


class Engine:
    """Holds the searcher and its query batcher; loads them off the event loop."""

    def __init__(self, config: ServeConfig, searcher: Searcher | None = None) -> None:
        self.config, self.searcher = config, searcher
        self.error = "" if searcher or config.index else "no index configured"
        self._thread: threading.Thread | None = None
        self._batcher: QueryBatcher | None = None
        self._batcher_lock = threading.Lock()

    def start(self) -> None:
        if self.searcher is None and self.config.index and self._thread is None:
            self._thread = threading.Thread(target=self._load, name="opencir-load", daemon=True)
            self._thread.start()

    def _load(self) -> None:
        try:
            self.searcher = open_searcher(self.config)
        except Exception as error:  # reported by /readyz and 503s, not a crash
            log.exception("could not load index %s", self.config.index)
            self.error = f"index failed to load: {error}"

    def status(self) -> tuple[bool, str]:
        if self.searcher is not None:
            return True, f"{len(self.searcher.index)} images"
        return False, self.error or "index is loading"

    def require(self) -> Searcher:
        ready, detail = self.status()
        if not ready or self.searcher is None:
            raise ApiError(503, "index_not_loaded", detail)
        return self.searcher

    def batcher(self) -> QueryBatcher:
        """The batcher of the ready searcher (made on first use)."""
        searcher = self.require()
        with self._batcher_lock:
            if self._batcher is None:
                self._batcher = QueryBatcher(searcher, self.config.max_batch)
            return self._batcher

    def close(self) -> None:
        if self.searcher is not None:
            self.searcher.close()


def open_searcher(config: ServeConfig) -> Searcher:
    """Open ``config.index`` with its model and warm it up (raises if either cannot load)."""
    if not config.index:
        raise ValueError("no index configured")
    searcher = Searcher.open(config.index, config.model, limits=config.limits, verify=config.verify)
    searcher.encode(_probe_image(), "warm up")  # first call pays lazy init
    log.info("ready: %d images from %s", len(searcher.index), config.index)
    return searcher


def _probe_image() -> Image.Image:
    return Image.new("RGB", (32, 32), (128, 128, 128))


def _problem_responses() -> dict[int | str, dict]:
    """OpenAPI: every error status answers ``application/problem+json``."""
    content = {PROBLEM_MEDIA_TYPE: {"schema": schemas.Problem.model_json_schema()}}
    return {code: {"content": content} for code in (400, 404, 413, 415, 421, 422, 500, 503)}


def create_app(config: ServeConfig = ServeConfig(), searcher: Searcher | None = None) -> FastAPI:
    """Build the app; pass ``searcher`` to serve an already opened index (tests, demos)."""
    engine = Engine(config, searcher)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine.start()
        yield
        engine.close()

    app = FastAPI(
        title="OpenCIR search",
        version="1",
        summary="Composed image retrieval over an indexed gallery",
        description=_API_DESCRIPTION.format(chars=config.max_text_chars),
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        responses=_problem_responses(),
        # Text fields up to the body cap reach the schema, which refuses a long text with 422.
        form_limits={"max_part_size": config.max_upload_bytes},
    )
    app.state.engine = engine
    app.add_middleware(RequestMiddleware, max_body=config.max_upload_bytes, hosts=config.hosts)
    install_error_handlers(app, config.limits)
    _add_health_routes(app, engine)
    _add_gallery_routes(app, engine, config)
    _add_search_route(app, engine, config)
    _add_page_routes(app)
    return app


_API_DESCRIPTION = """Search a gallery with a **reference image** (uploaded, or a gallery id)
and a **text** saying what to change. Every error is an RFC 9457 problem
(`application/problem+json`: `type`, `title`, `status`, `detail`, plus `code`, `field`,
`request_id`). Only requests whose `Host` header names this server are answered (421 otherwise).

Text policy: whitespace is normalised; an empty text or one over {chars} characters is
refused with 422 (never silently cut); a text over the model's token window is truncated
to the window and the response says `text_truncated: true`."""


def create_app_from_env() -> FastAPI:
    """For ``uvicorn --factory opencir.serve.app:create_app_from_env`` (several workers).

    Reads ``OPENCIR_INDEX`` (required), ``OPENCIR_MODEL`` (optional) and
    ``OPENCIR_ALLOWED_HOSTS`` (optional, comma-separated ``--allowed-host`` entries).
    """
    import os

    index = os.environ.get("OPENCIR_INDEX")
    if not index:
        raise ValueError("set OPENCIR_INDEX to the index folder to serve")
    hosts = os.environ.get("OPENCIR_ALLOWED_HOSTS", "").split(",")
    return create_app(
        ServeConfig(
            index=index,
            model=os.environ.get("OPENCIR_MODEL"),
            allowed_hosts=tuple(host.strip() for host in hosts if host.strip()),
        )
    )


def _add_health_routes(app: FastAPI, engine: Engine) -> None:
    @app.get("/healthz", response_model=schemas.Health, tags=["health"])
    def healthz() -> schemas.Health:
        """Liveness: the process answers."""
        return schemas.Health(status="ok")

    @app.get("/readyz", response_model=schemas.Health, tags=["health"])
    def readyz() -> schemas.Health:
        """Readiness: the index and model are loaded (503 with the reason otherwise)."""
        ready, detail = engine.status()
        if not ready:
            raise ApiError(503, "index_not_loaded", detail)
        return schemas.Health(status="ready", detail=detail)


def _item(item: Item) -> schemas.GalleryItem:
    url = f"/images/{item.id}"
    return schemas.GalleryItem(
        id=item.id,
        name=item.name,
        image_url=url,
        thumbnail_url=f"{url}?size={THUMBNAIL_SIZE}",
        metadata=dict(item.metadata),
    )


def _lookup(searcher: Searcher, item_id: int) -> Item:
    if not 0 <= item_id <= MAX_ID:
        raise ApiError(404, "unknown_id", f"no image with id {item_id}", "id")
    return searcher.index.get(item_id)


def _add_gallery_routes(app: FastAPI, engine: Engine, config: ServeConfig) -> None:
    thumbnails = Thumbnails()

    @app.get("/info", response_model=schemas.IndexInfo, tags=["gallery"])
    def info() -> schemas.IndexInfo:
        """What is indexed, and the limits on queries."""
        manifest = engine.require().index.manifest
        return schemas.IndexInfo(
            count=manifest.count,
            dim=manifest.dim,
            model=manifest.model.name,
            factory=manifest.factory,
            max_k=config.max_k,
            default_k=config.default_k,
            max_text_chars=config.max_text_chars,
            max_upload_bytes=config.max_upload_bytes,
            formats=list(config.formats),
        )

    @app.get("/gallery", response_model=schemas.GalleryPage, tags=["gallery"])
    def gallery(
        offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
        limit: Annotated[int, Query(ge=1, le=200)] = 48,
    ) -> schemas.GalleryPage:
        """A page of gallery items in id order (to pick a reference from)."""
        index = engine.require().index
        items = [_item(item) for item in index.page(offset, limit)]
        return schemas.GalleryPage(total=len(index), offset=offset, items=items)

    @app.get(
        "/images/{item_id}",
        response_class=Response,
        responses={200: {"content": {"image/jpeg": {}, "image/png": {}}}},
        tags=["gallery"],
    )
    def image(item_id: int, size: Annotated[int | None, Query(ge=16, le=1024)] = None) -> Response:
        """The gallery image (``size``: a JPEG thumbnail at most that many pixels a side)."""
        item = _lookup(engine.require(), item_id)
        headers = {"Cache-Control": "private, max-age=60"}
        if size is not None:
            data = thumbnails.get(item.path, size)
            return Response(data, media_type="image/jpeg", headers=headers)
        data, media_type = gallery_image(item.path)
        return Response(data, media_type=media_type, headers=headers)


def require_form(request: Request) -> None:
    """415 for a body that is not a form (a JSON body, say): the fields would read as missing."""
    content_type = request.headers.get("content-type", "")
    media_type = content_type.partition(";")[0].strip().lower()
    has_body = request.headers.get("content-length", "0") != "0" or (
        "transfer-encoding" in request.headers
    )
    if media_type in FORM_MEDIA_TYPES or not (media_type or has_body):
        return
    detail = (
        f"{request.method} {request.url.path} takes multipart/form-data "
        f"(or application/x-www-form-urlencoded), not {content_type or 'an untyped body'}"
    )
    raise ApiError(415, "unsupported_media_type", detail)


def _add_search_route(app: FastAPI, engine: Engine, config: ServeConfig) -> None:
    text_help = "what to change in the reference"

    @app.post(
        "/search",
        response_model=schemas.SearchResponse,
        tags=["search"],
        dependencies=[Depends(require_form)],
    )
    async def search(
        request: Request,
        text: Annotated[
            str | None, Form(description=text_help, max_length=config.max_text_field_chars)
        ] = None,
        k: Annotated[int, Form(ge=1, le=config.max_k, description="number of results")] = (
            config.default_k
        ),
        id: Annotated[int | None, Form(description="gallery id of the reference")] = None,
        image: Annotated[UploadFile | None, File(description="or: an uploaded reference")] = None,
        exclude_reference: Annotated[bool, Form(description="drop the reference id")] = True,
    ) -> schemas.SearchResponse:
        """Composed search: a reference (``image`` upload **or** gallery ``id``) plus ``text``."""
        searcher = engine.require()
        data = await image.read() if image is not None else None
        if image is not None and not data and not image.filename:
            data = None  # an empty file field, as browsers send when nothing was chosen
        batcher = engine.batcher()
        form = SearchForm(text, k, id, data, exclude_reference)
        result = await run_in_threadpool(_run_search, searcher, batcher, config, form)
        return _response(request, result, uploaded=data is not None)


@dataclass(frozen=True)
class SearchForm:
    """The fields of one ``POST /search`` as received (not yet validated)."""

    text: str | None
    k: int
    item_id: int | None
    data: bytes | None
    exclude_reference: bool


def _run_search(
    searcher: Searcher, batcher: QueryBatcher, config: ServeConfig, form: SearchForm
) -> SearchResult:
    """In a request thread: validate, decode or load the reference, then join a batch."""
    started = time.perf_counter()
    query, reference = _prepare(searcher, config, form)
    loaded = time.perf_counter()
    answer = batcher.answer(query)
    timings = {"load": (loaded - started) * 1e3, **answer.timings_ms}
    return SearchResult(query.text, query.k, answer.hits, reference, answer.text_truncated, timings)


def _prepare(
    searcher: Searcher, config: ServeConfig, form: SearchForm
) -> tuple[PreparedQuery, Item | None]:
    """Validate cheap things first (text, k, reference choice), then decode or load the image."""
    text, k, item_id, data = form.text, form.k, form.item_id, form.data
    cleaned = clean_text(text or "", config.max_text_chars)
    check_k(k, config.limits)
    if data is not None and item_id is not None:
        raise ApiError(422, "ambiguous_reference", "give an image or an id, not both", "id")
    if data is None and item_id is None:
        raise ApiError(422, "missing_reference", "give a reference: an image or an id", "image")
    if item_id is not None:
        reference = _lookup(searcher, item_id)
        pixels = searcher.load_gallery_image(reference)
        exclude = frozenset({reference.id}) if form.exclude_reference else frozenset()
        return PreparedQuery(pixels, cleaned, k, exclude), reference
    pixels = decode_upload(data or b"", config.formats, config.max_pixels)
    return PreparedQuery(pixels, cleaned, k), None


def _response(request: Request, result: SearchResult, uploaded: bool) -> schemas.SearchResponse:
    hits = [
        schemas.SearchHit(rank=hit.rank, score=round(hit.score, 6), **_item(hit.item).model_dump())
        for hit in result.hits
    ]
    query = schemas.QueryEcho(
        text=result.text,
        text_truncated=result.text_truncated,
        k=result.k,
        reference=_item(result.reference) if result.reference else None,
        uploaded=uploaded,
    )
    timings = {key: round(value, 2) for key, value in result.timings_ms.items()}
    return schemas.SearchResponse(
        request_id=request.state.request_id, query=query, results=hits, timings_ms=timings
    )


def _add_page_routes(app: FastAPI) -> None:
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        headers = {"Cache-Control": "no-cache", "Content-Security-Policy": PAGE_CSP}
        return FileResponse(STATIC_DIR / "index.html", headers=headers)

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return _docs_page(app)

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> FileResponse:
        return FileResponse(STATIC_DIR / "favicon.svg", media_type="image/svg+xml")

    _mount_swagger_assets(app)


def _mount_swagger_assets(app: FastAPI) -> None:
    """Self-hosted Swagger UI assets (package ``fastapi-offline``), never a CDN."""
    try:
        import fastapi_offline
    except ImportError:
        return
    assets = Path(fastapi_offline.__file__).parent / "static"
    app.mount("/docs-assets", StaticFiles(directory=assets), name="docs-assets")
    app.state.swagger_assets = True


def _docs_page(app: FastAPI) -> HTMLResponse:
    from fastapi.openapi.docs import get_swagger_ui_html

    if not getattr(app.state, "swagger_assets", False):
        return HTMLResponse(
            "<!doctype html><title>API</title><p>The interactive docs need the package "
            '<code>fastapi-offline</code>; the schema is at <a href="/openapi.json">'
            "/openapi.json</a>.</p>"
        )
    return get_swagger_ui_html(
        openapi_url="/openapi.json",
        title=f"{app.title} — API",
        swagger_js_url="/docs-assets/swagger-ui-bundle.js",
        swagger_css_url="/docs-assets/swagger-ui.css",
        swagger_favicon_url="/favicon.ico",
    )
