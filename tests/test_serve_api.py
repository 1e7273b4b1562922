"""The HTTP API against a real uvicorn server on loopback: results, every bad input, concurrency."""

from __future__ import annotations

import io
import json
import logging
import shutil
import sqlite3
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
from PIL import Image

import opencir
from opencir.cli import main as cli_main
from opencir.data.images import load_image
from opencir.index import GalleryIndex
from opencir.index.manifest import IndexFormatError
from opencir.serve import ServeConfig, create_app, runner, start_in_thread
from tests.test_serve_support import build_tiny_index, serving, shape_image

LIMIT = 256 * 1024  # small request-body cap so the 413 tests send little data


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    root = tmp_path_factory.mktemp("api")
    index, checkpoint, paths = build_tiny_index(root)
    app = create_app(ServeConfig(index=str(index), max_upload_bytes=LIMIT, max_k=20))
    with start_in_thread(app) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        deadline = time.monotonic() + 30
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, client.get("/readyz").json()
            time.sleep(0.05)
        yield {"client": client, "index": index, "ckpt": checkpoint, "paths": paths, "root": root}


@pytest.fixture
def client(setup: dict) -> httpx.Client:
    return setup["client"]


def png_bytes(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def assert_error(response: httpx.Response, status: int, code: str, field: str | None) -> dict:
    """An RFC 9457 problem with our members, and the security headers every answer has."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert (body["status"], body["code"], body["field"]) == (status, code, field), body
    assert body["detail"] and body["request_id"] == response.headers["x-request-id"]
    assert body["type"] == f"urn:opencir:problem:{code}"
    assert body["title"] == HTTPStatus(status).phrase
    assert_security_headers(response)
    return body


def assert_security_headers(response: httpx.Response) -> None:
    headers = response.headers
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "no-referrer"
    assert headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in headers["content-security-policy"]


# ------------------------------------------------------------------ correct results


def test_health_ready_info_and_openapi(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok", "detail": ""}
    assert client.get("/readyz").json()["status"] == "ready"
    info = client.get("/info").json()
    assert (info["count"], info["max_k"], info["model"]) == (15, 20, "instructcir-tiny")
    schema = client.get("/openapi.json").json()
    assert {"/search", "/images/{item_id}", "/healthz", "/readyz", "/gallery"} <= set(
        schema["paths"]
    )
    docs = client.get("/docs")
    assert docs.status_code == 200 and "/docs-assets/swagger-ui-bundle.js" in docs.text
    assert "cdn" not in docs.text.lower()


def test_search_by_id_matches_the_model_and_brute_force(setup: dict, client: httpx.Client) -> None:
    model = opencir.load(setup["ckpt"])
    index = GalleryIndex.open(setup["index"])
    reference = index.find("img004.png")
    response = client.post("/search", data={"text": "make it blue", "id": reference.id, "k": 5})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["query"]["reference"]["name"] == "img004.png" and not body["query"]["uploaded"]
    query = model.encode_query([load_image(reference.path)], ["make it blue"]).numpy()[0]
    scores = np.asarray(index.embeddings()) @ query
    order = [int(i) for i in np.argsort(-scores, kind="stable") if i != reference.id][:5]
    assert [r["id"] for r in body["results"]] == order
    np.testing.assert_allclose([r["score"] for r in body["results"]], scores[order], atol=1e-4)
    assert [r["rank"] for r in body["results"]] == [1, 2, 3, 4, 5]
    assert body["results"][0]["image_url"] == f"/images/{order[0]}"


def test_search_by_upload_equals_search_by_id(setup: dict, client: httpx.Client) -> None:
    path = setup["paths"][4]
    item = GalleryIndex.open(setup["index"]).find(path.name)
    files = {"image": (path.name, path.read_bytes(), "image/png")}
    uploaded = client.post("/search", data={"text": "now red", "k": 6}, files=files).json()
    data = {"text": "now red", "k": 6, "id": item.id, "exclude_reference": "false"}
    by_id = client.post("/search", data=data).json()
    assert uploaded["query"]["uploaded"] and uploaded["query"]["reference"] is None
    assert [r["id"] for r in uploaded["results"]] == [r["id"] for r in by_id["results"]]


def test_jpeg_upload_and_long_text_truncation_flag(client: httpx.Client, setup: dict) -> None:
    jpeg = png_bytes(load_image(setup["paths"][0]), "JPEG")
    files = {"image": ("a.jpg", jpeg, "image/jpeg")}
    body = client.post("/search", data={"text": "red " * 60, "k": 2}, files=files).json()
    assert body["query"]["text_truncated"] is True and len(body["results"]) == 2
    assert body["query"]["text"] == ("red " * 60).strip()


def test_images_and_thumbnails(setup: dict, client: httpx.Client) -> None:
    item = GalleryIndex.open(setup["index"]).find("nested/img005.png")
    original = client.get(f"/images/{item.id}")
    assert original.status_code == 200 and original.headers["content-type"] == "image/png"
    assert original.content == item.path.read_bytes()
    thumb = client.get(f"/images/{item.id}", params={"size": 32})
    assert thumb.headers["content-type"] == "image/jpeg"
    with Image.open(io.BytesIO(thumb.content)) as image:
        assert max(image.size) <= 32
    page = client.get("/gallery", params={"offset": 10, "limit": 3}).json()
    assert page["total"] == 15 and [i["id"] for i in page["items"]] == [10, 11, 12]
    assert client.get("/").headers["content-type"].startswith("text/html")
    assert client.get("/static/app.js").status_code == 200


# ------------------------------------------------------------------ client mistakes


def test_body_over_the_limit_is_413(client: httpx.Client) -> None:
    files = {"image": ("big.png", b"\0" * (LIMIT + 1), "image/png")}
    assert_error(
        client.post("/search", data={"text": "x"}, files=files), 413, "body_too_large", None
    )


def test_streamed_body_over_the_limit_is_413(client: httpx.Client) -> None:
    boundary = "opencirboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()

    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked transfer encoding
        yield head
        for _ in range(LIMIT // 16384 + 2):
            yield b"\x89" * 16384

    headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
    response = client.post("/search", content=chunks(), headers=headers)
    assert_error(response, 413, "body_too_large", None)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_decompression_bomb_is_413(client: httpx.Client) -> None:
    bomb = png_bytes(Image.new("1", (12_000, 12_000)))  # 144 Mpx, a few kB compressed
    assert len(bomb) < LIMIT
    files = {"image": ("bomb.png", bomb, "image/png")}
    body = assert_error(
        client.post("/search", data={"text": "x"}, files=files), 413, "image_too_large", "image"
    )
    assert "pixels" in body["detail"]


def test_pixel_cap_below_pillows_is_ours(setup: dict) -> None:
    app = create_app(ServeConfig(index=str(setup["index"]), max_pixels=1000))
    with start_in_thread(app) as server, httpx.Client(base_url=server.url) as other:
        while other.get("/readyz").status_code != 200:
            time.sleep(0.05)
        files = {"image": ("a.png", png_bytes(Image.new("RGB", (40, 40))), "image/png")}
        response = other.post("/search", data={"text": "x"}, files=files)
        assert_error(response, 413, "image_too_large", "image")


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"plain text, not an image", "not_an_image"),
        (png_bytes(Image.new("RGB", (20, 20)), "TIFF"), "unsupported_format"),
        (png_bytes(Image.new("RGB", (20, 20)), "ICO"), "unsupported_format"),
    ],
)
def test_not_an_image_or_disallowed_format_is_415(
    client: httpx.Client, payload: bytes, code: str
) -> None:
    files = {"image": ("upload.bin", payload, "application/octet-stream")}
    assert_error(client.post("/search", data={"text": "x"}, files=files), 415, code, "image")


def test_truncated_image_is_422(client: httpx.Client) -> None:
    noise = Image.effect_noise((64, 64), 60).convert("RGB")
    for fmt in ("JPEG", "PNG"):
        data = png_bytes(noise, fmt)
        files = {"image": ("cut", data[: len(data) // 2], "image/png")}
        response = client.post("/search", data={"text": "x"}, files=files)
        assert_error(response, 422, "corrupt_image", "image")


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("", "empty_text"),
        ("   \n\t ", "empty_text"),
        ("x" * 501, "text_too_long"),
        (None, "empty_text"),
    ],
)
def test_bad_text_is_422(client: httpx.Client, text: str | None, code: str) -> None:
    data = {"id": 1} if text is None else {"id": 1, "text": text}
    assert_error(client.post("/search", data=data), 422, code, "text")


@pytest.mark.parametrize("k", ["0", "-3", "21", "abc", "2.5"])
def test_k_out_of_range_is_422(client: httpx.Client, k: str) -> None:
    response = client.post("/search", data={"id": 1, "text": "x", "k": k})
    body = assert_error(response, 422, "k_out_of_range", "k")
    assert "1 to 20" in body["detail"]


def test_references_unknown_missing_or_both(client: httpx.Client, setup: dict) -> None:
    assert_error(client.post("/search", data={"id": 999, "text": "x"}), 404, "unknown_id", "id")
    assert_error(client.post("/search", data={"id": -1, "text": "x"}), 404, "unknown_id", "id")
    assert_error(
        client.post("/search", data={"id": "seven", "text": "x"}), 422, "invalid_field", "id"
    )
    assert_error(client.post("/search", data={"text": "x"}), 422, "missing_reference", "image")
    files = {"image": ("a.png", setup["paths"][0].read_bytes(), "image/png")}
    response = client.post("/search", data={"text": "x", "id": 1}, files=files)
    assert_error(response, 422, "ambiguous_reference", "id")
    assert_error(client.get("/images/999"), 404, "unknown_id", "id")
    assert_error(client.get(f"/images/{2**70}"), 404, "unknown_id", "id")
    assert_error(client.get("/no/such/route"), 404, "not_found", None)
    assert_error(client.get("/search"), 405, "method_not_allowed", None)


def test_no_client_mistake_gives_a_500(client: httpx.Client) -> None:
    attempts = [
        {"content": b"{}", "headers": {"content-type": "application/json"}},
        {"content": b"\xff\xfe garbage", "headers": {"content-type": "multipart/form-data"}},
        {
            "content": b"--x\r\nbroken",
            "headers": {"content-type": "multipart/form-data; boundary=x"},
        },
        {"data": {"text": "x", "id": "", "k": ""}},
        {"data": {"text": "x"}, "files": {"image": ("", b"", "application/octet-stream")}},
        {"data": {"text": "x"}, "files": {"image": ("e.png", b"", "image/png")}},
        {"data": {"text": "x", "exclude_reference": "maybe", "id": 1}},
    ]
    for attempt in attempts:
        response = client.post("/search", **attempt)
        assert 400 <= response.status_code < 500, (attempt, response.text)
        assert response.json()["code"]
    assert client.get("/gallery", params={"limit": 0}).status_code == 422
    assert client.get("/images/1", params={"size": 5000}).status_code == 422


def test_gallery_file_gone_is_404(setup: dict) -> None:
    root = setup["root"] / "gone"
    index, _, paths = build_tiny_index(root, n=3)
    paths[0].unlink()
    app = create_app(ServeConfig(index=str(index)))
    with start_in_thread(app) as server, httpx.Client(base_url=server.url) as other:
        while other.get("/readyz").status_code != 200:
            time.sleep(0.05)
        assert_error(other.get("/images/0"), 404, "image_file_missing", "id")
        response = other.post("/search", data={"id": 0, "text": "x"})
        assert response.status_code == 404 and response.json()["code"] == "image_file_missing"


def test_gallery_files_are_checked_before_they_are_served(tmp_path: Path) -> None:
    index, _, paths = build_tiny_index(tmp_path / "swapped", n=4)
    gallery = GalleryIndex.open(index)
    ids = [gallery.find(path.relative_to(tmp_path / "swapped" / "gallery").as_posix()).id
           for path in paths]  # fmt: skip
    gallery.close()
    secret = tmp_path / "passwd"
    secret.write_text("root:x:0:0:root:/root:/bin/bash\n")
    elsewhere = tmp_path / "elsewhere.png"
    shape_image((0, 0, 0), "circle").save(elsewhere)
    paths[0].unlink()
    paths[0].symlink_to(secret)  # a private file behind a gallery name
    paths[1].unlink()
    paths[1].symlink_to(elsewhere)  # even a real image is not served through a link
    paths[2].write_bytes(secret.read_bytes())  # not an image, named .png
    paths[3].write_bytes(png_bytes(load_image(elsewhere), "JPEG"))  # a JPEG named .png
    with serving(create_app(ServeConfig(index=str(index)))) as other:
        for item_id in ids[:3]:
            for params in ({}, {"size": 64}):  # the image and its thumbnail: one check
                response = other.get(f"/images/{item_id}", params=params)
                assert_error(response, 404, "image_unreadable", "id")
                assert "root:" not in response.text
        misnamed = other.get(f"/images/{ids[3]}")
        assert misnamed.headers["content-type"] == "image/jpeg", "the type comes from the bytes"
        assert misnamed.content == paths[3].read_bytes()
        assert_security_headers(misnamed)


def test_every_answer_carries_the_security_headers(client: httpx.Client) -> None:
    for path in ("/", "/static/app.js", "/healthz", "/images/1", "/images/1?size=32", "/docs"):
        response = client.get(path)
        assert response.status_code == 200, path
        assert_security_headers(response)
    page_policy = client.get("/").headers["content-security-policy"]
    assert "default-src 'self'" in page_policy and "script-src" not in page_policy


def test_gallery_offset_and_limit_are_bounded(client: httpx.Client) -> None:
    body = assert_error(client.get("/gallery", params={"offset": 2**63}), 422, "invalid_field",
                        "offset")  # fmt: skip
    assert str(2**63 - 1) in body["detail"]
    last = client.get("/gallery", params={"offset": 2**63 - 1})
    assert last.status_code == 200 and last.json()["items"] == []
    assert_error(client.get("/gallery", params={"limit": 201}), 422, "invalid_field", "limit")


def test_a_huge_text_is_refused_by_the_schema(setup: dict) -> None:
    app = create_app(ServeConfig(index=str(setup["index"])))  # the default 10 MiB body cap
    with serving(app) as other:
        schema = other.get("/openapi.json").json()["components"]["schemas"]
        form = next(v for k, v in schema.items() if k.startswith("Body_search"))
        assert form["properties"]["text"]["anyOf"][0]["maxLength"] == 1000
        word = "x" * 5_000_000
        for request in ({"data": {"id": 1, "text": word}},
                        {"data": {"id": "1"}, "files": {"text": (None, word)}}):  # fmt: skip
            response = other.post("/search", **request)
            body = assert_error(response, 422, "text_too_long", "text")
            assert "5000000 characters, the limit is 500" in body["detail"]


# ------------------------------------------------------------------ HTTP semantics


def test_head_is_answered_on_every_get_route(client: httpx.Client) -> None:
    paths = ("/", "/healthz", "/readyz", "/info", "/gallery?limit=2", "/images/1",
             "/images/1?size=32", "/static/app.js", "/openapi.json")  # fmt: skip
    for path in paths:
        get, head = client.get(path), client.head(path)
        assert (head.status_code, head.content) == (200, b""), path
        for name in ("content-type", "content-length", "x-content-type-options"):
            assert head.headers[name] == get.headers[name], (path, name)
    post_only = client.head("/search")
    assert post_only.status_code == 405 and post_only.headers["allow"] == "POST"
    assert post_only.content == b""


def test_a_body_that_is_not_a_form_is_415(client: httpx.Client) -> None:
    for content, media_type in ((b'{"text": "x", "id": 1}', "application/json"),
                                (b"text=x&id=1", "text/plain")):  # fmt: skip
        response = client.post("/search", content=content, headers={"content-type": media_type})
        body = assert_error(response, 415, "unsupported_media_type", None)
        assert media_type in body["detail"] and "multipart/form-data" in body["detail"]


class _BrokenIndex:
    """Answers its size, then fails as a bug would."""

    def __len__(self) -> int:
        return 1

    def page(self, offset: int, limit: int) -> list:
        raise RuntimeError("a bug in the gallery page")


def test_an_unexpected_error_is_a_500_problem(caplog: pytest.LogCaptureFixture) -> None:
    searcher = SimpleNamespace(index=_BrokenIndex(), close=lambda: None)
    with serving(create_app(ServeConfig(), searcher)) as other:
        response = other.get("/gallery")
        body = assert_error(response, 500, "internal_error", None)
    assert "bug" not in body["detail"], "internals stay in the log"
    assert "a bug in the gallery page" in caplog.text and body["request_id"] in caplog.text


# ------------------------------------------------------------------ Host allow-list


def test_a_foreign_host_is_refused(client: httpx.Client) -> None:
    port = client.base_url.port
    for host in ("evil.example", f"evil.example:{port}", f"localhost:{port + 1}"):
        response = client.get("/info", headers={"host": host})
        body = assert_error(response, 421, "host_not_allowed", None)
        assert host in body["detail"] and "--allowed-host" in body["detail"]
    assert_error(client.get("/info", headers={"host": "[::1"}), 400, "invalid_host", None)
    for host in (f"127.0.0.1:{port}", f"LOCALHOST:{port}", f"[::1]:{port}", "localhost"):
        assert client.get("/info", headers={"host": host}).status_code == 200, host


def test_allowed_hosts_are_configurable() -> None:
    config = ServeConfig(allowed_hosts=("search.example", "pinned.example:9"))
    with start_in_thread(create_app(config)) as server, httpx.Client(base_url=server.url) as c:
        for host in ("search.example", "search.example:1234", "pinned.example:9"):
            assert c.get("/healthz", headers={"host": host}).status_code == 200, host
        response = c.get("/healthz", headers={"host": "pinned.example:10"})
        assert_error(response, 421, "host_not_allowed", None)
    with start_in_thread(create_app(ServeConfig(allowed_hosts=("*",)))) as server:
        assert httpx.get(f"{server.url}/healthz", headers={"host": "any.example"}).is_success
    with pytest.raises(ValueError, match="in brackets"):
        ServeConfig(allowed_hosts=("fe80::1",))


# ------------------------------------------------------------------ damaged or missing index


@pytest.fixture
def damaged_index(setup: dict, tmp_path: Path) -> Path:
    """A copy of the index whose items.sqlite lost a row: same size, so it passes size checks."""
    damaged = tmp_path / "damaged"
    shutil.copytree(setup["index"], damaged)
    with sqlite3.connect(damaged / "items.sqlite") as db:
        db.execute("DELETE FROM items WHERE id = 3")
    db.close()
    manifest = json.loads((damaged / "manifest.json").read_text())
    assert (damaged / "items.sqlite").stat().st_size == manifest["files"]["items.sqlite"]["bytes"]
    return damaged


def test_a_damaged_item_table_fails_the_open(damaged_index: Path) -> None:
    with pytest.raises(IndexFormatError, match=r"items\.sqlite holds 14 items, the manifest says"):
        GalleryIndex.open(damaged_index)
    table = damaged_index / "items.sqlite"
    table.write_bytes(bytes(range(256)) * (table.stat().st_size // 256))  # garbage, same size
    with pytest.raises(IndexFormatError, match=r"items\.sqlite is not a readable SQLite"):
        GalleryIndex.open(damaged_index)


def test_a_damaged_page_fails_the_integrity_check(setup: dict, tmp_path: Path) -> None:
    shutil.copytree(setup["index"], tmp_path / "index")
    table = tmp_path / "index" / "items.sqlite"
    data = bytearray(table.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    data[page + 8 : 2 * page] = bytes(range(256)) * ((page - 8) // 256) + bytes((page - 8) % 256)
    table.write_bytes(bytes(data))  # the header is intact, the items table's page is not
    with pytest.raises(IndexFormatError, match=r"is damaged: items\.sqlite"):
        GalleryIndex.open(tmp_path / "index")


def test_readyz_is_not_ready_for_a_damaged_index(damaged_index: Path) -> None:
    app = create_app(ServeConfig(index=str(damaged_index)))
    with start_in_thread(app) as server, httpx.Client(base_url=server.url) as c:
        deadline = time.monotonic() + 30
        while "loading" in c.get("/readyz").json()["detail"] and time.monotonic() < deadline:
            time.sleep(0.05)
        body = assert_error(c.get("/readyz"), 503, "index_not_loaded", None)
        assert "is damaged: items.sqlite" in body["detail"]


def test_serve_exits_with_the_reason_when_the_index_cannot_be_opened(
    setup: dict, damaged_index: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    served: list = []
    monkeypatch.setattr(runner, "serve_socket", lambda app, sock: served.append(app))
    common = ["--port", "0"]
    assert cli_main(["serve", "--index", str(tmp_path / "missing"), *common]) == 2
    assert cli_main(["serve", "--index", str(damaged_index), *common]) == 2
    assert not served
    assert "does not exist" in caplog.text and "is damaged: items.sqlite" in caplog.text
    hosts = ["--allowed-host", "a.example", "--allowed-host", "b.example:80"]
    assert cli_main(["serve", "--index", str(setup["index"]), *common, *hosts]) == 0
    engine = served[0].state.engine
    assert engine.status() == (True, "15 images"), "loaded before serving"
    assert engine.config.allowed_hosts == ("a.example", "b.example:80")
    engine.close()


# ------------------------------------------------------------------ not ready


def test_index_not_loaded_is_503(tmp_path: Path) -> None:
    for config in (ServeConfig(), ServeConfig(index=str(tmp_path / "missing"))):
        with start_in_thread(create_app(config)) as server, httpx.Client(base_url=server.url) as c:
            deadline = time.monotonic() + 10
            while "loading" in c.get("/readyz").json()["detail"] and time.monotonic() < deadline:
                time.sleep(0.05)
            assert c.get("/healthz").status_code == 200
            body = assert_error(c.get("/readyz"), 503, "index_not_loaded", None)
            assert "no index configured" in body["detail"] or "does not exist" in body["detail"]
            assert_error(
                c.post("/search", data={"id": 1, "text": "x"}), 503, "index_not_loaded", None
            )
            assert_error(c.get("/images/1"), 503, "index_not_loaded", None)


# ------------------------------------------------------------------ concurrency & logging


def test_concurrent_requests_are_consistent(setup: dict, client: httpx.Client) -> None:
    upload = setup["paths"][2].read_bytes()

    def one(i: int) -> tuple[int, list[int], str]:
        with httpx.Client(base_url=str(client.base_url), timeout=30) as own:
            if i % 2:
                response = own.post("/search", data={"text": "bigger", "id": i % 15, "k": 4})
            else:
                files = {"image": ("a.png", upload, "image/png")}
                response = own.post("/search", data={"text": "bigger", "k": 4}, files=files)
            ids = [r["id"] for r in response.json()["results"]]
            return response.status_code, ids, response.headers["x-request-id"]

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(48)))
    assert all(status == 200 for status, _, _ in results)
    assert len({rid for _, _, rid in results}) == 48
    uploads = {tuple(ids) for i, (_, ids, _) in enumerate(results) if i % 2 == 0}
    assert len(uploads) == 1, "the same query gives the same answer under load"
    serial = [
        r["id"]
        for r in client.post("/search", data={"text": "bigger", "id": 3, "k": 4}).json()["results"]
    ]
    assert results[3][1] == serial


def test_requests_are_logged_with_id_and_latency(
    client: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="opencir.serve.access"):
        response = client.get("/healthz", headers={"x-request-id": "trace-42"})
        time.sleep(0.05)
    assert response.headers["x-request-id"] == "trace-42"
    lines = [r.getMessage() for r in caplog.records if r.name == "opencir.serve.access"]
    line = next(line for line in lines if line.startswith("trace-42"))
    assert " GET /healthz 200 " in line and line.endswith("ms")


def test_load_script_reports_latency_percentiles(setup: dict, tmp_path: Path) -> None:
    import importlib.util

    script = Path(__file__).parents[1] / "benchmarks" / "load_search_api.py"
    spec = importlib.util.spec_from_file_location("load_search_api", script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    out = tmp_path / "load.json"
    args = ["--index", str(setup["index"]), "--clients", "4", "--requests", "6", "--json", str(out)]
    assert module.main(args) == 0
    result = json.loads(out.read_text())
    assert (result["requests"], result["errors"]) == (24, 0)
    assert 0 < result["p50_ms"] <= result["p99_ms"] <= result["max_ms"]
    with pytest.raises(SystemExit):
        module.main(["--url", "http://192.0.2.1:8000"])  # not loopback: refused
