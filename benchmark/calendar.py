"""Micro-benchmark of business time: ``python -m benchmark.calendar``.

Calls per second of ``business_ms`` over a 3-day span and of ``deadline_ms`` with an 8 h
target, on an office schedule (Europe/Berlin, a split Friday, holidays), for instants
spread over a year: cold (every block built on first use) and warm (blocks cached).
"""

from __future__ import annotations

import random
import time

from deskpulse.models.sla import Schedule
from deskpulse.streams.calendar import BusinessCalendar, business_ms, deadline_ms

CALLS = 100_000
HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
START_MS = 1_767_225_600_000  # 2026-01-01T00:00Z

OFFICE = Schedule(
    timezone="Europe/Berlin",
    hours={day: ("09:00-17:30",) for day in ("mon", "tue", "wed", "thu")}
    | {"fri": ("09:00-13:00", "14:00-17:00")},
    holidays=("2026-04-03", "2026-04-06", "2026-12-24", "2026-12-25"),
)


def _rate(label: str, run: object) -> None:
    assert callable(run)
    began = time.perf_counter()
    run()
    elapsed = time.perf_counter() - began
    print(f"{label:<44} {CALLS / elapsed:>12,.0f} calls/s  ({elapsed * 1000:,.0f} ms)")


def main() -> None:
    rng = random.Random(7)
    instants = [START_MS + rng.randrange(365 * DAY_MS) for _ in range(CALLS)]

    calendar = BusinessCalendar(OFFICE)
    _rate(
        "business_ms, 3-day span (cold)",
        lambda: [business_ms(calendar, t, t + 3 * DAY_MS) for t in instants],
    )
    _rate(
        "business_ms, 3-day span (warm)",
        lambda: [business_ms(calendar, t, t + 3 * DAY_MS) for t in instants],
    )
    calendar = BusinessCalendar(OFFICE)
    _rate(
        "deadline_ms, 8 h target (cold)",
        lambda: [deadline_ms(calendar, t, 8 * HOUR_MS) for t in instants],
    )
    _rate(
        "deadline_ms, 8 h target (warm)",
        lambda: [deadline_ms(calendar, t, 8 * HOUR_MS) for t in instants],
    )
    _rate(
        "business_ms, calendar time",
        lambda: [business_ms(None, t, t + 3 * DAY_MS) for t in instants],
    )


if __name__ == "__main__":
    main()
