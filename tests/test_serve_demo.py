"""The search demo behind ``make demo``: index a world, print query results, serve the page."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import pytest

import opencir.serve.runner as runner
from opencir.serve.demo import DemoQuery, run_search_demo, run_world_search_demo
from tests.test_serve_support import make_checkpoint, make_gallery


def test_world_demo_prints_results_and_reuses_its_index(tmp_path: Path) -> None:
    lines: list[str] = []
    checkpoint = make_checkpoint(tmp_path / "ckpt")
    args = {"n_images": 40, "n_queries": 2, "echo": lines.append}
    assert run_world_search_demo(checkpoint, tmp_path / "demo", serve=False, **args) == 0
    text = "\n".join(lines)
    assert "index: 40 images" in text
    assert text.count("target rank:") == 2
    assert "   1. " in text and "   5. " in text
    stamp = (tmp_path / "demo" / "index" / "manifest.json").stat().st_mtime_ns
    assert run_world_search_demo(checkpoint, tmp_path / "demo", serve=False, **args) == 0
    assert (tmp_path / "demo" / "index" / "manifest.json").stat().st_mtime_ns == stamp


def test_demo_serves_the_page_and_prints_its_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_gallery(tmp_path / "photos", 6)
    seen: dict[str, object] = {}

    def serve_once(app: object, sock: object) -> None:
        """Instead of serving until Ctrl-C: serve, fetch the page and an API answer, stop."""
        server = runner._server(app, "warning")
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        url = runner.url_of(sock)
        while not server.started:
            thread.join(0.02)
        seen["page"] = httpx.get(f"{url}/").text
        seen["search"] = httpx.post(f"{url}/search", data={"id": 0, "text": "x", "k": 2}).json()
        server.should_exit = True
        thread.join(10)

    monkeypatch.setattr(runner, "serve_socket", serve_once)
    lines: list[str] = []
    queries = [DemoQuery("img000.png", "make it green"), ("nested/img001.png", "a square")]
    code = run_search_demo(
        "instructcir-tiny", tmp_path / "photos", queries, tmp_path / "w", serve=True,
        port=0, progress=False, echo=lines.append,
    )  # fmt: skip
    assert code == 0
    assert any(line.startswith("search page: http://127.0.0.1:") for line in lines)
    assert "<title>OpenCIR" in str(seen["page"])
    assert len(seen["search"]["results"]) == 2
    assert (tmp_path / "w" / "model" / "config.json").is_file(), "a bare name is saved for reuse"
