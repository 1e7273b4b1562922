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
import email.utils
import io
import json
import logging
import os
import random
import time
from collections.abc import Mapping, Sequence
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


@dataclass(frozen=True)
class EndpointConfig:
    """One model behind an OpenAI-compatible endpoint, and how hard to push it.

    ``api="completions"`` sends the prompt as plain text (base, non-chat models);
    ``api_key`` falls back to ``$OPENAI_API_KEY`` and then to a dummy key, which local
    servers accept. ``rate_per_s`` caps request starts per second (``None``: no cap).
    ``concurrency`` bounds requests in flight; the default (64) keeps a server that batches
    up to 64 sequences busy (vLLM, TGI). A server with fewer slots (Ollama, one llama.cpp
    process) queues the excess, and the wait counts against ``timeout_s``: keep concurrency ×
    seconds per answer ÷ slots well under it (2 suits llama-cpp-python's one-slot server).
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
    def __init__(self, reason: str, detail: str, retry_after: float | None = None):
        super().__init__(detail)
        self.reason, self.detail, self.retry_after = reason, detail, retry_after


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
    """Bounded, rate-limited, retrying calls to one model (see :class:`EndpointConfig`)."""

    def __init__(self, config: EndpointConfig) -> None:
        self.config = config
        self.limiter = RateLimiter(config.rate_per_s)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: Any = None
        self._semaphore: asyncio.Semaphore | None = None

    def _bind(self) -> tuple[Any, asyncio.Semaphore]:
        """One ``AsyncOpenAI`` and semaphore per event loop (``asyncio.run`` makes new loops)."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop or self._client is None or self._semaphore is None:
            from openai import AsyncOpenAI

            config = self.config
            self._client = AsyncOpenAI(
                base_url=config.base_url,
                api_key=config.api_key or os.environ.get("OPENAI_API_KEY") or "not-needed",
                timeout=_httpx_timeout(config),
                max_retries=0,  # retries are ours: counted, logged, Retry-After honoured
            )
            self._semaphore = asyncio.Semaphore(config.concurrency)
            self._loop = loop
        return self._client, self._semaphore

    async def aclose(self) -> None:
        if self._client is not None and self._loop is asyncio.get_running_loop():
            await self._client.close()
        self._client = self._loop = self._semaphore = None

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
        client, semaphore = self._bind()
        async with semaphore:
            try:
                return await asyncio.wait_for(
                    self._request(client, content, seed, temperature), self.config.timeout_s
                )
            except TimeoutError as error:
                raise _Retryable("timeout", f"no answer within {self.config.timeout_s}s") from error

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
        return _Retryable(reason, detail, parse_retry_after(error.response.headers))
    return RequestError("client_error", detail)
