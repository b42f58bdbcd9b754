"""Live traffic at a fixed rate, each event sent when its event time comes, plus markers.

The simulator's stream (``streams.devtools.simulate``) starting now is sent in real time, so
``occurred_at`` is the wall clock at the send. On top of it, ``--marker-rate`` times a
second, a ``ticket.created`` marker with a unique ticket id goes to partition ``i mod N``
of the tickets topic; the moment before its send (and when the broker acknowledged it)
is written, one JSON line per marker, to ``--markers``. The parent polls Redis for each
marker's conversation state to appear and so measures produced -> visible.

    python -m benchmark.traffic --rate 5000 --seconds 60 --marker-rate 20 \
        --run-id f1 --markers m.jsonl --status s.json        (settings from DESKPULSE_*)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import itertools
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from deskpulse.exporters.kafka import kafka_client_options
from deskpulse.models.settings import RECORD_KINDS, load_settings
from deskpulse.streams.devtools.simulate import Record, SimConfig, generate
from deskpulse.streams.partitioner import java_partition

__all__ = ["PREGENERATE", "marker_id"]

#: runs of up to this many events are simulated before they start
PREGENERATE = 500_000


@functools.lru_cache(maxsize=100_000)
def marker_id(run_id: str, index: int, partitions: int) -> str:
    """Ticket id of marker ``index`` of run ``run_id``: one that belongs on partition
    ``index mod partitions`` (the worker keeps a conversation's state with the partition
    its id hashes to, and forwards a record put elsewhere through the repartition topic:
    a marker sent elsewhere would measure that detour, and be looked for where it is not)."""
    want = index % partitions
    for salt in itertools.count():
        ticket = f"{run_id}-m{index}" + (f"-{salt}" if salt else "")
        if java_partition(ticket.encode(), partitions) == want:
            return ticket
    raise AssertionError("unreachable")


def _stamp(t_s: float) -> str:
    return (
        datetime.fromtimestamp(t_s, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(orjson.dumps(data))
    tmp.replace(path)


async def run(args: argparse.Namespace) -> None:
    settings = load_settings()
    topics = {kind: settings.topic_for(kind) for kind in RECORD_KINDS}
    producer = AIOKafkaProducer(
        **kafka_client_options(settings), enable_idempotence=False, linger_ms=5, acks=1
    )
    await producer.start()
    markers_out = Path(args.markers).open("w")  # noqa: SIM115 - closed in finally
    status_path = Path(args.status)
    # Up to PREGENERATE events are simulated first, stamped from a start a moment ahead:
    # during the run this process then only sends, and takes as little as it can of the CPU
    # it shares with the worker, the broker and Redis. Longer runs (the soak, at a low
    # rate) simulate as they go.
    total = args.seconds * args.rate
    lead_s = 1.0 + (total / 20_000 if total <= PREGENERATE else 0.0)  # ~50k/s are made here
    start_s = time.time() + lead_s
    end_s = start_s + args.seconds
    # the simulator's own channels and queues, or as many groups as the run asks for
    spread: dict[str, Any] = {}
    if args.channels:
        spread["channels"] = {name: 1.0 for name in args.channels.split(",")}
    if args.queues:
        spread["queues"] = {f"queue-{i:03d}": 1.0 for i in range(args.queues)}
    simulated = generate(
        SimConfig(
            **spread,
            seed=args.seed,
            start_s=start_s,
            duration_s=args.seconds,
            rate=args.rate,
            id_prefix=f"{args.run_id}-",
            # ids of one length, as real ones are: a counter's gain a digit at each power
            # of ten, and the soak would read the longer ids in its state as growth
            id_digits=10,
            response_scale=args.response_scale,
            lifecycle_scale=args.lifecycle_scale,
        )
    )
    records: Iterable[Record] = list(simulated) if total <= PREGENERATE else simulated
    # a lead too short shows as the producer being behind its schedule (status)
    cpu_at_start = time.process_time()
    marker_every = 1.0 / args.marker_rate if args.marker_rate > 0 else float("inf")
    next_marker = start_s + marker_every / 2
    marker_index = 0
    sent = 0
    behind_max = 0.0
    next_status = start_s
    pending: list[asyncio.Future[Any]] = []

    def on_ack(entry: dict[str, Any], future: asyncio.Future[Any]) -> None:
        entry["acked"] = time.time()
        if not future.cancelled() and future.exception() is None:
            markers_out.write(orjson.dumps(entry).decode() + "\n")

    async def send_marker(now: float) -> None:
        nonlocal marker_index
        ticket = marker_id(args.run_id, marker_index, settings.topic_partitions)
        partition = marker_index % settings.topic_partitions
        value = orjson.dumps(
            {
                "event_id": ticket,
                "type": "ticket.created",
                "occurred_at": _stamp(now),
                "ticket_id": ticket,
                "channel": "email",
                "queue": "general",
                "priority": "normal",
            }
        )
        entry = {"i": marker_index, "id": ticket, "partition": partition, "sent": time.time()}
        future = await producer.send(
            settings.topic_tickets, value=value, key=ticket.encode(), partition=partition
        )
        future.add_done_callback(lambda f, e=entry: on_ack(e, f))
        marker_index += 1

    try:
        for record in records:
            due = record.occurred_at_s if record.occurred_at_s is not None else time.time()
            if due >= end_s:
                break
            while True:
                now = time.time()
                if next_marker <= now:
                    await send_marker(now)
                    next_marker += marker_every
                    continue
                if due <= now:
                    break
                await asyncio.sleep(max(0.001, min(due, next_marker) - now))
            behind_max = max(behind_max, now - due)
            pending.append(
                await producer.send(topics[record.topic_kind], value=record.value, key=record.key)
            )
            sent += 1
            if len(pending) >= 2000:
                pending = [f for f in pending if not f.done()]
            if now >= next_status:
                next_status = now + 1.0
                markers_out.flush()
                _write_json(
                    status_path,
                    {
                        "sent": sent,
                        "markers": marker_index,
                        "behind_max_s": behind_max,
                        "elapsed_s": now - start_s,
                        "done": False,
                    },
                )
        await producer.flush()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
    finally:
        with contextlib.suppress(Exception):
            await producer.stop()
        markers_out.close()
    _write_json(
        status_path,
        {
            "sent": sent,
            "markers": marker_index,
            "behind_max_s": behind_max,
            "elapsed_s": time.time() - start_s,
            "cpu_s": time.process_time() - cpu_at_start,
            "done": True,
        },
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--marker-rate", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument(
        "--response-scale", type=float, default=1.0, help="SimConfig.response_scale"
    )
    parser.add_argument(
        "--lifecycle-scale", type=float, default=1.0, help="SimConfig.lifecycle_scale"
    )
    parser.add_argument(
        "--channels", default="", help="comma-separated channels, equally likely (SimConfig)"
    )
    parser.add_argument(
        "--queues", type=int, default=0, help="this many queues, equally likely (SimConfig)"
    )
    parser.add_argument("--run-id", required=True)
    parser.add_argument("--markers", required=True)
    parser.add_argument("--status", required=True)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
