"""README.md's worked example of business calendars (a ticket on Friday evening): its
settings are valid, and every instant and length it states is the one the business-time
code computes. The example's inputs (the creation, the reply, the holiday, the DST week)
are read from the text; everything else is computed here and must be what the text says.
"""

from __future__ import annotations

import json
import os
import re
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from deskpulse.models.settings import Settings
from deskpulse.models.sla import Schedule, policy_for
from deskpulse.streams.calendar import BusinessCalendar, business_ms, deadline_ms

README = Path(__file__).resolve().parents[2] / "README.md"
BERLIN = ZoneInfo("Europe/Berlin")
INSTANT = re.compile(r"\b(Mon|Tue|Wed|Thu|Fri|Sat|Sun) (\d{4}-\d{2}-\d{2}) (\d{2}:\d{2})\b")
LENGTH = re.compile(r"\b\d+ h(?: \d+ min)?\b")
DATE = re.compile(r"\b\d{4}-\d{2}-\d{2}\b")


def section(text: str, heading: str) -> str:
    """The text under ``heading`` up to the next heading of the same or a higher level."""
    level = heading.split(" ", 1)[0]
    body = text.split(f"\n{heading}\n", 1)[1]
    ends = [body.find(f"\n{'#' * n} ") for n in range(1, len(level) + 1)]
    ends = [end for end in ends if end >= 0]
    return body[: min(ends)] if ends else body


def instant(match: tuple[str, str, str]) -> int:
    """``("Fri", "2027-01-08", "18:30")`` in Berlin as epoch milliseconds; the weekday must fit."""
    weekday, day, clock = match
    local = datetime.fromisoformat(f"{day}T{clock}").replace(tzinfo=BERLIN)
    assert local.strftime("%a") == weekday, f"{day} is no {weekday}"
    return int(local.timestamp() * 1000)


def show(ms: int) -> str:
    local = datetime.fromtimestamp(ms / 1000, BERLIN)
    assert local.second == 0 and local.microsecond == 0, local  # the text shows minutes
    return local.strftime("%a %Y-%m-%d %H:%M")


def length(ms: int) -> str:
    minutes, rest = divmod(ms, 60_000)
    assert rest == 0
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


@pytest.fixture(scope="module")
def readme() -> str:
    return README.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def example(readme: str) -> str:
    return section(readme, "### Worked example: a ticket on Friday evening")


@pytest.fixture
def readme_settings(readme: str, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The README's two settings, validated as the worker validates them at start."""
    for name in list(os.environ):
        if name.startswith("DESKPULSE_"):
            monkeypatch.delenv(name)
    text = section(readme, "## Business calendars and SLA policies")
    schedules, policies = (
        json.loads(block) for block in re.findall(r"```json\n(.*?)```", text, re.S)[:2]
    )
    return Settings(_env_file=None, schedules=schedules, sla_policies=policies)  # type: ignore[call-arg]


def table(example: str) -> dict[str, list[str]]:
    rows = {}
    for line in example.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) == 3 and cells[0] and not cells[0].startswith("-"):
            rows[cells[0]] = cells[1:]
    return rows


def test_the_worked_example_is_what_the_code_computes(
    example: str, readme_settings: Settings
) -> None:
    settings = readme_settings
    policy = policy_for(settings.policies, "email", "billing", "normal")
    assert policy is not None and policy.schedule is not None
    assert f"`{policy.name}`" in example
    target_ms = 1000 * (policy.target_seconds("first_response", "normal") or 0)
    (warn,) = policy.warn_at
    office = BusinessCalendar(settings.schedules[policy.schedule])
    flat = re.sub(r"\s+", " ", example)  # the prose, whatever its line breaks
    assert f"{length(target_ms)[:-2]} business hours ({target_ms // 1000} s)" in flat
    assert f"a warning at {warn * 100:g} %" in flat

    rows = table(example)
    created = instant(INSTANT.findall(rows["created"][0])[0])
    assert rows["created"] == [show(created)] * 2
    # after the office closed on a Friday
    assert datetime.fromtimestamp(created / 1000, BERLIN).strftime("%a") == "Fri"
    assert business_ms(office, created - 3_600_000, created) == 0

    opens = deadline_ms(office, created, 1) - 1
    assert rows["the clock starts counting"] == [show(opens), show(created)]

    warn_ms = round(warn * target_ms)
    (label,) = [label for label in rows if label.startswith("at-risk warning")]
    assert f"({length(warn_ms)} counted)" in label
    warn_at = [deadline_ms(office, created, warn_ms), deadline_ms(None, created, warn_ms)]
    assert rows[label] == [show(at) for at in warn_at]

    due = deadline_ms(office, created, target_ms)
    due_calendar = deadline_ms(None, created, target_ms)
    (label,) = [label for label in rows if label.startswith("deadline")]
    assert rows[label] == [show(due), show(due_calendar)]

    (label,) = [label for label in rows if label.startswith("first public agent reply at")]
    reply = instant(INSTANT.findall(label)[0])
    counted = business_ms(office, created, reply)
    assert reply <= due and reply > due_calendar  # achieved on the schedule only
    assert rows[label] == [
        f"{length(counted)}, achieved",
        f"{length(reply - created)}, breached at {show(due_calendar)}",
    ]

    # a holiday on the Monday
    holiday = re.search(r"Had (\w{3}) (\d{4}-\d{2}-\d{2}) been a holiday", flat)
    assert holiday is not None
    day = holiday.group(2)
    assert instant((holiday.group(1), day, "00:00"))
    schedule = settings.schedules[policy.schedule]
    closed_monday = BusinessCalendar(
        Schedule.model_validate(schedule.model_dump() | {"holidays": [*schedule.holidays, day]})
    )
    due_after_holiday = deadline_ms(closed_monday, created, target_ms)
    assert f"been a holiday, the deadline would be {show(due_after_holiday)}" in flat

    # the week the clocks go forward
    change = re.search(r"clocks go forward \(Sunday\s+(\d{4}-\d{2}-\d{2})\)", flat)
    assert change is not None
    sunday = datetime.fromisoformat(change.group(1)).replace(tzinfo=BERLIN)
    assert sunday.strftime("%a") == "Sun"
    after = sunday + timedelta(days=1)
    assert (after.utcoffset() or timedelta()) - (sunday.utcoffset() or timedelta()) == timedelta(
        hours=1
    )
    dst = re.search(
        r"a ticket created (\w{3} \S+ \d{2}:\d{2}) is due (\w{3} \S+ \d{2}:\d{2})", flat
    )
    assert dst is not None
    dst_created = instant(tuple(dst.group(1).split()))  # type: ignore[arg-type]
    dst_due = deadline_ms(office, dst_created, target_ms)
    assert dst.group(2) == show(dst_due)
    assert datetime.fromtimestamp(dst_due / 1000, BERLIN).tzname() == "CEST"
    assert datetime.fromtimestamp(due / 1000, BERLIN).tzname() == "CET"
    assert (
        f"which is {length(dst_due - dst_created)} after its creation instead of "
        f"{length(due - created)}" in flat
    )
    assert dst_due - dst_created == due - created - 3_600_000

    # nothing else: every instant, length and date of the example is one of these
    instants = {
        show(at) for at in (created, opens, *warn_at, due, due_calendar, reply, due_after_holiday)
    } | {show(dst_created), show(dst_due)}
    assert {" ".join(found) for found in INSTANT.findall(flat)} == instants
    lengths = {length(ms) for ms in (warn_ms, counted, reply - created, dst_due - dst_created)}
    assert set(LENGTH.findall(flat)) == lengths | {length(due - created)}
    dates = {text.split()[1] for text in instants} | {day, change.group(1)}
    assert set(DATE.findall(flat)) == dates
