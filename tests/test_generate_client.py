"""The OpenAI-compatible client against a loopback fake: every failure path."""

from __future__ import annotations

import asyncio
import base64
import email.utils
import socket
import time
from collections.abc import Iterator

import pytest
from PIL import Image

from opencir.generate.client import (
    ChatClient,
    EndpointConfig,
    RequestError,
    parse_retry_after,
    user_content,
)
from tests.fake_llm_server import FakeLLMServer


@pytest.fixture
def server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as fake:
        yield fake


def _client(server: FakeLLMServer, **overrides) -> ChatClient:
    settings = {
        "model": "fake",
        "base_url": server.url,
        "timeout_s": 2.0,
        "max_retries": 2,
        "backoff_s": 0.01,
    } | overrides
    return ChatClient(EndpointConfig(**settings))


def _ask(client: ChatClient, content="caption B: a green box", **kwargs):
    async def go():
        try:
            return await client.complete(content, **kwargs)
        finally:
            await client.aclose()

    return asyncio.run(go())


def test_answer_usage_and_image_data_urls(server: FakeLLMServer) -> None:
    answer = _ask(_client(server))
    assert (answer.text, answer.attempts) == ("make it green", 1)
    assert answer.usage.prompt_tokens == 10 and answer.usage.requests == 1
    image = Image.new("RGB", (2000, 1000), (30, 30, 230))
    answer = _ask(_client(server), user_content("Describe it.", [image], max_side=64))
    assert answer.text == "a blue picture"
    part = server.requests[-1]["body"]["messages"][0]["content"][0]
    assert part["type"] == "image_url"
    url = part["image_url"]["url"]
    assert url.startswith("data:image/jpeg;base64,")
    assert Image.open(__import__("io").BytesIO(base64.b64decode(url.split(",")[1]))).size == (
        64,
        32,
    )


def test_completions_api_sends_plain_text(server: FakeLLMServer) -> None:
    answer = _ask(_client(server, api="completions", stop=("\n",)), "caption B: red")
    assert answer.text == "make it red"
    body = server.requests[-1]["body"]
    assert body["prompt"] == "caption B: red" and body["stop"] == ["\n"]
    with pytest.raises(ValueError, match="text only"):
        _ask(_client(server, api="completions"), [{"type": "text", "text": "x"}])


@pytest.mark.parametrize("mode", ["500", "garbage", "no_choices", "429:0"])
def test_transient_failures_are_retried(server: FakeLLMServer, mode: str) -> None:
    server.queue(mode, mode)
    answer = _ask(_client(server))
    assert answer.text == "make it green" and answer.attempts == 3
    assert server.count() == 3


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        ("500", "server_error"),
        ("429:0", "rate_limited"),
        ("garbage", "bad_response"),
        ("no_choices", "bad_response"),
    ],
)
def test_persistent_failures_end_as_request_errors(
    server: FakeLLMServer, mode: str, reason: str
) -> None:
    server.always(mode)
    with pytest.raises(RequestError) as info:
        _ask(_client(server, max_retries=3))
    assert info.value.reason == reason and info.value.attempts == 4
    assert server.count() == 4


def test_client_errors_are_not_retried(server: FakeLLMServer) -> None:
    server.queue("400")
    with pytest.raises(RequestError) as info:
        _ask(_client(server))
    assert info.value.reason == "client_error" and "400" in info.value.detail
    assert server.count() == 1


def test_retry_after_is_honoured(server: FakeLLMServer) -> None:
    server.queue("429:0.4")
    started = time.monotonic()
    answer = _ask(_client(server, backoff_s=0.001))
    assert answer.attempts == 2
    gap = server.requests[1]["time"] - server.requests[0]["time"]
    assert gap >= 0.38 and time.monotonic() - started < 3


def test_retry_after_parsing() -> None:
    assert parse_retry_after({"retry-after": "2.5"}) == 2.5
    assert parse_retry_after({"retry-after-ms": "1500"}) == 1.5
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 < parse_retry_after({"retry-after": when}) <= 31
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None


@pytest.mark.parametrize("mode", ["stall", "stall_body"])
def test_stalls_time_out_and_retry(server: FakeLLMServer, mode: str) -> None:
    server.queue(mode)
    started = time.monotonic()
    answer = _ask(_client(server, timeout_s=0.4))
    assert answer.attempts == 2 and 0.35 < time.monotonic() - started < 3
    server.always(mode)
    with pytest.raises(RequestError) as info:
        _ask(_client(server, timeout_s=0.3, max_retries=1))
    assert info.value.reason == "timeout" and info.value.attempts == 2


def test_connection_refused() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = ChatClient(
        EndpointConfig(
            model="m",
            base_url=f"http://127.0.0.1:{port}/v1",
            max_retries=1,
            backoff_s=0.01,
            timeout_s=2,
        )
    )
    with pytest.raises(RequestError) as info:
        _ask(client)
    assert info.value.reason == "connection" and info.value.attempts == 2


def test_concurrency_is_bounded_and_rate_limited() -> None:
    with FakeLLMServer(delay_s=0.05) as server:
        client = _client(server, concurrency=2)

        async def many() -> list:
            try:
                return await asyncio.gather(
                    *(client.complete(f"caption B: red {i}") for i in range(8))
                )
            finally:
                await client.aclose()

        assert len(asyncio.run(many())) == 8
        assert server.max_inflight == 2
        client = _client(server, rate_per_s=20.0, concurrency=8)
        started = time.monotonic()

        async def rated() -> None:
            try:
                await asyncio.gather(*(client.complete("caption B: red") for _ in range(6)))
            finally:
                await client.aclose()

        asyncio.run(rated())
        assert time.monotonic() - started >= 0.25  # 6 starts, 50 ms apart


def test_endpoint_config_checks() -> None:
    with pytest.raises(ValueError, match="needs a model name"):
        EndpointConfig(model="")
    with pytest.raises(ValueError, match="api must be one of"):
        EndpointConfig(model="m", api="responses")
    assert "secret" not in repr(EndpointConfig(model="m", api_key="secret"))


@pytest.mark.parametrize(
    ("mode", "cut"), [("429:0", True), ("503", True), ("504", True), ("500", False)]
)
def test_overload_answers_cut_the_in_flight_limit(
    server: FakeLLMServer, mode: str, cut: bool
) -> None:
    server.queue(mode)
    client = _client(server, concurrency=8)
    assert _ask(client).attempts == 2
    assert client.in_flight.stats() == {
        "limit": 4 if cut else 8,
        "lowest": 4 if cut else 8,
        "cuts": int(cut),
        "bound": 8,
    }
    server.queue(mode)
    fixed = _client(server, concurrency=8, adaptive_concurrency=False)
    _ask(fixed)
    assert fixed.in_flight.stats()["limit"] == 8


def test_timeouts_cut_the_in_flight_limit(server: FakeLLMServer) -> None:
    server.queue("stall")
    client = _client(server, concurrency=8, timeout_s=0.3)
    assert _ask(client).attempts == 2
    assert client.in_flight.stats()["cuts"] == 1 and client.in_flight.limit == 4


def _many(server: FakeLLMServer, prompts: int, **overrides) -> tuple[ChatClient, int, int]:
    """``prompts`` concurrent requests: the client, how many were answered, and attempts."""
    client = _client(server, **overrides)

    async def go() -> list:
        try:
            return await asyncio.gather(
                *(client.complete(f"caption B: red {i}") for i in range(prompts)),
                return_exceptions=True,
            )
        finally:
            await client.aclose()

    results = asyncio.run(go())
    for result in results:
        if isinstance(result, Exception):
            assert isinstance(result, RequestError) and result.reason == "timeout"
    answered = sum(not isinstance(r, Exception) for r in results)
    return client, answered, sum(r.attempts for r in results)


def test_adaptive_concurrency_fits_a_one_slot_server() -> None:
    """32 requests in flight against a server answering one at a time, 10 per deadline.

    A fixed limit keeps 32 queued: most wait past the deadline, are sent again, and the
    server spends its time on answers nobody waits for. The adaptive client cuts its limit
    until the queue fits the deadline and gets every answer with far fewer attempts.
    """
    prompts = 32
    settings = {
        "concurrency": 32,
        "timeout_s": 0.2,
        "max_retries": 8,
        "backoff_s": 0.01,
        "max_backoff_s": 0.05,
    }
    with FakeLLMServer(delay_s=0.02, slots=1) as server:
        client, answered, attempts = _many(server, prompts, **settings)
    with FakeLLMServer(delay_s=0.02, slots=1) as server:
        fixed, fixed_answered, fixed_attempts = _many(
            server, prompts, adaptive_concurrency=False, **settings
        )
    assert answered == prompts and fixed_answered < prompts * 3 // 4
    stats = client.in_flight.stats()
    assert stats["cuts"] >= 1 and stats["limit"] <= 16
    assert fixed.in_flight.stats()["cuts"] == 0
    assert 2 * (attempts - answered) < fixed_attempts - fixed_answered  # timeouts
    wasted_per_answer = (attempts - answered) / answered
    fixed_wasted_per_answer = (fixed_attempts - fixed_answered) / max(1, fixed_answered)
    assert fixed_wasted_per_answer > 3 * wasted_per_answer
