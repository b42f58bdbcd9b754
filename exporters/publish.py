"""KPI snapshots to ``deskpulse.kpis`` and threshold-rule transitions to ``deskpulse.alerts``.

Both run on the group leader only (one publisher per deployment) and read the windows the
Prometheus collector already summed, so a snapshot costs no extra Redis reads.

Snapshots are incremental: the topic is compacted, so a group's last message stands until
a newer one replaces it, and a pass publishes only the groups whose window sums or levels
changed since their last message (:class:`SnapshotState` remembers what each key was
published with), plus each window's total. Every ``DESKPULSE_SNAPSHOT_FULL_INTERVAL``
(and at a publisher's first pass, after a leader change) every group shown is published
again, changed or not. Each agent's group of the document grouped by agent goes out the
same way, keyed ``<window>|agent|<agent_id>`` (the most active agents first, as many as
``DESKPULSE_MAX_SNAPSHOT_MESSAGES`` per window).

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
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from deskpulse.exporters.cardinality import OTHER, Fold, Rule, guard
from deskpulse.exporters.kafka import KafkaPublisher
from deskpulse.exporters.prometheus import WindowRead, agent_volume
from deskpulse.models.outputs import AlertTransition, KpiSnapshot, output_key
from deskpulse.models.settings import AlertRule, Settings, parse_duration
from deskpulse.streams.core import LONGEST, OLDEST, SEP, group_document, has_samples
from deskpulse.streams.query import (
    AGENT,
    DIMENSIONS,
    build_document,
    build_grouped_document,
    format_time,
    project_live,
    read_windows,
)
from deskpulse.streams.store import Store

__all__ = [
    "RULE_METRICS",
    "SnapshotState",
    "evaluate_rules",
    "publish_snapshots",
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
    """What one publisher put on the KPI topic: the inputs each group's message was built
    from (its window sums and levels, as compared), and when every group was last sent."""

    inputs: dict[str, Any] = field(default_factory=dict)
    full_at_s: float | None = None


#: messages of a snapshot built and published at a time: a full snapshot of thousands of
#: groups is never held whole (a message is a few KB of Python objects until sent)
SNAPSHOT_CHUNK = 500

_Items = list[tuple[str, dict[str, Any]]]
_Plan = tuple[list[dict[tuple[str, ...], Mapping[str, int]]], list[Fold], int]


def snapshot_items(
    windows: Sequence[WindowRead],
    settings: Settings,
    published: Mapping[str, Any] | None = None,
) -> tuple[_Items, int, dict[str, Any]]:
    """The messages of one KPI snapshot, how many groups were folded into ``other``, and
    the inputs of each group message (key -> inputs, for the next pass's ``published``).

    Per window: the total (always), then the groups seen, largest first, as many as
    ``DESKPULSE_MAX_SNAPSHOT_MESSAGES`` leaves room for; the rest are summed into one
    ``other`` group (``"folded_groups": n``), so the groups of a window still add up to its
    total. With ``published`` (key -> inputs of the message last sent for it), a group
    whose inputs are the same is left out: its last message on the compacted topic says
    the same. CPU only: the caller runs it off the event loop.
    """
    inputs: dict[str, Any] = {}
    plan = _snapshot_plan(windows, settings)
    limit = settings.max_snapshot_messages
    items = [
        item
        for chunk in _snapshot_chunks(windows, plan, published, inputs, 0, limit)
        for item in chunk
    ]
    return items, plan[2], inputs


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
    inputs: dict[str, Any],
    size: int,
    limit: int = 10_000,
) -> Iterator[_Items]:
    """:func:`snapshot_items`'s messages, ``size`` at a time (0: all at once), each
    group's document built as its turn comes; ``inputs`` filled as they go."""
    views, folds, _ = plan
    items: _Items = []

    def changed(key: str, given: Any) -> bool:
        inputs[key] = given
        return published is None or published.get(key) != given

    for window, view, fold in zip(windows, views, folds, strict=True):
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
            if not changed(output_key(window.name, *key), (view[key], at_end)):
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
            if changed(output_key(window.name, *OTHER), (fold.other, rest, fold.folded)):
                names = dict(zip(DIMENSIONS, OTHER, strict=True))
                other = group_document(names, fold.other, rest, window.end_s)
                other = {**other, "folded_groups": fold.folded}
                items.append(_message(window.name, start, end, OTHER, other))
        # by agent: each agent's group under ``<window>|agent|<agent_id>``, the most active
        # first, as many as DESKPULSE_MAX_SNAPSHOT_MESSAGES per window
        for group in _agents_shown(window.agent_groups, limit):
            key = (AGENT, group["key"]["agent"])
            if changed(output_key(window.name, *key), group):
                items.append(_message(window.name, start, end, key, dict(group)))
                if size and len(items) >= size:
                    yield items
                    items = []
    if items:
        yield items


def _agents_shown(groups: Sequence[Mapping[str, Any]], limit: int) -> list[Mapping[str, Any]]:
    """The agents' groups a snapshot publishes: the ``limit`` with the most samples."""
    if len(groups) <= limit:
        return list(groups)
    return sorted(groups, key=lambda g: (-agent_volume(g), g["key"]["agent"]))[:limit]


def _message(
    window: str, start: str, end: str, parts: tuple[str | None, ...], group: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    """A group's message on the KPI topic: its key and its payload (the schema version is
    added as it is sent)."""
    body = KpiSnapshot.build(window, start, end, group).model_dump(mode="json")
    body.pop("schema_version")
    return output_key(window, *parts), body


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
) -> int:
    """A compacted message per window for the total and each group shown (with ``state``,
    each group changed since its last message, or every one once
    ``DESKPULSE_SNAPSHOT_FULL_INTERVAL`` has passed since the last full pass); how many."""
    now_s = time.time() if now_s is None else now_s
    full = (
        state is None
        or state.full_at_s is None
        or now_s - state.full_at_s >= settings.snapshot_full_interval
    )
    published = None if full or state is None else state.inputs
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
    inputs: dict[str, Any] = {}
    chunks = _snapshot_chunks(
        windows, plan, published, inputs, SNAPSHOT_CHUNK, settings.max_snapshot_messages
    )
    sent = 0
    while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
        await publisher.publish_json(settings.topic_kpis, chunk)
        sent += len(chunk)
        del chunk
    # remembered once the broker has them: after a failed pass its groups go again
    if state is not None:
        if full:
            state.inputs, state.full_at_s = inputs, now_s
        else:
            state.inputs.update(inputs)
    return sent


async def evaluate_rules(
    store: Store,
    publisher: KafkaPublisher,
    settings: Settings,
    *,
    now_s: float | None = None,
) -> list[AlertTransition]:
    """Evaluate every rule; publish and record the transitions (only those)."""
    now_s = time.time() if now_s is None else now_s
    previous = await store.alert_states()
    # (key in the Redis state, key on the alerts topic, the transition)
    transitions: list[tuple[str, str, AlertTransition]] = []
    rules = settings.alert_rules
    reads = await read_windows(
        store, widths_s=[parse_duration(rule.window) for rule in rules], at_s=now_s
    )
    for rule, (start_s, end_s, merged) in zip(rules, reads, strict=True):
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
    if not transitions:
        return []
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
    return [t for _, _, t in transitions]
