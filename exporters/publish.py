"""KPI snapshots to ``deskpulse.kpis`` and threshold-rule transitions to ``deskpulse.alerts``.

Both run on the group leader only (one publisher per deployment) and read the windows the
Prometheus collector already summed, so a snapshot costs no extra Redis reads.

Snapshots are incremental: the topic is compacted, so a group's last message stands until
a newer one replaces it, and a pass publishes only the groups whose window sums or levels
changed since their last message, plus each window's total. :class:`SnapshotState`
remembers a 64-bit fingerprint of what each key shown was published with (its inputs, not
the message: a few dozen bytes a key). Every ``DESKPULSE_SNAPSHOT_FULL_INTERVAL`` (and at a
publisher's first pass, after a leader change) every group shown is published again,
changed or not. Each agent's group of the document grouped by agent goes out the same way,
keyed ``<window>|agent|<agent_id>`` (the most active agents first, as many as
``DESKPULSE_MAX_SNAPSHOT_MESSAGES`` per window): the publisher reads the agents itself, at
its pass (:func:`read_agent_inputs`; the refresh reads them only for
``DESKPULSE_AGENT_METRICS``), and builds the document of an agent only when its fields or
levels moved since its last message.

Threshold rules keep their state in Redis (``P:alerts``: ``rule␟window␟channel␟queue␟
priority`` -> ``firing``), so a transition is published once even when the leader moves
to another worker. A rule holds when its value is defined, has at least ``min_samples``
samples in the window, and compares true against the threshold; anything else is "not
holding" and resolves a firing alert.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from deskpulse.exporters.cardinality import OTHER, Fold, Rule, guard
from deskpulse.exporters.kafka import KafkaPublisher
from deskpulse.exporters.prometheus import WindowRead
from deskpulse.models.outputs import AlertTransition, output_key
from deskpulse.models.settings import AlertRule, Settings, parse_duration
from deskpulse.streams import agent_kpis
from deskpulse.streams.core import LONGEST, OLDEST, SEP, group_document, has_samples
from deskpulse.streams.query import (
    AGENT,
    DIMENSIONS,
    build_document,
    build_grouped_document,
    format_time,
    per_agent,
    project_live,
    read_agent_parts,
    read_windows,
)
from deskpulse.streams.store import Store

__all__ = [
    "RULE_METRICS",
    "AgentInputs",
    "RuleTransition",
    "SnapshotState",
    "evaluate_rules",
    "publish_snapshots",
    "read_agent_inputs",
    "record_transitions",
    "rule_transitions",
    "rule_value",
    "snapshot_items",
]

log = logging.getLogger("deskpulse.publish")

# groups the last snapshot folded, per topic: the warning is logged when folding starts
_folded_before: dict[str, int] = {}

# metric -> (section, value field, samples field or None for top-level counts)
RULE_METRICS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "chat_abandonment_ratio": ("chats", "abandonment_ratio", ("answered", "abandoned")),
    "chat_service_level_ratio": ("chats", "service_level_ratio", ("answered", "abandoned")),
    "csat_ratio": ("csat", "ratio", ("responses",)),
    "first_response_within_target_ratio": ("first_response", "within_target_ratio", ("count",)),
    "first_response_p90_seconds": ("first_response", "p90_seconds", ("count",)),
    "nps_score": ("nps", "score", ("responses",)),
    "ces_score_average": ("ces", "average", ("responses",)),
}


def rule_value(rule: AlertRule, group: dict[str, Any]) -> tuple[float | None, int]:
    """The rule's metric in a group document, and how many samples it rests on."""
    section, field, samples = RULE_METRICS[rule.metric]
    value = group[section][field]
    return value, sum(int(group[section][name]) for name in samples)


def holds(rule: AlertRule, value: float | None, samples: int) -> bool:
    """Whether the rule's condition holds (undefined or too few samples never do)."""
    if value is None or samples < rule.min_samples:
        return False
    return value > rule.threshold if rule.op == ">" else value < rule.threshold


@dataclass
class SnapshotState:
    """What one publisher put on the KPI topic: per key shown at its last pass, the
    fingerprint of what its message was built from (a group's window sums and levels; an
    agent's fields and levels with the window's bounds, and its document), and when every
    key was last sent."""

    #: key -> fingerprint (an int; an agent's ``(inputs, document)``): only the keys shown
    #: at the last pass, so never more than a snapshot's messages
    published: dict[str, Any] = field(default_factory=dict)
    full_at_s: float | None = None


@dataclass(frozen=True, slots=True)
class AgentInputs:
    """One window's agents as the publisher read them: each agent's fields summed over
    the window, and its own levels at the window's end."""

    start_s: int
    end_s: int
    fields: Mapping[str, Mapping[str, int]]
    levels: Mapping[str, Mapping[str, int]]


async def read_agent_inputs(store: Store, windows: Sequence[WindowRead]) -> list[AgentInputs]:
    """The agents of each of ``windows`` (their bounds), read as :func:`~streams.query.
    read_agent_groups` reads them but without building their documents: the agent buckets
    summed (the settled part kept by the store), split by agent, each agent's own levels
    less its steps at or after the window's end. Nothing is kept here between passes (the
    split of a day's settled sum is some 10 MB over 7,000 agents, and the store hands out
    another one every minute or so anyway)."""
    bounds = [(window.start_s, window.end_s) for window in windows]
    read = await read_agent_parts(store, bounds)
    out = []
    for (start_s, end_s), (kept, rest) in zip(bounds, read.parts, strict=True):
        fields = per_agent(kept) if kept is not None else {}
        if kept is not None:
            # the sum this one was moved along from, which the store holds for a reader
            # that moves its split along: this one splits anew, so let it go
            store.take_move(kept)
        for agent, more in per_agent(rest).items():
            total = fields.setdefault(agent, {})
            for name, value in more.items():
                total[name] = total.get(name, 0) + value
        at_end = {agent: dict(held) for agent, held in read.own.items()}
        for agent, steps in read.steps_after[end_s].items():
            target = at_end.setdefault(agent, {})
            for name, value in steps.items():
                target[name] = target.get(name, 0) - value
        out.append(AgentInputs(start_s, end_s, fields, at_end))
    return out


#: messages of a snapshot built and published at a time: a full snapshot of thousands of
#: groups is never held whole (a message is a few KB of Python objects until sent)
SNAPSHOT_CHUNK = 500

_Items = list[tuple[str, dict[str, Any]]]
_Plan = tuple[list[dict[tuple[str, ...], Mapping[str, int]]], list[Fold], int]


def snapshot_items(
    windows: Sequence[WindowRead],
    settings: Settings,
    published: Mapping[str, Any] | None = None,
    agents: Sequence[AgentInputs] = (),
) -> tuple[_Items, int, dict[str, Any]]:
    """The messages of one KPI snapshot, how many groups were folded into ``other``, and
    the fingerprint of each key shown (key -> fingerprint, for the next pass's
    ``published``).

    Per window: the total (always), then the groups seen, largest first, as many as
    ``DESKPULSE_MAX_SNAPSHOT_MESSAGES`` leaves room for; the rest are summed into one
    ``other`` group (``"folded_groups": n``), so the groups of a window still add up to its
    total; then, with ``agents`` (:func:`read_agent_inputs` of the same windows), each
    agent's group. With ``published`` (key -> fingerprint of the message last sent for
    it), a key whose fingerprint is the same is left out: its last message on the
    compacted topic says the same. CPU only: the caller runs it off the event loop.
    """
    fingerprints: dict[str, Any] = {}
    plan = _snapshot_plan(windows, settings)
    limit = settings.max_snapshot_messages
    items = [
        item
        for chunk in _snapshot_chunks(windows, plan, published, fingerprints, 0, limit, agents)
        for item in chunk
    ]
    return items, plan[2], fingerprints


def _fingerprint(*parts: Mapping[str, int] | int | None) -> int:
    """A 64-bit hash of a message's inputs: fields and levels as sets of items (the same
    content hashes the same whatever order a dict was built in)."""
    return hash(
        tuple(p if p is None or isinstance(p, int) else frozenset(p.items()) for p in parts)
    )


def _snapshot_plan(windows: Sequence[WindowRead], settings: Settings) -> _Plan:
    """Each window's groups shown (with samples, or a ticket open or a chat waiting at its
    end), how each is folded, and how many groups were folded in all."""
    views: list[dict[tuple[str, ...], Mapping[str, int]]] = []
    for window in windows:
        view = {key: fields for key, fields in window.groups.items() if has_samples(fields)}
        # a group with a ticket open or a chat waiting at the window's end is shown too
        # (its fields and levels in a dict of their own: the window's are read only)
        for dims, levels in window.live.items():
            target = dict(view.get(dims, {}))
            for name, value in levels.items():
                if name not in (OLDEST, LONGEST):
                    target[name] = target.get(name, 0) + value
            view[dims] = target
        views.append(view)
    # the totals are always sent and count against the limit too
    budget = max(0, settings.max_snapshot_messages - len(windows))
    folds = [fold for (fold,) in guard(views, [Rule(1)], budget)]
    return views, folds, sum(fold.folded for fold in folds if fold.other is not None)


def _snapshot_chunks(
    windows: Sequence[WindowRead],
    plan: _Plan,
    published: Mapping[str, Any] | None,
    fingerprints: dict[str, Any],
    size: int,
    limit: int = 10_000,
    agents: Sequence[AgentInputs] = (),
) -> Iterator[_Items]:
    """:func:`snapshot_items`'s messages, ``size`` at a time (0: all at once), each
    group's document built as its turn comes; ``fingerprints`` filled as they go."""
    views, folds, _ = plan
    items: _Items = []

    def changed(key: str, given: int) -> bool:
        fingerprints[key] = given
        return published is None or published.get(key) != given

    for index, (window, view, fold) in enumerate(zip(windows, views, folds, strict=True)):
        start, end = format_time(window.start_s), format_time(window.end_s)

        total = build_grouped_document(
            _all_groups(window.groups),
            start_s=window.start_s,
            end_s=window.end_s,
            by=(),
            live=window.live,
        )
        if window.agents is not None:  # kept over all groups: the total alone has them
            total["groups"][0]["agents"] = dict(window.agents)
        items.append(
            _message(window.name, start, end, (None,) * len(DIMENSIONS), total["groups"][0])
        )
        for key in fold.kept:
            at_end = window.live.get(key)  # type: ignore[arg-type]
            if not changed(output_key(window.name, *key), _fingerprint(view[key], at_end)):
                continue
            names: dict[str, str] = dict(zip(DIMENSIONS, key, strict=True))
            document = group_document(names, view[key], at_end, window.end_s)
            items.append(_message(window.name, start, end, key, document))
            if size and len(items) >= size:
                yield items
                items = []
        if fold.other is not None:
            kept = set(fold.kept)
            rest = project_live(
                {dims: levels for dims, levels in window.live.items() if dims not in kept}, ()
            ).get(())
            given = _fingerprint(fold.other, rest, fold.folded)
            if changed(output_key(window.name, *OTHER), given):
                names = dict(zip(DIMENSIONS, OTHER, strict=True))
                other = group_document(names, fold.other, rest, window.end_s)
                other = {**other, "folded_groups": fold.folded}
                items.append(_message(window.name, start, end, OTHER, other))
        if index >= len(agents):
            continue
        # by agent: each agent's group under ``<window>|agent|<agent_id>``, the most active
        # first, as many as DESKPULSE_MAX_SNAPSHOT_MESSAGES per window
        for key, document in _agent_groups(
            window.name, agents[index], published, fingerprints, limit
        ):
            items.append(_message(window.name, start, end, key, document))
            if size and len(items) >= size:
                yield items
                items = []
    if items:
        yield items


_NONE: Mapping[str, int] = {}


def _agent_groups(
    window: str,
    agents: AgentInputs,
    published: Mapping[str, Any] | None,
    fingerprints: dict[str, Any],
    limit: int,
) -> Iterator[tuple[tuple[str, str], dict[str, Any]]]:
    """The agents' groups of one window that go out (key parts, document), in agent order:
    of the agents shown (a sample in the window, a status at its end or time in a status in
    it), the ``limit`` with the most samples; of those, the ones whose message would differ
    from the last one sent (``published``; every one without it). An agent's document is
    built only when its inputs (its fields, levels and the window's bounds) moved since its
    last message, or to be sent; ``fingerprints`` gets each shown agent's ``(inputs,
    document)``."""
    start_s, end_s = agents.start_s, agents.end_s
    # agent -> (key, fingerprint of the inputs, the fingerprints last sent, fields, levels)
    candidates: list[tuple[str, str, int, Any, Mapping[str, int], Mapping[str, int]]] = []
    for agent in sorted({*agents.fields, *agents.levels}):
        mine, at_end = agents.fields.get(agent, _NONE), agents.levels.get(agent, _NONE)
        key = output_key(window, AGENT, agent)
        last = None if published is None else published.get(key)
        candidates.append(
            (agent, key, _fingerprint(mine, at_end, start_s, end_s), last, mine, at_end)
        )

    def shown(mine: Mapping[str, int], presence_part: Mapping[str, Any]) -> bool:
        return (
            agent_kpis.has_agent_samples(mine)
            or presence_part["status"] is not None
            or presence_part["occupancy_ratio"] is not None
        )

    if len(candidates) > limit:
        # the most active shown: an agent whose inputs are those of its last message is
        # shown (it was); another is looked at
        ranked = [
            candidate
            for candidate in candidates
            if (candidate[3] is not None and candidate[3][0] == candidate[2])
            or shown(
                candidate[4], agent_kpis.presence_of(candidate[5], candidate[4], start_s, end_s)
            )
        ]
        if len(ranked) > limit:
            top = sorted(ranked, key=lambda c: (-agent_kpis.volume_of(c[4]), c[0]))[:limit]
            candidates = sorted(top, key=lambda c: c[0])
    for agent, key, inputs, last, mine, at_end in candidates:
        if last is not None and last[0] == inputs:
            fingerprints[key] = last  # the same inputs: the same message
            continue
        presence_part = agent_kpis.presence_of(at_end, mine, start_s, end_s)
        if not shown(mine, presence_part):
            continue
        document = agent_kpis.agent_document(agent, mine, presence_part)
        made = fingerprints[key] = (inputs, hash(orjson.dumps(document)))
        if last is None or last[1] != made[1]:
            yield (AGENT, agent), document


def _message(
    window: str, start: str, end: str, parts: tuple[str | None, ...], group: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    """A group's message on the KPI topic: its key and its payload (the schema version is
    added as it is sent): :class:`~models.outputs.KpiSnapshot`'s fields then the group's,
    as its ``model_dump(mode="json")`` orders them (a test holds the two equal), built as a
    dict: a pass sends thousands, and the model's validation and dump of each took about a
    tenth of the pass's CPU."""
    return output_key(window, *parts), {
        "window": window,
        "start": start,
        "end": end,
        "key": group["key"],  # the model's last field, before the group's others
        **group,
    }


def _all_groups(
    groups: Mapping[tuple[str, ...], Mapping[str, int]],
) -> dict[tuple[str, ...], dict[str, int]]:
    """The groups' fields summed into the one group of a document without ``by``."""
    total: dict[str, int] = {}
    get = total.get
    for fields in groups.values():
        for name, value in fields.items():
            total[name] = get(name, 0) + value
    return {(): total}


async def publish_snapshots(
    windows: Sequence[WindowRead],
    publisher: KafkaPublisher,
    settings: Settings,
    state: SnapshotState | None = None,
    *,
    now_s: float | None = None,
    agents: Sequence[AgentInputs] = (),
) -> int:
    """A compacted message per window for the total and each group shown, and with
    ``agents`` (:func:`read_agent_inputs` of the same windows) each agent's group (with
    ``state``, each changed since its last message, or every one once
    ``DESKPULSE_SNAPSHOT_FULL_INTERVAL`` has passed since the last full pass); how many."""
    now_s = time.time() if now_s is None else now_s
    full = (
        state is None
        or state.full_at_s is None
        or now_s - state.full_at_s >= settings.snapshot_full_interval
    )
    published = None if full or state is None else state.published
    plan = await asyncio.to_thread(_snapshot_plan, windows, settings)
    folded = plan[2]
    before = _folded_before.get(settings.topic_kpis, 0)
    if folded and not before:
        log.warning(
            "KPI snapshot on %s: %d groups folded into other (more groups than "
            "DESKPULSE_MAX_SNAPSHOT_MESSAGES=%d allows)",
            settings.topic_kpis,
            folded,
            settings.max_snapshot_messages,
        )
    elif before and not folded:
        log.info("KPI snapshot on %s: every group fits again", settings.topic_kpis)
    _folded_before[settings.topic_kpis] = folded
    # built and sent SNAPSHOT_CHUNK messages at a time, each chunk off the event loop
    fingerprints: dict[str, Any] = {}
    chunks = _snapshot_chunks(
        windows,
        plan,
        published,
        fingerprints,
        SNAPSHOT_CHUNK,
        settings.max_snapshot_messages,
        agents,
    )
    sent = 0
    while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
        await publisher.publish_json(settings.topic_kpis, chunk)
        sent += len(chunk)
        del chunk
    # remembered once the broker has them (after a failed pass its keys go again): the
    # keys shown now, so a key no longer shown is forgotten
    if state is not None:
        state.published = fingerprints
        if full:
            state.full_at_s = now_s
    return sent


#: A rule's transition: (its key in the Redis state, its key on the alerts topic, what it is)
RuleTransition = tuple[str, str, AlertTransition]


async def evaluate_rules(
    store: Store,
    publisher: KafkaPublisher,
    settings: Settings,
    *,
    now_s: float | None = None,
) -> list[AlertTransition]:
    """Evaluate every rule; publish and record the transitions (only those)."""
    transitions = await rule_transitions(store, settings, now_s=now_s)
    await record_transitions(store, publisher, settings, transitions)
    return [t for _, _, t in transitions]


async def rule_transitions(
    store: Store, settings: Settings, *, now_s: float | None = None
) -> list[RuleTransition]:
    """Every rule evaluated against its window ending ``now_s``: the transitions from the
    states recorded (reads only). The reads sum every group's fields of each rule's window:
    with thousands of groups, hundreds of milliseconds of Python, which the engine spends
    off the event loop that commits (:meth:`streams.kpi_engine.LocalEngine.publish_outputs`)."""
    now_s = time.time() if now_s is None else now_s
    previous = await store.alert_states()
    # (key in the Redis state, key on the alerts topic, the transition)
    transitions: list[RuleTransition] = []
    rules = settings.alert_rules
    # a rule without ``by`` (the default rules) reads the all-groups buckets, a tenth of
    # the fields (as an ungrouped KPI read does); the others every group's
    reads: dict[int, tuple[int, int, Counter[str]]] = {}
    for by_group in (False, True):
        chosen = [i for i, rule in enumerate(rules) if bool(rule.by) is by_group]
        if chosen:
            widths_s = [parse_duration(rules[i].window) for i in chosen]
            found = await read_windows(store, widths_s=widths_s, at_s=now_s, grouped=by_group)
            reads.update(zip(chosen, found, strict=True))
    for index, rule in enumerate(rules):
        start_s, end_s, merged = reads[index]
        document = build_document(merged, start_s=start_s, end_s=end_s, by=rule.by)
        groups: dict[tuple[str, ...], dict[str, Any] | None] = {
            tuple(g["key"].get(d, "*") for d in DIMENSIONS): g for g in document["groups"]
        }
        # groups that fired before but have no samples now must still resolve
        for raw_key, state in previous.items():
            name, window, *stored_dims = raw_key.split(SEP)
            if name == rule.name and window == rule.window and state == "firing":
                groups.setdefault(tuple(stored_dims), None)
        for dims, group in groups.items():
            value, samples = rule_value(rule, group) if group is not None else (None, 0)
            now_holds = holds(rule, value, samples)
            key = SEP.join([rule.name, rule.window, *dims])
            was_firing = previous.get(key) == "firing"
            if now_holds == was_firing:
                continue
            # which dimensions are grouped is the rule's to say: a real queue may be "*"
            grouped: dict[str, str] = {
                d: v for d, v in zip(DIMENSIONS, dims, strict=True) if d in rule.by
            }
            transitions.append(
                (
                    key,
                    output_key(rule.name, rule.window, *(grouped.get(d) for d in DIMENSIONS)),
                    AlertTransition(
                        type="alert.firing" if now_holds else "alert.resolved",
                        rule=rule.name,
                        metric=rule.metric,
                        window=rule.window,
                        group=grouped,
                        value=value,
                        threshold=rule.threshold,
                        at=format_time(now_s),
                    ),
                )
            )
    return transitions


async def record_transitions(
    store: Store,
    publisher: KafkaPublisher,
    settings: Settings,
    transitions: Sequence[RuleTransition],
) -> None:
    """Publish :func:`rule_transitions` to the alerts topic, then record the new states."""
    if not transitions:
        return
    items = []
    for _, topic_key, transition in transitions:
        body = transition.model_dump(mode="json")
        body.pop("schema_version")
        items.append((topic_key, body))
    await publisher.publish_json(settings.topic_alerts, items)
    # recorded after the broker has them: a crash in between repeats, never loses, one
    # kept as "ok" after a resolve, so the firing gauge shows 0 rather than nothing
    await store.save_alert_states(
        {key: "firing" if t.type == "alert.firing" else "ok" for key, _, t in transitions}
    )
