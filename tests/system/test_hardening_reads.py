"""KPI reads that cannot hurt the pipeline: refused before any I/O when they ask for what
cannot be served, bounded (503 + Retry-After, never 500), shared between identical
requests, computed in a read process with its own Redis connections, and ingestion going on
under a storm of them. Real broker, redis-server and ``deskpulse worker`` processes."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import orjson
import pytest
import redis
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from deskpulse.models.errors import InvalidQuery, ReadUnavailable
from deskpulse.models.settings import Settings
from deskpulse.models.wire import decode_record
from deskpulse.streams.core import CoreConfig, Pending, fold_batch
from deskpulse.streams.devtools.embedded import ManagedProcess, free_port, start_redis
from deskpulse.streams.query import KpiQuery, format_time, parse_query
from deskpulse.streams.reads import KpiReads, Pacer, ReadGate
from deskpulse.streams.store import Store
from tests.conftest import HOST, create_topics
from tests.support import (
    HttpResponse,
    WorkerProcess,
    http_get,
    produce,
    run_cli,
    sample,
    samples,
    scrape,
    settings_env,
    wait_until,
)

NOW_S = 1_796_000_000.0  # 2026-11-30T00:53:20Z, the clock of the pure tests


def parse(window: str | None, at: str | None, by: str | None) -> KpiQuery:
    """:func:`parse_query` with the default settings' limits at ``NOW_S``."""
    return parse_query(
        window, at, by, bucket_seconds=60, retention_s=48 * 3600, max_future_s=300, now_s=NOW_S
    )


STARTED = re.compile(r"read process (\d+) started")
ALL_DIMS = "channel,queue,priority"


# -- what a read may ask for (pure: nothing is read) -------------------------------------------


@pytest.mark.parametrize(
    ("window", "at", "by", "parameter", "says"),
    [
        # wider than retention: millions of reads for a window that cannot be whole
        ("999999h", None, None, "window", "longer than the 48h of state kept"),
        ("7d", None, None, "window", "DESKPULSE_RETENTION"),
        ("49h", None, None, "window", "longer than"),
        ("7s", None, None, "window", "not a multiple of the 60s bucket"),
        ("1y", None, None, "window", "not like 90s, 5m, 1h or 2d"),
        ("0m", None, None, "window", "longer than zero"),
        # the window's end rounds up into year 10000, which RFC 3339 cannot write
        ("1h", "9999-12-31T23:59:59Z", None, "at", "outside the years 1 to 9999"),
        ("1h", "9999-12-31T23:59:59-12:00", None, "at", "outside the years 1 to 9999"),
        ("1h", "0001-01-01T00:00:00+14:00", None, "at", "outside the years 1 to 9999"),
        ("1h", "0001-01-01T00:30:00Z", None, "at", "outside the years 1 to 9999"),
        # a window starting further ahead than DESKPULSE_MAX_FUTURE: no event can be there
        ("1h", "2026-11-30T01:58:21Z", None, "at", "DESKPULSE_MAX_FUTURE"),
        ("5m", "2026-11-30T01:04:01Z", None, "at", "DESKPULSE_MAX_FUTURE"),
        ("1h", "2099-01-01T00:00:00Z", None, "at", "ahead of the clock"),
        ("1h", "2026-11-30T00:53:20", None, "at", "not an RFC 3339 time with an offset"),
        ("1h", "yesterday", None, "at", "not an RFC 3339 time"),
        ("1h", "2026-11-30T00:53:20 00:00", None, "at", "write + as %2B"),
        ("1h", None, "team", "by", "takes channel, queue, priority or agent; not 'team'"),
        ("1h", None, "agent,queue", "by", "agent cannot be combined with other dimensions"),
        ("1h", None, "channel,channel", "by", "names channel twice"),
        ("1h", None, "queue,channel,queue", "by", "names queue twice"),
        ("1h", None, "channel,", "by", "not ''"),
    ],
)
def test_a_read_that_cannot_be_served_is_refused_naming_its_parameter(
    window: str, at: str | None, by: str | None, parameter: str, says: str
) -> None:
    with pytest.raises(InvalidQuery) as caught:
        parse(window, at, by)
    assert caught.value.parameter == parameter
    assert says in str(caught.value)
    assert str(caught.value).startswith(parameter + " ")


@pytest.mark.parametrize(
    ("window", "at", "by", "expected"),
    [
        # the widest window there is: all of retention
        ("48h", None, None, KpiQuery(172_800, 1_796_000_040, ())),
        # right at DESKPULSE_MAX_FUTURE is still allowed
        ("1h", "2026-11-30T00:58:20Z", None, KpiQuery(3600, 1_796_000_340, ())),
        # a window reaching past it is read (what lies before the horizon is there)
        ("1h", "2026-11-30T01:57:20Z", None, KpiQuery(3600, 1_796_003_880, ())),
        # the past is bounded by the data, not the clock: a backfill of years ago is read
        (
            "24h",
            "2020-01-01T00:00:00Z",
            ALL_DIMS,
            KpiQuery(86_400, 1_577_836_800, ("channel", "queue", "priority")),
        ),
        ("1h", "0001-01-01T01:00:00Z", None, KpiQuery(3600, -62_135_593_200, ())),
        # offsets are honoured, the end rounds up to a bucket boundary
        ("5m", "2026-11-30T01:53:01+01:00", "queue", KpiQuery(300, 1_796_000_040, ("queue",))),
        (None, "", "", KpiQuery(3600, 1_796_000_040, ())),  # defaults: 1h ending now
    ],
)
def test_a_servable_read_is_its_window(
    window: str | None, at: str | None, by: str | None, expected: KpiQuery
) -> None:
    assert parse(window, at, by) == expected


# -- the gate: admission, single flight, cache (the asyncio logic on its own) -----------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_gate_computes_identical_reads_once_and_refuses_beyond_its_queue() -> None:
    async def main() -> None:
        release = asyncio.Event()
        computed: list[KpiQuery] = []
        results: Counter[str] = Counter()
        clock = Clock()

        async def compute(query: KpiQuery) -> bytes:
            computed.append(query)
            await release.wait()
            return f"{query.end_s}".encode()

        gate = ReadGate(
            compute,
            concurrency=1,
            queue=1,
            cache_s=1.0,
            clock=clock,
            on_result=lambda r: results.update([r]),
        )
        same = KpiQuery(3600, 7200)
        shared = [asyncio.ensure_future(gate.read(same)) for _ in range(50)]
        queued = asyncio.ensure_future(gate.read(KpiQuery(3600, 10_800)))
        await asyncio.sleep(0)
        assert gate.in_flight == 2
        # a third distinct read finds one computing and one waiting: refused at once
        with pytest.raises(ReadUnavailable, match="too many KPI reads"):
            await gate.read(KpiQuery(3600, 14_400))
        release.set()
        assert set(await asyncio.gather(*shared)) == {b"7200"}
        assert await queued == b"10800"
        assert computed == [same, KpiQuery(3600, 10_800)]  # one computation for fifty reads
        assert await gate.read(same) == b"7200"  # within the cache's second: no computation
        clock.now += 1.5
        assert await gate.read(same) == b"7200"  # computed again after it
        assert len(computed) == 3
        assert results == {"computed": 3, "shared": 49, "cached": 1, "rejected": 1}

    asyncio.run(main())


def test_gate_shares_a_failure_and_caches_none() -> None:
    async def main() -> None:
        calls = 0

        async def compute(query: KpiQuery) -> bytes:
            nonlocal calls
            calls += 1
            await asyncio.sleep(0.01)
            raise ReadUnavailable("cannot read Redis: refused")

        gate = ReadGate(compute, concurrency=2, queue=0, cache_s=5.0)
        reads = [gate.read(KpiQuery(60, 60)) for _ in range(5)]
        outcomes = await asyncio.gather(*reads, return_exceptions=True)
        assert all(isinstance(o, ReadUnavailable) for o in outcomes)
        assert calls == 1
        with pytest.raises(ReadUnavailable):
            await gate.read(KpiQuery(60, 60))
        assert calls == 2  # a failure is not cached

    asyncio.run(main())


def test_pacer_spaces_requests_and_refuses_after_a_second_of_waiting() -> None:
    async def main() -> None:
        clock = Clock()  # stands still: thirty requests arrive at one instant
        slept: list[float] = []

        async def sleep(seconds: float) -> None:
            slept.append(seconds)

        pacer = Pacer(8, max_wait_s=1.0, clock=clock, sleep=sleep)
        outcomes = await asyncio.gather(*(pacer.turn() for _ in range(30)), return_exceptions=True)
        # the first at once, then one every 1/8 s up to a second ahead: nine get a turn
        assert outcomes[:9] == [None] * 9
        assert all(isinstance(o, ReadUnavailable) for o in outcomes[9:]), outcomes
        assert "DESKPULSE_READ_RATE" in str(outcomes[9])
        # the turns are waited for; the refused wait the full second before their 503
        assert slept == [0.125 * k for k in range(1, 9)] + [1.0] * 21
        clock.now += 2.0  # idle for a while: the next goes at once
        slept.clear()
        await pacer.turn()
        assert slept == []
        unlimited = Pacer(0, clock=clock, sleep=sleep)
        await asyncio.gather(*(unlimited.turn() for _ in range(1000)))
        assert slept == []

    asyncio.run(main())


def test_an_unexpected_error_is_a_500_with_a_json_body_and_a_log_line(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(query: KpiQuery) -> bytes:
        raise KeyError("a bug")

    async def main() -> tuple[int, bytes, dict[str, str]]:
        reads = KpiReads(settings, CollectorRegistry(), compute=broken)
        return await reads.answer([("window", "1h")])

    status, body, _ = asyncio.run(main())
    assert status == 500
    assert "internal error reading KPIs" in json.loads(body)["error"]
    assert "GET /kpis failed" in caplog.text


# -- the command line: one line, exit 2, before Redis is touched ------------------------------


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--window", "7d"], "--window 7d is longer than the 48h of state kept"),
        (["--window", "999999h"], "--window 999999h is longer than"),
        (["--at", "9999-12-31T23:59:59Z"], "--at 9999-12-31T23:59:59Z with a 1h window"),
        (["--at", "2099-01-01T00:00:00Z"], "DESKPULSE_MAX_FUTURE"),
        (["--by", "channel,channel"], "--by names channel twice"),
        (["--by", "team"], "--by takes channel, queue, priority or agent"),
        (["--by", "queue,agent"], "--by agent cannot be combined with other dimensions"),
    ],
)
def test_cli_refuses_in_one_line_with_status_2_before_any_io(
    tmp_path: Path, args: list[str], says: str
) -> None:
    # nothing listens on this Redis: had the command read anything it would say so (status 1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DESKPULSE_")}
    env["DESKPULSE_REDIS_URL"] = f"redis://127.0.0.1:{free_port()}/0"
    done = run_cli(["kpis", *args], env, cwd=tmp_path)
    assert done.returncode == 2, done
    assert done.stderr.splitlines() == [done.stderr.strip()], "one line, no traceback"
    assert done.stderr.startswith("deskpulse kpis: "), done.stderr
    assert says in done.stderr, done.stderr
    assert done.stdout == ""


def _created(ticket: str, t_s: float) -> bytes:
    stamp = datetime.fromtimestamp(t_s, UTC).isoformat().replace("+00:00", "Z")
    return orjson.dumps(
        {
            "event_id": uuid.uuid4().hex,
            "type": "ticket.created",
            "occurred_at": stamp,
            "ticket_id": ticket,
            "channel": "email",
        }
    )


_offsets = itertools.count()


async def _commit(store: Store, partition: int, raws: Sequence[bytes]) -> None:
    """Apply events to one partition as the engine does: load, fold, commit (each record at
    an offset of its own, past the fence)."""
    items = []
    for raw in raws:
        event, ms = decode_record(raw)
        items.append(Pending(event, "tickets", next(_offsets), ms, event.conversation_id))
    meta, states = await store.load(partition, [p.event.conversation_id for p in items])
    result = fold_batch(
        items,
        states,
        watermark_ms=meta.watermark_ms,
        applied_offsets=meta.offsets,
        config=store.config,
    )
    assert await store.commit(partition, meta.version, result)


def test_cli_refuses_a_window_older_than_every_partition_keeps(
    settings: Settings, tmp_path: Path
) -> None:
    """Retention counts back from the newest event time: a backfill's past is readable,
    a window ending where every partition has deleted its state is refused."""
    t0 = 1_795_392_000  # 2026-11-23T00:00:00Z
    day = 86_400

    async def fill(raws_by_partition: dict[int, list[bytes]]) -> None:
        client = Redis.from_url(settings.redis_url.get_secret_value())
        try:
            store = Store(client, settings.redis_prefix, CoreConfig.from_settings(settings))
            await store.check_config()
            for partition, raws in raws_by_partition.items():
                await _commit(store, partition, raws)
        finally:
            await client.aclose()

    env = settings_env(settings)

    def kpis(*args: str) -> Any:
        return run_cli(["kpis", "--json", *args], env, cwd=tmp_path)

    # partition 0: a ticket on day 0 and one three days later (day 0 is then trimmed)
    asyncio.run(fill({0: [_created("A", t0 + 600)], 1: []}))
    asyncio.run(fill({0: [_created("B", t0 + 3 * day + 600)]}))
    early = kpis("--window", "1h", "--at", format_time(t0 + 3600))
    assert early.returncode == 2, early
    assert early.stderr.splitlines() == [early.stderr.strip()]
    assert "--at ends the window at 2026-11-23T01:00:00Z" in early.stderr, early.stderr
    assert "kept only for event times after 2026-11-24T00:10:00Z" in early.stderr, early.stderr
    # the day being backfilled is years behind the clock and read like today
    late = kpis("--window", "1h", "--at", format_time(t0 + 3 * day + 3600))
    assert late.returncode == 0, late.stderr
    assert json.loads(late.stdout)["groups"][0]["tickets_created"] == 1
    # a partition whose newest event is older keeps older state: readable again
    asyncio.run(fill({1: [_created("C", t0 + 1200)]}))
    again = kpis("--window", "1h", "--at", format_time(t0 + 3600))
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["groups"][0]["tickets_created"] == 1  # C; A was trimmed


# -- the worker: 400, 503, shared reads, the read process -------------------------------------


def tuned(settings: Settings, **update: Any) -> Settings:
    return settings.model_copy(
        update={
            "batch_within": 0.1,
            "metrics_refresh_interval": 1,
            **update,
        }
    )


def reads_of(port: int) -> dict[str, float]:
    return {
        labels["result"]: value
        for labels, value in samples(scrape(port), "deskpulse_kpi_reads_total")
    }


def get_kpis(worker: WorkerProcess, timeout_s: float = 30, **query: str) -> HttpResponse:
    response = worker.get("/kpis?" + urlencode(query), timeout_s=timeout_s)
    assert response is not None, worker.describe()
    return response


def read_process_pids(worker: WorkerProcess) -> list[int]:
    return [int(pid) for pid in STARTED.findall(worker.log())]


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[ManagedProcess]:
    """A redis-server of this test's own, to hang with SIGSTOP (a read then takes as long
    as the test wants, which makes concurrency observable without timing guesses)."""
    with start_redis(HOST, free_port(HOST), tmp_path / "redis") as process:
        yield process


def worker_on(
    settings: Settings, redis_proc: ManagedProcess | None, workdir: Path, **update: Any
) -> WorkerProcess:
    if redis_proc is not None:
        port = redis_proc.argv[redis_proc.argv.index("--port") + 1]
        update["redis_url"] = f"redis://{HOST}:{port}/0"
    tuned_settings = tuned(settings, **update)
    create_topics(tuned_settings)
    return WorkerProcess(tuned_settings, workdir)


def test_worker_refuses_bad_reads_with_400_before_reading_anything(
    settings: Settings, workdir: Path
) -> None:
    with worker_on(settings, None, workdir) as worker:
        worker.wait_ready(90)
        bad: list[tuple[str, str]] = [
            ("window=999999h", "window"),
            ("window=7d", "window"),
            ("window=1h&at=9999-12-31T23:59:59Z", "at"),
            ("window=1h&at=0001-01-01T00:00:00%2B14:00", "at"),
            ("window=1h&at=2099-01-01T00:00:00Z", "at"),
            ("window=1h&at=2026-11-23T05:00:00+00:00", "at"),  # an unescaped + is a space
            ("window=24h&by=channel,channel", "by"),
            ("window=24h&by=team", "by"),
            ("window=24h&by=agent,channel", "by"),  # agent stands alone
            ("windw=24h", "windw"),  # a misspelt parameter must not read the default hour
            ("window=1h&window=24h", "window"),
        ]
        for query, parameter in bad:
            response = worker.get("/kpis?" + query)
            assert response is not None, worker.describe()
            assert response.status == 400, (query, response)
            assert response.headers["content-type"].startswith("application/json")
            body = json.loads(response.body)
            assert body["parameter"] == parameter, (query, body)
            assert body["error"].startswith(parameter + " "), (query, body)
        counts = reads_of(settings.web_port)
        assert counts["invalid"] == len(bad)
        assert counts["computed"] == 0
        # refused in the worker: the read process, which alone reads Redis, never started
        assert read_process_pids(worker) == [], worker.log_tail()
        good = get_kpis(worker, window="24h", by=ALL_DIMS)
        assert good.status == 200, good
        assert json.loads(good.body)["by"] == ["channel", "queue", "priority"]
        assert len(read_process_pids(worker)) == 1
        assert worker.running, worker.describe()


def _fire(worker: WorkerProcess, queries: Sequence[dict[str, str]]) -> list[threading.Thread]:
    """Send each query from a thread of its own; responses land in ``responses``."""
    threads = []
    for index, query in enumerate(queries):

        def send(index: int = index, query: dict[str, str] = query) -> None:
            RESPONSES[index] = worker.get("/kpis?" + urlencode(query), timeout_s=60)

        thread = threading.Thread(target=send, daemon=True)
        thread.start()
        threads.append(thread)
    return threads


RESPONSES: dict[int, HttpResponse | None] = {}


def test_a_full_queue_answers_503_with_retry_after_never_500(
    settings: Settings, workdir: Path, own_redis: ManagedProcess
) -> None:
    # the engine in the worker's process: its Store shares the worker's Redis client, and
    # the reads must still come over connections of their own
    with worker_on(
        settings,
        own_redis,
        workdir,
        read_concurrency=1,
        read_queue=1,
        read_cache=0.0,
        engine_process=False,
    ) as worker:
        worker.wait_ready(90)
        RESPONSES.clear()
        # ten different windows while Redis hangs: one computes, one waits, eight are refused
        ends = [time.time() - 3600 * (i + 1) for i in range(10)]
        own_redis.pause()
        try:
            threads = _fire(worker, [{"window": "1h", "at": format_time(t)} for t in ends])
            wait_until(
                lambda: sum(1 for r in RESPONSES.values() if r is not None) >= 8,
                30,
                message=lambda: f"{RESPONSES} {worker.describe()}",
            )
            refused = [r for r in RESPONSES.values() if r is not None]
            assert all(r.status == 503 for r in refused), refused
        finally:
            own_redis.resume()
        for thread in threads:
            thread.join(60)
        statuses = Counter(r.status for r in RESPONSES.values() if r is not None)
        assert statuses == {503: 8, 200: 2}, RESPONSES
        for response in RESPONSES.values():
            assert response is not None
            assert response.headers["content-type"].startswith("application/json")
            if response.status == 503:
                assert response.headers["retry-after"] == "1"
                assert "DESKPULSE_READ_QUEUE" in json.loads(response.body)["error"]
        counts = reads_of(worker.settings.web_port)
        assert counts["rejected"] == 8 and counts["computed"] == 2, counts
        assert counts["failed"] == 0
        # the reads came over connections of their own, not the ingest path's pool
        client = redis.Redis(
            host=HOST, port=int(own_redis.argv[own_redis.argv.index("--port") + 1])
        )
        try:
            names = [c.get("name") for c in client.client_list()]
        finally:
            client.close()
        assert "deskpulse-reads" in names, names


def test_identical_reads_are_computed_once(
    settings: Settings, workdir: Path, own_redis: ManagedProcess
) -> None:
    with worker_on(settings, own_redis, workdir, read_cache=60.0) as worker:
        worker.wait_ready(90)
        RESPONSES.clear()
        query = {"window": "24h", "by": ALL_DIMS, "at": format_time(time.time())}
        own_redis.pause()  # the first read cannot finish before all twenty are in
        try:
            threads = _fire(worker, [query] * 20)
            wait_until(lambda: read_process_pids(worker), 30, message=worker.describe)
            time.sleep(1.0)  # let the other requests reach the worker (they then share)
        finally:
            own_redis.resume()
        for thread in threads:
            thread.join(60)
        bodies = {r.body for r in RESPONSES.values() if r is not None and r.status == 200}
        assert len(RESPONSES) == 20 and len(bodies) == 1, RESPONSES
        counts = reads_of(worker.settings.web_port)
        assert counts["computed"] == 1, counts
        assert counts["shared"] + counts["cached"] == 19, counts
        assert counts["shared"] >= 1, counts  # some waited for the computation in flight


def test_a_dead_read_process_is_a_503_and_the_next_read_starts_a_new_one(
    settings: Settings, workdir: Path, own_redis: ManagedProcess
) -> None:
    with worker_on(settings, own_redis, workdir, read_cache=0.0) as worker:
        worker.wait_ready(90)
        assert get_kpis(worker, window="1h").status == 200
        (first,) = read_process_pids(worker)
        RESPONSES.clear()
        own_redis.pause()
        try:
            threads = _fire(worker, [{"window": "2h"}])
            time.sleep(0.5)  # the read is in the read process, waiting for Redis
            os.kill(first, signal.SIGKILL)
            for thread in threads:
                thread.join(30)
        finally:
            own_redis.resume()
        lost = RESPONSES[0]
        assert lost is not None and lost.status == 503, lost
        assert lost.headers["retry-after"] == "1"
        assert get_kpis(worker, window="1h").status == 200
        pids = read_process_pids(worker)
        assert len(pids) == 2, worker.log_tail()
        assert worker.running, worker.describe()
        assert reads_of(worker.settings.web_port)["failed"] == 0
        # a worker killed outright leaves no read process behind: its stdin closes
        worker.kill()
        wait_until(lambda: not alive(pids[1]), 20, message=f"read process {pids[1]} outlived it")


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie waiting to be reaped does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def test_ingestion_goes_on_during_a_read_storm(settings: Settings, workdir: Path) -> None:
    """A functional check with modest numbers (the benchmark measures the rates)."""
    events = 3000
    readers = 40
    with worker_on(settings, None, workdir) as worker:
        worker.wait_ready(90)
        stop = threading.Event()
        statuses: Counter[int | None] = Counter()
        lock = threading.Lock()

        def reader(index: int) -> None:
            # half ask the same window (shared), half a window of their own each time
            while not stop.is_set():
                query = {"window": "24h", "by": ALL_DIMS}
                if index % 2:
                    query["at"] = format_time(time.time() - 60 * (index + 1))
                response = http_get(worker.base_url + "/kpis?" + urlencode(query), 30)
                with lock:
                    statuses[response.status if response else None] += 1

        threads = [threading.Thread(target=reader, args=(i,), daemon=True) for i in range(readers)]
        for thread in threads:
            thread.start()
        try:
            now = time.time()
            batch = [
                (f"T{i}".encode(), _created(f"T{i}", now - 1 - i % 600)) for i in range(events)
            ]
            for start in range(0, events, 500):
                asyncio.run(
                    produce(
                        worker.settings, worker.settings.topic_tickets, batch[start : start + 500]
                    )
                )

            def applied() -> bool:
                total = sample(
                    scrape(settings.web_port),
                    "deskpulse_events_processed_total",
                    {"topic": worker.settings.topic_tickets, "type": "ticket.created"},
                )
                return (total or 0) >= events

            # applied while the readers keep going
            wait_until(applied, 120, 0.5, message=worker.describe)
            assert not stop.is_set()

            def answered() -> bool:
                with lock:
                    return statuses[200] >= readers

            # and the storm is answered, not only shed: as many reads served as there are
            # readers (a loaded host can apply the 3,000 events before that many are)
            wait_until(answered, 90, 0.5, message=lambda: f"{statuses}\n{worker.describe()}")
        finally:
            stop.set()
            for thread in threads:
                thread.join(60)
        assert set(statuses) <= {200, 503}, statuses
        assert statuses[200] >= readers, statuses
        document = get_kpis(worker, window="1h")
        assert document.status == 200
        assert json.loads(document.body)["groups"][0]["tickets_created"] == events
        assert worker.running, worker.describe()
