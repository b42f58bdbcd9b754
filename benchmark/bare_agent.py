"""The ceiling: the worker's Faust app stripped to agents that only count what they take.

Same app class (so the same Kafka fetch wait), app options (one function builds the
worker's and this app's: :func:`streams.app.faust_app_options`), topics, serializers and
``noack_take(batch_size, batch_within)`` as :func:`streams.app.create_app`, and it
acknowledges every event it takes, as the worker does once a batch is committed; no
decoding, no Redis. Every quarter second the counts go to the JSON file named by ``BENCH_BARE_OUT``:
events seen, when the first batch came and how big it was, when the last one came, and
this process's CPU seconds at those moments.
With ``BENCH_BARE_MARKERS`` set, it also notes when it first saw each record whose key
starts with that prefix (the freshness markers of :mod:`benchmark.traffic`): the latency
floor that the broker and Faust alone impose.

    python -m benchmark.bare_agent        (settings from DESKPULSE_*)
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import faust
import orjson

from deskpulse.models.settings import load_settings
from deskpulse.streams.app import DeskpulseApp, faust_app_options
from deskpulse.streams.runtime import short_switch_interval, tune_gc

__all__ = ["create_bare_app"]


def create_bare_app(settings: Any, out_path: Path) -> faust.App:
    app = DeskpulseApp(**faust_app_options(settings))  # the worker's app, as it is
    seen: dict[str, Any] = {"count": 0, "batches": 0, "first_t": None, "first_n": 0}
    marker_prefix = os.environ.get("BENCH_BARE_MARKERS", "").encode()
    markers: dict[str, float] = {}
    if marker_prefix:
        seen["markers"] = markers

    def make_agent(name: str) -> None:
        topic = app.topic(
            name,
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
            partitions=settings.topic_partitions,
            internal=False,
        )

        async def agent(stream: Any) -> None:
            async for events in stream.noack_take(settings.batch_size, settings.batch_within):
                for event in events:
                    await stream.ack(event)
                now = time.time()
                seen["count"] += len(events)
                seen["batches"] += 1
                if seen["first_t"] is None:
                    seen["first_t"] = now
                    seen["first_n"] = seen["count"]
                    seen["first_cpu"] = time.process_time()
                seen["last_t"] = now
                seen["last_cpu"] = time.process_time()
                if marker_prefix:
                    for event in events:
                        key = event.message.key
                        if key and key.startswith(marker_prefix):
                            markers.setdefault(key.decode(), now)

        agent.__name__ = "bare_" + name.replace(".", "_").replace("-", "_")
        agent.__qualname__ = agent.__name__
        app.agent(topic, name=f"bare.{name}", concurrency=1)(agent)

    for name in settings.input_topics:
        make_agent(name)

    @app.timer(interval=0.25)  # type: ignore[untyped-decorator]
    async def _dump() -> None:
        tmp = out_path.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps(seen))
        tmp.replace(out_path)

    return app


def main() -> None:
    settings = load_settings()
    app = create_bare_app(settings, Path(os.environ["BENCH_BARE_OUT"]))
    worker = faust.Worker(app, loglevel="warning", quiet=True, redirect_stdouts=False)
    tune_gc()  # as `deskpulse worker` does
    short_switch_interval()
    worker.execute_from_commandline()


if __name__ == "__main__":
    main()
