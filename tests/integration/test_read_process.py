"""The read process from the worker's side (:class:`~streams.reads.ReadProcess`): a large
document comes back through a file of its spool, byte for byte the document the pipe
carries, and nothing is left behind; a spool that cannot be written is no failure. Real
redis-server; the read process is a real child process."""

from __future__ import annotations

import asyncio
import os
import time
import uuid

import orjson
import pytest
from redis.asyncio import Redis

from deskpulse.models.settings import Settings
from deskpulse.streams.query import KpiQuery, parse_query, read_document
from deskpulse.streams.reads import SPOOL_MIN_BYTES, ReadProcess
from deskpulse.streams.store import Store
from tests.integration.test_store import apply, created, pendings, replied

QUEUES = 300  # a group each: a document of some 400 KB grouped by every dimension


async def _fill(settings: Settings, now_s: float) -> None:
    redis = Redis.from_url(settings.redis_url.get_secret_value())
    store = Store.from_settings(redis, settings)
    try:
        await store.check_config()
        raws = []
        for i in range(QUEUES):
            raws.append(created(f"T{i}", now_s - 1800 + i, queue=f"q{i:03d}"))
            if i % 2:
                raws.append(replied(f"T{i}", now_s - 1700 + i))
        await apply(store, 0, pendings(raws))
    finally:
        await redis.aclose()


def _query(settings: Settings, now_s: float, by: str | None) -> KpiQuery:
    """The read of the last hour at ``now_s`` grouped ``by``, as the worker parses it."""
    return parse_query(
        "1h",
        None,
        by,
        bucket_seconds=settings.bucket_seconds,
        retention_s=settings.retention,
        max_future_s=settings.max_future,
        now_s=now_s,
    )


async def _expected(settings: Settings, query: KpiQuery) -> bytes:
    redis = Redis.from_url(settings.redis_url.get_secret_value())
    try:
        document = await read_document(Store.from_settings(redis, settings), query)
    finally:
        await redis.aclose()
    return orjson.dumps(document)


@pytest.mark.parametrize("spool_gone", [False, True], ids=["spooled", "through-the-pipe"])
def test_a_large_document_comes_back_whole_through_the_spool_or_the_pipe(
    redis_url: str, spool_gone: bool
) -> None:
    settings = Settings(redis_url=redis_url, redis_prefix=f"rp{uuid.uuid4().hex[:8]}")
    now_s = time.time()

    async def run() -> None:
        await _fill(settings, now_s)
        query = _query(settings, now_s, "channel,queue,priority")
        reads = ReadProcess(settings)
        try:
            first = await reads.compute(query)
            spool = reads.spool
            assert spool is not None and os.path.isdir(spool)
            # named for this worker, so a later one can tell it from the spool of one gone
            assert os.path.basename(spool).startswith(f"deskpulse-reads-{os.getpid()}-")
            assert reads.spooled == 1
            assert os.listdir(spool) == []  # the worker took the file and deleted it
            if spool_gone:  # the read process cannot write its answers there any more
                os.rmdir(spool)
            again = await reads.compute(query)
        finally:
            await reads.stop()
        expected = await _expected(settings, query)
        assert len(expected) >= SPOOL_MIN_BYTES  # large enough to be spooled
        assert first == expected
        assert again == expected
        assert orjson.loads(again)["groups"][0]["key"]["queue"] == "q000"
        assert not os.path.exists(spool)  # removed at the stop
        assert reads.starts == 1  # neither answer cost the read process its life
        assert reads.spooled == (1 if spool_gone else 2)

    asyncio.run(run())


def _nice_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return int(fields[16])  # the 19th field of stat: nice


@pytest.mark.parametrize("nice", [0, 7, Settings().read_nice])
def test_the_read_process_runs_at_the_priority_set(redis_url: str, nice: int) -> None:
    """``DESKPULSE_READ_NICE``: the read process lowers its CPU priority that much (0 keeps
    the worker's)."""
    settings = Settings(redis_url=redis_url, redis_prefix=f"rp{uuid.uuid4().hex[:8]}")
    settings = settings.model_copy(update={"read_nice": nice})
    now_s = time.time()

    async def run() -> int:
        reads = ReadProcess(settings)
        try:
            query = _query(settings, now_s, None)
            await reads.compute(query)
            assert reads.pid is not None
            return _nice_of(reads.pid) - os.nice(0)
        finally:
            await reads.stop()

    assert asyncio.run(run()) == nice


def test_without_a_temporary_directory_the_answers_come_through_the_pipe(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No spool can be made (a read-only or missing temporary directory): every read is
    still answered, through the pipe."""
    import tempfile

    def refused(**_: object) -> str:
        raise PermissionError(13, "Permission denied", "/tmp/deskpulse-reads-x")

    monkeypatch.setattr(tempfile, "mkdtemp", refused)
    settings = Settings(redis_url=redis_url, redis_prefix=f"rp{uuid.uuid4().hex[:8]}")
    now_s = time.time()

    async def run() -> None:
        await _fill(settings, now_s)
        query = _query(settings, now_s, "channel,queue,priority")
        reads = ReadProcess(settings)
        try:
            body = await reads.compute(query)
        finally:
            await reads.stop()
        assert reads.spool is None and reads.spooled == 0
        assert body == await _expected(settings, query)

    asyncio.run(run())
