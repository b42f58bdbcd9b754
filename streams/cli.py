"""``deskpulse`` — the command line.

    deskpulse worker                       run the service (agents, /metrics, /kpis)
    deskpulse ingest                       take webhooks (events, Zendesk, Intercom) to Kafka
    deskpulse demo                         embedded broker + Redis + worker + traffic
    deskpulse kpis --window 1h [--at T] [--by channel,queue | --by agent] [--json]
    deskpulse simulate ...                 realistic traffic to Kafka or a JSONL file
    deskpulse produce FILE.jsonl           publish a file of events to the input topics
    deskpulse replay                       fast backfill straight from the input topics
    deskpulse state check                  the stored state against the group and the topics
    deskpulse state reset --yes            clear it: start empty where the group is

Settings come from the environment (``DESKPULSE_*``) and ``.env``; a bad one stops the
command with one line naming it and exit status 2.

Each command imports what it needs when it runs: ``deskpulse kpis`` has a budget for its
whole process (200 ms), so it loads the settings, the store and the query, and no Kafka
client, Faust, exporter or web server (``tests/unit/test_cli.py`` checks it).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from deskpulse.models.errors import DeskpulseError, SettingsError

if TYPE_CHECKING:
    from deskpulse.models.settings import Settings

__all__ = ["main"]

log = logging.getLogger("deskpulse")


def _parser() -> argparse.ArgumentParser:
    from deskpulse.streams import tools
    from deskpulse.streams.tools import Bounded

    parser = argparse.ArgumentParser(
        prog="deskpulse",
        description="Live, exact customer-support KPIs from a Kafka event stream.",
    )
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning"],
        help="how much the command logs on stderr: debug, info or warning (default info)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser(
        "worker",
        help="run the stream processor and its web endpoints",
        description="Run the stream processor: the agents, /metrics, /kpis, /healthz and "
        "/readyz, breach checks and snapshots, until SIGINT or SIGTERM. Settings come from "
        "DESKPULSE_* and .env.",
    )
    commands.add_parser(
        "ingest",
        help="take events and Zendesk/Intercom webhooks over HTTP to the input topics",
        description="Serve POST /ingest/events, /ingest/zendesk and /ingest/intercom on "
        "DESKPULSE_INGEST_HOST:DESKPULSE_INGEST_PORT (default 127.0.0.1:6067): each request "
        "is answered once the broker acknowledged its records. A non-loopback address needs "
        "DESKPULSE_INGEST_TOKEN.",
    )
    demo = commands.add_parser(
        "demo",
        help="its own broker and Redis, a day of simulated history replayed, the worker, "
        "and live simulated traffic",
        description="Start an embedded broker and redis-server of its own on free loopback "
        "ports (files under .deskpulse/, fresh each run), backfill the last 24 h of a "
        "simulated helpdesk through the replay path, start the worker and go on with live "
        "simulated traffic. A broker or Redis named in the settings "
        "(DESKPULSE_KAFKA_BOOTSTRAP, DESKPULSE_REDIS_URL) is used when it answers. "
        "Ctrl-C or SIGTERM stops everything it started.",
    )
    demo.add_argument(
        "--rate",
        type=Bounded(float, 0.1, 200.0),
        default=1.0,
        metavar="R",
        help="average events per second of the simulated helpdesk over a day, 0.1 to 200 "
        "(default 1; office hours and weekends make the rate of the moment differ, and the "
        "banner states it). The 24 h backfill is about 86,400 R records",
    )
    demo.add_argument(
        "--seed",
        type=Bounded(int, 0, 2**32 - 1),
        default=7,
        metavar="N",
        help="seed of the simulation, 0 to 4294967295 (default 7)",
    )
    demo.add_argument(
        "--use-existing",
        action="store_true",
        help="use the broker and Redis at DESKPULSE_KAFKA_BOOTSTRAP and DESKPULSE_REDIS_URL "
        "(defaults 127.0.0.1:9092 and redis://127.0.0.1:6379/0), which must answer, "
        "instead of starting its own; the KPI state goes under DESKPULSE_REDIS_PREFIX",
    )
    kpis = commands.add_parser(
        "kpis",
        help="read KPIs from the store (no worker needed)",
        description="Read the KPI document of one window from Redis and print it as a table "
        "(or JSON). Exit status 2 for a window that cannot be read, 1 when Redis cannot.",
    )
    kpis.add_argument(
        "--window",
        default="1h",
        help="window width as <int>(s|m|h|d), a multiple of DESKPULSE_BUCKET_SECONDS, "
        "at most DESKPULSE_RETENTION (default 1h)",
    )
    kpis.add_argument(
        "--at",
        default=None,
        help="window end, RFC 3339 with an offset, within retention and at most "
        "DESKPULSE_MAX_FUTURE ahead (default now)",
    )
    kpis.add_argument(
        "--by",
        default="",
        help="group by any of channel,queue,priority, comma-separated, each once, or by "
        "agent alone (default: one group of everything)",
    )
    kpis.add_argument("--json", action="store_true", help="print the JSON document")
    state = commands.add_parser(
        "state",
        help="check or reset the state kept in Redis",
        description="Check the state under DESKPULSE_REDIS_PREFIX against the consumer "
        "group and the input topics, or reset it.",
    )
    state_commands = state.add_subparsers(dest="state_command", required=True, metavar="ACTION")
    state_commands.add_parser(
        "check",
        help="compare the state with the consumer group's offsets and the topics",
        description="Compare the state with the consumer group's committed offsets and the "
        "input topics, writing nothing: exit 0 when they match, 1 with the reason.",
    )
    reset = state_commands.add_parser(
        "reset",
        help="delete the state under DESKPULSE_REDIS_PREFIX and start empty from the "
        "consumer group's offsets (events before them are not in the KPIs)",
    )
    reset.add_argument("--yes", action="store_true", help="really delete it")
    reset.add_argument(
        "--note",
        default="",
        help="why, recorded with the reset in P:config (free text, e.g. a ticket number)",
    )
    tools.add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``deskpulse`` console script."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    from deskpulse.streams.logs import install_repeat_throttle

    install_repeat_throttle()
    try:
        if args.command == "kpis":
            return _kpis_command(args)
        from deskpulse.models.settings import load_settings
        from deskpulse.streams.record_batches import install as report_undecodable_batches

        # a batch no codec can read stops the worker and the replay naming where it is
        report_undecodable_batches()
        settings = load_settings()
        if args.command == "worker":
            return run_worker(settings, args.log_level)
        if args.command == "ingest":
            return run_ingest(settings)
        if args.command == "demo":
            from deskpulse.streams.devtools.demo import run_demo

            if args.log_level != "debug":  # the demo's lines, not the Kafka client's
                logging.getLogger("aiokafka").setLevel(logging.WARNING)

            return run_demo(
                settings, rate=args.rate, seed=args.seed, use_existing=args.use_existing
            )
        if args.command == "state":
            return _state(settings, args)
        from deskpulse.streams import tools

        return tools.run(args, settings)
    except SettingsError as error:
        print(f"deskpulse: bad setting {error}", file=sys.stderr)
        return 2
    except DeskpulseError as error:
        print(f"deskpulse: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _kpis_command(args: argparse.Namespace) -> int:
    """``deskpulse kpis``: one read of the store, its process timed from start to exit.

    It reads no Kafka record, so nothing of the Kafka client is prepared (or imported); the
    collector is paused while the command imports (see :func:`~streams.runtime.one_shot_gc`).
    """
    from deskpulse.streams.runtime import one_shot_gc

    with one_shot_gc():
        import asyncio

        from deskpulse.models.settings import load_settings

        settings = load_settings()
        return asyncio.run(_kpis(settings, args))


def _state(settings: Settings, args: argparse.Namespace) -> int:
    import asyncio

    from deskpulse.models.errors import StateError
    from deskpulse.streams.integrity import check_state, reset_state

    prefix, where = settings.redis_prefix, f"deskpulse state {args.state_command}"
    if args.log_level != "debug":  # the answer is one line; the client's chatter is not
        logging.getLogger("aiokafka").setLevel(logging.WARNING)
    if args.state_command == "check":
        try:
            store, warnings = asyncio.run(check_state(settings))
        except StateError as error:
            print(f"{where}: {error}", file=sys.stderr)
            return 1
        for warning in warnings:
            print(f"{where}: warning: {warning}", file=sys.stderr)
        print(
            f"{where}: the state under prefix {prefix!r} (generation {store.generation}) "
            f"matches the consumer group {settings.app_id!r} and the input topics"
        )
        return 0
    if not args.yes:
        print(
            f"{where}: this deletes every key under prefix {prefix!r} in Redis and starts "
            f"the state empty from the consumer group {settings.app_id!r}'s offsets; stop "
            "the workers, then run it again with --yes (or rebuild the state from the "
            "retained topics with `deskpulse replay` instead)",
            file=sys.stderr,
        )
        return 2
    note = args.note or "deskpulse state reset --yes: started empty"
    summary = asyncio.run(reset_state(settings, note=note))
    print(
        f"{where}: deleted {summary.deleted_keys} keys under prefix {prefix!r}; the state "
        f"starts empty (generation {summary.generation}), {summary.started_at_group} "
        f"partitions after the consumer group {settings.app_id!r}'s committed offsets; "
        "start (or restart) the workers"
    )
    return 0


def run_worker(settings: Settings, log_level: str = "info") -> int:
    """Run the Faust worker until SIGINT/SIGTERM (which flush and commit first)."""
    import asyncio

    import faust

    from deskpulse.streams.app import create_app, probe_redis
    from deskpulse.streams.logs import install_repeat_throttle
    from deskpulse.streams.runtime import short_switch_interval, tune_gc

    class Worker(faust.Worker):
        def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
            super().on_setup_root_logger(logger, level)
            # Faust replaced the root handlers: throttle aiokafka's repeats on its own too
            install_repeat_throttle(logger)

    # Credentials and TLS problems are settings problems: fail now, with one line. An
    # unreachable Redis is not: the worker starts, reports it, and retries with backoff.
    probe_web_address(settings)
    if settings.ingest:
        probe_address(settings.ingest_host, settings.ingest_port, "INGEST")
    asyncio.run(probe_redis(settings))
    # An unreachable broker is waited for inside the app (with backoff, a log line per
    # attempt, not a crash loop), after its web server started: /healthz, /readyz and
    # /metrics answer from the start.
    app = create_app(settings)
    worker = Worker(app, loglevel=log_level, quiet=True, redirect_stdouts=False)
    tune_gc()
    short_switch_interval()  # Faust's consumer thread, the refresh's beside its event loop
    worker.execute_from_commandline()
    return 0


def run_ingest(settings: Settings) -> int:
    """Serve the ingest routes until SIGINT/SIGTERM (requests in flight are answered first)."""
    import asyncio
    import signal

    from deskpulse.streams.ingest import IngestServer

    probe_address(settings.ingest_host, settings.ingest_port, "INGEST")

    async def serve() -> None:
        server = IngestServer(settings)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for number in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(number, stop.set)
        await server.start()
        try:
            await stop.wait()
        finally:
            log.info("ingest: stopping")
            await server.stop()

    asyncio.run(serve())
    return 0


def probe_web_address(settings: Settings) -> None:
    """Raise :class:`SettingsError` if the web server cannot listen where the settings say
    (an address this host does not have, a port in use or reserved), before Faust tries."""
    probe_address(settings.web_host, settings.web_port, "WEB")


def probe_address(host: str, port: int, setting: str) -> None:
    """Raise :class:`SettingsError` naming ``DESKPULSE_<setting>_HOST`` or ``_PORT`` if a
    server cannot listen on ``host``:``port``."""
    import errno
    import socket

    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except OSError as error:
        raise SettingsError(
            f"DESKPULSE_{setting}_HOST", f"cannot resolve {host!r}: {error}"
        ) from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does
        try:
            probe.bind(address)
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise SettingsError(
                    f"DESKPULSE_{setting}_PORT",
                    f"port {port} is in use on {host} (another worker?)",
                ) from None
            if error.errno == errno.EACCES:
                raise SettingsError(
                    f"DESKPULSE_{setting}_PORT", f"listening on port {port} is not allowed here"
                ) from None
            raise SettingsError(
                f"DESKPULSE_{setting}_HOST", f"cannot listen on {host}:{port}: {error.strerror}"
            ) from None


async def _kpis(settings: Settings, args: argparse.Namespace) -> int:
    import orjson
    from redis.exceptions import RedisClusterException, RedisError

    from deskpulse.models.errors import InvalidQuery, StateError
    from deskpulse.streams.core import CoreConfig
    from deskpulse.streams.query import parse_query, read_document
    from deskpulse.streams.redis_client import connect
    from deskpulse.streams.store import Store

    # what the window may be is settled before Redis is touched, as GET /kpis does
    try:
        query = parse_query(
            args.window,
            args.at,
            args.by,
            bucket_seconds=settings.bucket_seconds,
            retention_s=settings.retention,
            max_future_s=settings.max_future,
            now_s=time.time(),
        )
    except InvalidQuery as error:
        print(f"deskpulse kpis: --{error}", file=sys.stderr)
        return 2
    redis = connect(settings, purpose="command")
    try:
        store = Store(redis, settings.redis_prefix, CoreConfig.from_settings(settings))
        await store.check_readable()
        started = time.perf_counter()
        document = await read_document(store, query)
        elapsed = time.perf_counter() - started
    except InvalidQuery as error:  # a window wholly older than the state kept
        print(f"deskpulse kpis: --{error}", file=sys.stderr)
        return 2
    except StateError as error:  # no state, or partly lost: zeros would be wrong numbers
        print(f"deskpulse kpis: {error}", file=sys.stderr)
        return 1
    except (OSError, RedisError, RedisClusterException) as error:
        print(f"deskpulse kpis: cannot read Redis: {error}", file=sys.stderr)
        return 1
    finally:
        await redis.aclose()
    if args.json:
        sys.stdout.buffer.write(orjson.dumps(document) + b"\n")
    else:
        print(render_table(document))
        print(f"({elapsed * 1000:.1f} ms)", file=sys.stderr)
    return 0


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if unit == "%":
            return f"{value * 100:.1f}%"
        if unit == "s":
            return _duration(value)
        return f"{value:.2f}"
    return str(value)


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


def render_table(document: dict[str, Any]) -> str:
    """A readable table of the KPI document, one row per group."""
    if document["by"] == ["agent"]:
        return _agent_table(document)
    header = [
        "group",
        "tickets",
        "FRT p50",
        "FRT p90",
        "in target",
        "chats",
        "abandon",
        "svc level",
        "CSAT",
        "NPS",
        "CES",
    ]
    rows = [header]
    for group in document["groups"]:
        name = ",".join(f"{k}={v}" for k, v in group["key"].items()) or "all"
        fr, chats = group["first_response"], group["chats"]
        rows.append(
            [
                name,
                str(group["tickets_created"]),
                _fmt(fr["p50_seconds"], "s"),
                _fmt(fr["p90_seconds"], "s"),
                _fmt(fr["within_target_ratio"], "%"),
                str(chats["requested"]),
                _fmt(chats["abandonment_ratio"], "%"),
                _fmt(chats["service_level_ratio"], "%"),
                _fmt(group["csat"]["ratio"], "%"),
                _fmt(group["nps"]["score"]),
                _fmt(group["ces"]["average"]),
            ]
        )
    return _lay_out(document["window"], rows)


def _agent_table(document: dict[str, Any]) -> str:
    """:func:`render_table` of a document grouped by agent: one row per agent."""
    header = ["agent", "FRT n", "FRT p50", "next n", "chats", "handle p50", "CSAT", "solved"]
    header += ["status", "occupancy"]
    rows = [header]
    for group in document["groups"]:
        fr, chats, presence = group["first_response"], group["chats"], group["presence"]
        rows.append(
            [
                group["key"]["agent"],
                str(fr["count"]),
                _fmt(fr["p50_seconds"], "s"),
                str(group["next_response"]["count"]),
                str(chats["answered"]),
                _fmt(chats["handle_p50_seconds"], "s"),
                _fmt(group["csat"]["ratio"], "%"),
                str(group["tickets_solved"]),
                presence["status"] or "-",
                _fmt(presence["occupancy_ratio"], "%"),
            ]
        )
    return _lay_out(document["window"], rows)


def _lay_out(window: dict[str, Any], rows: list[list[str]]) -> str:
    """The window's line, then ``rows`` (the header first) in aligned columns."""
    header = rows[0]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [f"window {window['start']} .. {window['end']} ({window['seconds']}s)"]
    for index, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
