"""The outputs process: the KPI snapshot rebuilt, and published, beside the engine process.

``python -m deskpulse.streams.outputs [PARENT_PID]`` is a child of the worker, started with
the engine process (``DESKPULSE_ENGINE_PROCESS``). The worker asks it, on its timers, for
what the engine process does not do any more: rebuild the KPI snapshot that ``/metrics``
serves (the exposition comes back) and publish the KPI snapshots and the alert rules'
transitions. It serves an :class:`~streams.kpi_engine.OwnOutputs` over the same typed
frames as the engine process (:mod:`streams.offload`), with a Redis connection and a
Kafka producer of its own.

Why a process of its own: with thousands of groups a refresh is hundreds of milliseconds
of Python, and in the engine process it shared the interpreter with the loop that commits
the batches, each waiting for the other in switch-interval slices; the snapshots' messages
were built and sent on that loop. Here the commit never waits behind them.

It holds nothing the batches need: what it publishes is read from Redis, the alert rules'
states are kept there, and the exactly-once argument does not involve it. So if it dies,
the worker goes on applying batches, says so, and starts a new one at the next refresh
(the first refresh of a new one reads everything afresh). It ends with the worker as the
engine process does.
"""

from __future__ import annotations

from deskpulse.streams.offload import main as _main


def main() -> None:
    """``python -m deskpulse.streams.outputs [PARENT_PID]``: the settings come as the first
    frame."""
    _main(outputs=True)


if __name__ == "__main__":
    main()
