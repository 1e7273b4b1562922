"""The adaptive in-flight limit of the LLM client, alone (no server, no clock)."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable

import pytest

from opencir.generate.client import AdaptiveLimit


def _in_loop(test: Callable[[], Awaitable[None]]) -> Callable[[], None]:
    """Run an async test in a fresh event loop."""

    @functools.wraps(test)
    def run() -> None:
        asyncio.run(test())

    return run


async def _hold(limit: AdaptiveLimit, n: int) -> list[int]:
    return [await limit.acquire() for _ in range(n)]


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def _request(limit: AdaptiveLimit, succeeded: bool = False, overloaded: bool = False) -> None:
    """One request that starts now and ends as told."""
    (ticket,) = await _hold(limit, 1)
    limit.release(ticket, succeeded=succeeded, overloaded=overloaded)


async def _cut_to(limit: AdaptiveLimit, target: int) -> None:
    """Overloads from requests started after each cut, until the limit is ``target``."""
    while limit.limit > target:
        await _request(limit, overloaded=True)


@_in_loop
async def test_a_burst_of_overloads_halves_the_limit_once() -> None:
    limit = AdaptiveLimit(64)
    tickets = await _hold(limit, 64)
    for ticket in tickets:  # all started before the cut: one overload
        limit.release(ticket, succeeded=False, overloaded=True)
    assert (limit.limit, limit.cuts, limit.in_flight) == (32, 1, 0)
    await _request(limit, overloaded=True)  # started after the cut: a new overload
    assert (limit.limit, limit.cuts) == (16, 2)


@_in_loop
async def test_the_limit_never_falls_below_one() -> None:
    limit = AdaptiveLimit(8)
    await _cut_to(limit, 1)
    assert (limit.limit, limit.cuts) == (1, 3)  # 8 → 4 → 2 → 1
    await _request(limit, overloaded=True)
    assert (limit.limit, limit.cuts) == (1, 3)
    assert limit.stats() == {"limit": 1, "lowest": 1, "cuts": 3, "bound": 8}


@_in_loop
async def test_the_limit_grows_by_one_per_window_of_successes_up_to_the_bound() -> None:
    limit = AdaptiveLimit(5)
    await _cut_to(limit, 2)
    seen = []
    for _ in range(2 + 3 + 4 + 5 + 20):
        await _request(limit, succeeded=True)
        seen.append(limit.limit)
    # two successes at 2 make it 3, three at 3 make it 4, ...; never above the bound
    assert seen[:14] == [2, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 5, 5]
    assert max(seen) == 5 and limit.lowest == 2


@_in_loop
async def test_successes_started_before_a_cut_do_not_grow_the_limit() -> None:
    limit = AdaptiveLimit(8)
    tickets = await _hold(limit, 8)
    limit.release(tickets[0], succeeded=False, overloaded=True)
    for ticket in tickets[1:]:
        limit.release(ticket, succeeded=True)
    assert limit.limit == 4


@_in_loop
async def test_errors_that_are_not_overloads_leave_the_limit_alone() -> None:
    limit = AdaptiveLimit(4)
    await _cut_to(limit, 2)
    for _ in range(6):
        await _request(limit)
    assert (limit.limit, limit.cuts) == (2, 1)


@_in_loop
async def test_a_fixed_limit_ignores_overloads() -> None:
    limit = AdaptiveLimit(4, adaptive=False)
    for ticket in await _hold(limit, 4):
        limit.release(ticket, succeeded=False, overloaded=True)
    assert (limit.limit, limit.cuts) == (4, 0)


@_in_loop
async def test_waiters_get_the_slots_a_growing_limit_opens() -> None:
    limit = AdaptiveLimit(4)
    await _cut_to(limit, 1)
    (held,) = await _hold(limit, 1)
    waiters = [asyncio.create_task(limit.acquire()) for _ in range(2)]
    await _settle()
    assert not any(w.done() for w in waiters)
    limit.release(held, succeeded=True)  # one slot freed, and the limit grows to 2
    await _settle()
    assert all(w.done() for w in waiters)
    assert (limit.limit, limit.in_flight) == (2, 2)


@_in_loop
async def test_waiters_are_served_in_order_and_never_past_the_limit() -> None:
    limit = AdaptiveLimit(2, adaptive=False)
    served: list[int] = []
    peak = 0

    async def request(n: int) -> None:
        nonlocal peak
        async with limit.slot():
            served.append(n)
            peak = max(peak, limit.in_flight)
            await asyncio.sleep(0)

    await asyncio.gather(*(request(n) for n in range(10)))
    assert served == list(range(10)) and peak == 2 and limit.in_flight == 0


@_in_loop
async def test_cancelled_waiters_take_no_slot() -> None:
    limit = AdaptiveLimit(1, adaptive=False)
    (held,) = await _hold(limit, 1)
    queued = asyncio.create_task(limit.acquire())
    await _settle()
    queued.cancel()
    await _settle()
    limit.release(held, succeeded=True)
    assert limit.in_flight == 0
    await asyncio.wait_for(limit.acquire(), 1)  # free at once, not queued behind a ghost
    assert limit.in_flight == 1


@_in_loop
async def test_a_waiter_cancelled_after_it_was_handed_a_slot_passes_it_on() -> None:
    limit = AdaptiveLimit(1, adaptive=False)
    (held,) = await _hold(limit, 1)
    first = asyncio.create_task(limit.acquire())
    second = asyncio.create_task(limit.acquire())
    await _settle()
    limit.release(held, succeeded=True)  # hands the slot to the first waiter ...
    first.cancel()  # ... which is cancelled before it runs
    await _settle()
    assert first.cancelled() and second.done()
    assert limit.in_flight == 1


@_in_loop
async def test_a_slot_reports_how_its_request_went() -> None:
    limit = AdaptiveLimit(8)
    async with limit.slot() as slot:
        slot.overloaded = True
    assert (limit.limit, limit.cuts) == (4, 1)
    with pytest.raises(RuntimeError):
        async with limit.slot():
            raise RuntimeError("not an overload")
    for _ in range(4):
        async with limit.slot():
            pass
    assert (limit.limit, limit.in_flight) == (5, 0)


def test_the_bound_must_be_positive() -> None:
    with pytest.raises(ValueError, match="in-flight bound must be >= 1, got 0"):
        AdaptiveLimit(0)


def test_the_cli_can_keep_the_limit_fixed() -> None:
    from opencir.cli import build_parser
    from opencir.cli.generate import writer_config

    parser = build_parser()
    llm = ["--writer", "llm", "--writer-model", "m"]
    generate = ["generate", "--images", "photos", "--out", "out", "--pairs", "1", *llm]
    assert writer_config(parser.parse_args(generate)).endpoint.adaptive_concurrency
    args = parser.parse_args([*generate, "--concurrency", "2", "--fixed-concurrency"])
    endpoint = writer_config(args).endpoint
    assert (endpoint.concurrency, endpoint.adaptive_concurrency) == (2, False)
    args = parser.parse_args(["writer", "eval", "--world", "w", *llm, "--fixed-concurrency"])
    assert not writer_config(args).endpoint.adaptive_concurrency
