"""Generation throughput against a server of known capacity: is the pipeline ever the bottleneck?

Starts ``generate_llm_server.py`` in its own process (fixed latency per request, at most
``--capacity`` requests served at once, the rest queued), so the server can never deliver more
than ``capacity / latency`` answers per second. Then it runs the real generation pipeline
(``opencir.generate.generate``: sidecar captions from a small world, the LLM change writer
pointed at that server, shards committed to disk as in any run) at several client
concurrencies, and prints items/s over the server's ceiling for each — one process, one run,
so both sides see the same machine. The plot goes to ``--plot``.

    python benchmarks/generate_throughput.py
    python benchmarks/generate_throughput.py --capacity 64 --latency 0.25 --seconds 6 \
        --concurrency 8 16 32 64 128
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from opencir.data.collections import CollectionSpec
from opencir.generate import (
    CaptionerConfig,
    EndpointConfig,
    GenerateConfig,
    WriterConfig,
    generate,
)

HERE = Path(__file__).resolve().parent
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 40), "blue": (40, 40, 220)}
COLOURS |= {"yellow": (230, 210, 40), "purple": (140, 40, 160), "orange": (240, 140, 30)}
SHAPES = ("circle", "square")

log = logging.getLogger("generate_throughput")


def machine() -> dict[str, str | int]:
    """CPU model and thread counts, printed with every figure."""
    model = platform.processor() or "unknown"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = next(
            line.split(":", 1)[1].strip() for line in out.splitlines() if "Model name" in line
        )
    except (OSError, subprocess.CalledProcessError, StopIteration):
        pass
    return {"cpu": model, "cpu_threads": os.cpu_count() or 0, "python": platform.python_version()}


def make_world(root: Path, count: int) -> Path:
    """``count`` small shape images with alt texts, in the miniature worlds' manifest layout."""
    (root / "images").mkdir(parents=True)
    rows = []
    for i in range(count):
        colour, shape = list(COLOURS)[i % len(COLOURS)], SHAPES[(i // len(COLOURS)) % 2]
        image = Image.new("RGB", (48, 48), "white")
        box = (4 + i % 9, 6, 40, 30 + i % 13)
        (ImageDraw.Draw(image).ellipse if shape == "circle" else ImageDraw.Draw(image).rectangle)(
            box, fill=COLOURS[colour]
        )
        name = f"images/{i:05d}.png"
        image.save(root / name)
        size, place = ("small" if i % 3 else "large"), ("top", "left")[i % 2]
        alt = f"a {size} {colour} {shape} near the {place}"
        rows.append({"id": f"{i:05d}", "file": name, "alt_text": alt, "split": "train"})
    (root / "images.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@contextmanager
def model_server(capacity: int, latency: float) -> Iterator[str]:
    """The capacity-limited server in a child process; yields its base URL."""
    command = [sys.executable, str(HERE / "generate_llm_server.py")]
    command += ["--capacity", str(capacity), "--latency", str(latency)]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        if not line.startswith("PORT "):
            raise RuntimeError(f"the benchmark server did not start: {line!r}")
        yield f"http://127.0.0.1:{int(line.split()[1])}"
    finally:
        child.terminate()
        child.wait(10)


def server_call(url: str, path: str, method: str = "GET") -> dict:
    request = urllib.request.Request(
        url + path, method=method, data=b"" if method == "POST" else None
    )
    with urllib.request.urlopen(request, timeout=10) as reply:
        return json.loads(reply.read())


@dataclass(frozen=True)
class Point:
    """One run of the pipeline at one client concurrency."""

    concurrency: int
    pairs: int
    triplets: int
    seconds: float
    items_per_s: float
    ratio: float
    server_max_active: int
    server_utilisation: float
    before_first_request_s: float
    after_last_answer_s: float
    client_cpu_ms_per_item: float


def run_once(
    world: Path, out: Path, url: str, concurrency: int | None, pairs: int, ceiling: float
) -> Point:
    """One generation run; ``concurrency`` None keeps the library's default."""
    extra = {} if concurrency is None else {"concurrency": concurrency}
    endpoint = EndpointConfig(model="bench", base_url=url + "/v1", timeout_s=120, **extra)
    config = GenerateConfig(
        source=CollectionSpec(str(world)),
        out=str(out),
        pairs=pairs,
        seed=0,
        captioner=CaptionerConfig(kind="sidecar"),
        writer=WriterConfig(kind="llm", endpoint=endpoint),
        progress=False,
    )
    server_call(url, "/reset", "POST")
    started, started_mono = time.perf_counter(), time.monotonic()  # the server's clock too
    cpu = time.process_time()  # every thread of this process: the client side only
    report = generate(config)
    seconds, ended_mono = time.perf_counter() - started, time.monotonic()
    cpu = time.process_time() - cpu
    stats = server_call(url, "/stats")
    utilisation = stats["busy_slot_s"] / (stats["capacity"] * seconds)
    rate = report.pairs / seconds
    return Point(
        endpoint.concurrency,
        report.pairs,
        report.triplets,
        round(seconds, 2),
        round(rate, 2),
        round(rate / ceiling, 3),
        stats["max_active"],
        round(utilisation, 3),
        round(stats["first_s"] - started_mono, 2),
        round(ended_mono - stats["last_s"], 2),
        round(cpu * 1e3 / max(report.pairs, 1), 2),
    )


def sweep(args: argparse.Namespace, world: Path, work: Path, url: str) -> list[Point]:
    ceiling = args.capacity / args.latency
    points = []
    for concurrency in args.concurrency:
        expected = min(concurrency, args.capacity) / args.latency
        pairs = max(2 * concurrency, round(expected * args.seconds))
        point = run_once(world, work / f"c{concurrency}", url, concurrency, pairs, ceiling)
        log.warning("concurrency %d: %s", concurrency, point)
        points.append(point)
    return points


def headline(args: argparse.Namespace, world: Path, work: Path, url: str) -> list[Point]:
    """The library's default concurrency, ``--repeats`` times, at ``--headline-seconds``."""
    ceiling = args.capacity / args.latency
    pairs = round(ceiling * args.headline_seconds)
    points = []
    for n in range(args.repeats):
        point = run_once(world, work / f"default{n}", url, None, pairs, ceiling)
        log.warning("default concurrency, run %d: %s", n, point)
        points.append(point)
    return points


def plot(points: list[Point], args: argparse.Namespace, default: int, path: Path, title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ceiling = args.capacity / args.latency
    figure, axes = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    xs = [p.concurrency for p in points]
    ideal = [min(x, args.capacity) / args.latency for x in xs]
    axes.plot(
        xs, ideal, color="tab:green", alpha=0.5, label="ideal: min(concurrency, capacity) / latency"
    )
    axes.plot(xs, [p.items_per_s for p in points], "o-", label="pipeline (triplets/s)")
    axes.axhline(ceiling, color="grey", linestyle="--", label="server capacity / latency")
    axes.axvline(default, color="tab:red", alpha=0.4, label=f"library default ({default})")
    axes.axhline(0.9 * ceiling, color="grey", linestyle=":", label="90 % of it")
    axes.set_xscale("log", base=2)
    axes.set_xticks(xs, [str(x) for x in xs])
    axes.set_xlabel("client concurrency (requests in flight)")
    axes.set_ylabel("triplets per second")
    axes.set_title(title, fontsize=9)
    axes.legend(fontsize=8, loc="lower right")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--capacity", type=int, default=32, help="server: requests at once")
    parser.add_argument("--latency", type=float, default=0.5, help="server: seconds per request")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64, 128])
    parser.add_argument("--seconds", type=float, default=10.0, help="target length of a sweep run")
    parser.add_argument("--headline-seconds", type=float, default=20.0)
    parser.add_argument("--repeats", type=int, default=3, help="headline runs (median reported)")
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--plot", default="docs/img/perf-generate-concurrency.png")
    parser.add_argument("--json", help="also write the figures here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    args = parse_args(argv)
    import openai  # noqa: F401  (imported before timing: its first import takes a second)

    ceiling = args.capacity / args.latency
    with tempfile.TemporaryDirectory() as tmp, model_server(args.capacity, args.latency) as url:
        work = Path(tmp) / "runs"
        work.mkdir()
        world = make_world(Path(tmp) / "world", args.images)
        main_points = headline(args, world, work, url)
        points = sweep(args, world, work, url)
    ratios = [p.ratio for p in main_points]
    result = {
        "machine": machine(),
        "server": {"capacity": args.capacity, "latency_s": args.latency, "ceiling": ceiling},
        "default_concurrency": main_points[0].concurrency,
        "headline_runs": [p.__dict__ for p in main_points],
        "headline_ratio_median": statistics.median(ratios),
        "sweep": [p.__dict__ for p in points],
    }
    print(json.dumps(result, indent=2))
    cpu = result["machine"]["cpu"]
    title = f"server: capacity {args.capacity}, latency {args.latency} s; {cpu}"
    plot(points, args, result["default_concurrency"], Path(args.plot), title)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
