"""Business calendars and SLA policies: the shapes of ``DESKPULSE_SCHEDULES`` and
``DESKPULSE_SLA_POLICIES`` (docs/kpis.md, "Business calendars and SLA policies").

Both are validated when the settings are built, so a bad schedule or policy stops the
process at start with one line naming it. The business-time arithmetic on a schedule lives
in :mod:`deskpulse.streams.calendar`; :func:`policy_for` picks a ticket's policy.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import date
from itertools import pairwise
from typing import Annotated, Any, Literal, cast, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from deskpulse.models.events import Channel, Dimension, Priority, TicketStatusChanged

__all__ = [
    "SLA_METRICS",
    "TICKET_STATUSES",
    "WEEKDAYS",
    "Policy",
    "PolicyMatch",
    "Schedule",
    "SlaMetric",
    "default_policy",
    "parse_interval",
    "policy_for",
]

#: The weekday keys of a schedule's ``hours``, Monday first (``date.weekday()`` order).
WEEKDAYS: tuple[str, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

SlaMetric = Literal["first_response", "next_response", "resolution"]
SLA_METRICS: tuple[SlaMetric, ...] = get_args(SlaMetric)

#: The statuses of the event schema (``ticket.status_changed``), the ones a policy may pause on.
TICKET_STATUSES: tuple[str, ...] = get_args(TicketStatusChanged.model_fields["status"].annotation)

# A name shows in alerts, labels and log lines: no control characters.
Name = Annotated[
    str, StringConstraints(min_length=1, max_length=100, pattern=r"^[^\x00-\x1f\x7f]+$")
]

_CLOCK = r"(\d{2}):(\d{2})"
_INTERVAL = re.compile(rf"^{_CLOCK}-{_CLOCK}$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def parse_interval(text: str) -> tuple[int, int]:
    """``"09:00-17:30"`` as minutes of the local day, ``(540, 1050)``; ``24:00`` ends the day."""
    match = _INTERVAL.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not an interval like 09:00-17:30")
    start_h, start_m, end_h, end_m = (int(part) for part in match.groups())
    if start_h > 23 or start_m > 59:
        raise ValueError(f"{text!r} starts at no time of day")
    if end_m > 59 or end_h > 24 or (end_h == 24 and end_m):
        raise ValueError(f"{text!r} ends at no time of day (24:00 is the latest)")
    start, end = start_h * 60 + start_m, end_h * 60 + end_m
    if end <= start:
        raise ValueError(f"{text!r} does not end after it starts")
    return start, end


def _clock(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


class Schedule(BaseModel):
    """A business calendar: open hours per weekday in a time zone, and closed holidays."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    timezone: str
    # local intervals per weekday key; a day not listed is closed
    hours: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    # local dates closed all day, ISO (YYYY-MM-DD)
    holidays: tuple[date, ...] = ()

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            raise ValueError(
                f"unknown time zone {value!r}: use an IANA name like Europe/Berlin"
            ) from None
        return value

    @field_validator("hours")
    @classmethod
    def _hours(cls, value: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
        for day, texts in value.items():
            if day not in WEEKDAYS:
                raise ValueError(f"unknown day {day!r}: the days are {', '.join(WEEKDAYS)}")
            try:
                intervals = sorted(parse_interval(text) for text in texts)
            except ValueError as error:
                raise ValueError(f"{day}: {error}") from None
            for (start, end), (next_start, next_end) in pairwise(intervals):
                if next_start < end:
                    raise ValueError(
                        f"{day}: {_clock(start)}-{_clock(end)} overlaps "
                        f"{_clock(next_start)}-{_clock(next_end)}"
                    )
        if not any(value.values()):
            raise ValueError("is never open: list the open hours of at least one day")
        return value

    @field_validator("holidays", mode="before")
    @classmethod
    def _holidays(cls, value: Any) -> Any:
        if isinstance(value, str) or not isinstance(value, Sequence):
            raise ValueError("must be a list of dates like 2026-12-24")
        parsed = []
        for item in value:
            if isinstance(item, date):
                parsed.append(item)
                continue
            if not isinstance(item, str) or not _DATE.match(item):
                raise ValueError(f"bad holiday {item!r}: write a date like 2026-12-24")
            try:
                parsed.append(date.fromisoformat(item))
            except ValueError as error:
                raise ValueError(f"bad holiday {item!r}: {error}") from None
        return tuple(parsed)

    def weekly_minutes(self) -> tuple[tuple[tuple[int, int], ...], ...]:
        """The open intervals of each weekday (Monday first) as sorted minutes of the day."""
        return tuple(
            tuple(sorted(parse_interval(text) for text in self.hours.get(day, ())))
            for day in WEEKDAYS
        )


class PolicyMatch(BaseModel):
    """Which tickets a policy is for: a key absent matches every value."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    channel: tuple[Channel, ...] | None = None
    queue: tuple[Dimension, ...] | None = None
    priority: tuple[Priority, ...] | None = None

    @field_validator("channel", "queue", "priority")
    @classmethod
    def _not_empty(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None and not value:
            raise ValueError("an empty list matches no ticket: leave the key out to match all")
        return value

    def fits(self, channel: str, queue: str, priority: str) -> bool:
        """Whether a ticket with these dimensions (at its creation) is matched."""
        return (
            (self.channel is None or channel in self.channel)
            and (self.queue is None or queue in self.queue)
            and (self.priority is None or priority in self.priority)
        )


class Policy(BaseModel):
    """An SLA policy: the tickets it matches, its calendar, targets, pauses and warnings."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Name
    match: PolicyMatch = PolicyMatch()
    # a name in DESKPULSE_SCHEDULES; None: calendar time, around the clock
    schedule: str | None = None
    # seconds per metric per priority; a priority without a target has no instance
    targets: dict[SlaMetric, dict[Priority, Annotated[int, Field(gt=0)]]]
    # statuses that stop the resolution clock
    pause: tuple[str, ...] = ("pending",)
    # fractions of a target at which an at-risk warning is due
    warn_at: tuple[float, ...] = (0.75,)

    @field_validator("pause")
    @classmethod
    def _pause(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for status in value:
            if status not in TICKET_STATUSES:
                raise ValueError(
                    f"unknown status {status!r}: the statuses are {', '.join(TICKET_STATUSES)}"
                )
        return tuple(dict.fromkeys(value))

    @field_validator("warn_at")
    @classmethod
    def _warn_at(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        for fraction in value:
            if not 0 < fraction < 1:
                raise ValueError(f"{fraction} is not a fraction between 0 and 1 (exclusive)")
        if list(value) != sorted(set(value)):
            raise ValueError("fractions must be in increasing order, each once")
        return value

    def target_seconds(self, metric: SlaMetric, priority: str) -> int | None:
        """The target of a metric for a priority, ``None`` when the policy sets none."""
        by_priority = cast("dict[str, int]", self.targets.get(metric, {}))
        return by_priority.get(priority)


def default_policy(first_response_targets: Mapping[Priority, int]) -> Policy:
    """The one policy in force when ``DESKPULSE_SLA_POLICIES`` is absent: first response
    within ``DESKPULSE_FIRST_RESPONSE_TARGETS``, calendar time, no warnings (v1)."""
    return Policy(
        name="default",
        targets={"first_response": dict(first_response_targets)},
        warn_at=(),
    )


def policy_for(
    policies: Sequence[Policy], channel: str, queue: str, priority: str
) -> Policy | None:
    """The first policy matching a ticket's dimensions at creation; ``None``: no SLA."""
    for policy in policies:
        if policy.match.fits(channel, queue, priority):
            return policy
    return None
