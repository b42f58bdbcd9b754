"""Helpers for the fault-injection and security tests (``test_faults.py``, ``test_security.py``).

* :func:`draw_poison` draws a deterministic storm of records the worker must reject:
  hypothesis strategies (random bytes, random JSON, valid events mutated in every way a
  broken upstream could: keys written twice and times out of datetime's range among
  them), each kept only if it must be rejected whatever the clock says.
* :func:`compare_kpis` reads ``deskpulse kpis --json`` for a few windows and groupings and
  compares each with :mod:`tests.oracle` over the raw record values.
* :func:`fault_line` prints the one-line summary a run log yields the README table from.
* TLS material for a throwaway CA and a ``redis-server`` on a TLS port.
"""

from __future__ import annotations

import asyncio
import math
import subprocess
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from aiokafka import ConsumerRecord
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from deskpulse.models.errors import RejectedEvent
from deskpulse.models.events import decode
from deskpulse.models.settings import Settings
from deskpulse.streams.devtools.embedded import ManagedProcess, redis_server_bin, wait_for_port
from deskpulse.streams.devtools.simulate import Record
from deskpulse.streams.query import format_time

from .lifecycle_oracle import evaluate as evaluate_lifecycles
from .lifecycle_oracle import lifecycle_document, merge_documents
from .oracle import compare, compute
from .presence_oracle import with_agents
from .support import HttpResponse, consume_all, samples, wait_for_claims, wait_until

__all__ = [
    "KINDS",
    "OUT_OF_RANGE_TIMES",
    "MetricSums",
    "Poison",
    "TlsFiles",
    "TlsUnsupported",
    "compare_kpis",
    "dead_letter_sources",
    "draw_poison",
    "expected_reason",
    "fault_line",
    "http_request",
    "listening_addresses",
    "make_tls_files",
    "metric_sums",
    "read_dead_letters",
    "start_tls_redis",
    "tune",
]

KINDS = ("tickets", "chats", "surveys")
_TYPE_PREFIX = {"tickets": "ticket.", "chats": "chat.", "surveys": "survey."}


def tune(settings: Settings, **update: Any) -> Settings:
    """Small batches (many commits for a fault to land between), a quick metrics refresh."""
    return settings.model_copy(
        update={
            "batch_within": 0.1,
            "batch_size": 200,
            "metrics_refresh_interval": 1,
            **update,
        }
    )


# -- reading results ------------------------------------------------------------------------


def read_dead_letters(
    settings: Settings, expected: int, timeout_s: float = 90, settle_s: float = 2.0
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of the dead-letter topic (waits for ``expected``, then ``settle_s``)."""
    return asyncio.run(
        consume_all(
            settings.kafka_bootstrap,
            settings.topic_deadletter,
            expected,
            timeout_s,
            settle_s=settle_s,
        )
    )


def dead_letter_sources(
    records: Iterable[ConsumerRecord[bytes, bytes]],
) -> Counter[tuple[str, int, int]]:
    """How often each source ``(topic, partition, offset)`` was dead-lettered."""
    found: Counter[tuple[str, int, int]] = Counter()
    for record in records:
        headers = {name: value.decode() for name, value in record.headers}
        found[
            (
                headers["deskpulse-source-topic"],
                int(headers["deskpulse-source-partition"]),
                int(headers["deskpulse-source-offset"]),
            )
        ] += 1
    return found


@dataclass(frozen=True)
class MetricSums:
    """The pipeline counters of one worker's ``/metrics``."""

    processed: float
    rejected: Mapping[tuple[str, str], float]
    redis_up: float | None

    @property
    def rejected_total(self) -> float:
        return sum(self.rejected.values())


def metric_sums(text: str) -> MetricSums:
    processed = sum(value for _, value in samples(text, "deskpulse_events_processed_total"))
    rejected = {
        (labels["topic"], labels["reason"]): value
        for labels, value in samples(text, "deskpulse_events_rejected_total")
    }
    up = samples(text, "deskpulse_redis_up")
    return MetricSums(processed, rejected, up[0][1] if up else None)


def compare_kpis(
    read: Callable[[str, float, Sequence[str]], dict[str, Any]],
    values: Sequence[bytes],
    points: Iterable[tuple[str, int, float, Sequence[str]]],
    *,
    settings: Settings,
) -> int:
    """Read each ``(width, width_s, at_s, by)`` with ``read`` and compare it with the oracle.

    ``values`` are the raw record values the oracle sees (it keeps what ``decode``
    accepts). Fails listing every difference; returns how many documents were compared.
    """
    problems: list[str] = []
    compared = 0
    # the lifecycle sections (resolution, backlog, waiting chats) from their own oracle
    facts = evaluate_lifecycles(
        list(values),
        None,
        retention_s=settings.retention,
        open_ticket_max_age_s=settings.open_ticket_max_age,
    )
    wait_for_claims(settings)  # every breach of the past data set claimed: counted below
    for width, width_s, at_s, by in points:
        actual = read(width, at_s, by)
        expected = compute(
            values,
            at_s=at_s,
            width_s=width_s,
            by=by,
            bucket_seconds=settings.bucket_seconds,
            targets=settings.first_response_targets,
            short_abandon_s=settings.short_abandon,
            answer_target_s=settings.chat_answer_target,
            claimed_until_s=math.inf,
        )
        lifecycle = lifecycle_document(
            facts,
            at_s=at_s,
            width_s=width_s,
            by=tuple(by),
            bucket_seconds=settings.bucket_seconds,
            chat_stale_after_s=settings.chat_stale_after,
        )
        expected = with_agents(
            merge_documents(expected, lifecycle),
            values,
            at_s=at_s,
            width_s=width_s,
            bucket_seconds=settings.bucket_seconds,
            retention_s=settings.retention,
        )
        where = f"--window {width} --at {format_time(at_s)} --by {','.join(by)}"
        problems += [f"{where}: {line}" for line in compare(actual, expected)]
        compared += 1
    assert not problems, f"{len(problems)} differences:\n" + "\n".join(problems[:60])
    return compared


def fault_line(name: str, *, injected: str, rejected: int, recovered: str) -> str:
    """Print (and return) ``FAULT <name>: injected=... rejected=... recovered=... kpis=equal``.

    Only called once the KPIs were found equal to the oracle's. Values carry no spaces,
    so the line splits on them.
    """
    line = (
        f"FAULT {name}: injected={injected.replace(' ', '_')} rejected={rejected} "
        f"recovered={recovered.replace(' ', '_')} kpis=equal"
    )
    print("\n" + line, flush=True)
    return line


# -- HTTP and sockets -----------------------------------------------------------------------


def http_request(
    url: str, headers: Mapping[str, str] | None = None, timeout_s: float = 5.0
) -> HttpResponse | None:
    """GET ``url`` with ``headers``; the response whatever its status, ``None`` if no answer."""
    request = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return HttpResponse(response.status, dict(response.headers), response.read())
    except urllib.error.HTTPError as error:
        return HttpResponse(error.code, dict(error.headers), error.read())
    except (urllib.error.URLError, OSError):
        return None


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a TCP socket listening on ``port`` (from ``/proc/net/tcp*``)."""
    found: set[str] = set()
    for name, width in (("tcp", 8), ("tcp6", 32)):
        try:
            lines = Path(f"/proc/net/{name}").read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            local, state = fields[1], fields[3]
            address, _, hex_port = local.rpartition(":")
            if state != "0A" or int(hex_port, 16) != port:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(address)
            if width == 8:
                found.add(".".join(str(b) for b in reversed(raw)))
            else:  # four little-endian 32-bit words
                words = [raw[i : i + 4][::-1] for i in range(0, 16, 4)]
                found.add(b"".join(words).hex())
    return found


# -- TLS ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsFiles:
    ca_cert: Path
    server_cert: Path
    server_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    done = subprocess.run(
        ["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, f"openssl {' '.join(args)}: {done.stderr}"


def make_tls_files(directory: Path) -> TlsFiles:
    """A throwaway CA and a server certificate for 127.0.0.1/localhost signed by it."""
    directory.mkdir(parents=True, exist_ok=True)
    curve = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl(
        "req", "-x509", *curve, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=deskpulse throwaway test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )  # fmt: skip
    _openssl(
        "req", *curve, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1",
        cwd=directory,
    )  # fmt: skip
    (directory / "server.ext").write_text(
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
    )
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "server.ext",
        cwd=directory,
    )  # fmt: skip
    return TlsFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key")


class TlsUnsupported(Exception):
    """This redis-server was built without TLS."""


def start_tls_redis(host: str, port: int, workdir: Path, tls: TlsFiles) -> ManagedProcess:
    """``redis-server`` with only a TLS port (no plain one), client certificates not required.

    Raises :class:`TlsUnsupported` when the binary has no TLS support.
    """
    import redis

    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / f"redis-tls-{port}.log"
    argv = [
        redis_server_bin(),
        "--port", "0",
        "--tls-port", str(port),
        "--bind", host,
        "--tls-cert-file", str(tls.server_cert),
        "--tls-key-file", str(tls.server_key),
        "--tls-ca-cert-file", str(tls.ca_cert),
        "--tls-auth-clients", "no",
        "--dir", str(workdir),
        "--save", "",
        "--appendonly", "no",
        "--daemonize", "no",
        "--logfile", str(log_path),
    ]  # fmt: skip
    proc = ManagedProcess("redis-server-tls", argv, log_path, cwd=workdir, host=host, port=port)
    try:
        try:
            wait_for_port(host, port, 30, proc)
        except Exception as error:
            text = f"{error}\n{proc.log_tail()}"
            if "TLS" in text and ("not supported" in text or "Bad directive" in text):
                raise TlsUnsupported(text) from error
            raise
        client = redis.Redis(
            host=host, port=port, ssl=True, ssl_ca_certs=str(tls.ca_cert), socket_timeout=5
        )
        try:
            wait_until(client.ping, 30, 0.1, message=proc.log_tail)
        finally:
            client.close()
    except BaseException:
        proc.stop(timeout_s=2)
        raise
    return proc


# -- the poison-pill storm --------------------------------------------------------------------


@dataclass(frozen=True)
class Poison:
    """One record the worker must reject, and why (what :func:`decode` or the topic says)."""

    record: Record
    reason: str


_NOW = "2026-11-23T01:00:00Z"

#: One valid event of every type, with the topic it belongs on.
_TEMPLATES: tuple[tuple[str, dict[str, Any]], ...] = (
    (
        "tickets",
        {
            "event_id": "pp-e1",
            "type": "ticket.created",
            "occurred_at": _NOW,
            "ticket_id": "pp-T1",
            "channel": "email",
            "queue": "billing",
            "priority": "high",
            "requester_id": "pp-cust",
        },
    ),
    (
        "tickets",
        {
            "event_id": "pp-e2",
            "type": "ticket.replied",
            "occurred_at": _NOW,
            "ticket_id": "pp-T1",
            "author_role": "agent",
            "public": True,
            "agent_id": "pp-agent",
        },
    ),
    (
        "tickets",
        {
            "event_id": "pp-e3",
            "type": "ticket.status_changed",
            "occurred_at": _NOW,
            "ticket_id": "pp-T1",
            "status": "solved",
        },
    ),
    (
        "chats",
        {
            "event_id": "pp-e4",
            "type": "chat.requested",
            "occurred_at": _NOW,
            "chat_id": "pp-C1",
            "queue": "sales",
            "priority": "normal",
        },
    ),
    (
        "chats",
        {
            "event_id": "pp-e5",
            "type": "chat.accepted",
            "occurred_at": _NOW,
            "chat_id": "pp-C1",
            "agent_id": "pp-agent",
        },
    ),
    ("chats", {"event_id": "pp-e6", "type": "chat.abandoned", "occurred_at": _NOW, "chat_id": "c"}),
    (
        "chats",
        {
            "event_id": "pp-e7",
            "type": "chat.ended",
            "occurred_at": _NOW,
            "chat_id": "pp-C1",
            "ended_by": "customer",
        },
    ),
    (
        "surveys",
        {
            "event_id": "pp-e8",
            "type": "survey.responded",
            "occurred_at": _NOW,
            "kind": "csat",
            "score": 4,
            "ticket_id": "pp-T1",
            "channel": "email",
            "queue": "billing",
            "priority": "high",
        },
    ),
)

_json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
)
#: any JSON document
_json = st.recursive(
    _json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5), st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=10,
)
#: a value of the wrong type (or garbage of the right one) for any field
_wrong_value = st.one_of(
    _json_scalars,
    st.lists(_json_scalars, max_size=3),
    st.dictionaries(st.text(max_size=5), _json_scalars, max_size=3),
    st.sampled_from(
        [
            "",
            " ",
            "\x00",
            "\u202e",
            "NaN",
            "1e309",
            "2026-11-23",
            "2026-11-23T01:00:00",  # naive
            "yesterday",
            "9999-99-99T99:99:99Z",
            -1,
            1795395600,  # epoch seconds instead of RFC 3339
            0.5,
            True,
        ]
    ),
)


#: RFC 3339 times that are instants of year 0 or 10000 in UTC (datetime holds neither),
#: with a seven-digit fraction too, which sends a record to the schema's decoder
OUT_OF_RANGE_TIMES = (
    "0001-01-01T00:00:00+14:00",
    "0001-01-01T13:59:59.999999+14:00",
    "0001-01-01T00:00:00.1234567+00:01",
    "9999-12-31T23:59:59-12:00",
    "9999-12-31T23:59:59.9999999-00:01",
    "9999-12-31T12:00:00-23:59",
)


def _key_spelled(draw: st.DrawFn, key: str) -> bytes:
    """``key`` as a JSON string, plain or with its first letter escaped (still ``key``)."""
    if key and draw(st.booleans()):
        return b'"\\u%04x' % ord(key[0]) + orjson.dumps(key)[2:]
    return orjson.dumps(key)


@st.composite
def _mutated_event(draw: st.DrawFn, max_record_bytes: int) -> tuple[str, bytes]:
    """A valid event broken in one to three ways; ``(topic kind, bytes)``."""
    kind, template = draw(st.sampled_from(_TEMPLATES))
    payload = dict(template, event_id=f"pp-{draw(st.integers(0, 10**9))}")
    raw_edits: list[str] = []
    repeated: list[bytes] = []  # members written again after the payload's own
    for _ in range(draw(st.integers(1, 3))):
        how = draw(
            st.sampled_from(
                [
                    "delete",
                    "retype",
                    "garble",
                    "huge",
                    "nested",
                    "nan",
                    "utf8",
                    "type",
                    "topic",
                    "twice",
                    "year0",
                ]
            )
        )
        fields = sorted(payload)
        if how == "delete" and fields:
            del payload[draw(st.sampled_from(fields))]
        elif how == "retype" and fields:
            payload[draw(st.sampled_from(fields))] = draw(_wrong_value)
        elif how == "garble" and fields:
            name = draw(st.sampled_from(fields))
            payload[name] = str(payload[name]) + draw(st.text(min_size=1, max_size=20))
        elif how == "huge" and fields:
            # around the record limit: some over it (too_large), some under it (too long a value)
            size = draw(st.integers(max_record_bytes // 4, max_record_bytes * 2))
            payload[draw(st.sampled_from(fields))] = draw(st.sampled_from("xé€")) * size
        elif how == "nested":
            depth = draw(st.integers(1, 3000))
            raw_edits.append("nested:" + str(depth))
        elif how == "nan":
            raw_edits.append("nan:" + draw(st.sampled_from(["NaN", "Infinity", "-Infinity"])))
        elif how == "utf8":
            raw_edits.append("utf8:" + draw(st.sampled_from(["ff", "c3", "eda080", "c0af"])))
        elif how == "type":
            payload["type"] = draw(
                st.sampled_from(["ticket.merged", "TICKET.CREATED", "chat.", "", "survey"])
                | st.text(max_size=20)
            )
        elif how == "twice":  # a key written twice (invalid_json), here or in an extra field
            if fields and draw(st.integers(0, 3)):
                name = draw(st.sampled_from(fields))
                again = payload[name] if draw(st.booleans()) else draw(_wrong_value)
                repeated.append(_key_spelled(draw, name) + b":" + orjson.dumps(again))
            else:
                repeated.append(b'"x":{"a":1,' + _key_spelled(draw, "a") + b":2}")
        elif how == "year0":  # valid RFC 3339, but out of datetime's range in UTC
            payload["occurred_at"] = draw(st.sampled_from(OUT_OF_RANGE_TIMES))
        else:  # a whole valid event on the wrong topic is rejected as wrong_topic
            kind = draw(st.sampled_from([k for k in KINDS if k != kind]))
    value = orjson.dumps(payload)
    for member in repeated:
        value = value[:-1] + (b"," if len(value) > 2 else b"") + member + b"}"
    for edit in raw_edits:
        what, _, arg = edit.partition(":")
        if what == "nested":  # deep garbage in an extra field
            depth = int(arg)
            value = value[:-1] + b',"deep":' + b"[" * depth + b"{}" + b"]" * depth + b"}"
        elif what == "nan":  # a literal JSON does not have, in an extra field or a number
            if b'"score":' in value and draw(st.booleans()):
                value = value.replace(b'"score":4', b'"score":' + arg.encode())
            else:
                value = value[:-1] + b',"x":' + arg.encode() + b"}"
        else:  # bytes that are not UTF-8, at a drawn place
            at = draw(st.integers(0, len(value)))
            value = value[:at] + bytes.fromhex(arg) + value[at:]
    return kind, value


def _poison_value(max_record_bytes: int) -> st.SearchStrategy[tuple[str, bytes]]:
    kind = st.sampled_from(KINDS)
    return st.one_of(
        st.tuples(kind, st.binary(max_size=300)),
        st.tuples(kind, st.text(max_size=100).map(str.encode)),
        st.tuples(kind, _json.map(orjson.dumps)),
        _mutated_event(max_record_bytes),
        _mutated_event(max_record_bytes),
        _mutated_event(max_record_bytes),
    )


def expected_reason(kind: str, value: bytes, max_record_bytes: int) -> str | None:
    """Why the worker must reject ``value`` on ``kind``'s topic; ``None`` if it may accept it.

    Judged without a clock, so a record kept here is rejected whenever it is read.
    """
    try:
        event = decode(value, max_bytes=max_record_bytes, now_s=None)
    except RejectedEvent as error:
        return error.reason
    return None if event.type.startswith(_TYPE_PREFIX[kind]) else "wrong_topic"


def draw_poison(count: int, *, max_record_bytes: int, per_example: int = 50) -> list[Poison]:
    """``count`` records the worker must reject, drawn deterministically by hypothesis.

    Drawn ``per_example`` at a time over as many examples as it takes (one example cannot
    hold thousands of draws); a draw the worker could accept is drawn again.
    """
    drawn: list[Poison] = []
    strategy = st.tuples(_poison_value(max_record_bytes), st.binary(min_size=1, max_size=16))

    @hypothesis_settings(
        max_examples=math.ceil(count / per_example),
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(st.data())
    def collect(data: st.DataObject) -> None:
        batch: list[Poison] = []
        while len(batch) < per_example:
            (kind, value), key = data.draw(strategy)
            reason = expected_reason(kind, value, max_record_bytes)
            if reason is not None:
                batch.append(Poison(Record(kind, key, value, None), reason))
        drawn.extend(batch)  # only whole examples: one that overran is left out

    collect()
    assert len(drawn) >= count, f"drew only {len(drawn)} poison records of {count}"
    return drawn[:count]
