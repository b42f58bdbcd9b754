"""Whether the Kafka broker answers the running worker, asked every few seconds.

Nothing else in a running worker finds out in time: Faust's consumer and aiokafka's
producer retry a silent broker on their own, and the lag update waits up to Faust's
request timeout (90 s) for end offsets. So a timer of the worker pings the broker
(:meth:`exporters.kafka.KafkaPublisher.ping`: a metadata request for no topics, over the
producer's own connections, never a new client) every :data:`PROBE_INTERVAL_S`, waiting
:data:`PROBE_TIMEOUT_S` for it. A broker that goes silent is reported at most
``PROBE_INTERVAL_S + PROBE_TIMEOUT_S`` later (``deskpulse_broker_up 0``, ``/readyz`` 503),
and one that answers again at the next probe.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from deskpulse.models.errors import BrokerUnavailable

__all__ = ["PROBE_INTERVAL_S", "PROBE_TIMEOUT_S", "BrokerProbe"]

log = logging.getLogger("deskpulse.broker")

#: How often a running worker asks the broker whether it answers.
PROBE_INTERVAL_S = 5.0
#: How long one ask may wait for the answer before the broker counts as silent (under
#: the interval: the timer's next turn never waits for the last one).
PROBE_TIMEOUT_S = 4.0


class BrokerProbe:
    """The broker's last answer, kept by :meth:`probe`, told to ``on_state`` (up or not).

    ``ping(timeout_s)`` returns once the broker answered and raises (best a
    :class:`BrokerUnavailable` saying whom it asked and what happened) otherwise;
    ``clock`` is monotonic seconds.
    """

    def __init__(
        self,
        ping: Callable[[float], Awaitable[None]],
        on_state: Callable[[bool], None],
        *,
        timeout_s: float = PROBE_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ping = ping
        self._on_state = on_state
        self.timeout_s = timeout_s
        self._clock = clock
        self._answered_s = clock()
        #: what the last probe met, while the broker does not answer (None: it does)
        self.failure: str | None = None
        self._closed = False

    @property
    def up(self) -> bool:
        """Whether the broker answered the last probe."""
        return self.failure is None

    def answered(self) -> None:
        """The broker answered some other way (the worker's start reached it)."""
        self._answered_s = self._clock()

    def close(self) -> None:
        """The worker stops: a probe still out then reports nothing (its client closes)."""
        self._closed = True

    def silent_s(self) -> float:
        """Seconds since the broker last answered."""
        return max(0.0, self._clock() - self._answered_s)

    async def probe(self) -> bool:
        """Ask the broker once; whether it answered. Never raises (but cancellation)."""
        try:
            await self._ping(self.timeout_s)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # whatever kept the answer away: reported, not raised
            if self._closed:
                return False
            failure = str(error) if isinstance(error, BrokerUnavailable) else repr(error)
            if self.failure is None:  # once per outage; aiokafka logs its own attempts
                log.warning(
                    "the Kafka broker does not answer: %s; /readyz answers 503 and "
                    "deskpulse_broker_up is 0 until it does",
                    failure,
                )
            self.failure = failure
            self._on_state(False)
            return False
        if self.failure is not None:
            log.info("the Kafka broker answers again, after %.0f s of silence", self.silent_s())
        self.failure = None
        self._answered_s = self._clock()
        self._on_state(True)
        return True

    def problem(self) -> str | None:
        """The ``/readyz`` problem while the broker does not answer, else ``None``."""
        if self.failure is None:
            return None
        return f"broker: {self.failure} for {self.silent_s():.0f} s"
