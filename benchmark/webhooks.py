"""Zendesk webhooks to ``POST /ingest/zendesk``, as fast as it answers or at a set rate.

``--connections`` clients, each on a keep-alive connection of its own, send a signed
Zendesk ticket-event webhook as soon as their last one was answered (a ticket created,
then comments on it, each delivery with an event id of its own) until ``--seconds`` have
passed; then one JSON object with every answer's status and latency goes to ``--out``.
With ``--rate R`` the clients send R requests per second together instead, each on its
schedule (request k of client i at ``(k * connections + i) / R`` seconds), and a latency
runs from the scheduled instant: a server that falls behind shows in it (no coordinated
omission), however long the client waited for its previous answer.

    python -m benchmark.webhooks --url http://127.0.0.1:6067 --secret S --connections 50 \\
        --seconds 15 --out webhooks.json
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import itertools
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson

__all__ = ["zendesk_body"]


def _zendesk_time(t_s: float) -> str:
    moment = datetime.fromtimestamp(t_s, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond:06d}000Z"


def zendesk_body(client: int, request: int, t_s: float) -> bytes:
    """Request ``request`` of client ``client``: every 4th creates a ticket, the others
    comment on it (public agent replies and customer replies in turn), in Zendesk's shape."""
    ticket_id = str(client * 10_000_000 + request // 4)
    detail = {
        "actor_id": "8447388090494",
        "assignee_id": "8447388090777",
        "brand_id": "8447346621310",
        "created_at": _zendesk_time(t_s)[:19] + "Z",
        "custom_status": "8447388090495",
        "description": "My printer is on fire",
        "external_id": None,
        "form_id": "8646151517822",
        "group_id": str(360000 + request % 7),
        "id": ticket_id,
        "is_public": True,
        "organization_id": "8447346622462",
        "priority": ("LOW", "NORMAL", "HIGH", "URGENT")[request % 4],
        "requester_id": "8447388090494",
        "status": "OPEN",
        "subject": "Printer on fire",
        "submitter_id": "8447388090494",
        "tags": ["printer"],
        "type": "INCIDENT",
        "updated_at": _zendesk_time(t_s)[:19] + "Z",
        "via": {"channel": ("web", "email", "api")[request % 3]},
    }
    if request % 4 == 0:
        kind, event = "ticket.created", {}
    else:
        staff = request % 2 == 1
        kind = "ticket.comment_added"
        event = {
            "comment": {
                "id": str(request),
                "body": "Thanks, we are on it" if staff else "Any news?",
                "is_public": True,
                "author": {"id": "8447388090777", "is_staff": staff, "name": "Ada"},
            }
        }
    return orjson.dumps(
        {
            "account_id": 12514403,
            "detail": detail,
            "event": event,
            "id": str(uuid.uuid4()),
            "subject": f"zen:ticket:{ticket_id}",
            "time": _zendesk_time(t_s),
            "type": f"zen:event-type:{kind}",
            "zendesk_event_version": "2022-11-06",
        }
    )


def _headers(secret: bytes, body: bytes, timestamp: str) -> dict[str, str]:
    digest = hmac.new(secret, timestamp.encode() + body, hashlib.sha256).digest()
    return {
        "Content-Type": "application/json",
        "X-Zendesk-Webhook-Signature": base64.b64encode(digest).decode(),
        "X-Zendesk-Webhook-Signature-Timestamp": timestamp,
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    statuses: Counter[str] = Counter()
    latencies: list[float] = []
    secret = args.secret.encode()
    connector = aiohttp.TCPConnector(limit=0)  # one keep-alive connection per client
    timeout = aiohttp.ClientTimeout(total=60)
    url = f"{args.url}/ingest/zendesk"

    begun = deadline = 0.0

    async def post(index: int, request: int, session: aiohttp.ClientSession) -> str:
        now_s = time.time()
        body = zendesk_body(index, request, now_s - 60)
        timestamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now_s))
        try:
            async with session.post(
                url, data=body, headers=_headers(secret, body, timestamp)
            ) as response:
                await response.read()
                return str(response.status)
        except (aiohttp.ClientError, TimeoutError) as error:
            return type(error).__name__

    async def client(index: int, session: aiohttp.ClientSession) -> None:
        for request in itertools.count():
            if time.monotonic() >= deadline:
                return
            scheduled = None
            if args.rate > 0:
                scheduled = begun + (request * args.connections + index) / args.rate
                wait_s = scheduled - time.perf_counter()
                if wait_s > 0:
                    await asyncio.sleep(wait_s)
                if time.monotonic() >= deadline:
                    return
            started = time.perf_counter()
            status = await post(index, request, session)
            elapsed = time.perf_counter() - (started if scheduled is None else scheduled)
            statuses[status] += 1
            if status == "200":
                latencies.append(elapsed)
            else:
                await asyncio.sleep(0.05)  # a refusal must not spin

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        if args.rate > 0:
            # paced: each client's connection open and used once before the schedule
            # starts, so that the first second does not measure 50 connects at once
            await asyncio.gather(
                *(post(i, 1_000_000 + i, session) for i in range(args.connections))
            )
        begun, deadline = time.perf_counter(), time.monotonic() + args.seconds
        started = time.monotonic()
        cpu_started = time.process_time()
        tasks = [asyncio.ensure_future(client(i, session)) for i in range(args.connections)]
        _, late = await asyncio.wait(tasks, timeout=args.seconds + 5.0)
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)
        wall_s = time.monotonic() - started
        cpu_s = time.process_time() - cpu_started
    return {
        "connections": args.connections,
        "rate": args.rate,
        "seconds": wall_s,
        "statuses": dict(statuses),
        "latencies": latencies,
        "cut_off": len(late),
        "cores": cpu_s / max(wall_s, 1e-9),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmark.webhooks")
    parser.add_argument("--url", required=True)
    parser.add_argument("--secret", required=True)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--rate", type=float, default=0.0, help="requests/s in all; 0: flat out")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    result = asyncio.run(run(args))
    Path(args.out).write_bytes(orjson.dumps(result))


if __name__ == "__main__":
    main()
