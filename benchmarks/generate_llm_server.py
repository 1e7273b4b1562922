"""A benchmark-grade stand-in for an LLM server: fixed latency, fixed capacity, a queue.

It speaks enough of the OpenAI HTTP API (``POST /v1/chat/completions``, ``/v1/completions``,
keep-alive HTTP/1.1) for the ``openai`` client, and behaves like a model server at its limit:
at most ``capacity`` requests are served at once, each takes ``latency`` seconds, and the
excess waits in a first-come queue. Its throughput can therefore never exceed
``capacity / latency`` requests per second — the yardstick for a client's throughput.

Run it in its own process (so its event loop never shares a GIL with the client under test)::

    python benchmarks/generate_llm_server.py --capacity 32 --latency 0.5

It prints ``PORT <n>`` once listening. ``GET /stats`` returns what it served (requests, most
requests in service and in the queue at once, busy slot-seconds); ``POST /reset`` zeroes them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from dataclasses import asdict, dataclass

COLOUR = re.compile(r"\b(red|green|blue|yellow|black|white|orange|purple|pink|gray)\b")


@dataclass
class Stats:
    """What the server did since the last reset."""

    requests: int = 0
    active: int = 0
    queued: int = 0
    max_active: int = 0
    max_queued: int = 0
    busy_slot_s: float = 0.0
    first_s: float = 0.0
    last_s: float = 0.0


class ModelServer:
    """``capacity`` slots of ``latency`` seconds each, behind a FIFO queue."""

    def __init__(self, capacity: int, latency: float) -> None:
        self.capacity, self.latency = capacity, latency
        self.slots = asyncio.Semaphore(capacity)
        self.stats = Stats()

    async def serve(self) -> None:
        """Hold one slot for ``latency`` seconds (waiting in the queue first if all are busy)."""
        stats = self.stats
        stats.queued += 1
        stats.max_queued = max(stats.max_queued, stats.queued)
        async with self.slots:
            stats.queued -= 1
            stats.active += 1
            stats.max_active = max(stats.max_active, stats.active)
            started = time.monotonic()  # CLOCK_MONOTONIC: comparable with the client's
            stats.first_s = stats.first_s or started
            await asyncio.sleep(self.latency)
            stats.active -= 1
            stats.requests += 1
            stats.last_s = time.monotonic()
            stats.busy_slot_s += stats.last_s - started

    def reset(self) -> None:
        self.stats = Stats()


def answer(body: dict) -> str:
    """A valid change text: the colour named last in the prompt (caption B), else a default."""
    prompt = body.get("prompt") or json.dumps(body.get("messages", []))
    colours = COLOUR.findall(prompt)
    return f"make it {colours[-1]}" if colours else "change the picture"


def completion(body: dict) -> dict:
    text = answer(body)
    usage = {"prompt_tokens": 200, "completion_tokens": len(text.split()), "total_tokens": 203}
    if "prompt" in body:
        choice = {"index": 0, "text": text, "finish_reason": "stop"}
        return {"object": "text_completion", "choices": [choice], "usage": usage}
    message = {"role": "assistant", "content": text}
    choice = {"index": 0, "message": message, "finish_reason": "stop"}
    return {"id": "bench", "object": "chat.completion", "choices": [choice], "usage": usage}


async def read_request(reader: asyncio.StreamReader) -> tuple[str, str, bytes] | None:
    """Method, path and body of the next request on a keep-alive connection (None at EOF)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    body = await reader.readexactly(length) if length else b""
    return method, path, body


def response(status: int, payload: dict) -> bytes:
    data = json.dumps(payload).encode()
    reason = {200: "OK", 404: "Not Found"}.get(status, "Error")
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\nConnection: keep-alive\r\n\r\n"
    )
    return head.encode() + data


async def route(server: ModelServer, method: str, path: str, body: bytes) -> bytes:
    if method == "GET" and path.startswith("/stats"):
        stats = asdict(server.stats)
        stats["capacity"], stats["latency"] = server.capacity, server.latency
        return response(200, stats)
    if method == "POST" and path.startswith("/reset"):
        server.reset()
        return response(200, {"ok": True})
    if method == "POST" and path.endswith(("/chat/completions", "/completions")):
        payload = json.loads(body or b"{}")
        await server.serve()
        return response(200, completion(payload))
    return response(404, {"error": {"message": f"no route {method} {path}"}})


async def handle(
    server: ModelServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    try:
        while True:
            request = await read_request(reader)
            if request is None:
                break
            writer.write(await route(server, *request))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, ValueError):
        pass
    finally:
        writer.close()


async def main_async(args: argparse.Namespace) -> None:
    server = ModelServer(args.capacity, args.latency)
    listener = await asyncio.start_server(
        lambda r, w: handle(server, r, w), args.host, args.port, backlog=4096
    )
    port = listener.sockets[0].getsockname()[1]
    print(f"PORT {port}", flush=True)
    async with listener:
        await listener.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--capacity", type=int, default=32, help="requests served at once")
    parser.add_argument("--latency", type=float, default=0.5, help="seconds per request")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    args = parser.parse_args(argv)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        parser.error("the benchmark server listens on loopback only")
    try:
        asyncio.run(main_async(args))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
