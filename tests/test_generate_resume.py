"""Crash and resume: ``kill -9`` at any moment, rerun, and get exactly the uninterrupted result."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import opencir.generate.shards as shards_module
from opencir.cli import main
from opencir.data.collections import CollectionSpec
from opencir.data.triplets import read_triplets
from opencir.generate import (
    CaptionerConfig,
    EndpointConfig,
    GenerateConfig,
    WriterConfig,
    generate,
)
from tests.fake_llm_server import FakeLLMServer
from tests.generate_fixtures import make_world


def _snapshot(out: Path) -> tuple[list, str]:
    triplets = [t.to_row() for t in read_triplets(out)]
    return triplets, (out / "failures.jsonl").read_text()


def _check_shards(out: Path) -> None:
    """Every done-marker matches a complete data file (what a crash may never break)."""
    store = shards_module.ShardStore(out)
    for marker in sorted(store.directory.glob("part-*.done")):
        store.read(int(marker.stem.split("-")[1]))


class Crash(Exception):
    """Stands for the process dying."""


def test_crash_at_every_commit_step_then_resume(tmp_path: Path, monkeypatch) -> None:
    world = make_world(tmp_path / "world", n_train=10, n_test=0, corrupt=1)

    def config(out: str) -> GenerateConfig:
        return GenerateConfig(
            source=CollectionSpec(str(world)),
            out=out,
            pairs=20,
            shard_size=3,
            inflight_shards=1,
            progress=False,
        )

    generate(config(str(tmp_path / "reference")))
    expected = _snapshot(tmp_path / "reference")
    real_write = shards_module.atomic_write
    writes_per_run = 2 * 7  # data + marker for each of the 7 shards
    for crash_at in range(writes_per_run):
        calls = {"n": 0}

        def dying_write(path, data, crash_at=crash_at, calls=calls):
            calls["n"] += 1
            if calls["n"] == crash_at + 1:
                path.parent.mkdir(parents=True, exist_ok=True)
                partial = path.parent / f".{path.name}.torn.tmp"
                partial.write_bytes(data[: len(data) // 2])  # a torn temporary file stays behind
                raise Crash
            return real_write(path, data)

        out = tmp_path / f"run{crash_at}"
        monkeypatch.setattr(shards_module, "atomic_write", dying_write)
        with pytest.raises(Crash):
            generate(config(str(out)))
        monkeypatch.setattr(shards_module, "atomic_write", real_write)
        _check_shards(out)
        assert not (out / "triplets.jsonl").exists()
        generate(config(str(out)))
        assert _snapshot(out) == expected
        assert not list((out / "shards").glob(".*.tmp"))


def _wait_for_markers(out: Path, count: int, process: subprocess.Popen, limit: float = 60) -> bool:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        if len(list(out.glob("shards/*.done"))) >= count:
            return True
        time.sleep(0.002)
    return False


@pytest.mark.slow
def test_kill_9_mid_run_then_rerun_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    world = make_world(tmp_path / "world", n_train=16, n_test=0, corrupt=1)
    # slow enough answers (about 2 s a run) that every kill lands mid-run on a loaded machine
    with FakeLLMServer(delay_s=0.08) as server:
        common = [
            "--images",
            str(world),
            "--pairs",
            "48",
            "--shard-size",
            "4",
            "--captioner",
            "openai",
            "--caption-model",
            "fake",
            "--writer",
            "llm",
            "--writer-model",
            "fake",
            "--endpoint",
            server.url,
            "--concurrency",
            "2",
            "--no-progress",
            "--seed",
            "3",
        ]
        assert main(["generate", *common, "--out", str(tmp_path / "reference")]) == 0
        expected = _snapshot(tmp_path / "reference")
        out = tmp_path / "killed"
        command = [sys.executable, "-m", "opencir.cli", "generate", *common, "--out", str(out)]
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        rng = random.Random(0)
        kills = 0
        for target in (1, 4, 8):
            process = subprocess.Popen(
                command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            try:
                if _wait_for_markers(out, target, process):
                    time.sleep(rng.uniform(0, 0.03))  # land anywhere: mid-request, mid-commit
                    os.kill(process.pid, signal.SIGKILL)
                    kills += 1
            finally:
                if process.poll() is None:
                    process.kill()
                process.wait(timeout=30)
            _check_shards(out)
        assert kills >= 2, (
            "the runs finished before they could be killed: slow the fake server down"
        )
        requests_before = server.count()
        assert main(["generate", *common, "--out", str(out)]) == 0
        assert _snapshot(out) == expected
        ids = [t["id"] for t in expected[0]]
        assert len(ids) == len(set(ids))
        resumed = server.count() - requests_before
        assert (
            resumed < len(ids) + 16
        )  # the committed shards and cached captions were not paid again


def _llm_config(world: Path, out: Path, url: str, **overrides) -> GenerateConfig:
    endpoint = EndpointConfig(
        model="fake", base_url=url, max_retries=0, timeout_s=5.0, concurrency=2
    )
    return GenerateConfig(
        source=CollectionSpec(str(world)),
        out=str(out),
        pairs=20,
        shard_size=3,
        captioner=CaptionerConfig(kind="sidecar"),
        writer=WriterConfig(kind="llm", endpoint=endpoint),
        progress=False,
        **overrides,
    )


def _closed_port_url() -> str:
    """An endpoint URL where nothing listens (a typo'd ``--endpoint``)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def test_a_rerun_asks_again_for_the_pairs_a_wrong_endpoint_lost(tmp_path: Path) -> None:
    world = make_world(tmp_path / "world", n_train=10, n_test=0, corrupt=1)
    out = tmp_path / "out"
    with FakeLLMServer() as server:
        generate(_llm_config(world, tmp_path / "reference", server.url))
        expected = _snapshot(tmp_path / "reference")
        lost = generate(_llm_config(world, out, _closed_port_url()))
        assert lost.triplets == 0 and set(lost.failed) == {"connection", "image_not_an_image"}
        before = server.count()
        kept = generate(_llm_config(world, out, server.url, retry_failed=False))
        assert kept.failed == lost.failed and server.count() == before
        retried = generate(_llm_config(world, out, server.url))
        assert server.count() - before == lost.failed["connection"]  # only the lost pairs
        assert _snapshot(out) == expected
        assert retried.triplets == len(expected[0]) and "connection" not in retried.failed
        ids = [row["id"] for row in expected[0]]
        assert len(ids) == len(set(ids))
        before = server.count()
        generate(_llm_config(world, out, server.url))  # nothing left to retry: a no-op
        assert server.count() == before and _snapshot(out) == expected


def test_a_retried_shard_keeps_its_finished_pairs(tmp_path: Path) -> None:
    world = make_world(tmp_path / "world", n_train=10, n_test=0)
    out = tmp_path / "out"
    with FakeLLMServer() as server:
        generate(_llm_config(world, tmp_path / "reference", server.url))
        expected = _snapshot(tmp_path / "reference")
        server.queue(*["500"] * 4)  # an outage that ends during the run
        before = server.count()
        report = generate(_llm_config(world, out, server.url))
        assert report.failed == {"server_error": 4} and report.triplets == 16
        first_run = server.count() - before
        generate(_llm_config(world, out, server.url))
        assert server.count() - before == first_run + 4  # the 16 answers were not asked again
        assert _snapshot(out) == expected
        _check_shards(out)


def test_cli_rerun_with_the_corrected_endpoint_fills_in_the_lost_pairs(tmp_path: Path) -> None:
    world = make_world(tmp_path / "world", n_train=6, n_test=0)
    out = tmp_path / "out"
    common = ["generate", "--images", str(world), "--out", str(out), "--pairs", "8"]
    common += ["--captioner", "sidecar", "--writer", "llm", "--writer-model", "fake"]
    common += ["--max-retries", "0", "--concurrency", "2", "--no-progress"]
    assert main([*common, "--endpoint", _closed_port_url()]) == 1  # a typo: nothing produced
    with FakeLLMServer() as server:
        assert main([*common, "--endpoint", server.url, "--no-retry-failed"]) == 1
        assert server.count() == 0
        assert main([*common, "--endpoint", server.url]) == 0
        assert server.count() == 8
    triplets = read_triplets(out)
    assert len(triplets) == 8 and len({t.id for t in triplets}) == 8
    assert (out / "failures.jsonl").read_text() == ""
