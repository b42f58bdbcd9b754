"""Payloads deskpulse publishes (CONTRACT §7), versioned by ``schema_version``.

=====================  =================  ===============================================
topic                  key                payload
=====================  =================  ===============================================
``deskpulse.kpis``     ``1h|*|*|*``       :class:`KpiSnapshot` (compacted: latest per key)
``deskpulse.alerts``   ticket id          :class:`SlaBreached`, once per ticket
``deskpulse.alerts``   rule + group       :class:`AlertTransition` on each transition
=====================  =================  ===============================================
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

__all__ = ["SCHEMA_VERSION", "AlertTransition", "KpiSnapshot", "SlaBreached"]

SCHEMA_VERSION: Literal[1] = 1


class _Payload(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = SCHEMA_VERSION


class SlaBreached(_Payload):
    """A ticket whose first public agent reply did not come by ``created_at + target``.

    ``breached_at`` is that deadline, not the time the breach was detected.
    """

    type: Literal["sla.breached"] = "sla.breached"
    event_id: str
    ticket_id: str
    metric: Literal["first_response"] = "first_response"
    priority: str
    channel: str
    queue: str
    target_seconds: int
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
    """One group of the KPI document (CONTRACT §4) for one window, plus its bounds."""

    model_config = ConfigDict(frozen=True, extra="allow")

    window: str
    start: str
    end: str
    key: dict[str, str]

    @classmethod
    def build(cls, window: str, start: str, end: str, group: dict[str, Any]) -> KpiSnapshot:
        """Wrap a group document."""
        return cls(window=window, start=start, end=end, **group)
