"""Per-agent KPIs as pure functions of a conversation's state (docs/kpis.md, "By agent").

Nothing here reads the clock or keeps state. A conversation keeps the agents its events
name in ``Conversation.crew``: event id -> ``(ms, role, agent_id)``, ``role`` one of
:data:`REPLY` (a public agent reply), :data:`ACCEPT` (the chat's earliest accept) and
:data:`SURVEY` (a survey that names its agent). Events without ``agent_id`` are not kept
there, and count in no agent's group.

Who gets a sample:

* a **first or next response** sampled at instant ``T`` goes to the agent named by the
  ticket's public agent reply at ``T`` (the reply that fulfils it; of several at one
  millisecond, the smallest event id among those naming an agent);
* an **answered chat** and its **handle time** go to the agent of the accept that counts
  (the earliest);
* a **CSAT** response goes to the survey's own ``agent_id``, else to the last agent who
  replied publicly on the ticket at or before the survey (a chat: the accepting agent, if
  the accept came at or before it);
* a **ticket solved** (the full resolution sample at the final solve; a reopen takes it
  back) goes to the last agent who replied publicly at or before that solve.

The responses are the ticket's own first and next response samples, moved onto the agent
of their instant (:func:`response_fields`): the core writes those as changes, and each
change moves its agent's sample with it; a reply that changes the agent of an instant
where a response was sampled before (two replies of a ticket in one millisecond) moves
that sample too (``streams.core._responses_moved``, with the ticket's timeline whole).
Everything else is a function of the state alone
(:func:`state_fields`), taken before and after a batch and written as the difference, so
a late reply that changes "the last agent before" a survey or a solve moves the sample
from one agent to the other.

Fields are the group fields of the same names, stored per agent in the agent buckets
(``agent␟field``); ``rv`` counts tickets solved, with no durations.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from deskpulse.streams import presence, sketch

__all__ = [
    "ACCEPT",
    "FINE",
    "LEVEL_PREFIX",
    "REPLY",
    "RESPONSE_PREFIXES",
    "ROLLUP",
    "SURVEY",
    "AgentField",
    "Crew",
    "agent_body",
    "agent_document",
    "body_of",
    "has_agent_samples",
    "last_reply",
    "presence_of",
    "replies_at",
    "response_fields",
    "sketch_of",
    "split_fields",
    "state_fields",
    "volume_of",
]

#: the agent buckets' levels (key suffixes ``a:<start>``, ``A:<start>``): fine and roll-up,
#: fields ``agent_id␟field``
FINE, ROLLUP = "a", "A"
#: the prefix of an agent's own presence levels in the levels hash: ``ag@agent_id␟ag:<s>``
#: (named like the presence levels over all groups, so the backlog's reads pass them by)
LEVEL_PREFIX = "ag@"

#: the role of a kept agent: a public agent reply, the chat's accept, a survey's own agent
REPLY, ACCEPT, SURVEY = "r", "c", "s"

#: event id -> ``(ms, role, agent_id)``
Crew = dict[str, tuple[int, str, str]]
#: ``(ms, agent_id, field, value)``
AgentField = tuple[int, str, str, int]

#: the group fields of the first and next responses, which an agent's group carries too
#: (the first-response histogram counts ``frh:`` are cumulative totals: not per agent)
RESPONSE_PREFIXES = ("fr", "fb_", "nr", "nb_")


def replies_at(crew: Mapping[str, tuple[int, str, str]]) -> dict[int, str]:
    """The agent of the public agent reply at each instant (of several at one
    millisecond, the smallest event id's)."""
    best: dict[int, tuple[str, str]] = {}
    for event_id, (ms, role, agent) in crew.items():
        if role == REPLY:
            held = best.get(ms)
            if held is None or event_id < held[0]:
                best[ms] = (event_id, agent)
    return {ms: agent for ms, (_, agent) in best.items()}


def last_reply(replies: list[tuple[int, str, str]], at_ms: int) -> str | None:
    """The agent of the last of ``replies`` (sorted ``(ms, event_id, agent)``) at or
    before ``at_ms``, ``None`` if none."""
    found = None
    for ms, _, agent in replies:
        if ms > at_ms:
            break
        found = agent
    return found


class _Responses(dict[str, bool]):
    """Whether a field is a first or next response field (looked up once per name)."""

    def __missing__(self, name: str) -> bool:
        found = self[name] = name.startswith(RESPONSE_PREFIXES) and not name.startswith("frh:")
        return found


_IS_RESPONSE = _Responses()


def response_fields(
    changes: Iterable[tuple[int, Any, str, int]], crew: Mapping[str, tuple[int, str, str]]
) -> list[AgentField]:
    """The first and next response changes among a ticket's ``changes`` (``(ms, group,
    field, value)``), each moved onto the agent of the reply at its instant; those of an
    instant without a named reply are left out."""
    at: dict[int, str] | None = None
    out: list[AgentField] = []
    is_response = _IS_RESPONSE
    for ms, _, name, value in changes:
        if value and is_response[name]:
            if at is None:
                at = replies_at(crew)
                if not at:
                    return out
            agent = at.get(ms)
            if agent is not None:
                out.append((ms, agent, name, value))
    return out


#: one survey as the state keeps it: ``(ms, kind, score, channel, queue, priority)``
_Survey = tuple[int, str, int, str | None, str | None, str | None]


def state_fields(
    kind: str,
    opened: tuple[int, str] | None,
    dims: Any,
    accepted: tuple[int, str] | None,
    ended: tuple[int, str] | None,
    surveys: Mapping[str, _Survey],
    crew: Mapping[str, tuple[int, str, str]],
    final_solve_ms: int | None,
) -> list[AgentField]:
    """A conversation's per-agent fields other than the responses: its answered chat and
    handle time, its CSAT responses and its ticket solved (see the module docstring)."""
    out: list[AgentField] = []
    if not crew:
        return out
    accept_agent: str | None = None
    accept_ms = 0
    if accepted is not None:
        kept = crew.get(accepted[1])
        if kept is not None and kept[1] == ACCEPT:
            accept_agent, accept_ms = kept[2], accepted[0]
    answered = accept_agent is not None and (ended is None or accept_ms <= ended[0])
    if kind == "c" and opened is not None and accept_agent is not None and answered:
        # answered (a tie goes to the accept), then maybe ended: handled
        out.append((accept_ms, accept_agent, "ca", 1))
        if ended is not None:
            handle_ms = ended[0] - accept_ms
            out.append((ended[0], accept_agent, "ch", 1))
            out.append((ended[0], accept_agent, "ch_ms", handle_ms))
            index = sketch.index_of(handle_ms / 1000)
            out.append((ended[0], accept_agent, f"ch_sk:{index}", 1))
    replies: list[tuple[int, str, str]] | None = None
    if kind == "t":
        replies = sorted(
            (ms, event_id, agent) for event_id, (ms, role, agent) in crew.items() if role == REPLY
        )
        if final_solve_ms is not None and opened is not None and replies:
            agent = last_reply(replies, final_solve_ms)
            if agent is not None:
                out.append((final_solve_ms, agent, "rv", 1))
    for event_id, (at_ms, survey_kind, score, channel, queue, priority) in surveys.items():
        if survey_kind != "csat":
            continue
        if dims is None and (channel is None or queue is None or priority is None):
            continue  # held until the rated conversation's opener arrives, as by group
        own = crew.get(event_id)
        agent = own[2] if own is not None and own[1] == SURVEY else None
        if agent is None:
            if replies:
                agent = last_reply(replies, at_ms)
            elif accept_agent is not None and accept_ms <= at_ms:
                agent = accept_agent
        if agent is None:
            continue
        out.append((at_ms, agent, "cs_n", 1))
        out.append((at_ms, agent, "cs_sat", int(score >= 4)))
        out.append((at_ms, agent, "cs_sum", score))
    return out


# --- an agent's group of the document -------------------------------------------------------


def _ratio(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator > 0 else None


def _durations(
    count: int, sum_ms: int, counts: Mapping[int, int], qs: tuple[float, ...] = (0.5, 0.9, 0.95)
) -> dict[str, float | None]:
    """Mean and quantiles in seconds of ``count`` durations, ``None`` without samples."""
    names = _DURATION_NAMES.get(qs)
    if names is None:
        names = _DURATION_NAMES[qs] = ("mean_seconds", *(f"p{round(q * 100)}_seconds" for q in qs))
    if not count:
        return dict.fromkeys(names)
    return dict(zip(names, [sum_ms / count / 1000, *sketch.quantiles_of(counts, qs)], strict=True))


_SKETCHES = ("fr_sk:", "fb_sk:", "nr_sk:", "nb_sk:", "ch_sk:")
_DURATION_NAMES: dict[tuple[float, ...], tuple[str, ...]] = {}


class _SketchNames(dict[str, tuple[str, int] | None]):
    """A field's sketch and index (``fr_sk:37`` -> ``("fr_sk:", 37)``), ``None`` for a field
    of no sketch: worked out once per name (an agent's group reads a few hundred)."""

    def __missing__(self, name: str) -> tuple[str, int] | None:
        if len(self) > _SKETCH_NAMES_KEPT:
            self.clear()
        prefix = name[:6]
        found = self[name] = (prefix, int(name[6:])) if prefix in _SKETCHES else None
        return found


#: field names :data:`_SKETCH_OF` keeps at most (the sketches' indices are a few thousand)
_SKETCH_NAMES_KEPT = 100_000
_SKETCH_OF = _SketchNames()


def presence_of(
    levels: Mapping[str, int], window: Mapping[str, int], start_s: int, end_s: int
) -> dict[str, Any]:
    """An agent's ``presence``: its status at the window's end (``levels``: its own levels
    there, ``ag:<code>`` -> 0 or 1) and its occupancy over the window (``window``: its
    presence fields summed over the window's buckets)."""
    status = None
    for name, code in presence.STATUS_CODES.items():
        if levels.get(presence.LEVEL_FIELDS[code], 0) > 0:
            status = name
    start_ms, end_ms = start_s * 1000, end_s * 1000
    spent = {
        code: presence.time_in_status_ms(
            int(levels.get(presence.LEVEL_FIELDS[code], 0)),
            int(window.get(presence.LEVEL_FIELDS[code], 0)),
            int(window.get(timed, 0)),
            start_ms,
            end_ms,
        )
        for code, timed in presence.TIME_FIELDS.items()
    }
    return {"status": status, "occupancy_ratio": presence.occupancy_ratio(spent["b"], spent["a"])}


def has_agent_samples(fields: Mapping[str, int]) -> bool:
    """Whether an agent has a count in its window (its presence steps are no samples)."""
    return any(
        value > 0 and "_sk:" not in name and not name.startswith(presence.PRESENCE_PREFIX)
        for name, value in fields.items()
    )


#: an agent's fields that count its samples: responses, chats answered, CSAT responses,
#: tickets solved
_VOLUME_FIELDS = ("fr", "nr", "ca", "cs_n", "rv")


def volume_of(fields: Mapping[str, int]) -> int:
    """How many samples an agent's fields hold in a window: its rank where not every agent
    is shown (:func:`~exporters.prometheus.agent_volume` of the group they make)."""
    return sum(int(fields.get(name, 0)) for name in _VOLUME_FIELDS)


def agent_document(
    agent_id: str, fields: Mapping[str, int], presence_part: Mapping[str, Any]
) -> dict[str, Any]:
    """One agent's group of the document grouped by agent, from its fields summed over the
    window and its ``presence`` (:func:`presence_of`). Counts are integers (0 when none), a
    value with no samples ``None``, ratios full precision."""
    return {**agent_body(agent_id, fields), "presence": dict(presence_part)}


def agent_body(agent_id: str, fields: Mapping[str, int]) -> dict[str, Any]:
    """:func:`agent_document` but its ``presence``: a function of the agent's fields alone
    (its presence fields, if there, are passed by), which a read keeps while they hold."""
    counts, sketches = split_fields(fields)
    return body_of(agent_id, counts, sketches)


def sketch_of(name: str) -> tuple[str, int] | None:
    """The sketch and index of an agent's field (``fr_sk:37`` -> ``("fr_sk:", 37)``),
    ``None`` for a field of no sketch."""
    return _SKETCH_OF[name]


def split_fields(fields: Mapping[str, int]) -> tuple[dict[str, int], dict[str, dict[int, int]]]:
    """An agent's fields as its counts and sums (every field of no sketch) and its
    sketches (``fr_sk:`` ... -> index -> count), one pass over them."""
    counts: dict[str, int] = {}
    sketches: dict[str, dict[int, int]] = {}
    of = _SKETCH_OF
    for name, value in fields.items():
        found = of[name]
        if found is None:
            counts[name] = int(value)
        else:
            held = sketches.get(found[0])
            if held is None:
                held = sketches[found[0]] = {}
            held[found[1]] = int(value)
    return counts, sketches


_NO_SKETCH: dict[int, int] = {}


def body_of(
    agent_id: str, counts: Mapping[str, int], sketches: Mapping[str, Mapping[int, int]]
) -> dict[str, Any]:
    """:func:`agent_body` of an agent's fields split by :func:`split_fields` (a read keeps
    them split: only the quantiles are left to work out)."""

    def get(name: str) -> int:
        return int(counts.get(name, 0))

    def sketch_counts(prefix: str) -> Mapping[int, int]:
        return sketches.get(prefix, _NO_SKETCH)

    fr_n, nr_n, ch_n, cs_n = get("fr"), get("nr"), get("ch"), get("cs_n")
    first = _durations(fr_n, get("fr_ms"), sketch_counts("fr_sk:"))
    handle = _durations(ch_n, get("ch_ms"), sketch_counts("ch_sk:"), (0.5, 0.9))
    return {
        "key": {"agent": agent_id},
        "first_response": {
            "count": fr_n,
            **first,
            "within_target": get("fr_in"),
            "within_target_ratio": _ratio(get("fr_in"), fr_n),
            "business": _durations(fr_n, get("fb_ms"), sketch_counts("fb_sk:")),
        },
        "next_response": {
            "count": nr_n,
            **_durations(nr_n, get("nr_ms"), sketch_counts("nr_sk:")),
            "business": _durations(nr_n, get("nb_ms"), sketch_counts("nb_sk:")),
        },
        "chats": {
            "answered": get("ca"),
            "handle_mean_seconds": handle["mean_seconds"],
            "handle_p50_seconds": handle["p50_seconds"],
            "handle_p90_seconds": handle["p90_seconds"],
        },
        "csat": {
            "responses": cs_n,
            "satisfied": get("cs_sat"),
            "ratio": _ratio(get("cs_sat"), cs_n),
            "average": _ratio(get("cs_sum"), cs_n),
        },
        "tickets_solved": get("rv"),
    }
