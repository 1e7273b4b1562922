"""Load test of the search API: N concurrent clients on loopback, p50/p99 latency and errors.

Runs against a server it starts itself (on an index you name, a ShapesCIR gallery of
``--gallery`` images indexed with the shipped S1 checkpoint, or a tiny throw-away index built
with a random-weight model), or against ``--url`` of one already running on loopback. The
number of requests and the run time are both bounded.

With its own server it also times, in the same process and run, the model work alone
(``encode_query`` + index search on the same queries), and reports the HTTP latency over it:
once with one client (the API's own overhead) and once with ``--clients`` (overhead plus
queueing), with the query micro-batcher on and, for comparison, off (``max_batch=1``, every
query serialised behind the model).

    python benchmarks/load_search_api.py --clients 8 --requests 50
    python benchmarks/load_search_api.py --gallery 100000 --clients 8 --requests 40
    python benchmarks/load_search_api.py --index runs/demo/index --clients 16 --duration 20
    python benchmarks/load_search_api.py --url http://127.0.0.1:8000 --mode upload
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import platform
import statistics
import subprocess
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
    batches: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, ms: float, status: int | None, failure: str = "", batch: float = 0.0) -> None:
        with self.lock:
            self.latencies_ms.append(ms)
            if status is not None:
                self.statuses[status] += 1
            if failure:
                self.failures[failure] += 1
            if batch:
                self.batches.append(batch)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def machine() -> dict[str, str | int]:
    """CPU model and thread counts, printed with every figure."""
    model = platform.processor() or "unknown"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        lines = [line for line in out.splitlines() if line.startswith("Model name")]
        model = lines[0].split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError, IndexError):
        pass
    import torch

    return {
        "cpu": model,
        "cpu_threads": os.cpu_count() or 0,
        "torch_threads": torch.get_num_threads(),
    }


def uses_id(mode: str, i: int) -> bool:
    return mode == "id" or (mode == "mixed" and i % 2 == 1)


def one_request(client: httpx.Client, i: int, mode: str, count: int, upload: bytes, k: int):
    data = {"text": TEXTS[i % len(TEXTS)], "k": str(k)}
    if uses_id(mode, i):
        return client.post("/search", data={**data, "id": str(i % count)})
    return client.post("/search", data=data, files={"image": ("q.png", upload, "image/png")})


def timed_request(client: httpx.Client, i: int, args: argparse.Namespace, count: int,
                  upload: bytes, tally: Tally) -> None:  # fmt: skip
    started = time.perf_counter()
    batch, failure = 0.0, ""
    try:
        response = one_request(client, i, args.mode, count, upload, args.k)
        status, body = response.status_code, response.json()
        if response.is_success:
            batch = float(body.get("timings_ms", {}).get("batch", 0.0))
        else:
            failure = body.get("code", "?")
    except (httpx.HTTPError, ValueError) as error:
        status, failure = None, type(error).__name__
    tally.add((time.perf_counter() - started) * 1e3, status, failure, batch)


def client_loop(url: str, args: argparse.Namespace, worker: int, deadline: float, tally: Tally,
                count: int, upload: bytes, requests: int, offset: int) -> None:  # fmt: skip
    with httpx.Client(base_url=url, timeout=60) as client:
        for n in range(offset, offset + requests):
            if time.monotonic() > deadline:
                return
            timed_request(client, worker * 7919 + n, args, count, upload, tally)


def run_load(url: str, args: argparse.Namespace, count: int, upload: bytes, clients: int,
             tally: Tally, requests: int, offset: int = 0) -> float:  # fmt: skip
    """``clients`` threads, ``requests`` each, into ``tally``; returns the wall time."""
    deadline = time.monotonic() + args.duration
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for worker in range(clients):
            pool.submit(
                client_loop, url, args, worker, deadline, tally, count, upload, requests, offset
            )
    return time.perf_counter() - started


def library_times(
    searcher: Searcher, count: int, upload_image: Image.Image, span: range, k: int, mode: str
) -> list[float]:
    """In-process latencies of the same queries through ``Searcher.search`` (no HTTP)."""
    times = []
    for i in span:
        started = time.perf_counter()
        if uses_id(mode, i):
            searcher.search(TEXTS[i % len(TEXTS)], reference_id=i % count, k=k)
        else:
            searcher.search(TEXTS[i % len(TEXTS)], image=upload_image, k=k)
        times.append((time.perf_counter() - started) * 1e3)
    return times


def model_times(
    searcher: Searcher, count: int, upload_image: Image.Image, span: range, k: int, mode: str
) -> list[float]:
    """The model work alone: ``encode_query`` + index search, references loaded beforehand."""
    times = []
    for i in span:
        exclude: set[int] = set()
        image = upload_image
        if uses_id(mode, i):
            item = searcher.index.get(i % count)
            image, exclude = searcher.load_gallery_image(item), {item.id}
        started = time.perf_counter()
        vector = searcher.model.encode_query([image], [TEXTS[i % len(TEXTS)]])
        searcher.index.search(vector, k, [exclude])
        times.append((time.perf_counter() - started) * 1e3)
    return times


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


def shapes_gallery(size: int, cache: Path) -> Path:
    """ShapesCIR images (64 px, seed 0) indexed with the shipped S1 checkpoint; built once.

    Every vector is a real ``encode_target`` of a real rendered image, written by
    ``build_index`` (exact ``Flat`` index). Building 100k takes several minutes on 2 cores,
    so the index is kept in ``cache`` and reused; an interrupted build resumes.
    """
    import opencir
    from opencir.data.worlds import generate_shapes_world
    from opencir.demo import shipped_checkpoint
    from opencir.index import BuildConfig, build_index

    root = cache / f"shapes-{size}"
    index = root / "index"
    if (index / "manifest.json").is_file():
        return index
    world = root / "world"
    workers = os.cpu_count() or 1
    generate_shapes_world(
        world, n_train=size, n_test=0, n_queries=0, n_val_queries=0, seed=0, workers=workers
    )
    checkpoint = shipped_checkpoint("shapes-s1-gt")
    if checkpoint is None:
        raise SystemExit("the shipped checkpoint shapes-s1-gt is missing from this install")
    config = BuildConfig(batch_size=256, workers=2, shard_size=8192)
    build_index(opencir.load(checkpoint), world / "images.jsonl", index, config, str(checkpoint))
    return index


def summary(tally: Tally, elapsed: float) -> dict:
    latencies = tally.latencies_ms
    total = len(latencies)
    return {
        "requests": total,
        "errors": total - tally.statuses.get(200, 0),
        "statuses": dict(tally.statuses),
        "failures": dict(tally.failures),
        "seconds": round(elapsed, 2),
        "throughput_rps": round(total / elapsed, 1) if elapsed else 0.0,
        "p50_ms": round(percentile(latencies, 50), 2),
        "p90_ms": round(percentile(latencies, 90), 2),
        "p99_ms": round(percentile(latencies, 99), 2),
        "max_ms": round(max(latencies, default=float("nan")), 2),
        "mean_batch": round(statistics.fmean(tally.batches), 2) if tally.batches else None,
    }


def report(
    tally: Tally, elapsed: float, args: argparse.Namespace, library_ms: float | None
) -> dict:
    result = {"clients": args.clients, "mode": args.mode, "k": args.k, **summary(tally, elapsed)}
    if library_ms is not None:
        result["library_p50_ms"] = round(library_ms, 2)
        result["http_p50_over_library_p50"] = round(result["p50_ms"] / library_ms, 2)
    return result


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--url", help="a running server on loopback (else one is started here)")
    source.add_argument("--index", help="index to serve (default: a tiny throw-away index)")
    source.add_argument(
        "--gallery", type=int, help="serve a ShapesCIR gallery of this many images (built once)"
    )
    parser.add_argument("--cache-dir", default="runs/bench", help="where --gallery is kept")
    parser.add_argument(
        "--clients", type=int, default=8, help=f"concurrent clients (<= {MAX_CLIENTS})"
    )
    parser.add_argument("--requests", type=int, default=50, help=f"per client (<= {MAX_REQUESTS})")
    parser.add_argument("--duration", type=float, default=30.0, help=f"seconds (<= {MAX_DURATION})")
    parser.add_argument("--mode", choices=("id", "upload", "mixed"), default="mixed")
    parser.add_argument(
        "--rounds", type=int, default=5, help="own server: interleaved measurement rounds"
    )
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument(
        "--no-compare", action="store_true", help="skip the serialised (max_batch=1) server"
    )
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
        tally = Tally()
        elapsed = run_load(
            args.url, args, info["count"], upload, args.clients, tally, args.requests
        )
        result = report(tally, elapsed, args, None)
    else:
        result = self_hosted(args, upload, upload_image)
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0 if result["errors"] == 0 else 1


def wait_ready(url: str, timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while httpx.get(f"{url}/readyz", timeout=10).status_code != 200:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not become ready within {timeout} s")
        time.sleep(0.1)


def round_sizes(requests: int, rounds: int) -> list[int]:
    """``requests`` split over at most ``rounds`` rounds (every round at least one)."""
    rounds = max(1, min(rounds, requests))
    return [requests // rounds + (r < requests % rounds) for r in range(rounds)]


@dataclass
class Rounds:
    """Everything measured against one server, in interleaved rounds."""

    model: list[float] = field(default_factory=list)
    library: list[float] = field(default_factory=list)
    single: Tally = field(default_factory=Tally)
    many: Tally = field(default_factory=Tally)
    seconds: dict[str, float] = field(default_factory=lambda: {"single": 0.0, "many": 0.0})
    ratios: dict[str, list[float]] = field(default_factory=lambda: {"single": [], "many": []})


def measure(index: Path, args: argparse.Namespace, upload: bytes, upload_image: Image.Image,
            max_batch: int) -> tuple[Rounds, int]:  # fmt: skip
    """A server on ``index``; each round times in-process work, then 1 client, then N.

    Interleaving puts both sides of every ratio on the same (shared, noisy) machine state.
    """
    from opencir.index import Searcher
    from opencir.index.tuning import configure_faiss
    from opencir.serve import ServeConfig, create_app, start_in_thread

    configure_faiss()  # this process is the server: tuned as `opencir serve` tunes its own
    searcher = Searcher.open(index)
    count = len(searcher.index)
    app = create_app(ServeConfig(index=str(index), max_batch=max_batch), searcher)
    logging.getLogger("opencir.serve.access").setLevel(logging.WARNING)
    out, offset = Rounds(), 0
    with start_in_thread(app) as server:
        wait_ready(server.url)
        # a round not counted: lazy init, first pages of the memory-mapped index, connections
        one_round(Rounds(), searcher, server.url, args, count, upload, upload_image, 2, 0)
        for n in round_sizes(args.requests, args.rounds):
            one_round(out, searcher, server.url, args, count, upload, upload_image, n, offset)
            offset += n
    return out, count


def one_round(out: Rounds, searcher: Searcher, url: str, args: argparse.Namespace, count: int,
              upload: bytes, upload_image: Image.Image, n: int, offset: int) -> None:  # fmt: skip
    """One client query by query, each right after the same query in-process; then N clients."""
    single, model = Tally(), []
    started = time.perf_counter()
    with httpx.Client(base_url=url, timeout=60) as client:
        for i in range(offset, offset + n):
            model += model_times(searcher, count, upload_image, range(i, i + 1), args.k, args.mode)
            out.library += library_times(
                searcher, count, upload_image, range(i, i + 1), args.k, args.mode
            )
            timed_request(client, i, args, count, upload, single)
    out.seconds["single"] += time.perf_counter() - started
    many = Tally()
    out.seconds["many"] += run_load(url, args, count, upload, args.clients, many, n, offset)
    model_ms = statistics.median(model)
    out.model += model
    out.ratios["single"].append(percentile(single.latencies_ms, 50) / model_ms)
    out.ratios["many"].append(percentile(many.latencies_ms, 50) / model_ms)
    for target, tally in ((out.single, single), (out.many, many)):
        target.latencies_ms += tally.latencies_ms
        target.statuses.update(tally.statuses)
        target.failures.update(tally.failures)
        target.batches += tally.batches


def self_hosted(args: argparse.Namespace, upload: bytes, upload_image: Image.Image) -> dict:
    from opencir.serve.batching import DEFAULT_MAX_BATCH

    with tempfile.TemporaryDirectory() as workdir:
        if args.gallery:
            index = shapes_gallery(args.gallery, Path(args.cache_dir))
        else:
            index = Path(args.index) if args.index else tiny_index(Path(workdir))
        batched, count = measure(index, args, upload, upload_image, DEFAULT_MAX_BATCH)
        result = describe(batched, args)
        result.update(gallery=count, rounds=len(batched.ratios["single"]), machine=machine())
        if not args.no_compare:
            serialised, _ = measure(index, args, upload, upload_image, 1)
            result["serialised"] = {"max_batch": 1, **describe(serialised, args)}
        return result


def describe(rounds: Rounds, args: argparse.Namespace) -> dict:
    """The N-client figures at the top level (as against ``--url``), ratios beside them."""
    library_ms = statistics.median(rounds.library)
    result = report(rounds.many, rounds.seconds["many"], args, library_ms)
    model_ms = statistics.median(rounds.model)
    return {
        **result,
        "model_p50_ms": round(model_ms, 2),
        "single_client": summary(rounds.single, rounds.seconds["single"]),
        "single_p50_over_model_p50": round(statistics.median(rounds.ratios["single"]), 3),
        "single_p50_over_model_p50_pooled": round(
            percentile(rounds.single.latencies_ms, 50) / model_ms, 3
        ),
        "http_p50_over_model_p50": round(statistics.median(rounds.ratios["many"]), 3),
        "per_round": {k: [round(v, 3) for v in vs] for k, vs in rounds.ratios.items()},
    }


if __name__ == "__main__":
    sys.exit(main())
