"""The one error hierarchy of deskpulse.

    DeskpulseError
    ├── SettingsError          a setting has a bad value; raised at start, names the setting
    ├── RejectedEvent          an input record failed decoding; carries ``reason`` (machine
    │                          readable: the ``reason`` label and the dead-letter header)
    ├── InvalidQuery           a KPI read asks for a window that cannot be served; names
    │                          the parameter (``window``, ``at``, ``by``): HTTP 400, exit 2
    ├── ReadUnavailable        a KPI read cannot be served now (too many reads waiting,
    │                          Redis unreachable); ``retry_after_s``: HTTP 503
    ├── DependencyError        a dependency misbehaves
    │   ├── BrokerUnavailable  the Kafka broker cannot be reached
    │   │   └── DeadLetterUnavailable  the dead-letter topic did not take some records:
    │   │                      ``pending`` are those to send again (no others)
    │   └── UndecodableBatch   the broker served a record batch no client can decode (its
    │                          producer compressed it wrongly): where it is
    ├── Abandoned              the process is stopping: work in flight was given up
    │                          unacknowledged; the next start applies it from the fence
    ├── StateError             the Redis state is not what the input topics and the consumer
    │   │                      group were applied to: applying more would be silently wrong;
    │   │                      ``reason`` (machine readable), ``fix`` (what the operator runs)
    │   ├── StateLost          Redis lost state it had acknowledged (restarted without
    │   │                      persistence, flushed, an older snapshot): ``replayable``
    │   └── TopicsReplaced     the fence lies past the end of a topic's log: the topics are
    │                          not the ones the state was built from (recreated, a broker
    │                          that lost its log); ``replayable`` is false
    └── EmbeddedStartError     the embedded broker or redis-server failed to start

Behaviour is carried as attributes (``reason``, ``replayable``, ``retry_after_s``), never
parsed out of messages. Whether a failure is retried is decided where it is caught: each
call of ``retry_forever`` names the error classes it backs off on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = [
    "Abandoned",
    "BrokerUnavailable",
    "DeadLetterUnavailable",
    "DependencyError",
    "DeskpulseError",
    "EmbeddedStartError",
    "InvalidQuery",
    "ReadUnavailable",
    "RejectedEvent",
    "SettingsError",
    "StateError",
    "StateLost",
    "TopicsReplaced",
    "UndecodableBatch",
]


class DeskpulseError(Exception):
    """Base of every error deskpulse raises on purpose."""


class SettingsError(DeskpulseError):
    """A setting has a bad value. ``str()`` is the one line shown at start."""

    def __init__(self, setting: str, message: str) -> None:
        self.setting = setting
        super().__init__(f"{setting}: {message}")


class RejectedEvent(DeskpulseError):
    """An input record that cannot be applied; ``reason`` is a stable code."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


class InvalidQuery(DeskpulseError):
    """A KPI read whose ``parameter`` cannot be served as asked; refused before it is read."""

    def __init__(self, parameter: str, message: str) -> None:
        self.parameter = parameter
        self.message = message
        # the message goes on from the parameter's name: "window 7d is longer than ..."
        super().__init__(f"{parameter} {message}")


class ReadUnavailable(DeskpulseError):
    """A KPI read that cannot be served now; asking again after ``retry_after_s`` may work."""

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(message)


class DependencyError(DeskpulseError):
    """The broker misbehaves (Redis errors are redis-py's own, retried where caught)."""


class BrokerUnavailable(DependencyError):
    """The Kafka broker cannot be reached."""


class DeadLetterUnavailable(BrokerUnavailable):
    """Some dead letters were not acknowledged; ``pending`` are those, in the order given.

    A retry sends ``pending`` only: the others are on the dead-letter topic already.
    """

    def __init__(self, message: str, pending: Sequence[Any]) -> None:
        self.pending = list(pending)
        super().__init__(message)


class UndecodableBatch(DependencyError):
    """A record batch the broker served cannot be decoded: where it is, and why.

    Fetching it again gives the same bytes: the worker stops on it. Kafka refuses such a
    batch when it is produced; a broker that stores it unchecked serves it to every consumer.
    """

    def __init__(self, topic: str, partition: int, offset: int, cause: BaseException) -> None:
        self.topic, self.partition, self.offset = topic, partition, offset
        super().__init__(
            f"cannot decode the record batch at offset {offset} of {topic} partition "
            f"{partition} ({type(cause).__name__}: {cause}): its producer wrote it "
            "compressed wrongly, and a broker that checks batches (Kafka does) would have "
            "refused it; move the consumer group past it (README: "
            "runbook-deskpulseundecodablebatch)"
        )


class Abandoned(DeskpulseError):
    """The process is stopping and gave up work in flight without acknowledging it.

    Nothing of it counts as applied: the offsets were not committed, so the next start
    reads it again and the Redis fence applies exactly what was not applied yet.
    """


class StateError(DeskpulseError):
    """The Redis state does not match the input topics or the consumer group.

    ``reason`` is a stable code (``config_missing``, ``generation_changed``,
    ``partition_lost``, ``rolled_back``, ``behind_group``, ``beyond_log``); ``detail`` says
    what was found, ``fix`` what the operator does about it. ``str()`` is one line.
    """

    #: whether ``deskpulse replay`` can rebuild a good state from the input topics
    replayable: bool = False

    def __init__(self, reason: str, detail: str, fix: str) -> None:
        self.reason = reason
        self.detail = detail
        self.fix = fix
        super().__init__(f"{detail}; {fix}")


class StateLost(StateError):
    """Redis no longer holds state that Kafka offsets were committed for."""

    replayable = True


class TopicsReplaced(StateError):
    """The state was built from other topics than the broker now has under these names."""


class EmbeddedStartError(DeskpulseError):
    """The embedded broker or redis-server did not come up; the message has its log tail."""
