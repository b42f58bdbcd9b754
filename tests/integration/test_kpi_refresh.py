"""The engine rebuilds the KPI snapshot off the event loop that commits.

Thousands of groups in real Redis state written by the engine: a refresh through
:class:`~streams.kpi_engine.LocalEngine` runs on its own thread and loop (the caller's loop
keeps turning meanwhile, in slices, never held for the refresh), and it exposes what a
collector refreshed on the caller's loop exposes.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from deskpulse.exporters.prometheus import KpiCollector
from deskpulse.streams.core import CoreConfig
from deskpulse.streams.kpi_engine import LocalEngine
from deskpulse.streams.offload import RecordingMetrics
from deskpulse.streams.runtime import tune_gc
from deskpulse.streams.store import Store
from tests.conftest import RedisServer
from tests.integration.test_hardening_outputs import (
    NOW_S,
    _event,
    apply,
    groups_of,
    many_queues,
    unit_settings,
)


def _samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition but the refresh time."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text.decode())
        for sample in family.samples
        if family.name != "deskpulse_kpi_refresh_timestamp_seconds"
    }


@contextmanager
def collected_as_in_the_worker() -> Iterator[None]:
    """The garbage collector as the worker and the engine process set it at start.

    Under the interpreter's default thresholds a refresh over thousands of groups sets off
    full collections of 150 - 360 ms (measured), which stop every thread, whichever runs the
    refresh: the caller's loop would be timed against the collector, not the refresh.
    """
    thresholds = gc.get_threshold()
    tune_gc()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)


@pytest.mark.alone  # it times the caller's loop: six test processes on two cores decide that
def test_a_refresh_runs_off_the_callers_loop_and_exposes_the_same(
    redis_server: RedisServer,
) -> None:
    settings = unit_settings(redis_server)

    async def scenario() -> tuple[float, float, int, list[str], bytes, bytes]:
        redis = Redis.from_url(settings.redis_url.get_secret_value())
        store = Store(redis, settings.redis_prefix, CoreConfig.from_settings(settings))
        await store.check_config()
        await apply(settings, store, list(many_queues(3000, NOW_S)), NOW_S, Counter())
        collector = KpiCollector(store, settings)
        local = LocalEngine(settings, store, RecordingMetrics(), collector)
        reads: list[str] = []
        partitions = Store.partitions

        async def recorded(self: Store) -> list[int]:
            reads.append(threading.current_thread().name)
            return await partitions(self)

        try:
            await local.refresh()  # the first refresh connects and reads every bucket
            # the caller's loop, while the engine refreshes: how long it is ever held
            stalls: list[float] = []
            done = False

            async def ticker() -> None:
                last = time.perf_counter()
                while not done:
                    await asyncio.sleep(0)
                    now = time.perf_counter()
                    stalls.append(now - last)
                    last = now

            ticking = asyncio.ensure_future(ticker())
            started = time.perf_counter()
            Store.partitions = recorded  # type: ignore[method-assign]
            try:
                exposition, _ = await local.refresh()
            finally:
                Store.partitions = partitions  # type: ignore[method-assign]
            took = time.perf_counter() - started
            done = True
            await ticking
            reference = KpiCollector(store, settings)
            for _ in range(2):  # as often as the engine's: the dropped counter adds them up
                await reference.refresh()
            return took, max(stalls), len(stalls), reads, exposition, reference.exposition
        finally:
            await local.refresher.close()
            await redis.aclose()

    with collected_as_in_the_worker():
        took, stall, ticks, threads, exposition, reference = asyncio.run(scenario())
    print(f"refresh {took * 1000:.0f} ms; the caller's loop held {stall * 1000:.0f} ms at most")
    assert set(threads) == {"deskpulse-refresh"}, threads
    # the loop turned all along (a loaded host may deschedule the process a while)
    assert ticks > 20, ticks
    assert stall < max(0.1, took / 3), (stall, took)
    mine, theirs = _samples(exposition), _samples(reference)
    assert {k: v for k, v in mine.items() if mine.get(k) != theirs.get(k)} == {}


def test_closing_the_refresh_loop_lets_a_refresh_in_flight_finish(
    redis_server: RedisServer,
) -> None:
    settings = unit_settings(redis_server)

    async def scenario() -> tuple[bytes, float | None]:
        redis = Redis.from_url(settings.redis_url.get_secret_value())
        store = Store(redis, settings.redis_prefix, CoreConfig.from_settings(settings))
        await store.check_config()
        await apply(settings, store, list(many_queues(300, NOW_S)), NOW_S, Counter())
        local = LocalEngine(settings, store, RecordingMetrics(), KpiCollector(store, settings))
        try:
            refreshing = asyncio.ensure_future(local.refresh())
            while not local.refresher._running:  # handed to the refresh loop
                await asyncio.sleep(0)
            await local.refresher.close()
            return await refreshing
        finally:
            await redis.aclose()

    exposition, refreshed_at = asyncio.run(scenario())
    assert refreshed_at is not None
    assert b"deskpulse_tickets_created_total" in exposition


def test_a_refresh_renders_the_groups_that_changed_and_writes_what_prometheus_would(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A group's windowed lines of text, and its cumulative ones, are rendered again only
    when its fields (its totals) changed; the exposition is byte for byte what
    ``generate_latest`` writes for the families, after the first refresh, one with nothing
    new and one with new traffic in a few groups."""
    from prometheus_client import generate_latest

    from deskpulse.exporters import prometheus

    settings = unit_settings(redis_server)
    rendered: list[int] = []
    original = prometheus._render_lines

    def counted(groups: Any) -> None:
        rendered.append(len(groups))
        original(groups)

    monkeypatch.setattr(prometheus, "_render_lines", counted)

    async def scenario() -> list[tuple[bytes, bytes]]:
        redis = Redis.from_url(settings.redis_url.get_secret_value())
        try:
            store = Store(redis, settings.redis_prefix, CoreConfig.from_settings(settings))
            await store.check_config()
            offsets: Counter[tuple[str, int]] = Counter()
            await apply(settings, store, list(many_queues(400, NOW_S)), NOW_S, offsets)
            collector = KpiCollector(store, settings)
            seen = []
            for step in range(3):
                if step == 2:  # new traffic in three queues
                    more = list(many_queues(3, NOW_S, prefix="new"))
                    await apply(settings, store, more, NOW_S, offsets)
                await collector.refresh(NOW_S)
                whole = generate_latest(prometheus._Snapshot(collector._families))
                seen.append((collector.exposition, whole))
            return seen
        finally:
            await redis.aclose()

    seen = asyncio.run(scenario())
    for exposition, whole in seen:
        assert exposition == whole
    # each refresh renders its windowed groups, then its cumulative ones
    assert len(rendered) == 6, rendered
    for first, again, new in (rendered[0::2], rendered[1::2]):
        assert first >= 400 and again == 0 and 0 < new < first // 10, rendered


def _without_refresh_time(text: bytes) -> bytes:
    return b"\n".join(
        line
        for line in text.split(b"\n")
        if not line.startswith(b"deskpulse_kpi_refresh_timestamp_seconds ")
    )


def _burst(queues: list[int], tickets: int, at_s: float, prefix: str) -> list[Any]:
    """``tickets`` tickets, each answered, in each of ``queues`` (indexes of
    :func:`many_queues`' queues: the same channel and priority, so the same group)."""
    events = []
    for i in queues:
        dims = {
            "channel": ("email", "web", "chat")[i % 3],
            "queue": f"{prefix}{i:05d}",
            "priority": ("low", "normal", "high", "urgent")[i % 4],
        }
        for n in range(tickets):
            ticket = f"B-{at_s:.0f}-{i}-{n}"
            events.append(_event("ticket.created", at_s + n % 20, ticket_id=ticket, **dims))
            events.append(
                _event("ticket.replied", at_s + 20, ticket_id=ticket, author_role="agent")
            )
    return events


@pytest.mark.parametrize(
    ("prefix", "label_max_length"),
    [("q", 64), ("queue-long-", 15)],  # 15: ten queues share each cut label set
)
def test_a_refresh_after_refreshes_writes_what_a_fresh_collector_writes(
    redis_server: RedisServer, prefix: str, label_max_length: int
) -> None:
    """Refresh after refresh, with commits in between that move groups across the guard's
    cut both ways (small groups grow past the kept ones, new groups arrive, the 5-minute
    window empties), the exposition of a collector that keeps its guard, its groups and
    their lines from one refresh to the next is byte for byte that of a fresh collector
    over the same state (given the same history: the dropped-series counter and the
    achieved counters' highs), but the refresh time."""
    settings = unit_settings(redis_server, max_series=3000, label_max_length=label_max_length)
    small = list(range(5, 300, 25))  # one ticket each: folded at first
    others = list(range(10, 300, 25))

    async def scenario() -> list[set[tuple[str, ...]]]:
        redis = Redis.from_url(settings.redis_url.get_secret_value())
        try:
            store = Store(redis, settings.redis_prefix, CoreConfig.from_settings(settings))
            await store.check_config()
            offsets: Counter[tuple[str, int]] = Counter()
            await apply(
                settings, store, list(many_queues(300, NOW_S, prefix=prefix)), NOW_S, offsets
            )
            steps: list[tuple[float, list[Any]]] = [
                (NOW_S, []),
                (NOW_S, []),
                # the small groups grow past the kept ones; new groups arrive
                (
                    NOW_S + 60,
                    _burst(small, 12, NOW_S, prefix)
                    + list(many_queues(20, NOW_S + 60, first=300, prefix=prefix)),
                ),
                # a little traffic in kept groups, more in other small ones
                (
                    NOW_S + 120,
                    _burst([0, 1, 2, *small[:3]], 1, NOW_S + 90, prefix)
                    + _burst(others, 14, NOW_S + 90, prefix),
                ),
                # the 5-minute window empties: its groups leave it
                (NOW_S + 900, []),
            ]
            collector = KpiCollector(store, settings)
            shown = []
            for now_s, events in steps:
                if events:
                    await apply(settings, store, events, now_s, offsets)
                history = dict(collector.achieved_high), Counter(collector.folded_total)
                await collector.refresh(now_s)
                fresh = KpiCollector(store, settings)
                fresh.achieved_high, fresh.folded_total = history
                await fresh.refresh(now_s)
                assert _without_refresh_time(collector.exposition) == _without_refresh_time(
                    fresh.exposition
                ), now_s
                shown.append(groups_of(collector.exposition.decode(), "deskpulse_tickets_created"))
            return shown
        finally:
            await redis.aclose()

    shown = asyncio.run(scenario())
    # the guard folded, and groups crossed its cut both ways
    assert all(any("other" in group for group in groups) for groups in shown)
    assert shown[2] - shown[1] and shown[1] - shown[2]
    assert shown[3] != shown[2] and shown[4] != shown[3]
