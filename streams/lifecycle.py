"""A ticket's lifecycle and a chat's wait, as pure functions of their events (docs/kpis.md,
"Lifecycle and live state").

Nothing here reads the clock or keeps state. :func:`lifecycle` takes a ticket's creation and
its timeline (public replies and status changes, each ``event id -> (ms, code)``, the codes
of :mod:`deskpulse.streams.sla`) and walks it once in ``(ms, event_id)`` order, with the same
rules as the SLA evaluation: a status event dated at or before the creation acts at the
creation, a status equal to the current one changes nothing, and after ``closed`` status
events are ignored. The same inputs give the same lifecycle whatever order the events
arrived in.

The backlog is a state at an instant, not a sample, yet it is kept with the samples: each
status a ticket holds from ``a`` to ``b`` adds one to its status's count at ``a`` and takes
it back at ``b`` (:func:`status_steps`), so the tickets in a status at ``E`` are the sum of
every step before ``E``. The status *at* ``E`` is the one set by the last status event
strictly before ``E``, and a step at ``t`` counts for every ``E > t``: the two agree.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from deskpulse.streams.sla import AGENT, STATUS_CODES

__all__ = [
    "BACKLOG_FIELDS",
    "OPEN_CODES",
    "WAITING_FIELD",
    "Lifecycle",
    "chat_steps",
    "lifecycle",
    "status_steps",
]

_SOLVED, _CLOSED = STATUS_CODES["solved"], STATUS_CODES["closed"]
#: the statuses of a ticket in the backlog, in the order the documents list them
OPEN_CODES: tuple[str, ...] = tuple(STATUS_CODES[s] for s in ("new", "open", "pending", "hold"))
_OPEN = frozenset(OPEN_CODES)
#: a status's field of level steps (``bl:n`` ... ``bl:h``)
BACKLOG_FIELDS: dict[str, str] = {code: "bl:" + code for code in OPEN_CODES}
#: the field of a waiting chat's level steps
WAITING_FIELD = "bl:w"


class Lifecycle(NamedTuple):
    """What a ticket's timeline says of its life (see :func:`lifecycle`)."""

    #: the statuses in force, ``(from ms, code)``: the creation's ``new`` first, then every
    #: change in timeline order (the first entry is always at the creation)
    changes: tuple[tuple[int, str], ...]
    #: the instants of the solves (changes into solved, or into closed from another status)
    solves: tuple[int, ...]
    #: the instants of the reopens (changes from solved to new, open, pending or hold)
    reopens: tuple[int, ...]
    #: the last solve not followed by a reopen, ``None`` if there is none
    final_solve_ms: int | None
    #: public agent replies at or before the final solve (0 without a final solve)
    agent_replies: int

    @property
    def open_now(self) -> str | None:
        """The status the ticket holds after its last change, if it is in the backlog."""
        code = self.changes[-1][1]
        return code if code in _OPEN else None

    @property
    def left_ms(self) -> int | None:
        """When the ticket last left the backlog (its last change out of an open status),
        ``None`` while it is in it."""
        if self.open_now is not None or len(self.changes) < 2:
            return None
        return self.changes[-1][0]

    @property
    def reopened(self) -> bool:
        """Whether the ticket was reopened before its final solve."""
        return self.final_solve_ms is not None and bool(self.reopens)

    @property
    def one_touch(self) -> bool:
        """Solved for good with no reopen and exactly one public agent reply before."""
        return self.final_solve_ms is not None and not self.reopens and self.agent_replies == 1


def lifecycle(created_ms: int, timeline: Iterable[tuple[str, tuple[int, str]]]) -> Lifecycle:
    """The lifecycle of a ticket created at ``created_ms`` with this timeline.

    A *solve* is a change into ``solved``, or into ``closed`` from any status but
    ``solved``; a *reopen* is a change from ``solved`` to ``new``, ``open``, ``pending`` or
    ``hold``. The final solve is the last solve with no reopen after it. A reply at the
    instant of the final solve counts as before it (an agent who answers and solves in one
    step touched the ticket once).
    """
    entries = sorted([(ms, event_id, code) for event_id, (ms, code) in timeline])
    status = STATUS_CODES["new"]
    changes: list[tuple[int, str]] = [(created_ms, status)]
    solves: list[int] = []
    reopens: list[int] = []
    final: int | None = None
    replies: list[int] = []
    for ms, _, code in entries:
        if code == AGENT:
            replies.append(ms)
            continue
        if code not in STATUS_CODES.values() or code == status:
            continue  # a customer reply; a status that changes nothing
        if status == _CLOSED:
            continue  # closed is terminal (the SLA evaluation counts these as ignored)
        at = ms if ms > created_ms else created_ms
        if code == _SOLVED or (code == _CLOSED and status != _SOLVED):
            solves.append(at)
            final = at
        elif status == _SOLVED and code in _OPEN:
            reopens.append(at)
            final = None
        status = code
        changes.append((at, code))
    touched = 0 if final is None else sum(1 for ms in replies if ms <= final)
    return Lifecycle(tuple(changes), tuple(solves), tuple(reopens), final, touched)


def status_steps(changes: Iterable[tuple[int, str]]) -> list[tuple[int, str, int]]:
    """The backlog's level steps of a ticket, ``(ms, field, +1 or -1)``: each open status
    counted from its change to the next change. The last status, if open, is not taken back
    here: the ticket stays in the backlog until a later change, or until it is dropped."""
    steps: list[tuple[int, str, int]] = []
    previous: str | None = None
    for at, code in changes:
        if previous is not None:
            steps.append((at, previous, -1))
            previous = None
        name = BACKLOG_FIELDS.get(code)
        if name is not None:
            steps.append((at, name, 1))
            previous = name
    return steps


def chat_steps(
    requested_ms: int, outcome_ms: int | None, stale_after_ms: int
) -> list[tuple[int, int]]:
    """A chat's waiting steps, ``(ms, +1 or -1)``: waiting from its request until its first
    accept, abandon or end, and at most until ``stale_after_ms`` after the request.

    A chat is waiting at ``E`` when it was requested before ``E``, nothing ended its wait
    before ``E``, and ``E`` is less than ``stale_after_ms`` after the request: it leaves at
    the outcome, or at the last millisecond before it goes stale, whichever comes first.
    """
    leave = requested_ms + stale_after_ms - 1
    if outcome_ms is not None and outcome_ms < leave:
        leave = outcome_ms
    if leave <= requested_ms:
        return []  # an outcome at or before the request: the chat never waited
    return [(requested_ms, 1), (leave, -1)]
