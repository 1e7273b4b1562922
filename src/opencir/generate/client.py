"""An async client for OpenAI-compatible servers (vLLM, Ollama, llama.cpp server, TGI, OpenAI).

Calls go through the official ``openai`` client with ``httpx`` timeouts; around it this module
adds what long generation runs need: bounded concurrency, a rate limit, a per-request deadline
(a stalled stream cannot hang a run), and retries with exponential backoff that honour the
server's ``Retry-After``. Every failure ends as a :class:`RequestError` with a short reason
(``timeout``, ``server_error``, ``rate_limited``, ``connection``, ``bad_response``,
``client_error``) — a recorded failure, never a crash.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email.utils
import io
import json
import logging
import os
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

log = logging.getLogger(__name__)

APIS = ("chat", "completions")
# The reasons a RequestError carries (see the module docstring).
REQUEST_FAILURES = frozenset(
    {"timeout", "server_error", "rate_limited", "connection", "bad_response", "client_error"}
)
RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
# Answers that say "too much at once": they cut an adaptive in-flight limit, as timeouts do.
OVERLOAD_STATUS = frozenset({429, 503, 504})  # 504: a gateway timed out waiting for it


@dataclass(frozen=True)
class EndpointConfig:
    """One model behind an OpenAI-compatible endpoint, and how hard to push it.

    ``api="completions"`` sends the prompt as plain text (base, non-chat models);
    ``api_key`` falls back to ``$OPENAI_API_KEY`` and then to a dummy key, which local
    servers accept. ``rate_per_s`` caps request starts per second (``None``: no cap).
    ``concurrency`` bounds requests in flight; the default (64) keeps a server that batches
    up to 64 sequences busy (vLLM, TGI). A server with fewer slots (Ollama, one llama.cpp
    process) queues the excess, and the wait counts against ``timeout_s``. With
    ``adaptive_concurrency`` (the default) the client finds the right number itself: a
    timeout or a 429/503/504 answer halves its in-flight limit, a window of successes adds one
    back, never above ``concurrency`` (see :class:`AdaptiveLimit`). Off, ``concurrency`` is a
    fixed limit: then keep concurrency × seconds per answer ÷ slots well under ``timeout_s``.
    """

    model: str
    base_url: str = "http://localhost:8000/v1"
    api: str = "chat"
    api_key: str | None = field(default=None, repr=False)
    timeout_s: float = 60.0
    connect_timeout_s: float = 10.0
    max_retries: int = 4
    backoff_s: float = 1.0
    max_backoff_s: float = 60.0
    concurrency: int = 64
    adaptive_concurrency: bool = True
    rate_per_s: float | None = None
    max_tokens: int = 64
    temperature: float = 0.0
    stop: tuple[str, ...] = ()
    image_max_side: int = 768
    extra_body: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.api not in APIS:
            raise ValueError(f"api must be one of {APIS}, got {self.api!r}")
        if not self.model:
            raise ValueError("an endpoint needs a model name (--caption-model / --writer-model)")
        if self.concurrency < 1 or self.max_retries < 0 or self.timeout_s <= 0:
            raise ValueError("need concurrency >= 1, max_retries >= 0 and timeout_s > 0")
        if self.rate_per_s is not None and self.rate_per_s <= 0:
            raise ValueError(f"rate_per_s must be positive, got {self.rate_per_s}")
        object.__setattr__(self, "stop", tuple(self.stop))

    def provenance(self) -> dict[str, Any]:
        """What identifies the model's behaviour (not where it is served or how fast)."""
        return {
            "model": self.model,
            "api": self.api,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "stop": list(self.stop),
            "image_max_side": self.image_max_side,
        }


@dataclass(frozen=True)
class Usage:
    """Tokens and requests spent (added up across retries, items and shards)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    requests: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.requests + other.requests,
        )

    def to_dict(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "requests": self.requests,
        }


@dataclass(frozen=True)
class Answer:
    """A model's text answer and what it cost."""

    text: str
    usage: Usage
    attempts: int


class RequestError(Exception):
    """A request failed for good (after retries where retrying made sense)."""

    def __init__(self, reason: str, detail: str, attempts: int = 1, usage: Usage | None = None):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail, self.attempts = reason, detail, attempts
        self.usage = usage if usage is not None else Usage()


class _Retryable(Exception):
    def __init__(
        self,
        reason: str,
        detail: str,
        retry_after: float | None = None,
        overloaded: bool = False,
    ):
        super().__init__(detail)
        self.reason, self.detail, self.retry_after = reason, detail, retry_after
        self.overloaded = overloaded or reason == "timeout"


class RateLimiter:
    """Spaces request starts at least ``1 / rate`` seconds apart (no burst)."""

    def __init__(self, rate_per_s: float | None) -> None:
        self.interval = 1.0 / rate_per_s if rate_per_s else 0.0
        self._next = 0.0

    async def acquire(self) -> None:
        if not self.interval:
            return
        now = time.monotonic()
        slot = max(now, self._next)
        self._next = slot + self.interval
        if slot > now:
            await asyncio.sleep(slot - now)


class Slot:
    """One request's place in an :class:`AdaptiveLimit`; set ``overloaded`` when it met one."""

    def __init__(self, ticket: int) -> None:
        self.ticket = ticket
        self.overloaded = False


class AdaptiveLimit:
    """Requests in flight, at most ``limit``; the limit adapts when ``adaptive`` (AIMD).

    * **Cut**: a request that met an overload (it timed out, or the server answered 429/503/504)
      halves the limit, not below 1. One overload usually fails every request queued behind
      it, so a cut counts only requests *started after the last cut*: those started before it
      met the same overload, and a burst of 64 timeouts cuts 64 → 32, not 64 → 1. If the
      requests sent under the new limit still meet an overload, it halves again.
    * **Growth**: after as many successes as the current limit (a window's worth) among the
      requests started since the last cut, the limit grows by 1, up to ``bound``.

    The limit starts at ``bound``, without slow start: a batching server (vLLM, TGI) wants
    every slot from the first request, and a one-slot server answers a growing queue without
    complaint until its wait passes the deadline, so starting low would only delay the same
    first cut. Waiters are served first come, first served; a cancelled waiter takes no slot.
    """

    def __init__(self, bound: int, adaptive: bool = True) -> None:
        if bound < 1:
            raise ValueError(f"the in-flight bound must be >= 1, got {bound}")
        self.bound, self.adaptive = bound, adaptive
        self.limit = bound
        self.in_flight = 0
        self.cuts = 0
        self.lowest = bound
        self._started = 0  # tickets handed out so far
        self._fence = 0  # tickets below it started before the last cut
        self._streak = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    def stats(self) -> dict[str, int]:
        """Where the limit stands: ``limit`` now, ``lowest`` reached, ``cuts``, ``bound``."""
        return {"limit": self.limit, "lowest": self.lowest, "cuts": self.cuts, "bound": self.bound}

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[Slot]:
        """Hold a slot for one request: success when the block ends without an exception."""
        slot = Slot(await self.acquire())
        succeeded = False
        try:
            yield slot
            succeeded = True
        finally:
            self.release(slot.ticket, succeeded=succeeded, overloaded=slot.overloaded)

    async def acquire(self) -> int:
        """Wait for a free slot; returns the request's ticket (its start order)."""
        if self.in_flight < self.limit and not self._waiters:
            self.in_flight += 1
        else:
            await self._wait_for_handover()
        self._started += 1
        return self._started - 1

    async def _wait_for_handover(self) -> None:
        """Queue until :meth:`_wake` hands this waiter a slot (already counted in flight)."""
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():  # handed a slot, then cancelled
                self.in_flight -= 1
                self._wake()
            elif waiter in self._waiters:
                self._waiters.remove(waiter)
            raise

    def release(self, ticket: int, *, succeeded: bool, overloaded: bool = False) -> None:
        """Free a slot; adapt the limit to how the request went."""
        self.in_flight -= 1
        if self.adaptive and ticket >= self._fence:
            if overloaded:
                self._cut()
            elif succeeded:
                self._grow()
        self._wake()

    def _cut(self) -> None:
        self._fence, self._streak = self._started, 0
        if self.limit > 1:
            self.limit //= 2
            self.lowest = min(self.lowest, self.limit)
            self.cuts += 1
            log.info("overload: at most %d requests in flight now (cut %d)", self.limit, self.cuts)

    def _grow(self) -> None:
        self._streak += 1
        if self._streak >= self.limit:
            self.limit, self._streak = min(self.bound, self.limit + 1), 0

    def _wake(self) -> None:
        while self._waiters and self.in_flight < self.limit:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.in_flight += 1
                waiter.set_result(None)


def image_data_url(image: Image.Image, max_side: int = 768) -> str:
    """A JPEG ``data:`` URL of an RGB image, shrunk so its longer side is at most ``max_side``."""
    image = image.convert("RGB")
    if max(image.size) > max_side:
        image = image.copy()
        image.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def user_content(text: str, images: Sequence[Image.Image] = (), max_side: int = 768) -> Any:
    """Chat ``content``: the images (as data URLs) then the text; plain text without images."""
    if not images:
        return text
    parts: list[dict[str, Any]] = [
        {"type": "image_url", "image_url": {"url": image_data_url(image, max_side)}}
        for image in images
    ]
    parts.append({"type": "text", "text": text})
    return parts


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds from ``Retry-After`` (seconds or an HTTP date) or ``retry-after-ms``."""
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _extract(data: Any, api: str) -> tuple[str, Usage]:
    """Answer text and usage from a response body; :class:`_Retryable` if it is malformed."""
    try:
        choice = data["choices"][0]
        content = choice["message"]["content"] if api == "chat" else choice["text"]
    except (KeyError, IndexError, TypeError) as error:
        raise _Retryable("bad_response", f"no answer in the response body ({error!r})") from error
    if isinstance(content, list):  # some servers return content parts
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    if not isinstance(content, str):
        raise _Retryable("bad_response", f"answer is {type(content).__name__}, not text")
    usage = data.get("usage") or {}
    return content, Usage(
        int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0), 1
    )


def _httpx_timeout(config: EndpointConfig) -> Any:
    """An ``httpx`` timeout of the kind the installed ``openai`` uses (it may bring its own)."""
    try:
        from openai import Timeout
    except ImportError:  # older clients use plain httpx
        from httpx import Timeout
    return Timeout(config.timeout_s, connect=config.connect_timeout_s)


class ChatClient:
    """Bounded, rate-limited, retrying calls to one model (see :class:`EndpointConfig`).

    ``in_flight`` is the :class:`AdaptiveLimit` of the requests in flight; it lives as long as
    the client, so what it learned about the server carries over to later event loops.
    """

    def __init__(self, config: EndpointConfig) -> None:
        self.config = config
        self.limiter = RateLimiter(config.rate_per_s)
        self.in_flight = AdaptiveLimit(config.concurrency, config.adaptive_concurrency)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: Any = None

    def _bind(self) -> Any:
        """One ``AsyncOpenAI`` per event loop (``asyncio.run`` makes new loops)."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop or self._client is None:
            from openai import AsyncOpenAI

            config = self.config
            self._client = AsyncOpenAI(
                base_url=config.base_url,
                api_key=config.api_key or os.environ.get("OPENAI_API_KEY") or "not-needed",
                timeout=_httpx_timeout(config),
                max_retries=0,  # retries are ours: counted, logged, Retry-After honoured
            )
            self._loop = loop
        return self._client

    async def aclose(self) -> None:
        if self._client is not None and self._loop is asyncio.get_running_loop():
            await self._client.close()
        self._client = self._loop = None

    async def complete(
        self, content: Any, *, seed: int | None = None, temperature: float | None = None
    ) -> Answer:
        """Send one prompt (text, or chat content parts with images) and return the answer."""
        if self.config.api == "completions" and not isinstance(content, str):
            raise ValueError("the completions API carries text only: use api='chat' for images")
        spent = Usage()
        for attempt in range(1, self.config.max_retries + 2):
            await self.limiter.acquire()
            try:
                text, usage = await self._attempt(content, seed, temperature)
                return Answer(text, spent + usage, attempt)
            except _Retryable as error:
                spent = spent + Usage(requests=1)
                if attempt > self.config.max_retries:
                    raise RequestError(error.reason, error.detail, attempt, spent) from None
                delay = self._delay(attempt, error.retry_after)
                log.debug("%s (attempt %d), retrying in %.2fs", error, attempt, delay)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        backoff = self.config.backoff_s * 2 ** (attempt - 1) * random.uniform(0.5, 1.0)
        if retry_after is not None:
            backoff = max(backoff, retry_after)
        return min(backoff, self.config.max_backoff_s)

    async def _attempt(
        self, content: Any, seed: int | None, temperature: float | None
    ) -> tuple[str, Usage]:
        client = self._bind()
        async with self.in_flight.slot() as slot:
            try:
                return await asyncio.wait_for(
                    self._request(client, content, seed, temperature), self.config.timeout_s
                )
            except TimeoutError as error:
                slot.overloaded = True
                raise _Retryable("timeout", f"no answer within {self.config.timeout_s}s") from error
            except _Retryable as error:
                slot.overloaded = error.overloaded
                raise

    async def _request(
        self, client: Any, content: Any, seed: int | None, temperature: float | None
    ) -> tuple[str, Usage]:
        import openai

        config = self.config
        kwargs: dict[str, Any] = {
            "model": config.model,
            "max_tokens": config.max_tokens,
            "temperature": config.temperature if temperature is None else temperature,
        }
        if seed is not None:
            kwargs["seed"] = seed
        if config.stop:
            kwargs["stop"] = list(config.stop)
        if config.extra_body:
            kwargs["extra_body"] = dict(config.extra_body)
        try:
            if config.api == "chat":
                messages = [{"role": "user", "content": content}]
                raw = await client.chat.completions.with_raw_response.create(
                    messages=messages, **kwargs
                )
            else:
                raw = await client.completions.with_raw_response.create(prompt=content, **kwargs)
            body = raw.http_response.text
        except openai.APITimeoutError as error:
            raise _Retryable("timeout", str(error)) from error
        except openai.APIConnectionError as error:
            raise _Retryable("connection", str(error.__cause__ or error)) from error
        except openai.APIStatusError as error:
            raise _status_error(error) from error
        try:
            data = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise _Retryable("bad_response", f"body is not JSON: {body[:80]!r}") from error
        return _extract(data, config.api)


def _status_error(error: Any) -> Exception:
    status = error.status_code
    detail = f"HTTP {status}: {str(error.message)[:200]}"
    if status in RETRYABLE_STATUS:
        reason = "rate_limited" if status == 429 else "server_error"
        retry_after = parse_retry_after(error.response.headers)
        return _Retryable(reason, detail, retry_after, overloaded=status in OVERLOAD_STATUS)
    return RequestError("client_error", detail)
