"""Load test of the search API: N concurrent clients on loopback, p50/p99 latency and errors.

Runs against a server it starts itself (on an index you name, or a tiny throw-away index
built with a random-weight model), or against ``--url`` of one already running on loopback.
The number of requests and the run time are both bounded. With its own server it also times
the same queries through the library in-process, so the HTTP overhead shows as a ratio.

    python benchmarks/load_search_api.py --clients 8 --requests 50
    python benchmarks/load_search_api.py --index runs/demo/index --clients 16 --duration 20
    python benchmarks/load_search_api.py --url http://127.0.0.1:8000 --mode upload
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

import httpx

if TYPE_CHECKING:
    from PIL import Image

    from opencir.index import Searcher

MAX_CLIENTS = 64
MAX_REQUESTS = 2_000
MAX_DURATION = 120.0
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
TEXTS = ("make it red", "add a small circle", "remove the square", "move it to the left")

log = logging.getLogger("load_search_api")


@dataclass
class Tally:
    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)
    failures: Counter = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, ms: float, status: int | None, failure: str = "") -> None:
        with self.lock:
            self.latencies_ms.append(ms)
            if status is not None:
                self.statuses[status] += 1
            if failure:
                self.failures[failure] += 1


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def one_request(client: httpx.Client, i: int, mode: str, count: int, upload: bytes, k: int):
    data = {"text": TEXTS[i % len(TEXTS)], "k": str(k)}
    if mode == "id" or (mode == "mixed" and i % 2):
        return client.post("/search", data={**data, "id": str(i % count)})
    return client.post("/search", data=data, files={"image": ("q.png", upload, "image/png")})


def client_loop(url: str, args: argparse.Namespace, worker: int, deadline: float, tally: Tally,
                count: int, upload: bytes) -> None:  # fmt: skip
    with httpx.Client(base_url=url, timeout=30) as client:
        for n in range(args.requests):
            if time.monotonic() > deadline:
                return
            started = time.perf_counter()
            try:
                response = one_request(client, worker * 7919 + n, args.mode, count, upload, args.k)
                status, failure = (
                    response.status_code,
                    "" if response.is_success else response.json().get("code", "?"),
                )
            except httpx.HTTPError as error:
                status, failure = None, type(error).__name__
            tally.add((time.perf_counter() - started) * 1e3, status, failure)


def run_load(url: str, args: argparse.Namespace, count: int, upload: bytes) -> tuple[Tally, float]:
    tally = Tally()
    deadline = time.monotonic() + args.duration
    started = time.perf_counter()
    with ThreadPoolExecutor(args.clients) as pool:
        for worker in range(args.clients):
            pool.submit(client_loop, url, args, worker, deadline, tally, count, upload)
    return tally, time.perf_counter() - started


def library_p50(
    searcher: Searcher, count: int, upload_image: Image.Image, n: int, k: int, mode: str
) -> float:
    """Median in-process latency of the same queries (no HTTP), for the overhead ratio."""
    times = []
    for i in range(n):
        started = time.perf_counter()
        if mode == "id" or (mode == "mixed" and i % 2):
            searcher.search(TEXTS[i % len(TEXTS)], reference_id=i % count, k=k)
        else:
            searcher.search(TEXTS[i % len(TEXTS)], image=upload_image, k=k)
        times.append((time.perf_counter() - started) * 1e3)
    return statistics.median(times)


def tiny_index(workdir: Path) -> Path:
    """A throw-away 200-image index built with a random-weight tiny model."""
    from PIL import Image, ImageDraw

    import opencir
    from opencir.index import BuildConfig, build_index

    images = workdir / "images"
    images.mkdir()
    for i in range(200):
        image = Image.new("RGB", (64, 64), "white")
        ImageDraw.Draw(image).ellipse(
            (8 + i % 20, 8, 56, 40 + i % 16), fill=(i, 255 - i, (7 * i) % 256)
        )
        image.save(images / f"{i:04d}.png")
    model = opencir.create_model("instructcir-tiny")
    model.save(workdir / "model")
    config = BuildConfig(progress=False)
    build_index(model, images, workdir / "index", config, str(workdir / "model"))
    return workdir / "index"


def report(
    tally: Tally, elapsed: float, args: argparse.Namespace, library_ms: float | None
) -> dict:
    latencies = tally.latencies_ms
    total = len(latencies)
    errors = total - tally.statuses.get(200, 0)
    result = {
        "clients": args.clients,
        "mode": args.mode,
        "k": args.k,
        "requests": total,
        "errors": errors,
        "statuses": dict(tally.statuses),
        "failures": dict(tally.failures),
        "seconds": round(elapsed, 2),
        "throughput_rps": round(total / elapsed, 1) if elapsed else 0.0,
        "p50_ms": round(percentile(latencies, 50), 2),
        "p90_ms": round(percentile(latencies, 90), 2),
        "p99_ms": round(percentile(latencies, 99), 2),
        "max_ms": round(max(latencies, default=float("nan")), 2),
    }
    if library_ms is not None:
        result["library_p50_ms"] = round(library_ms, 2)
        result["http_p50_over_library_p50"] = round(result["p50_ms"] / library_ms, 2)
    return result


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--url", help="a running server on loopback (else one is started here)")
    source.add_argument("--index", help="index to serve (default: a tiny throw-away index)")
    parser.add_argument(
        "--clients", type=int, default=8, help=f"concurrent clients (<= {MAX_CLIENTS})"
    )
    parser.add_argument("--requests", type=int, default=50, help=f"per client (<= {MAX_REQUESTS})")
    parser.add_argument("--duration", type=float, default=30.0, help=f"seconds (<= {MAX_DURATION})")
    parser.add_argument("--mode", choices=("id", "upload", "mixed"), default="mixed")
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--json", help="also write the result as JSON here")
    args = parser.parse_args(argv)
    if not 1 <= args.clients <= MAX_CLIENTS or not 1 <= args.requests <= MAX_REQUESTS:
        parser.error(f"--clients must be 1..{MAX_CLIENTS} and --requests 1..{MAX_REQUESTS}")
    if not 0 < args.duration <= MAX_DURATION:
        parser.error(f"--duration must be in (0, {MAX_DURATION}]")
    if args.url and urlparse(args.url).hostname not in LOOPBACK:
        parser.error(
            f"--url must point at loopback ({', '.join(sorted(LOOPBACK))}), got {args.url}"
        )
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    from PIL import Image

    upload_image = Image.new("RGB", (64, 64), (200, 40, 40))
    buffer = io.BytesIO()
    upload_image.save(buffer, "PNG")
    upload = buffer.getvalue()
    if args.url:
        info = httpx.get(f"{args.url}/info", timeout=10).json()
        tally, elapsed = run_load(args.url, args, info["count"], upload)
        result = report(tally, elapsed, args, None)
    else:
        result = self_hosted(args, upload, upload_image)
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0 if result["errors"] == 0 else 1


def self_hosted(args: argparse.Namespace, upload: bytes, upload_image: Image.Image) -> dict:
    from opencir.index import Searcher
    from opencir.serve import ServeConfig, create_app, start_in_thread

    with tempfile.TemporaryDirectory() as workdir:
        index = Path(args.index) if args.index else tiny_index(Path(workdir))
        searcher = Searcher.open(index)
        count = len(searcher.index)
        library_ms = library_p50(searcher, count, upload_image, 40, args.k, args.mode)
        app = create_app(ServeConfig(index=str(index)), searcher)
        logging.getLogger("opencir.serve.access").setLevel(logging.WARNING)
        with start_in_thread(app) as server:
            tally, elapsed = run_load(server.url, args, count, upload)
        return report(tally, elapsed, args, library_ms)


if __name__ == "__main__":
    sys.exit(main())
