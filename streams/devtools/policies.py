"""The business calendars and SLA policies that ``deskpulse demo`` and the benchmark run with.

Two office schedules, one per region, and four policies, first match wins: urgent and high
billing tickets on tight business-hour targets, the rest of billing and sales on the
Berlin office's hours, technical on the New York office's, and everything else (the
``general`` and ``unassigned`` queues, and any queue a data set makes up) on a 24/7
default in calendar time. The simulated agents of each queue keep the hours of the
schedule its policy uses (:func:`agent_hours`), so business time and calendar time part
visibly: a billing ticket created on Friday evening is answered on Monday.

The JSON texts are exactly what ``DESKPULSE_SCHEDULES`` and ``DESKPULSE_SLA_POLICIES``
take (:func:`settings_env`).
"""

from __future__ import annotations

import json
from typing import Any

from deskpulse.models.sla import Schedule

__all__ = [
    "AGENT_SCHEDULES",
    "SCHEDULES",
    "SLA_POLICIES",
    "agent_hours",
    "settings_env",
    "settings_values",
]

_WEEKDAYS = ("mon", "tue", "wed", "thu")

#: ``DESKPULSE_SCHEDULES``: an office in Berlin (shorter on Fridays) and one in New York
SCHEDULES = json.dumps(
    {
        "emea": {
            "timezone": "Europe/Berlin",
            "hours": {day: ["09:00-17:30"] for day in _WEEKDAYS} | {"fri": ["09:00-16:00"]},
            "holidays": ["2026-12-24", "2026-12-25", "2026-12-26", "2027-01-01"],
        },
        "americas": {
            "timezone": "America/New_York",
            "hours": {day: ["08:00-18:00"] for day in (*_WEEKDAYS, "fri")},
            "holidays": ["2026-11-26", "2026-12-25", "2027-01-01"],
        },
    }
)

_HOUR = 3600
_BUSINESS_TARGETS = {
    "first_response": {
        "urgent": 1 * _HOUR,
        "high": 4 * _HOUR,
        "normal": 8 * _HOUR,
        "low": 16 * _HOUR,
    },
    "next_response": {
        "urgent": 2 * _HOUR,
        "high": 4 * _HOUR,
        "normal": 8 * _HOUR,
        "low": 16 * _HOUR,
    },
    "resolution": {
        "urgent": 8 * _HOUR,
        "high": 24 * _HOUR,
        "normal": 40 * _HOUR,
        "low": 80 * _HOUR,
    },
}

#: ``DESKPULSE_SLA_POLICIES``: first match wins; the last one matches every ticket
SLA_POLICIES = json.dumps(
    [
        {
            "name": "billing-priority",
            "match": {"queue": ["billing"], "priority": ["urgent", "high"]},
            "schedule": "emea",
            "targets": {
                "first_response": {"urgent": 1 * _HOUR, "high": 2 * _HOUR},
                "next_response": {"urgent": 2 * _HOUR, "high": 4 * _HOUR},
                "resolution": {"urgent": 8 * _HOUR, "high": 24 * _HOUR},
            },
            "pause": ["pending", "hold"],
            "warn_at": [0.5, 0.75, 0.9],
        },
        {
            "name": "emea",
            "match": {"queue": ["billing", "sales"]},
            "schedule": "emea",
            "targets": _BUSINESS_TARGETS,
        },
        {
            "name": "americas",
            "match": {"queue": ["technical"]},
            "schedule": "americas",
            "targets": _BUSINESS_TARGETS,
            "pause": ["pending", "hold"],
        },
        {
            "name": "default",
            "targets": {
                "first_response": {
                    "urgent": _HOUR,
                    "high": 4 * _HOUR,
                    "normal": 8 * _HOUR,
                    "low": 24 * _HOUR,
                },
                "next_response": {
                    "urgent": 2 * _HOUR,
                    "high": 8 * _HOUR,
                    "normal": 24 * _HOUR,
                    "low": 48 * _HOUR,
                },
                "resolution": {
                    "urgent": 24 * _HOUR,
                    "high": 72 * _HOUR,
                    "normal": 120 * _HOUR,
                    "low": 240 * _HOUR,
                },
            },
        },
    ]
)

#: the schedule each queue's simulated agents keep; other queues are staffed around the clock
AGENT_SCHEDULES = {"billing": "emea", "sales": "emea", "technical": "americas"}


def settings_env() -> dict[str, str]:
    """The two settings as environment variables."""
    return {"DESKPULSE_SCHEDULES": SCHEDULES, "DESKPULSE_SLA_POLICIES": SLA_POLICIES}


def settings_values() -> dict[str, Any]:
    """The two settings as ``Settings`` field values."""
    return {"schedules": json.loads(SCHEDULES), "sla_policies": json.loads(SLA_POLICIES)}


def agent_hours() -> dict[str, Schedule]:
    """``SimConfig.agent_hours`` for agents who keep their queue's office hours."""
    schedules = json.loads(SCHEDULES)
    return {
        queue: Schedule.model_validate(schedules[name]) for queue, name in AGENT_SCHEDULES.items()
    }
