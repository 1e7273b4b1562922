"""A loopback fake of an OpenAI-compatible server that can be told to misbehave.

It answers ``/v1/chat/completions`` and ``/v1/completions`` deterministically:

* one image → a caption naming the image's dominant colour ("a red picture");
* two images → a change ("make it blue"), from the second image's colour;
* text with ``caption B:`` → a change from the colour word of caption B;
* text with ``Requested change:`` → the description rewritten with that change's colour.

Failure modes are queued per request (:meth:`FakeLLMServer.queue`) or set for every request
(:meth:`FakeLLMServer.always`): ``"500"``, ``"503"``, ``"504"``, ``"429:SECONDS"`` (with
``Retry-After``), ``"400"``, ``"stall"`` (no response until stopped), ``"stall_body"``
(headers, then nothing), ``"garbage"`` (200 with a non-JSON body), ``"no_choices"`` (JSON
without an answer), ``"text:ANSWER"`` (a fixed answer, e.g. an invalid change). Every
request is recorded.
``slots=N`` makes it answer N requests at a time and queue the rest, as llama.cpp's server
does: a request its client gave up on still takes its turn (``delay_s``) in the queue.
Everything stays on 127.0.0.1 and stops with the server.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from PIL import Image, ImageStat

COLOURS = {
    "red": (230, 30, 30),
    "green": (30, 180, 30),
    "blue": (30, 30, 230),
    "yellow": (240, 220, 30),
    "black": (10, 10, 10),
    "white": (245, 245, 245),
}
COLOUR_WORD = re.compile(r"\b(" + "|".join(COLOURS) + r")\b")


def colour_name(data_url: str) -> str:
    """The palette colour nearest to an image's mean colour."""
    data = base64.b64decode(data_url.split(",", 1)[1])
    mean = ImageStat.Stat(Image.open(io.BytesIO(data)).convert("RGB")).mean
    return min(
        COLOURS, key=lambda n: sum((a - b) ** 2 for a, b in zip(COLOURS[n], mean, strict=True))
    )


def _parts(body: dict[str, Any]) -> tuple[str, list[str]]:
    """The request's text and image data URLs (chat or completions)."""
    if "prompt" in body:
        return str(body["prompt"]), []
    content = body["messages"][-1]["content"]
    if isinstance(content, str):
        return content, []
    text = " ".join(p.get("text", "") for p in content if p.get("type") == "text")
    images = [p["image_url"]["url"] for p in content if p.get("type") == "image_url"]
    return text, images


def default_answer(body: dict[str, Any]) -> str:
    text, images = _parts(body)
    if len(images) == 1:
        return f"a {colour_name(images[0])} picture"
    if len(images) >= 2:
        return f"make it {colour_name(images[1])}"
    if "Requested change:" in text:
        description = text.split("Image description:", 1)[1].split("\n", 1)[0].strip()
        change = text.split("Requested change:", 1)[1].split("\n", 1)[0]
        new = COLOUR_WORD.findall(change)
        return COLOUR_WORD.sub(new[0], description) if new else description
    tail = text.rsplit("caption B:", 1)[-1]
    words = COLOUR_WORD.findall(tail)
    return f"make it {words[0]}" if words else "change the picture"


def classify(body: dict[str, Any]) -> str:
    """``caption``, ``pair``, ``rewrite`` or ``change``: what a request asks for."""
    text, images = _parts(body)
    if images:
        return "caption" if len(images) == 1 else "pair"
    return "rewrite" if "Requested change:" in text else "change"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # a burst of new connections is accepted, not dropped and resent


class FakeLLMServer:
    """Start with ``with FakeLLMServer() as server: ... server.url``."""

    def __init__(
        self,
        delay_s: float = 0.0,
        answer: Callable[[dict], str] = default_answer,
        slots: int | None = None,
    ) -> None:
        self.delay_s, self.answer = delay_s, answer
        self._slots = threading.Semaphore(slots) if slots else contextlib.nullcontext()
        self.requests: list[dict[str, Any]] = []
        self.max_inflight = 0
        self._inflight = 0
        self._modes: deque[str] = deque()
        self._always: str | None = None
        self._lock = threading.Lock()
        self._release = threading.Event()
        self._httpd = _Server(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def __enter__(self) -> FakeLLMServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._release.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    def queue(self, *modes: str) -> None:
        """The next requests get these modes, in order (then back to normal)."""
        with self._lock:
            self._modes.extend(modes)

    def always(self, mode: str | None) -> None:
        """Every request gets ``mode`` (``None``: answer normally)."""
        self._always = mode

    def count(self, kind: str | None = None) -> int:
        with self._lock:
            return sum(1 for r in self.requests if kind is None or classify(r["body"]) == kind)

    def _next_mode(self, body: dict[str, Any]) -> str:
        with self._lock:
            self.requests.append({"body": body, "time": time.monotonic()})
            self._inflight += 1
            self.max_inflight = max(self.max_inflight, self._inflight)
            if self._modes:
                return self._modes.popleft()
            return self._always or "ok"

    def _done(self) -> None:
        with self._lock:
            self._inflight -= 1

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep test output quiet
                return

            def do_GET(self) -> None:
                self._send(200, {"object": "list", "data": [{"id": "fake", "object": "model"}]})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                mode = server._next_mode(body)
                self.counted = True
                try:
                    with server._slots:
                        if server.delay_s:  # returns at once when the server stops
                            server._release.wait(server.delay_s)
                        self._reply(mode, body)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                finally:
                    self._finish()

            def _finish(self) -> None:
                """Leave the in-flight count once, before the answer can reach the client."""
                if getattr(self, "counted", False):
                    self.counted = False
                    server._done()

            def _reply(self, mode: str, body: dict[str, Any]) -> None:
                if mode in ("500", "503", "504", "400"):
                    self._send(int(mode), {"error": {"message": f"injected {mode}"}})
                elif mode.startswith("429"):
                    wait = mode.partition(":")[2] or "1"
                    self._send(429, {"error": {"message": "slow down"}}, {"Retry-After": wait})
                elif mode == "stall":
                    server._release.wait(30)
                elif mode == "stall_body":
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", "1000")
                    self.end_headers()
                    self.wfile.flush()
                    server._release.wait(30)
                elif mode == "garbage":
                    self._send_raw(200, b"<html>\x00\xffnot json", "application/json")
                elif mode == "no_choices":
                    self._send(200, {"id": "x", "object": "chat.completion", "choices": []})
                else:
                    text = mode[5:] if mode.startswith("text:") else server.answer(body)
                    self._send(200, _completion(body, text))

            def _send(
                self, status: int, payload: dict, headers: dict[str, str] | None = None
            ) -> None:
                self._send_raw(status, json.dumps(payload).encode(), "application/json", headers)

            def _send_raw(
                self, status: int, data: bytes, ctype: str, headers: dict[str, str] | None = None
            ) -> None:
                self._finish()  # the client may send its next request as soon as it reads this
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

        return Handler


def _completion(body: dict[str, Any], text: str) -> dict[str, Any]:
    usage = {
        "prompt_tokens": 10,
        "completion_tokens": len(text.split()),
        "total_tokens": 10 + len(text.split()),
    }
    if "prompt" in body:
        return {
            "id": "cmpl-fake",
            "object": "text_completion",
            "model": body.get("model"),
            "choices": [{"index": 0, "text": text, "finish_reason": "stop"}],
            "usage": usage,
        }
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "model": body.get("model"),
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        ],
        "usage": usage,
    }
