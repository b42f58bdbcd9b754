"""KPI snapshots to ``deskpulse.kpis`` and threshold-rule transitions to ``deskpulse.alerts``.

Both run on the group leader only (one publisher per deployment) and read the windows the
Prometheus collector already summed, so a snapshot costs no extra Redis reads.

Snapshots are incremental: the topic is compacted, so a group's last message stands until
a newer one replaces it, and a pass publishes only the groups whose window sums or levels
changed since their last message (:class:`SnapshotState` remembers what each key was
published with), plus each window's total. Every ``DESKPULSE_SNAPSHOT_FULL_INTERVAL``
(and at a publisher's first pass, after a leader change) every group shown is published
again, changed or not.

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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from deskpulse.exporters.cardinality import OTHER, Rule, guard
from deskpulse.exporters.kafka import KafkaPublisher
from deskpulse.exporters.prometheus import WindowRead
from deskpulse.models.outputs import AlertTransition, KpiSnapshot, output_key
from deskpulse.models.settings import AlertRule, Settings, parse_duration
from deskpulse.streams.core import LONGEST, OLDEST, SEP, group_document, has_samples
from deskpulse.streams.query import (
    DIMENSIONS,
    build_document,
    format_time,
    group_fields,
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


def snapshot_items(
    windows: Sequence[WindowRead],
    settings: Settings,
    published: Mapping[str, Any] | None = None,
) -> tuple[list[tuple[str, dict[str, Any]]], int, dict[str, Any]]:
    """The messages of one KPI snapshot, how many groups were folded into ``other``, and
    the inputs of each group message (key -> inputs, for the next pass's ``published``).

    Per window: the total (always), then the groups seen, largest first, as many as
    ``DESKPULSE_MAX_SNAPSHOT_MESSAGES`` leaves room for; the rest are summed into one
    ``other`` group (``"folded_groups": n``), so the groups of a window still add up to its
    total. With ``published`` (key -> inputs of the message last sent for it), a group
    whose inputs are the same is left out: its last message on the compacted topic says
    the same. CPU only: the caller runs it off the event loop.
    """
    views = []
    for window in windows:
        groups = group_fields(window.fields, DIMENSIONS)
        view = {key: fields for key, fields in groups.items() if has_samples(fields)}
        # a group with a ticket open or a chat waiting at the window's end is shown too
        for dims, levels in window.live.items():
            target = view.setdefault(dims, {})
            for name, value in levels.items():
                if name not in (OLDEST, LONGEST):
                    target[name] = target.get(name, 0) + value
        views.append(view)
    # the totals are always sent and count against the limit too
    budget = max(0, settings.max_snapshot_messages - len(windows))
    folds = guard(views, [Rule(1)], budget)
    items: list[tuple[str, dict[str, Any]]] = []
    inputs: dict[str, Any] = {}
    folded = 0

    def changed(key: str, given: Any) -> bool:
        inputs[key] = given
        return published is None or published.get(key) != given

    for window, view, (fold,) in zip(windows, views, folds, strict=True):
        start, end = format_time(window.start_s), format_time(window.end_s)
        total = build_document(
            window.fields, start_s=window.start_s, end_s=window.end_s, by=(), live=window.live
        )
        if window.agents is not None:  # kept over all groups: the total alone has them
            total["groups"][0]["agents"] = dict(window.agents)
        shown: list[tuple[tuple[str | None, ...], dict[str, Any]]] = [
            ((None,) * len(DIMENSIONS), total["groups"][0])
        ]
        for key in fold.kept:
            at_end = window.live.get(key)  # type: ignore[arg-type]
            if not changed(output_key(window.name, *key), (view[key], at_end)):
                continue
            names: dict[str, str] = dict(zip(DIMENSIONS, key, strict=True))
            document = group_document(names, view[key], at_end, window.end_s)
            shown.append((key, document))
        if fold.other is not None:
            kept = set(fold.kept)
            rest = project_live(
                {dims: levels for dims, levels in window.live.items() if dims not in kept}, ()
            ).get(())
            folded += fold.folded
            if changed(output_key(window.name, *OTHER), (fold.other, rest, fold.folded)):
                names = dict(zip(DIMENSIONS, OTHER, strict=True))
                other = group_document(names, fold.other, rest, window.end_s)
                shown.append((OTHER, {**other, "folded_groups": fold.folded}))
        for parts, group in shown:
            body = KpiSnapshot.build(window.name, start, end, group).model_dump(mode="json")
            body.pop("schema_version")
            items.append((output_key(window.name, *parts), body))
    return items, folded, inputs


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
    items, folded, inputs = await asyncio.to_thread(snapshot_items, windows, settings, published)
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
    await publisher.publish_json(settings.topic_kpis, items)
    # remembered once the broker has them: after a failed pass its groups go again
    if state is not None:
        if full:
            state.inputs, state.full_at_s = inputs, now_s
        else:
            state.inputs.update(inputs)
    return len(items)


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
