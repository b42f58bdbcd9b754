"""The one error hierarchy of deskpulse.

    DeskpulseError
    ├── SettingsError          a setting has a bad value; raised at start, names the setting
    ├── RejectedEvent          an input record failed decoding; carries ``reason`` (machine
    │                          readable: the ``reason`` label and the dead-letter header)
    ├── DependencyError        a dependency misbehaves          (``retriable`` says whether
    │   ├── StoreUnavailable   Redis cannot be reached           backing off and trying
    │   └── BrokerUnavailable  the Kafka broker cannot be reached  again may help)
    └── EmbeddedStartError     the embedded broker or redis-server failed to start

Behaviour is carried as flags (``retriable``), never parsed out of messages.
"""

from __future__ import annotations

__all__ = [
    "BrokerUnavailable",
    "DependencyError",
    "DeskpulseError",
    "EmbeddedStartError",
    "RejectedEvent",
    "SettingsError",
    "StoreUnavailable",
]


class DeskpulseError(Exception):
    """Base of every error deskpulse raises on purpose."""

    retriable: bool = False


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


class DependencyError(DeskpulseError):
    """Redis or the broker misbehaves; retriable errors are retried with backoff."""

    retriable = True


class StoreUnavailable(DependencyError):
    """Redis cannot be reached or refused the command."""


class BrokerUnavailable(DependencyError):
    """The Kafka broker cannot be reached."""


class EmbeddedStartError(DeskpulseError):
    """The embedded broker or redis-server did not come up; the message has its log tail."""
