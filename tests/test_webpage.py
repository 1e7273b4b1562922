"""The web page in real headless Chromium (Debian ``chromium`` driven by Playwright)."""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from opencir.serve import ServeConfig, create_app, start_in_thread
from tests.test_serve_support import build_tiny_index

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
sync_api = pytest.importorskip("playwright.sync_api", reason="pip package playwright missing")
pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="Debian package chromium is not installed"
)

ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("web")
    index, _, _ = build_tiny_index(root, n=15)
    with start_in_thread(create_app(ServeConfig(index=str(index)))) as running:
        deadline = time.monotonic() + 30
        while httpx.get(f"{running.url}/readyz").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        yield running.url


@pytest.fixture(scope="module")
def browser_context(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    profile = tmp_path_factory.mktemp("chromium-profile")  # a fresh user-data-dir
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=CHROMIUM,
            args=ARGS,
            headless=True,
            viewport={"width": 1366, "height": 820},
        )
        yield context
        context.close()


@pytest.fixture
def page(browser_context: object, server: str) -> Iterator[object]:
    page = browser_context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("requestfailed", lambda request: errors.append(f"failed: {request.url}"))
    page.on(  # the page's Content-Security-Policy must not block anything it does
        "console",
        lambda message: "Content Security Policy" in message.text and errors.append(message.text),
    )
    page.goto(f"{server}/")
    yield page
    page.close()
    assert not errors, errors


def test_search_from_the_gallery_then_refine_from_a_result(page: object, tmp_path: Path) -> None:
    expect = sync_api.expect
    expect(page.locator("#index-info")).to_contain_text("15 images")
    gallery = page.locator("#gallery .tile")
    expect(gallery).to_have_count(15)
    gallery.nth(2).click()
    expect(page.locator("#reference-name")).to_contain_text("img004.png")
    expect(page.locator("#text")).to_be_focused()
    page.select_option("#k", "6")
    page.keyboard.type("make it blue")
    page.keyboard.press("Enter")
    results = page.locator("#results .tile")
    expect(results).to_have_count(6)
    expect(page.locator("#summary")).to_contain_text("Top 6 for “make it blue”")
    scores = [float(s) for s in page.locator("#results .score").all_inner_texts()]
    assert scores == sorted(scores, reverse=True) and all(-1 <= s <= 1 for s in scores)
    assert page.locator("#results .rank").first.inner_text() == "#1"
    expect(page.locator("#gallery-section")).to_be_hidden()
    page.screenshot(path=str(tmp_path / "results.png"), full_page=True)

    first = page.locator("#results .name").first.inner_text()
    results.first.click()  # the result becomes the next reference
    expect(page.locator("#reference-name")).to_contain_text(first)
    expect(page.locator("#history li")).to_have_count(1)
    page.keyboard.type("now a circle")
    page.keyboard.press("Enter")
    expect(page.locator("#summary")).to_contain_text("now a circle")
    expect(results).to_have_count(6)


def test_keyboard_only_flow(page: object) -> None:
    expect = sync_api.expect
    expect(page.locator("#gallery .tile")).to_have_count(15)
    page.locator("#gallery .tile").first.focus()
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("Enter")
    expect(page.locator("#reference-name")).to_contain_text("Gallery #2")
    page.keyboard.type("bigger")
    page.keyboard.press("Enter")
    expect(page.locator("#results .tile")).to_have_count(12)
    page.locator("body").click(position={"x": 5, "y": 300})
    page.keyboard.press("/")
    expect(page.locator("#text")).to_be_focused()


def test_upload_and_errors_are_shown(page: object, tmp_path: Path) -> None:
    expect = sync_api.expect
    expect(page.locator("#gallery .tile")).to_have_count(15)
    page.locator("#search-button").click()
    expect(page.locator("#message")).to_contain_text("Pick a reference")
    from tests.test_serve_support import shape_image

    picture = tmp_path / "mine.png"
    shape_image((200, 30, 30), "circle", 80).save(picture)
    page.set_input_files("#upload", str(picture))
    expect(page.locator("#reference-name")).to_contain_text("Uploaded mine.png")
    preview = page.locator("#reference-img")  # a blob: URL, allowed by the page's policy
    expect(preview).to_have_js_property("naturalWidth", 80)
    page.locator("#search-button").click()
    expect(page.locator("#message")).to_contain_text("Describe what should change")
    page.fill("#text", "make it green")
    page.keyboard.press("Enter")
    expect(page.locator("#results .tile")).to_have_count(12)

    fake = tmp_path / "fake.png"
    fake.write_text("not really a picture")
    page.set_input_files("#upload", str(fake))
    page.keyboard.press("Enter")
    expect(page.locator("#message")).to_have_class(re.compile("error"))
    expect(page.locator("#message")).to_contain_text("not a recognised image")
