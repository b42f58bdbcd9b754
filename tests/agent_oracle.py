"""A brute-force oracle for the KPIs grouped by agent (``deskpulse kpis --by agent``).

It answers the document grouped by agent from raw record values, straight from
docs/kpis.md ("By agent"). It shares no code with ``streams/`` on purpose (only
:func:`models.events.decode` to read records): each conversation's events are gathered,
sorted, and every question is answered by walking them whole; presence comes from
:mod:`tests.presence_oracle`'s walk of each agent's status events.

Decisions, as this oracle (and the project) takes them:

* Instants are whole milliseconds, rounded down; a repeated ``event_id`` counts once (its
  first occurrence); records that do not decode are ignored; an event whose conversation
  never opens counts nowhere (a survey carrying all three dimensions stands alone).
* The SLA policy is the one default policy (calendar time): business times equal
  calendar times; a first response is within target when it is at most the target of the
  ticket's priority.
* A ticket's timeline is its public agent and customer replies and its status changes,
  in ``(ms, event_id)`` order. Its first response is its first public agent reply; a next
  response starts at a public customer reply after the first agent reply, when none is
  running and the ticket is neither solved nor closed, and ends at the next public agent
  reply (sampled there, reply minus start) or at a solve or close (no sample). A status
  event before the creation applies at the creation; ``closed`` is final.
* A response sampled at instant ``T`` goes to the agent named by the ticket's public
  agent reply at ``T`` (the smallest event id among those naming an agent at that
  millisecond); none named: no agent's.
* Tickets solved: the final solve (the last change into ``solved``, or into ``closed``
  from another status, not followed by a change from ``solved`` back to an open status),
  at its instant, to the last agent named by a public agent reply at or before it.
* CSAT: to the survey's ``agent_id``, else to the last agent named by a public agent reply
  of the ticket at or before the survey, else (a chat) to the agent of the earliest accept
  if it came at or before the survey.
* Chats: the outcome is the earliest accept, abandon or end (a tie: the accept); answered
  at the accept, to its agent; handle time (end minus accept) at the end.
* Presence: an agent's status at ``E`` and occupancy over ``[S, E)`` as
  :mod:`tests.presence_oracle` takes them, for that agent alone.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from deskpulse.models.events import (
    ChatAbandoned,
    ChatAccepted,
    ChatEnded,
    ChatRequested,
    SurveyResponded,
    TicketCreated,
    TicketReplied,
    TicketStatusChanged,
)
from tests.oracle import DEFAULT_TARGETS, distinct_events
from tests.presence_oracle import _agents, _intervals

__all__ = ["compute_by_agent"]

_OPEN = ("new", "open", "pending", "hold")


def _ms(event: Any) -> int:
    return math.floor(event.occurred_at.timestamp() * 1000)


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[math.floor(q * (len(ordered) - 1))]


class _Agent:
    def __init__(self) -> None:
        self.first: list[tuple[int, bool]] = []  # (frt ms, within)
        self.next: list[int] = []
        self.answered = 0
        self.handle: list[int] = []
        self.csat: list[int] = []
        self.solved = 0

    def samples(self) -> bool:
        return bool(
            self.first or self.next or self.answered or self.handle or self.csat or self.solved
        )

    def document(self, agent: str, presence: dict[str, Any]) -> dict[str, Any]:
        def durations(values_ms: list[int], qs: tuple[float, ...]) -> dict[str, Any]:
            names = ["mean_seconds", *(f"p{round(q * 100)}_seconds" for q in qs)]
            if not values_ms:
                return dict.fromkeys(names)
            seconds = [v / 1000 for v in values_ms]
            return dict(
                zip(
                    names,
                    [sum(values_ms) / len(values_ms) / 1000, *(_quantile(seconds, q) for q in qs)],
                    strict=True,
                )
            )

        first_ms = [frt for frt, _ in self.first]
        within = sum(1 for _, ok in self.first if ok)
        n = len(self.first)
        handle = durations(self.handle, (0.5, 0.9))
        cs_n = len(self.csat)
        satisfied = sum(1 for score in self.csat if score >= 4)
        return {
            "key": {"agent": agent},
            "first_response": {
                "count": n,
                **durations(first_ms, (0.5, 0.9, 0.95)),
                "within_target": within,
                "within_target_ratio": within / n if n else None,
                "business": durations(first_ms, (0.5, 0.9, 0.95)),
            },
            "next_response": {
                "count": len(self.next),
                **durations(self.next, (0.5, 0.9, 0.95)),
                "business": durations(self.next, (0.5, 0.9, 0.95)),
            },
            "chats": {
                "answered": self.answered,
                "handle_mean_seconds": handle["mean_seconds"],
                "handle_p50_seconds": handle["p50_seconds"],
                "handle_p90_seconds": handle["p90_seconds"],
            },
            "csat": {
                "responses": cs_n,
                "satisfied": satisfied,
                "ratio": satisfied / cs_n if cs_n else None,
                "average": sum(self.csat) / cs_n if cs_n else None,
            },
            "tickets_solved": self.solved,
            "presence": presence,
        }


def _earliest(events: list[Any]) -> Any | None:
    return min(events, key=lambda e: (_ms(e), e.event_id), default=None)


def _named_at(replies: list[TicketReplied], at_ms: int) -> str | None:
    """The agent named by the reply at ``at_ms`` (smallest event id among the named)."""
    named = sorted(r.event_id for r in replies if _ms(r) == at_ms and r.agent_id)
    if not named:
        return None
    return next(r.agent_id for r in replies if r.event_id == named[0])


def _last_named(replies: list[TicketReplied], at_ms: int) -> str | None:
    named = [(_ms(r), r.event_id, r.agent_id) for r in replies if r.agent_id and _ms(r) <= at_ms]
    return max(named)[2] if named else None


def compute_by_agent(
    records_values: Iterable[bytes],
    *,
    at_s: float,
    width_s: int,
    bucket_seconds: int = 60,
    retention_s: int = 48 * 3600,
) -> dict[str, Any]:
    """The document grouped by agent for the window of ``width_s`` ending at ``at_s``."""
    records = list(records_values)
    end_ms = math.ceil(at_s / bucket_seconds) * bucket_seconds * 1000
    start_ms = end_ms - width_s * 1000

    def inside(ms: int) -> bool:
        return start_ms <= ms < end_ms

    openers: dict[str, list[Any]] = {}
    timelines: dict[str, list[Any]] = {}
    outcomes: dict[str, list[Any]] = {}
    accepts: dict[str, list[ChatAccepted]] = {}
    surveys: list[SurveyResponded] = []
    for event in distinct_events(records):
        if isinstance(event, TicketCreated):
            openers.setdefault("t:" + event.ticket_id, []).append(event)
        elif isinstance(event, ChatRequested):
            openers.setdefault("c:" + event.chat_id, []).append(event)
        elif isinstance(event, TicketReplied):
            if event.public and event.author_role in ("agent", "customer"):
                timelines.setdefault(event.ticket_id, []).append(event)
        elif isinstance(event, TicketStatusChanged):
            timelines.setdefault(event.ticket_id, []).append(event)
        elif isinstance(event, ChatAccepted):
            outcomes.setdefault(event.chat_id, []).append(event)
            accepts.setdefault(event.chat_id, []).append(event)
        elif isinstance(event, ChatAbandoned | ChatEnded):
            outcomes.setdefault(event.chat_id, []).append(event)
        elif isinstance(event, SurveyResponded):
            surveys.append(event)

    agents: dict[str, _Agent] = {}

    def agent(name: str) -> _Agent:
        return agents.setdefault(name, _Agent())

    agent_replies = {
        ticket_id: [e for e in entries if isinstance(e, TicketReplied) and e.author_role == "agent"]
        for ticket_id, entries in timelines.items()
    }
    for ticket_id, entries in timelines.items():
        opener = _earliest(openers.get("t:" + ticket_id, []))
        if opener is None:
            continue
        opened = _ms(opener)
        replies = agent_replies[ticket_id]
        status, closed = "new", False
        first_done = False
        asked: int | None = None
        final: int | None = None
        for entry in sorted(entries, key=lambda e: (_ms(e), e.event_id)):
            ms = _ms(entry)
            if isinstance(entry, TicketReplied):
                if entry.author_role == "agent":
                    if not first_done:
                        first_done = True
                        frt = max(0, ms - opened)
                        who = _named_at(replies, ms)
                        if who is not None and inside(ms):
                            target = DEFAULT_TARGETS[opener.priority] * 1000
                            agent(who).first.append((frt, frt <= target))
                    elif asked is not None:
                        who = _named_at(replies, ms)
                        if who is not None and inside(ms):
                            agent(who).next.append(ms - asked)
                        asked = None
                elif first_done and asked is None and status not in ("solved", "closed"):
                    asked = ms
                continue
            if closed or entry.status == status:
                continue
            at = max(ms, opened)
            if entry.status == "solved" or (entry.status == "closed" and status != "solved"):
                final = at
            elif status == "solved" and entry.status in _OPEN:
                final = None
            if entry.status in ("solved", "closed"):
                asked = None
            closed = entry.status == "closed"
            status = entry.status
        if final is not None and inside(final):
            who = _last_named(replies, final)
            if who is not None:
                agent(who).solved += 1

    # the earliest accept of every chat, opened or not (a survey may name none)
    chat_agents: dict[str, tuple[int, str | None]] = {}
    for chat_id, events in accepts.items():
        first = _earliest(events)
        chat_agents[chat_id] = (_ms(first), first.agent_id)
    for chat_id, events in outcomes.items():
        if _earliest(openers.get("c:" + chat_id, [])) is None:
            continue
        first_accept = _earliest(accepts.get(chat_id, []))
        ends = [e for e in events if not isinstance(e, ChatAccepted)]
        end = _earliest(ends)
        if first_accept is None or first_accept.agent_id is None:
            continue
        accepted = _ms(first_accept)
        if end is not None and _ms(end) < accepted:
            continue  # abandoned or ended first: not answered
        if inside(accepted):
            agent(first_accept.agent_id).answered += 1
        if end is not None and inside(_ms(end)):
            agent(first_accept.agent_id).handle.append(_ms(end) - accepted)

    for survey in surveys:
        if survey.kind != "csat":
            continue
        conv = ("t:" + survey.ticket_id) if survey.ticket_id else ("c:" + str(survey.chat_id))
        opened = _earliest(openers.get(conv, [])) is not None
        if not opened and None in (survey.channel, survey.queue, survey.priority):
            continue
        ms = _ms(survey)
        who = survey.agent_id
        if who is None and survey.ticket_id:
            who = _last_named(agent_replies.get(survey.ticket_id, []), ms)
        elif who is None:
            accepted = chat_agents.get(str(survey.chat_id))
            if accepted is not None and accepted[1] is not None and accepted[0] <= ms:
                who = accepted[1]
        if who is not None and inside(ms):
            agent(who).csat.append(survey.score)

    retention_ms = retention_s * 1000
    presence: dict[str, dict[str, Any]] = {}
    for name, events in _agents(records).items():
        before = [e for e in events if e[0] < end_ms]
        status_at = None
        if before and end_ms - before[-1][0] <= retention_ms:
            status_at = before[-1][2]
        spent = {"available": 0, "busy": 0}
        for since, until, status in _intervals(events, retention_ms):
            if status in spent:
                spent[status] += max(0, min(until, end_ms) - max(since, start_ms))
        total = spent["busy"] + spent["available"]
        presence[name] = {
            "status": status_at,
            "occupancy_ratio": spent["busy"] / total if total else None,
        }

    groups = []
    for name in sorted(set(agents) | set(presence)):
        found = presence.get(name, {"status": None, "occupancy_ratio": None})
        held = agents.get(name, _Agent())
        if not held.samples() and found["status"] is None and found["occupancy_ratio"] is None:
            continue
        groups.append(held.document(name, found))
    return {
        "window": {
            "start": _stamp(start_ms // 1000),
            "end": _stamp(end_ms // 1000),
            "seconds": width_s,
        },
        "by": ["agent"],
        "groups": groups,
    }


def _stamp(seconds: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
