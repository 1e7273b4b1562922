"""The outer layer of every request (pure ASGI): request id, ``Host`` check, body cap, HEAD,
security headers, the 500 of an unexpected exception, and an access log line with latency.

Every answer gets its headers from one place (``_with_headers``), so the request id and the
security headers are on all of them: the app's, and the errors answered here before or
instead of the app (``Host`` refused, body too large, internal error).
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

from opencir.serve.errors import ApiError, problem_response
from opencir.serve.hosts import AllowedHosts

log = logging.getLogger(__name__)
access_log = logging.getLogger("opencir.serve.access")

Scope = dict[str, Any]
_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")

# Sent on every response unless the route set its own (the page sets a stricter CSP).
SECURITY_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", b"frame-ancestors 'none'; base-uri 'none'; object-src 'none'"),
    (b"cross-origin-resource-policy", b"same-origin"),
)


class _TooLarge(Exception):
    pass


def _request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            candidate = value.decode("latin-1")
            if _SAFE_ID.match(candidate):
                return candidate
    return uuid.uuid4().hex[:16]


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _with_headers(headers: list[tuple[bytes, bytes]], request_id: str) -> list[Any]:
    present = {name.lower() for name, _ in headers}
    extra = [(name, value) for name, value in SECURITY_HEADERS if name not in present]
    return [*headers, *extra, (b"x-request-id", request_id.encode())]


class _Exchange:
    """One request on its way through the middleware: what came in, what went out, and the
    error (if any) that the middleware answers itself instead of the app."""

    def __init__(self, scope: Scope, receive: Any, send: Any, max_body: int) -> None:
        self.scope, self._receive, self._send, self.max_body = scope, receive, send, max_body
        self.request_id = _request_id(scope)
        scope.setdefault("state", {})["request_id"] = self.request_id
        self.head = scope.get("method") == "HEAD"
        self.status, self.sent, self.received, self.body_done = 0, False, 0, False
        self.error: ApiError | None = None

    @property
    def app_scope(self) -> Scope:
        """What the app sees: HEAD as GET (the body is dropped on the way out)."""
        return {**self.scope, "method": "GET"} if self.head else self.scope

    def too_large(self) -> ApiError:
        detail = f"request body is larger than the limit of {self.max_body:,} bytes"
        return ApiError(413, "body_too_large", detail)

    def declared_too_large(self) -> ApiError | None:
        declared = _declared_length(self.scope)
        return self.too_large() if declared is not None and declared > self.max_body else None

    async def receive(self) -> Any:
        message = await self._receive()
        if message["type"] == "http.request":
            self.body_done = not message.get("more_body", False)
            self.received += len(message.get("body", b""))
            if self.received > self.max_body:
                self.error = self.too_large()
                raise _TooLarge
        return message

    async def send(self, message: Any) -> None:
        if self.error is not None:
            return  # the app's answer to a cut-off body is replaced by our 413
        if message["type"] == "http.response.start":
            self.status, self.sent = message["status"], True
            message = {**message, "headers": _with_headers(message["headers"], self.request_id)}
        elif self.head and message["type"] == "http.response.body":
            message = {**message, "body": b""}
        await self._send(message)

    async def answer_error(self) -> None:
        """Answer ``self.error`` in the app's problem format, unless a response has begun."""
        error = self.error
        if error is None or self.sent:
            return
        self.status, self.sent = error.status, True
        if not self.body_done:
            await self._drain()
        response = problem_response(error, self.request_id)
        headers = _with_headers(response.raw_headers, self.request_id)
        await self._send(
            {"type": "http.response.start", "status": error.status, "headers": headers}
        )
        body = b"" if self.head else response.body
        await self._send({"type": "http.response.body", "body": body})

    async def _drain(self) -> None:
        """Read (and drop) a bounded amount of the rest of the body before answering.

        Clients that are still sending when the server closes get a connection reset instead
        of the error; a few times the cap is read so they see the answer, larger bodies are cut.
        """
        budget = 4 * self.max_body + 2**20
        while budget > 0:
            message = await self._receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                return
            budget -= len(message.get("body", b""))


class RequestMiddleware:
    """Give every request an id (``X-Request-ID``), check it, log it, and answer its errors.

    * ``Host`` outside ``hosts`` → 421 (400 if missing or malformed), before the app runs.
    * A body over ``max_body`` → 413, whether it declares its length or streams in chunks;
      in the streaming case whatever the app had started to answer is replaced by the 413.
    * HEAD is answered as GET without the body, so every GET route answers HEAD.
    * An exception no handler took → 500 ``internal_error``, logged with its traceback.
    """

    def __init__(self, app: Any, max_body: int, hosts: AllowedHosts) -> None:
        self.app, self.max_body, self.hosts = app, max_body, hosts

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        exchange = _Exchange(scope, receive, send, self.max_body)
        started = time.perf_counter()
        try:
            await self._run(exchange)
        finally:
            await exchange.answer_error()
            elapsed = (time.perf_counter() - started) * 1e3
            method, path = scope.get("method"), scope.get("path", "")
            access_log.info(
                "%s %s %s %s %.1fms", exchange.request_id, method, path, exchange.status, elapsed
            )

    async def _run(self, exchange: _Exchange) -> None:
        exchange.error = self.hosts.refusal(exchange.scope) or exchange.declared_too_large()
        if exchange.error is not None:
            return
        try:
            await self.app(exchange.app_scope, exchange.receive, exchange.send)
        except _TooLarge:
            pass
        except Exception:
            scope = exchange.scope
            where = f"{scope.get('method')} {scope.get('path')} ({exchange.request_id})"
            log.exception("internal error in %s", where)
            if exchange.sent:
                raise
            exchange.error = ApiError(500, "internal_error", "internal server error")
