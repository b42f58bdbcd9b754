"""``deskpulse worker`` that can be made to lose fetched records, for the stall test
(tests/system/test_hardening_stall.py).

Run as a script. It is the real worker (``deskpulse.streams.cli``) whose app gets one
more timer, from here, driven by files in the directory ``STALL_TEST_CONTROL``:

- ``pause``: stop fetching partition ``STALL_TEST_PARTITION`` of the tickets topic
  (answers ``paused``);
- ``skip``, holding an offset: seek that partition there, past the records produced
  meanwhile, and fetch it again (answers ``skipped``).

The records between are then fetched by nobody and delivered to no agent, as when Faust's
consumer drops records it fetched: the worker's watchdog has to notice and read them again.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from aiokafka.structs import TopicPartition

from deskpulse.models.settings import Settings
from deskpulse.streams import app as app_module
from deskpulse.streams import cli

_create_app = app_module.create_app


def create_app(settings: Settings) -> Any:
    app = _create_app(settings)
    control = Path(os.environ["STALL_TEST_CONTROL"])
    tp = TopicPartition(settings.topic_tickets, int(os.environ["STALL_TEST_PARTITION"]))

    @app.timer(interval=0.1)  # type: ignore[untyped-decorator]
    async def _lose_records() -> None:
        # aiokafka's consumer runs in the loop of Faust's consumer thread: act in there
        thread: Any = app.consumer._thread
        kafka = thread._ensure_consumer()
        if (control / "pause").exists() and not (control / "paused").exists():

            async def pause() -> None:
                kafka.pause(tp)  # fetched no more (and nothing of it is handed on)

            await thread.call_thread(pause)
            (control / "paused").touch()
        if (control / "skip").exists() and not (control / "skipped").exists():
            end = int((control / "skip").read_text())

            async def skip() -> None:
                kafka.seek(tp, end)  # past the records produced meanwhile
                kafka.resume(tp)

            await thread.call_thread(skip)
            (control / "skipped").touch()

    return app


if __name__ == "__main__":
    app_module.create_app = create_app  # the worker command imports it when it runs
    sys.exit(cli.main(["worker", *sys.argv[1:]]))
