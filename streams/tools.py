"""The traffic and backfill commands: ``simulate``, ``produce``, ``replay``.

Every command builds their parser (``deskpulse kpis`` too, whose whole process has a budget),
so this module imports little at its top, and each command what it uses when it runs.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:  # loaded by the commands that run, not by the parser every command builds
    from deskpulse.models.settings import Settings

__all__ = ["Bounded", "Progress", "add_commands", "produce_records", "run"]


class Progress:
    """A one-line progress bar on stderr (only on a terminal, or when forced)."""

    def __init__(self, label: str, total: int | None = None, *, enabled: bool | None = None):
        self.label = label
        self.total = total
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.started = time.perf_counter()
        self._last = 0.0

    def update(self, done: int, total: int | None = None) -> None:
        if total is not None:
            self.total = total
        now = time.perf_counter()
        if not self.enabled or (now - self._last < 0.2 and done != self.total):
            return
        self._last = now
        rate = done / max(now - self.started, 1e-9)
        if self.total:
            filled = int(30 * done / self.total)
            bar = "#" * filled + "-" * (30 - filled)
            line = f"{self.label} [{bar}] {done}/{self.total} {rate:,.0f}/s"
        else:
            line = f"{self.label} {done} {rate:,.0f}/s"
        print("\r" + line, end="", file=sys.stderr, flush=True)

    def close(self, done: int) -> None:
        elapsed = time.perf_counter() - self.started
        if self.enabled:
            print(file=sys.stderr)
        print(
            f"{self.label}: {done} records in {elapsed:.1f}s ({done / max(elapsed, 1e-9):,.0f}/s)",
            file=sys.stderr,
        )


class Bounded:
    """An argparse type: a number of ``kind`` within ``[low, high]``, refused outside with
    the range named; ``text`` is that range as the options' help states it."""

    def __init__(self, kind: Callable[[str], Any], low: float, high: float) -> None:
        self.kind = kind
        self.low = low
        self.high = high
        self.__name__ = kind.__name__  # what argparse names in "invalid <name> value"
        self.text = f"{_plain(low)} to {_plain(high)}"

    def __call__(self, text: str) -> Any:
        try:
            value = self.kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not self.low <= value <= self.high:
            raise argparse.ArgumentTypeError(f"{text} is outside {self.text}")
        return value


def _plain(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else f"{number:g}"


def add_commands(commands: Any) -> None:
    """Register the sub-commands on the CLI's sub-parser set."""
    sim = commands.add_parser(
        "simulate",
        help="generate realistic support traffic",
        description="Generate the records of a simulated helpdesk and produce them to the "
        "input topics, write them to a JSONL file (--out), or produce them in real time "
        "(--live).",
    )
    sim.add_argument(
        "--seed",
        type=Bounded(int, 0, 2**32 - 1),
        default=1,
        metavar="N",
        help="seed, 0 to 4294967295: the same seed gives the same records (default 1)",
    )
    sim.add_argument(
        "--rate",
        type=Bounded(float, 0.001, 1_000_000.0),
        default=50.0,
        metavar="R",
        help="average events per second over the span, 0.001 to 1000000 (default 50)",
    )
    sim.add_argument(
        "--duration",
        default="1h",
        help="simulated span as <int>(s|m|h|d), e.g. 90s, 30m, 6h, 2d; more than 0 "
        "(default 1h; ignored with --live, which runs for 7 days)",
    )
    sim.add_argument(
        "--start",
        default=None,
        help="start of the span, RFC 3339 with an offset (default: now minus --duration)",
    )
    sim.add_argument(
        "--diurnal", action="store_true", help="volume follows the hour of day (0.2 to 1.8x)"
    )
    sim.add_argument(
        "--incident",
        action="store_true",
        help="in the middle third volume doubles and agents are 3x slower",
    )
    sim.add_argument(
        "--duplicates",
        type=Bounded(float, 0.0, 1.0),
        default=0.0,
        metavar="X",
        help="share of events re-sent as they were, 0 to 1 (default 0)",
    )
    sim.add_argument(
        "--out-of-order",
        type=Bounded(float, 0.0, 1.0),
        default=0.0,
        metavar="X",
        help="share of events delivered late, 0 to 1 (default 0)",
    )
    sim.add_argument(
        "--malformed",
        type=Bounded(float, 0.0, 1.0),
        default=0.0,
        metavar="X",
        help="share of events followed by a record to reject, 0 to 1 (default 0)",
    )
    sim.add_argument(
        "--office-hours",
        action="store_true",
        help="billing and sales agents keep Berlin office hours, technical New York's",
    )
    sim.add_argument(
        "--presence",
        action="store_true",
        help="the agents' presence too: a shift a day each on the agents topic",
    )
    sim.add_argument(
        "--moves",
        type=Bounded(float, 0.0, 1.0),
        default=0.0,
        metavar="X",
        help="share of tickets escalated or moved to another queue while open, 0 to 1 (default 0)",
    )
    sim.add_argument(
        "--out", default=None, help="write JSONL to this file instead of producing to Kafka"
    )
    sim.add_argument(
        "--live", action="store_true", help="produce in real time, for 7 simulated days"
    )
    produce = commands.add_parser(
        "produce",
        help="publish a JSONL file of events",
        description="Publish a JSONL file (as simulate --out writes) to the input topics, "
        "keyed by conversation; bad lines are reported and skipped.",
    )
    produce.add_argument("file", help="JSONL file: one {topic, key, value} object per line")
    replay = commands.add_parser(
        "replay",
        help="apply the input topics to Redis on the fast path",
        description="Apply the input topics to the state in Redis on the fast path, from "
        "after what it holds to the topics' ends as they are at the start.",
    )
    replay.add_argument(
        "--processes",
        type=Bounded(int, 1, 1024),
        default=1,
        metavar="N",
        help="processes folding side by side, each with its share of the partitions, 1 to "
        "1024 (default 1; more than the partition count are capped at it): one core each, "
        "beside Redis's",
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run one of the commands registered by :func:`add_commands`."""
    if args.command == "simulate":
        return _simulate(args, settings)
    if args.command == "produce":
        return _produce_file(args.file, settings)
    if args.command == "replay":
        return _replay(settings, args.processes)
    raise SystemExit(f"deskpulse: unknown command {args.command}")


def _simulate(args: argparse.Namespace, settings: Settings) -> int:
    import asyncio

    from deskpulse.models.settings import parse_duration
    from deskpulse.streams.devtools.policies import agent_hours
    from deskpulse.streams.devtools.simulate import SimConfig, generate, write_jsonl

    hours = agent_hours() if args.office_hours else {}
    if args.live:
        from deskpulse.streams.devtools.demo import produce_live

        return asyncio.run(
            produce_live(settings, rate=args.rate, seed=args.seed, agent_hours=hours)
        )
    duration = parse_duration(args.duration)
    if args.start:
        from deskpulse.streams.query import parse_at

        start_s = parse_at(args.start)
    else:
        start_s = time.time() - duration
    config = SimConfig(
        seed=args.seed,
        start_s=start_s,
        duration_s=duration,
        rate=args.rate,
        diurnal=args.diurnal,
        incident=args.incident,
        duplicate_ratio=args.duplicates,
        out_of_order=args.out_of_order,
        malformed_ratio=args.malformed,
        presence=args.presence,
        agent_hours=hours,
        moves=args.moves,
    )
    records = generate(config)
    if args.out:
        progress = Progress("simulate")
        count = write_jsonl(_counting(records, progress), args.out)
        progress.close(count)
        return 0
    rows = ((settings.topic_for(r.topic_kind), r.key, r.value) for r in records)
    sent, _ = asyncio.run(produce_records(settings, rows, label="simulate"))
    return 0 if sent else 1


def _counting(records: Iterable[Any], progress: Progress) -> Iterator[Any]:
    for count, record in enumerate(records, 1):
        progress.update(count)
        yield record


async def produce_records(
    settings: Settings,
    rows: Iterable[tuple[str, bytes | None, bytes]],
    *,
    label: str = "produce",
    total: int | None = None,
) -> tuple[int, float]:
    """Publish ``(topic, key, value)`` rows; returns (how many, seconds)."""
    # imported here: `deskpulse kpis` builds the same parser and should not pay for Kafka
    import asyncio

    from aiokafka import AIOKafkaProducer

    from deskpulse.exporters.kafka import kafka_client_options

    producer = AIOKafkaProducer(
        **kafka_client_options(settings),
        enable_idempotence=False,
        linger_ms=20,
        max_batch_size=1024 * 1024,
        acks=1,
    )
    await producer.start()
    progress = Progress(label, total)
    sent = 0
    started = time.perf_counter()
    try:
        pending = []
        for topic, key, value in rows:
            pending.append(await producer.send(topic, value=value, key=key))
            sent += 1
            if len(pending) >= 10_000:
                await asyncio.gather(*pending)
                pending.clear()
                progress.update(sent)
        await asyncio.gather(*pending)
        await producer.flush()
    finally:
        await producer.stop()
    elapsed = time.perf_counter() - started
    progress.update(sent)
    progress.close(sent)
    return sent, elapsed


def _produce_file(path: str, settings: Settings) -> int:
    import asyncio

    from deskpulse.models.settings import RECORD_KINDS

    bad = 0

    def rows() -> Iterator[tuple[str, bytes | None, bytes]]:
        nonlocal bad
        with open(path, "rb") as lines:
            for number, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    row = orjson.loads(line)
                    kind = row["topic"]
                    if kind not in RECORD_KINDS:
                        raise ValueError(
                            f"topic must be one of {sorted(RECORD_KINDS)}, not {kind!r}"
                        )
                    if "value_b64" in row:  # a record that is not even UTF-8
                        body = base64.b64decode(row["value_b64"], validate=True)
                    else:
                        value = row["value"]
                        # a string is the raw record (e.g. a malformed one), else the event
                        body = value.encode() if isinstance(value, str) else orjson.dumps(value)
                    key = row.get("key")
                    yield (
                        settings.topic_for(kind),
                        None if key is None else str(key).encode(),
                        body,
                    )
                except (
                    orjson.JSONDecodeError,
                    KeyError,
                    ValueError,
                    TypeError,
                    binascii.Error,
                ) as error:
                    bad += 1
                    print(f"{path}:{number}: skipped: {error}", file=sys.stderr)

    sent, _ = asyncio.run(produce_records(settings, rows(), label="produce"))
    if bad:
        print(f"deskpulse produce: {bad} bad lines skipped", file=sys.stderr)
    return 0 if sent or not bad else 1


def _replay(settings: Settings, processes: int = 1) -> int:
    import asyncio

    from deskpulse.streams.replay import replay_in_processes
    from deskpulse.streams.runtime import BATCH_GC_THRESHOLDS, tune_gc

    tune_gc(BATCH_GC_THRESHOLDS)
    progress = Progress("replay")
    stats = asyncio.run(replay_in_processes(settings, processes, progress=progress.update))
    progress.close(stats.records)
    if stats.adopted:
        print(
            f"replay: {stats.adopted} SLA alerts found on {settings.topic_alerts} adopted "
            "as claims (not published again)",
            file=sys.stderr,
        )
    return 0
