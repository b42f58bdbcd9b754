"""KPI snapshots to ``deskpulse.kpis`` and threshold-rule transitions to ``deskpulse.alerts``.

Both run on the group leader only (one publisher per deployment) and read the windows the
Prometheus collector already summed, so a snapshot costs no extra Redis reads.

Threshold rules keep their state in Redis (``P:alerts``: ``rule␟window␟channel␟queue␟
priority`` -> ``firing``), so a transition is published once even when the leader moves
to another worker. A rule holds when its value is defined, has at least ``min_samples``
samples in the window, and compares true against the threshold; anything else is "not
holding" and resolves a firing alert.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from exporters.kafka import KafkaPublisher
from exporters.prometheus import WindowRead
from models.outputs import AlertTransition, KpiSnapshot
from models.settings import AlertRule, Settings, parse_duration
from streams.core import SEP
from streams.query import DIMENSIONS, build_document, format_time, read_windows
from streams.store import Store, text

__all__ = ["evaluate_rules", "publish_snapshots", "rule_value"]

# metric -> (section, value field, samples field or None for top-level counts)
_RULE_METRICS: dict[str, tuple[str, str, tuple[str, ...]]] = {
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
    section, field, samples = _RULE_METRICS[rule.metric]
    value = group[section][field]
    return value, sum(int(group[section][name]) for name in samples)


def holds(rule: AlertRule, value: float | None, samples: int) -> bool:
    """Whether the rule's condition holds (undefined or too few samples never do)."""
    if value is None or samples < rule.min_samples:
        return False
    return value > rule.threshold if rule.op == ">" else value < rule.threshold


async def publish_snapshots(
    windows: Sequence[WindowRead], publisher: KafkaPublisher, settings: Settings
) -> int:
    """One compacted message per window for the total and each group seen; how many."""
    items: list[tuple[str, dict[str, Any]]] = []
    for window in windows:
        start, end = format_time(window.start_s), format_time(window.end_s)
        for by in ((), DIMENSIONS):
            document = build_document(
                window.fields, start_s=window.start_s, end_s=window.end_s, by=by
            )
            for group in document["groups"]:
                key = "|".join([window.name, *(group["key"].get(dim, "*") for dim in DIMENSIONS)])
                snapshot = KpiSnapshot.build(window.name, start, end, group)
                body = snapshot.model_dump(mode="json")
                body.pop("schema_version")
                items.append((key, body))
    await publisher.publish_json(settings.topic_kpis, items)
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
    state_key = f"{store.prefix}:alerts"
    stored = await store.redis.hgetall(state_key)
    previous = {text(k): text(v) for k, v in stored.items()}
    transitions: list[tuple[str, AlertTransition]] = []
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
            transitions.append(
                (
                    key,
                    AlertTransition(
                        type="alert.firing" if now_holds else "alert.resolved",
                        rule=rule.name,
                        metric=rule.metric,
                        window=rule.window,
                        group={d: v for d, v in zip(DIMENSIONS, dims, strict=True) if v != "*"},
                        value=value,
                        threshold=rule.threshold,
                        at=format_time(now_s),
                    ),
                )
            )
    if not transitions:
        return []
    items = []
    for key, transition in transitions:
        body = transition.model_dump(mode="json")
        body.pop("schema_version")
        items.append((key.replace(SEP, "|"), body))
    await publisher.publish_json(settings.topic_alerts, items)
    # recorded after the broker has them: a crash in between repeats, never loses, one
    async with store.redis.pipeline(transaction=True) as pipe:
        for key, transition in transitions:
            # kept as "ok" after a resolve, so the firing gauge shows 0 rather than nothing
            pipe.hset(state_key, key, "firing" if transition.type == "alert.firing" else "ok")
        await pipe.execute()
    return [t for _, t in transitions]
