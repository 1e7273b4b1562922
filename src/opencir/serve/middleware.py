"""Request ids, access logging with latency, and the request-body size limit (pure ASGI)."""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from typing import Any

from opencir.serve.errors import envelope

access_log = logging.getLogger("opencir.serve.access")

Scope = dict[str, Any]
_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


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


class RequestMiddleware:
    """Give every request an id (``X-Request-ID``), log it, and cap its body at ``max_body``.

    A body over the cap gets 413 whether it declares its length or streams in chunks; in
    the streaming case whatever the app had started to answer is replaced by the 413.
    """

    def __init__(self, app: Any, max_body: int) -> None:
        self.app, self.max_body = app, max_body

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        scope.setdefault("state", {})["request_id"] = request_id
        state = {"status": 0, "sent": False, "too_large": False, "received": 0, "body_done": False}
        started = time.perf_counter()

        async def limited_receive() -> Any:
            message = await receive()
            if message["type"] == "http.request":
                state["body_done"] = not message.get("more_body", False)
                state["received"] += len(message.get("body", b""))
                if state["received"] > self.max_body:
                    state["too_large"] = True
                    raise _TooLarge
            return message

        async def tagged_send(message: Any) -> None:
            if state["too_large"]:
                return  # the app's answer to a cut-off body is replaced by our 413
            if message["type"] == "http.response.start":
                state["status"], state["sent"] = message["status"], True
                headers = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
                message = {**message, "headers": headers}
            await send(message)

        try:
            declared = _declared_length(scope)
            if declared is not None and declared > self.max_body:
                state["too_large"] = True
            else:
                await self.app(scope, limited_receive, tagged_send)
        except _TooLarge:
            pass
        finally:
            if state["too_large"] and not state["sent"]:
                state["status"], state["sent"] = 413, True
                if not state["body_done"]:
                    await self._drain(receive)
                await self._reject(send, request_id)
            elapsed = (time.perf_counter() - started) * 1e3
            path = scope.get("path", "")
            access_log.info(
                "%s %s %s %s %.1fms",
                request_id,
                scope.get("method"),
                path,
                state["status"],
                elapsed,
            )

    async def _drain(self, receive: Any) -> None:
        """Read (and drop) a bounded amount of the rest of the body before answering.

        Clients that are still sending when the server closes get a connection reset instead
        of the 413; a few times the cap is read so they see the answer, larger bodies are cut.
        """
        budget = 4 * self.max_body + 2**20
        while budget > 0:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                return
            budget -= len(message.get("body", b""))

    async def _reject(self, send: Any, request_id: str) -> None:
        detail = f"request body is larger than the limit of {self.max_body:,} bytes"
        body = json.dumps(envelope(413, "body_too_large", detail, None, request_id)).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"x-request-id", request_id.encode()),
        ]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})
