"""Payloads deskpulse publishes (README.md, "Output topics"), versioned by ``schema_version``.

=====================  =================  ===============================================
topic                  key                payload
=====================  =================  ===============================================
``deskpulse.kpis``     ``1h|*|*|*``       :class:`KpiSnapshot` (compacted: latest per key)
``deskpulse.alerts``   ticket id          :class:`SlaBreached`, :class:`SlaAtRisk`,
                                          :class:`SlaBreachRetracted`, each once
``deskpulse.alerts``   rule + group       :class:`AlertTransition` on each transition
=====================  =================  ===============================================

The keys made of several parts (:func:`output_key`) join them with ``|``; ``*`` stands
for "every value" of a dimension the message is not grouped by. A part that holds ``%``,
``|`` or ``*`` itself has those three characters percent-encoded (``%25``, ``%7C``,
``%2A``), so two different groups never share a key on the compacted topic, and a key
of ordinary values reads as it always did. :func:`parse_output_key` undoes it.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

__all__ = [
    "KEY_ALL",
    "SCHEMA_VERSION",
    "AlertTransition",
    "KpiSnapshot",
    "SlaAtRisk",
    "SlaBreachRetracted",
    "SlaBreached",
    "encode_key_part",
    "output_key",
    "parse_output_key",
]

SCHEMA_VERSION: Literal[1] = 1

#: The key part that stands for every value of a dimension (the total, or not grouped by).
KEY_ALL = "*"
_KEY_SEPARATOR = "|"
_ESCAPED = re.compile(r"%(25|7C|2A)", re.IGNORECASE)
_UNESCAPE = {"25": "%", "7C": "|", "2A": "*"}


def encode_key_part(value: str) -> str:
    """``value`` with ``%``, ``|`` and ``*`` percent-encoded; anything else as it is."""
    if "%" not in value and "|" not in value and "*" not in value:
        return value  # the usual case, and why keys of ordinary values never changed
    return value.replace("%", "%25").replace("|", "%7C").replace("*", "%2A")


def output_key(*parts: str | None) -> str:
    """The key of an output message: each part encoded, ``None`` written as ``*`` (all)."""
    return _KEY_SEPARATOR.join(KEY_ALL if p is None else encode_key_part(p) for p in parts)


def parse_output_key(key: str) -> tuple[str | None, ...]:
    """The parts of an :func:`output_key`, ``None`` for ``*``; ``ValueError`` if malformed."""
    parts: list[str | None] = []
    for part in key.split(_KEY_SEPARATOR):
        if part == KEY_ALL:
            parts.append(None)
            continue
        # a "%" that starts no escape, or a "*" among other characters, output_key never writes
        rest = _ESCAPED.sub("", part)
        if "%" in rest or "*" in rest:
            raise ValueError(f"not an output key part: {part!r}")
        parts.append(_ESCAPED.sub(lambda m: _UNESCAPE[m.group(1).upper()], part))
    return tuple(parts)


class _Payload(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = SCHEMA_VERSION


class SlaBreached(_Payload):
    """An SLA instance of a ticket whose deadline passed before it was fulfilled, once per
    ``(ticket, metric, instance)``.

    ``breached_at`` is the deadline, not the time the breach was detected; ``created_at``
    is the ticket's creation and ``started_at`` the instance's start.
    """

    type: Literal["sla.breached"] = "sla.breached"
    event_id: str
    ticket_id: str
    metric: Literal["first_response", "next_response", "resolution"] = "first_response"
    instance: int = 1
    policy: str
    priority: str
    channel: str
    queue: str
    target_seconds: int
    started_at: str
    created_at: str
    breached_at: str


class SlaAtRisk(_Payload):
    """An SLA instance whose elapsed time reached ``fraction`` of its target while it ran,
    once per ``(ticket, metric, instance, fraction)``; ``due_at`` is the deadline if the
    clock keeps running, ``remaining_seconds`` the elapsed time left until it."""

    type: Literal["sla.at_risk"] = "sla.at_risk"
    event_id: str
    ticket_id: str
    metric: Literal["first_response", "next_response", "resolution"]
    instance: int
    policy: str
    priority: str
    channel: str
    queue: str
    target_seconds: int
    started_at: str
    created_at: str
    fraction: float
    remaining_seconds: float
    due_at: str


class SlaBreachRetracted(_Payload):
    """A published breach that a later event showed was fulfilled or cancelled before its
    deadline (the KPIs no longer count it), once per published breach."""

    type: Literal["sla.breach_retracted"] = "sla.breach_retracted"
    event_id: str
    ticket_id: str
    metric: Literal["first_response", "next_response", "resolution"]
    instance: int
    policy: str
    priority: str
    channel: str
    queue: str
    target_seconds: int
    started_at: str
    created_at: str
    breached_at: str


class AlertTransition(_Payload):
    """A threshold rule started (``alert.firing``) or stopped (``alert.resolved``) holding."""

    type: Literal["alert.firing", "alert.resolved"]
    rule: str
    metric: str
    window: str
    group: dict[str, str]
    value: float | None
    threshold: float
    at: str


class KpiSnapshot(_Payload):
    """One group of the KPI document (docs/kpis.md) for one window, plus its bounds."""

    model_config = ConfigDict(frozen=True, extra="allow")

    window: str
    start: str
    end: str
    key: dict[str, str]

    @classmethod
    def build(cls, window: str, start: str, end: str, group: dict[str, Any]) -> KpiSnapshot:
        """Wrap a group document."""
        return cls(window=window, start=start, end=end, **group)
