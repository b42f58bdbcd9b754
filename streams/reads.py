"""Serving KPI reads (``GET /kpis``) without starving ingestion.

A 24 h read grouped by every dimension adds up hundreds of thousands of stored fields,
about a tenth of a second of pure Python. Done in the worker's event loop, each one stalls
Faust's consumer for that long; two hundred at once stalled ingestion for minutes and ran
the ingest path's Redis pool out of connections. So a read is:

* **paced**: at most ``DESKPULSE_READ_RATE`` requests a second go on, evenly spaced, the
  rest wait up to a second for a turn and are then refused (503): whatever the clients do,
  the HTTP work they cost the worker's event loop (which Faust's consumer shares) is
  bounded;
* **bounded**: at most ``DESKPULSE_READ_CONCURRENCY`` reads compute at once and
  ``DESKPULSE_READ_QUEUE`` more wait for a turn; one more is refused at once with
  :class:`~models.errors.ReadUnavailable` (HTTP 503 with ``Retry-After``), so neither
  memory nor latency grows without bound;
* **shared**: identical reads (same width, same bucket-aligned end, same grouping: the
  same buckets, so the same document) that arrive while one computes wait for it, and its
  document also answers those that arrive up to ``DESKPULSE_READ_CACHE`` seconds later;
* **elsewhere**: computed in a read process of its own (``python -m deskpulse.streams.reads``), with
  its own Redis connections; the worker's event loop only passes bytes along. A thread of
  the worker would not do: it shares the interpreter lock with Faust's event loop and
  consumer thread. Measured on 2 cores at 2,000 events/s with 20 or 100 readers of
  distinct 24 h windows, the same limits kept 0.58 - 0.60 of the unloaded ingestion rate
  with reads in a thread, 0.97 - 1.0 with the read process. It runs at a lower CPU
  priority (``DESKPULSE_READ_NICE``, 10 by default): when the CPU is contended the kernel
  serves ingestion (the worker and its engine process) first, and reads get what is left.
  At ``nice`` 10 a grouped read of 6,000 groups waits 1.5 - 2 times its CPU beside the
  rest of the pipeline on 2 cores; at 0 the reads came back sooner in some runs, and under
  a storm of 200 readers of distinct windows ingestion kept 0.96 of its rate in one run
  and 0.78 in another, so 0 is the operator's choice where reads matter more.

:class:`Pacer` does the first; :class:`ReadGate` the next two for any backend;
:class:`ReadProcess` the last.
The read process starts with the first read and again after it dies (the reads it had in
hand get a 503); it holds no state, and exits when the worker closes its stdin.

A document of a few hundred kilobytes or more (one grouped by every dimension over
thousands of groups is 10 MB) comes back through a file of a private temporary directory
(the spool, removed at the stop) rather than the pipe: a pipe holds 1 MiB at most, so the
read process (then at ``nice`` 10) had to be scheduled again for each MiB while the
worker's loop took them in turn (31 - 84 ms a read at 6,000 groups, 170 ms at worst); the
worker reads the file in one call and deletes it. One that cannot be written goes through
the pipe.

A read of the present whose end crosses to the next minute moves the ages of every group
with a ticket open or a chat waiting (4,100 of 6,000 groups in the benchmark: a new
document and its JSON rewritten for each, 190 - 280 ms of CPU once a minute). So while it
waits for reads in the last :data:`AHEAD_S` before that end, the read process works out
the next end's documents and JSON for the groups its last grouped read kept
(:func:`_work_ahead`, a chunk at a time, giving way to any read that comes in); the read
of the next end takes them for every group whose sums and live state held, and builds
the rest as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, BinaryIO, Literal, get_args

import msgspec

from deskpulse.models.errors import InvalidQuery, ReadUnavailable
from deskpulse.models.settings import Settings
from deskpulse.streams.frames import frame as framed
from deskpulse.streams.frames import pipes, read_frame
from deskpulse.streams.query import KpiQuery, SeriesQuery, SlaTicketsQuery

#: A read the gate shares and caches: equal queries read the same state.
Query = KpiQuery | SeriesQuery | SlaTicketsQuery

__all__ = [
    "MAX_AGE_S",
    "MAX_KEPT",
    "PARAMETERS",
    "READ_RESULTS",
    "SERIES_PARAMETERS",
    "SLA_TICKETS_PARAMETERS",
    "KpiReads",
    "Pacer",
    "Query",
    "ReadGate",
    "ReadProcess",
    "ReadResult",
    "max_age_s",
]

log = logging.getLogger("deskpulse.reads")

#: Longest a request waits for its document (in the queue and computing) before a 503; a
#: read stuck behind an unreachable Redis must not hold its client forever.
READ_TIMEOUT_S = 30.0
#: How long the read process may take to start (Python, imports, its first frame).
START_TIMEOUT_S = 60.0
#: A document at least this long comes back through a file of the spool rather than the
#: pipe (:class:`ReadProcess`).
SPOOL_MIN_BYTES = 256 * 1024

_ENCODE = msgspec.msgpack.Encoder().encode
_DECODE = msgspec.msgpack.Decoder().decode

#: What became of a read: the ``result`` label of ``deskpulse_kpi_reads_total``.
#: computed: by a computation of its own; shared: by one already running for an identical
#: read; cached: by the document of one that ended within DESKPULSE_READ_CACHE; invalid: a
#: 400; rejected: a 503 because too many reads were waiting or came in a second; unavailable:
#: a 503 for any other reason (Redis unreachable, the read process restarting, too slow);
#: failed: a 500.
ReadResult = Literal["computed", "shared", "cached", "invalid", "rejected", "unavailable", "failed"]
READ_RESULTS: tuple[ReadResult, ...] = get_args(ReadResult)


class Pacer:
    """Lets requests through at most ``rate_per_s`` a second, spaced evenly.

    A request waits for its turn; one whose turn is more than ``max_wait_s`` away waits
    that long and is then refused (:class:`ReadUnavailable`). Every request, even one
    answered from the cache or refused, costs the worker's event loop the HTTP work around
    it, the loop Faust's consumer runs on: the pace bounds that cost, and a client that
    asks again at once after a 503 (ignoring ``Retry-After``) gets one answer a second,
    not thousands. ``rate_per_s`` 0 lets everything through at once.
    """

    def __init__(
        self,
        rate_per_s: float,
        *,
        max_wait_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._interval_s = 1.0 / rate_per_s if rate_per_s > 0 else 0.0
        self._rate_per_s = rate_per_s
        self._max_wait_s = max_wait_s
        self._clock = clock
        self._sleep = sleep
        self._next_s = 0.0

    async def turn(self) -> None:
        """Return when this request may go on; raise :class:`ReadUnavailable` if not soon."""
        if not self._interval_s:
            return
        now = self._clock()
        slot = max(now, self._next_s)
        if slot - now > self._max_wait_s:
            await self._sleep(self._max_wait_s)
            raise ReadUnavailable(
                f"more than {self._rate_per_s:g} KPI reads a second (DESKPULSE_READ_RATE)"
            )
        self._next_s = slot + self._interval_s
        if slot > now:
            await self._sleep(slot - now)


@dataclass(slots=True)
class _Cached:
    body: bytes
    computed_at: float
    #: how long it may answer reads: DESKPULSE_READ_CACHE, or longer for a read that
    #: accepted an older answer (``max_age_s``)
    keep_s: float


#: The oldest answer a client may accept (``Cache-Control: max-age``), in seconds.
MAX_AGE_S = 300.0
#: Answers kept past DESKPULSE_READ_CACHE for clients that accept older ones, at most: the
#: wallboard asks the same few reads; a client asking many distinct ones with a max-age
#: cannot make the cache grow without bound.
MAX_KEPT = 32


def max_age_s(cache_control: str | None) -> float:
    """The ``max-age`` of a request's ``Cache-Control`` (RFC 9111: the client accepts an
    answer up to that old), capped at :data:`MAX_AGE_S`; 0 when absent or malformed."""
    for directive in (cache_control or "").split(","):
        name, _, value = directive.strip().partition("=")
        if name.strip().lower() == "max-age" and value.strip().isdigit():
            return min(float(value.strip()), MAX_AGE_S)
    return 0.0


class ReadGate:
    """Admission, single flight and a short-lived cache in front of ``compute``.

    ``compute(query)`` returns the document's bytes or raises; it is called at most
    ``concurrency`` times at once, and at most once for concurrent identical queries.
    An answer computed less than ``cache_s`` ago answers an identical query, or less than
    the ``max_age_s`` a read accepts (the wallboard's viewers share one computation per
    refresh that way). ``on_result(result)`` is told what became of every read (for the
    metric).
    """

    def __init__(
        self,
        compute: Callable[[Query], Awaitable[bytes]],
        *,
        concurrency: int,
        queue: int,
        cache_s: float,
        clock: Callable[[], float] = time.monotonic,
        on_result: Callable[[ReadResult], None] | None = None,
        timeout_s: float = READ_TIMEOUT_S,
    ) -> None:
        self._compute = compute
        self._slots = asyncio.Semaphore(concurrency)
        self._capacity = concurrency + queue
        self._cache_s = cache_s
        self._clock = clock
        self._on_result = on_result or (lambda result: None)
        self._timeout_s = timeout_s
        self._flights: dict[Query, asyncio.Future[bytes]] = {}
        self._cache: dict[Query, _Cached] = {}

    @property
    def in_flight(self) -> int:
        """Distinct reads computing or waiting for a turn."""
        return len(self._flights)

    async def read(self, query: Query, max_age_s: float = 0.0) -> bytes:
        """The document of ``query`` as JSON bytes; one computed up to ``max_age_s`` ago
        (capped at :data:`MAX_AGE_S`) will do, or up to ``cache_s`` ago whatever it says.

        Raises :class:`ReadUnavailable` when the queue is full, the wait is too long or
        the backend says so, :class:`InvalidQuery` as the backend does, and whatever else
        ``compute`` raised (a bug: the caller turns it into a 500).
        """
        now = self._clock()
        accepted_s = max(self._cache_s, min(max_age_s, MAX_AGE_S))
        cached = self._cache.get(query)
        if cached is not None and now - cached.computed_at < min(accepted_s, cached.keep_s):
            self._on_result("cached")
            return cached.body
        flight = self._flights.get(query)
        if flight is not None:
            result: ReadResult = "shared"
        elif len(self._flights) >= self._capacity:
            self._on_result("rejected")
            raise ReadUnavailable(
                f"too many KPI reads at once ({len(self._flights)} computing or waiting; "
                "DESKPULSE_READ_CONCURRENCY + DESKPULSE_READ_QUEUE)"
            )
        else:
            result = "computed"
            flight = asyncio.ensure_future(self._fly(query, accepted_s))
            self._flights[query] = flight
        try:
            # shielded: a client that goes away must not cancel the read others wait for
            body = await asyncio.wait_for(asyncio.shield(flight), self._timeout_s)
        except TimeoutError:
            self._on_result("unavailable")
            raise ReadUnavailable(
                f"the read took longer than {self._timeout_s:g}s (is Redis slow?)"
            ) from None
        except ReadUnavailable:
            self._on_result("unavailable")
            raise
        except InvalidQuery:
            self._on_result("invalid")
            raise
        except asyncio.CancelledError:
            raise
        except Exception:
            self._on_result("failed")
            raise
        self._on_result(result)
        return body

    async def _fly(self, query: Query, keep_s: float) -> bytes:
        try:
            async with self._slots:
                body = await self._compute(query)
            if keep_s > 0:
                now = self._clock()
                # expired entries go as new ones come: the cache holds what was computed
                # within the last DESKPULSE_READ_CACHE seconds, and at most MAX_KEPT
                # answers kept longer for the clients that accept them
                for key in [k for k, c in self._cache.items() if now - c.computed_at >= c.keep_s]:
                    del self._cache[key]
                # a fresher answer replaces an older one, kept as long as either wanted
                before = self._cache.pop(query, None)
                keep_s = max(keep_s, before.keep_s if before is not None else 0.0)
                self._cache[query] = _Cached(body, now, keep_s)
                kept = [k for k, c in self._cache.items() if c.keep_s > self._cache_s]
                for key in kept[: max(0, len(kept) - MAX_KEPT)]:  # the oldest first
                    del self._cache[key]
            return body
        finally:
            del self._flights[query]


#: The query parameters of ``GET /kpis``; any other is refused (a misspelt ``windw=24h``
#: must not quietly read the default hour).
PARAMETERS = ("window", "at", "by")
#: Those of ``GET /kpis/series``: a window, a step and a count ending at ``at``.
SERIES_PARAMETERS = ("window", "step", "count", "at", "by")
#: Those of ``GET /kpis/sla-tickets``: the dimensions to match and how many to list.
SLA_TICKETS_PARAMETERS = ("channel", "queue", "priority", "limit")


class KpiReads:
    """``GET /kpis`` from parameters to response: parse, gate, compute, count.

    Nothing here raises: every outcome is a status, a JSON body and headers. 400 names the
    parameter; 503 carries ``Retry-After``; anything unexpected is a 500 with a JSON body
    and a log line, never a handler that fails.
    """

    def __init__(
        self,
        settings: Settings,
        registry: Any,
        *,
        compute: Callable[[Query], Awaitable[bytes]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        from prometheus_client import Counter

        from deskpulse.exporters.catalog import CATALOG

        self.settings = settings
        self.process = ReadProcess(settings)
        spec = CATALOG["deskpulse_kpi_reads_total"]
        self._reads = Counter(
            spec.name.removesuffix("_total"), spec.help, list(spec.labels), registry=registry
        )
        for result in READ_RESULTS:  # every result exported from the start, at 0
            self._reads.labels(result)
        self.gate = ReadGate(
            compute or self.process.compute,
            concurrency=settings.read_concurrency,
            queue=settings.read_queue,
            cache_s=settings.read_cache,
            on_result=lambda result: self._reads.labels(result).inc(),
        )
        self._clock = clock
        self.pacer = Pacer(settings.read_rate)

    async def answer(
        self,
        parameters: Iterable[tuple[str, str]],
        path: str = "/kpis",
        *,
        max_age_s: float = 0.0,
    ) -> tuple[int, bytes, dict[str, str]]:
        """``(status, body, headers)`` for the query string's ``(name, value)`` pairs of a
        read of ``path`` (``/kpis``, ``/kpis/series`` or ``/kpis/sla-tickets``) from a
        client that accepts an answer up to ``max_age_s`` old."""
        try:
            try:
                await self.pacer.turn()
            except ReadUnavailable:
                self._reads.labels("rejected").inc()
                raise
            query = self.parse(parameters, path)
            body = await self.gate.read(query, max_age_s)
        except InvalidQuery as error:
            return 400, _json({"error": str(error), "parameter": error.parameter}), {}
        except ReadUnavailable as error:
            retry = str(error.retry_after_s)
            return 503, _json({"error": str(error)}), {"Retry-After": retry}
        except Exception as error:  # a bug: the client gets a 500 and the log a traceback
            log.exception("GET %s failed", path)
            return 500, _json({"error": f"internal error reading KPIs: {error!r}"}), {}
        return 200, body, {}

    def parse(self, parameters: Iterable[tuple[str, str]], path: str = "/kpis") -> Query:
        """The query of the query string, or :class:`InvalidQuery` (counted)."""
        from deskpulse.streams.query import parse_query, parse_series, parse_sla_tickets

        names = {
            "/kpis": PARAMETERS,
            "/kpis/series": SERIES_PARAMETERS,
            "/kpis/sla-tickets": SLA_TICKETS_PARAMETERS,
        }[path]
        given: dict[str, str] = {}
        try:
            for name, value in parameters:
                if name not in names:
                    raise InvalidQuery(
                        name, f"is not a parameter of {path} (those are {', '.join(names)})"
                    )
                if name in given:
                    raise InvalidQuery(name, "is given twice")
                given[name] = value
            settings = self.settings
            if path == "/kpis/sla-tickets":
                return parse_sla_tickets(given)
            if path == "/kpis/series":
                return parse_series(
                    given.get("window"),
                    given.get("step"),
                    given.get("count"),
                    given.get("at"),
                    given.get("by"),
                    bucket_seconds=settings.bucket_seconds,
                    retention_s=settings.retention,
                    max_future_s=settings.max_future,
                    now_s=self._clock(),
                )
            return parse_query(
                given.get("window"),
                given.get("at"),
                given.get("by"),
                bucket_seconds=settings.bucket_seconds,
                retention_s=settings.retention,
                max_future_s=settings.max_future,
                now_s=self._clock(),
            )
        except InvalidQuery:
            self._reads.labels("invalid").inc()
            raise

    async def stop(self) -> None:
        await self.process.stop()


def _json(value: Any) -> bytes:
    import orjson

    return orjson.dumps(value)


@dataclass(slots=True)
class _Child:
    """One read process and the reads it has in hand."""

    proc: subprocess.Popen[bytes]
    writer: asyncio.StreamWriter
    pending: dict[int, asyncio.Future[tuple[str, Any]]]
    gone: ReadUnavailable | None = None


class ReadProcess:
    """The read process, from the worker's side: ``compute(query)`` -> document bytes."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._child: _Child | None = None
        self._replies: asyncio.Future[None] | None = None
        self._next_id = 1
        self._starting = asyncio.Lock()
        self._stopping = False
        #: times a read process was started (a restart after one died counts)
        self.starts = 0
        #: the directory large documents come back through (made at the first start)
        self.spool: str | None = None
        #: answers taken from a file of the spool
        self.spooled = 0

    @property
    def pid(self) -> int | None:
        """The running read process's id, if one runs."""
        return self._child.proc.pid if self._child is not None else None

    async def compute(self, query: Query) -> bytes:
        """The document of ``query``, computed in the read process (started if need be)."""
        child = await self._started()
        if child.gone is not None:
            raise child.gone
        request_id, self._next_id = self._next_id, self._next_id + 1
        future: asyncio.Future[tuple[str, Any]] = asyncio.get_running_loop().create_future()
        # no await since the check above: a process that dies from here on fails this too
        child.pending[request_id] = future
        try:
            child.writer.write(framed(_ENCODE([request_id, *_request(query)])))
            await child.writer.drain()
        except (ConnectionError, RuntimeError) as error:
            child.pending.pop(request_id, None)
            raise ReadUnavailable(f"the read process is gone ({error})") from None
        status, body = await future
        if status == "ok":
            document: bytes = body
            return document
        if status == "file":
            self.spooled += 1
            return _unspool(body)
        if status == "invalid":
            raise InvalidQuery(*body)
        if status == "unavailable":
            raise ReadUnavailable(str(body))
        raise RuntimeError(f"read process: {body}")

    async def _started(self) -> _Child:
        async with self._starting:
            if self._stopping:
                raise ReadUnavailable("the worker is stopping")
            if self._child is None or self._child.gone is not None:
                self._child = await asyncio.wait_for(self._start(), START_TIMEOUT_S)
            return self._child

    async def _start(self) -> _Child:
        if self.spool is None:
            try:
                parent = _spool_parent()
                _clear_stale_spools(parent or tempfile.gettempdir())
                self.spool = tempfile.mkdtemp(prefix=_spool_prefix(os.getpid()), dir=parent)
            except OSError as error:  # no temporary directory: every answer by the pipe
                log.warning("KPI reads' answers go through the pipe: %s", error)
        proc = subprocess.Popen(
            [sys.executable, "-m", "deskpulse.streams.reads"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        try:
            reader, writer = await pipes(proc.stdout, proc.stdin)
            writer.write(framed(pickle.dumps((self.settings, self.spool))))
            await writer.drain()
            frame = await read_frame(reader)
            if frame is None or _DECODE(frame)[1] != "ready":
                raise ReadUnavailable("the read process did not start (its log says why)")
        except BaseException:
            proc.kill()
            await asyncio.to_thread(proc.wait)
            raise
        child = _Child(proc, writer, {})
        self.starts += 1
        self._replies = asyncio.ensure_future(self._read_replies(reader, child))
        log.info("read process %d started", proc.pid)
        return child

    async def _read_replies(self, reader: asyncio.StreamReader, child: _Child) -> None:
        while (frame := await read_frame(reader)) is not None:
            request_id, status, body = _DECODE(frame)
            future = child.pending.pop(request_id, None)
            if future is not None and not future.done():
                future.set_result((status, body))
        code = await asyncio.to_thread(child.proc.wait)
        if not self._stopping:
            log.warning(
                "read process %d exited (status %s); a new one starts with the next read",
                child.proc.pid,
                code,
            )
        # the reads it had in hand get a 503; the next read starts a new process
        child.gone = ReadUnavailable(f"the read process exited (status {code})")
        pending, child.pending = child.pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(child.gone)

    async def stop(self) -> None:
        """Close the read process's stdin and wait for it to exit (it holds no state)."""
        self._stopping = True
        child = self._child
        if child is None:
            return
        try:
            await self._stop(child)
        finally:
            if self.spool is not None:
                shutil.rmtree(self.spool, ignore_errors=True)

    async def _stop(self, child: _Child) -> None:
        child.writer.close()
        try:
            await asyncio.wait_for(asyncio.to_thread(child.proc.wait), 10)
        except TimeoutError:
            child.proc.kill()
            await asyncio.to_thread(child.proc.wait)
        if self._replies is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._replies, 5)


#: Where the spool goes when ``TMPDIR`` names no place: memory (tmpfs), if the host has it.
SHM_DIR = "/dev/shm"


def _spool_parent() -> str | None:
    """The directory the spool is made in: ``TMPDIR`` when set; else :data:`SHM_DIR` when
    it is a directory this process may write (a file there is pages of memory: no
    filesystem journal or writeback behind a 10 MB answer, which on a disk's page cache
    took 3 - 58 ms to write); else the system's temporary directory (``None``). An answer
    that finds it full goes through the pipe."""
    if os.environ.get("TMPDIR"):
        return None
    if os.path.isdir(SHM_DIR) and os.access(SHM_DIR, os.W_OK | os.X_OK):
        return SHM_DIR
    return None


#: What every spool directory's name starts with (then its worker's process id).
SPOOL_NAME = "deskpulse-reads-"


def _spool_prefix(pid: int) -> str:
    """The name a worker's spool directory starts with: its process id in it, so that a
    later worker can tell the spool of one that is gone."""
    return f"{SPOOL_NAME}{pid}-"


def _clear_stale_spools(parent: str) -> None:
    """Remove the spool directories in ``parent`` left by workers that are gone (killed
    before their stop removed them): in ``/dev/shm`` what they held is memory until the
    host restarts. Only this user's, named by :func:`_spool_prefix` for a process that no
    longer exists."""
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for name in names:
        if not name.startswith(SPOOL_NAME):
            continue
        pid, _, rest = name.removeprefix(SPOOL_NAME).partition("-")
        if not pid.isdigit() or not rest:
            continue
        path = os.path.join(parent, name)
        try:
            if os.stat(path).st_uid != os.getuid():
                continue
            os.kill(int(pid), 0)
        except ProcessLookupError:  # its worker is gone
            shutil.rmtree(path, ignore_errors=True)
            log.info("removed the spool of a worker that is gone: %s", path)
        except OSError:  # not ours, gone meanwhile, or a live process of another user
            continue


def _unspool(path: str) -> bytes:
    """The document the read process left in ``path``, which goes with it."""
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as error:
        raise ReadUnavailable(f"cannot read the read process's answer: {error}") from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)


def _spooled(spool: str | None, request_id: int, body: bytes) -> str | None:
    """``body`` written to a file of ``spool`` for the worker to take, its path; ``None``
    when it is short or cannot be written (it goes through the pipe then)."""
    if spool is None or len(body) < SPOOL_MIN_BYTES:
        return None
    path = os.path.join(spool, str(request_id))
    try:
        with open(path, "wb") as file:
            file.write(body)
    except OSError as error:
        log.warning("a KPI read's answer goes through the pipe (%s)", error)
        with contextlib.suppress(OSError):
            os.unlink(path)
        return None
    return path


def _request(query: Query) -> list[Any]:
    """A query as the read process's request: its kind, then its fields."""
    if isinstance(query, SeriesQuery):
        return ["series", query.width_s, query.step_s, query.count, query.end_s, query.by]
    if isinstance(query, SlaTicketsQuery):
        return ["sla-tickets", query.filters, query.limit]
    return ["kpis", query.width_s, query.end_s, query.by]


# --- the read process itself ---------------------------------------------------------------


async def _read(store: Any, kind: str, fields: list[Any]) -> dict[str, Any]:
    from deskpulse.streams.query import read_document, read_series, read_sla_tickets

    if kind == "series":
        width_s, step_s, count, end_s, by = fields
        return await read_series(store, SeriesQuery(width_s, step_s, count, end_s, tuple(by)))
    if kind == "sla-tickets":
        filters, limit = fields
        return await read_sla_tickets(
            store, filters=dict(filters), limit=limit, now_ms=int(time.time() * 1000)
        )
    width_s, end_s, by = fields
    return await read_document(store, KpiQuery(width_s, end_s, tuple(by)))


class _Encoder:
    """JSON of the documents the read process answers, each group's encoded once.

    A grouped read hands back the very dict of a group whose sums and live state did not
    change since the last read (:func:`~streams.query.build_grouped_document`; documents are
    never changed once built), and by every dimension those are most of a document: 6,000
    groups made 10 MB of JSON, 50 - 150 ms to encode whole on a busy host. So the encoding
    of each group's dict is kept while the last read had it (the dict itself too, so its
    ``id`` stays its own) and spliced in as it is; only the groups built anew are encoded.

    A read whose end moved to the next minute hands back a new dict for every group with a
    ticket open or a chat waiting (:func:`~streams.core.document_at`: their ages moved),
    most of the groups: the JSON of such a group is its last read's with the ages written
    anew, when the two documents differ in the ages alone (every other part the very same
    object). The bytes are those ``orjson.dumps`` makes of the whole document."""

    def __init__(self) -> None:
        #: ``id(group document)`` -> the document and its JSON, of the last grouped read
        self._kept: dict[int, tuple[dict[str, Any], bytes]] = {}
        #: a group's key (its dimensions' values) -> its document and JSON, of the last read
        self._by_key: dict[tuple[Any, ...], tuple[dict[str, Any], bytes]] = {}
        #: the groups the last :meth:`encode` encoded anew (the rest were kept or moved)
        self.encoded = 0
        #: the groups the last :meth:`encode` took from their last JSON with new ages
        self.moved = 0
        #: a group's key -> a document worked out ahead of a later read and its JSON
        self._ahead: dict[tuple[Any, ...], tuple[dict[str, Any], bytes]] = {}
        #: the end those were worked out for
        self._ahead_end: int | None = None
        #: the groups the last :meth:`encode` took from what was worked out ahead
        self.taken_ahead = 0
        #: ``(by, width_s, end_s)`` of the last grouped KPI read encoded
        self.last: tuple[tuple[str, ...], int, int] | None = None

    def ahead(self, document: dict[str, Any], moved: dict[str, Any], end_s: int) -> None:
        """Work out the JSON of ``moved`` (``document`` at the later end ``end_s``, its ages
        moved, :func:`~streams.query.documents_ahead`) from ``document``'s, if the last read
        encoded that one: a read that hands back ``moved`` takes it as it is. What was
        worked out for another end is let go."""
        if end_s != self._ahead_end:
            self._ahead, self._ahead_end = {}, end_s
        key = _group_key(moved)
        if key is None:
            return
        before = self._by_key.get(key)
        if before is None or before[0] is not document:
            return
        body = _aged_json(document, before[1], moved)
        if body is not None:
            self._ahead[key] = (moved, body)

    def encode(self, kind: str, document: dict[str, Any]) -> bytes:
        import orjson

        groups = document.get("groups")
        if kind != "kpis" or not document.get("by") or not groups:
            self.encoded, self.moved = len(groups or ()), 0
            return orjson.dumps(document)
        kept, by_key = self._kept, self._by_key
        now: dict[int, tuple[dict[str, Any], bytes]] = {}
        now_by_key: dict[tuple[Any, ...], tuple[dict[str, Any], bytes]] = {}
        parts = []
        ahead = self._ahead
        self.encoded = self.moved = self.taken_ahead = 0
        for group in groups:
            held = kept.get(id(group))
            key = _group_key(group)
            early = ahead.get(key) if held is None and key is not None else None
            if early is not None and early[0] is group:
                held = early
                self.taken_ahead += 1
            elif held is None or held[0] is not group:
                before = by_key.get(key) if key is not None else None
                body = _aged_json(before[0], before[1], group) if before is not None else None
                if body is None:
                    body = orjson.dumps(group)
                    self.encoded += 1
                else:
                    self.moved += 1
                held = (group, body)
            now[id(group)] = held
            if key is not None:
                now_by_key[key] = held
            parts.append(orjson.Fragment(held[1]))
        self._kept, self._by_key = now, now_by_key
        if self.taken_ahead:  # the end they were worked out for came: the rest is of no use
            self._ahead = {}
        return orjson.dumps({**document, "groups": parts})


def _group_key(group: dict[str, Any]) -> tuple[Any, ...] | None:
    """A group document's key (its dimensions' values), if it has one."""
    names = group.get("key")
    return tuple(names.values()) if type(names) is dict else None


#: a group document's ages, the only parts that move with the end of the window alone
_AGES = {"backlog": "oldest_age_seconds", "chats": "longest_wait_seconds"}


def _aged_json(old: dict[str, Any], old_json: bytes, new: dict[str, Any]) -> bytes | None:
    """``new``'s JSON from ``old``'s, when the two group documents differ in their ages
    alone (every other part the very same object, as :func:`~streams.core.document_at`
    leaves them); else None."""
    import orjson

    if len(new) != len(old):
        return None
    body = old_json
    for name, part in new.items():
        was = old.get(name)
        if part is was:
            continue
        age = _AGES.get(name)
        if age is None or type(part) is not dict or type(was) is not dict or len(part) != len(was):
            return None
        for field_name, value in part.items():
            if field_name != age and value is not was.get(field_name, _ABSENT):
                return None
        if age not in part or age not in was:
            return None
        before, after = orjson.dumps(was[age]), orjson.dumps(part[age])
        if before == after:
            continue
        # the key is the group's own (no other part names it, and a name inside a string
        # has its quotes escaped): found exactly once, or the whole group is encoded
        pattern = b'"' + age.encode() + b'":' + before
        if body.count(pattern) != 1:
            return None
        body = body.replace(pattern, b'"' + age.encode() + b'":' + after)
    return body


_ABSENT = object()


async def _answer(
    store: Any,
    request: list[Any],
    writer: asyncio.StreamWriter,
    encoder: _Encoder,
    spool: str | None = None,
) -> None:
    from redis.exceptions import RedisClusterException, RedisError

    request_id, kind, *fields = request
    reply: list[Any]
    try:
        document = await _read(store, kind, fields)
        body = encoder.encode(kind, document)
        if kind == "kpis" and fields[2]:
            width_s, end_s, by = fields
            encoder.last = (tuple(by), width_s, end_s)
        path = _spooled(spool, request_id, body)
        reply = [request_id, "ok", body] if path is None else [request_id, "file", path]
    except InvalidQuery as error:
        reply = [request_id, "invalid", [error.parameter, error.message]]
    except (RedisError, RedisClusterException, OSError) as error:
        log.warning("a KPI read cannot reach Redis: %s", error)
        reply = [request_id, "unavailable", f"cannot read Redis: {error}"]
    except Exception as error:  # a bug: reported to the worker (a 500), this process lives on
        log.exception("a KPI read failed")
        reply = [request_id, "error", repr(error)]
    writer.write(framed(_ENCODE(reply)))
    with contextlib.suppress(ConnectionError):
        await writer.drain()


#: How long before the end of a read of the present (a bucket boundary) the read process
#: starts to work out, while it waits for reads, the group documents at the next one.
AHEAD_S = 10.0
#: How often the read process looks whether to work ahead.
AHEAD_POLL_S = 0.5
#: Groups worked out between two looks at whether a read came in.
AHEAD_CHUNK = 200


async def _work_ahead(
    store: Any,
    encoder: _Encoder,
    busy: Callable[[], bool],
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """While no read is in hand, in the last :data:`AHEAD_S` before the end of the last
    grouped read of the present, work out its groups' documents and JSON at the next end
    (their ages moved): the read whose end crosses to it then costs what any other does,
    not the ages of every group with something open (:func:`~streams.query.documents_ahead`).
    Runs until cancelled."""
    from deskpulse.streams.query import documents_ahead

    bucket_s = store.config.bucket_seconds
    while True:
        await sleep(AHEAD_POLL_S)
        last = encoder.last
        if last is None or busy():
            continue
        by, width_s, end_s = last
        if not end_s - min(AHEAD_S, bucket_s) <= clock() < end_s:
            continue  # not the present, or not yet
        try:
            found = documents_ahead(store, by, width_s, end_s + bucket_s)
            for count, (document, moved) in enumerate(found, 1):
                encoder.ahead(document, moved, end_s + bucket_s)
                if count % AHEAD_CHUNK == 0:
                    await sleep(0)  # a read that came in goes first
                    if busy():
                        break
        except Exception:  # a bug: the reads work it out themselves, as before
            log.exception("working out the next minute's documents failed")


async def _serve(replies: BinaryIO) -> None:
    from deskpulse.streams.core import CoreConfig
    from deskpulse.streams.redis_client import connect
    from deskpulse.streams.store import Store

    reader, writer = await pipes(sys.stdin.buffer, replies)
    frame = await read_frame(reader)
    if frame is None:
        return
    # from our own parent, over our own pipe
    settings: Settings
    spool: str | None
    settings, spool = pickle.loads(frame)
    if settings.read_nice:
        os.nice(settings.read_nice)
    redis = connect(settings, purpose="reads")
    store = Store(redis, settings.redis_prefix, CoreConfig.from_settings(settings))
    # What this process keeps between reads (the settled sums, each group's fields, document
    # and JSON: hundreds of thousands of objects at 6,000 groups) is long-lived; with
    # Python's default thresholds a full collection walked all of it every few reads,
    # 100 - 440 ms each (measured at 6,000 groups). The worker's thresholds, set once what
    # the reads import is loaded.
    import deskpulse.streams.query  # noqa: F401
    from deskpulse.streams.runtime import tune_gc

    tune_gc()
    writer.write(framed(_ENCODE([0, "ready", None])))
    await writer.drain()
    tasks: set[asyncio.Task[None]] = set()
    encoder = _Encoder()
    ahead = asyncio.ensure_future(_work_ahead(store, encoder, lambda: bool(tasks)))
    try:
        while (frame := await read_frame(reader)) is not None:
            task = asyncio.create_task(_answer(store, _DECODE(frame), writer, encoder, spool))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    finally:
        # the worker is gone or stopping: nobody waits for what is still being read
        ahead.cancel()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await redis.aclose()


def main() -> None:
    """``python -m deskpulse.streams.reads``: the read process; the settings come as the
    first frame."""
    import signal

    # A Ctrl-C or a SIGTERM to the whole process group reaches this process too: the worker
    # decides when it ends, by closing its stdin (which a worker killed outright closes as
    # well), so a stopping worker's last reads are answered and nothing logs a false alarm.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s[reads] %(message)s"
    )
    # frames go to the original stdout; anything else printed lands on stderr
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    asyncio.run(_serve(replies))


if __name__ == "__main__":
    main()
