"""The reads by agent, the parts that keep what holds from one read to the next: a day's sum
split per agent and moved along by what changed (streams/query.py), an agent's group but
its presence (streams/agent_kpis.py), and the benchmark's verdict on the read's budget
(benchmark/report.py, section 15)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from benchmark.report import budget_rows, render
from deskpulse.streams import agent_kpis
from deskpulse.streams.core import SEP
from deskpulse.streams.query import _moved_agents, _split_agents

_AGENTS = ("A1", "A2", "B7")
_FIELDS = ("fr", "fr_ms", "fr_sk:37", "fr_sk:40", "ch_sk:12", "ca", "rv", "ag:a", "agt:b")
_NAMES = [agent + SEP + name for agent in _AGENTS for name in _FIELDS]

sums = st.dictionaries(st.sampled_from(_NAMES), st.integers(-3, 5).filter(bool), max_size=20)


def _without_zeros(split: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for agent, (counts, sketches, presence) in split.items():
        nonzero = {p: {i: v for i, v in s.items() if v} for p, s in sketches.items()}
        kept = (
            {n: v for n, v in counts.items() if v},
            {p: s for p, s in nonzero.items() if s},
            {n: v for n, v in presence.items() if v},
        )
        if any(kept):
            out[agent] = kept
    return out


def _copied(split: dict[str, Any]) -> dict[str, Any]:
    return {
        agent: (dict(c), {p: dict(s) for p, s in sketches.items()}, dict(p))
        for agent, (c, sketches, p) in split.items()
    }


@settings(max_examples=300, deadline=None)
@given(base=sums, change=st.dictionaries(st.sampled_from(_NAMES), st.integers(-5, 5)))
def test_moving_a_split_sum_along_equals_splitting_the_moved_sum(
    base: dict[str, int], change: dict[str, int]
) -> None:
    split = _split_agents(base)
    copies = _copied(split)
    moved = _moved_agents(split, change)
    total = dict(base)
    for name, value in change.items():
        total[name] = total.get(name, 0) + value
    assert _without_zeros(moved) == _without_zeros(_split_agents(total))
    # nothing at zero comes out of a field the change touched, no agent without fields
    touched = {name.rpartition(SEP)[0] for name, value in change.items() if value}
    for agent in touched & set(moved):
        counts, sketches, presence = moved[agent]
        assert (counts or sketches or presence) and all(sketches.values())
    # the split moved from is left as it was, and what the change leaves alone is its own
    assert _copied(split) == copies
    for agent, (counts, sketches, presence) in moved.items():
        if agent in split:
            mine = {n.rpartition(SEP)[2] for n, v in change.items() if v and n.startswith(agent)}
            if not any(not n.startswith("ag") and "_sk:" not in n for n in mine):
                assert counts is split[agent][0]
            if not any(n.startswith("ag") for n in mine):
                assert presence is split[agent][2]
            if not any("_sk:" in n for n in mine):
                assert sketches is split[agent][1]
            for prefix, held in sketches.items():
                if not any(n.startswith(prefix) for n in mine):
                    assert held is split[agent][1][prefix]


def test_the_split_keeps_the_sketches_and_the_presence_fields_apart() -> None:
    split = _split_agents(
        {
            f"A1{SEP}fr": 2,
            f"A1{SEP}fr_sk:40": 2,
            f"A1{SEP}ag:b": 1,
            f"A1{SEP}agt:a": -5,
            f"B{SEP}rv": 1,
        }
    )
    assert split == {
        "A1": ({"fr": 2}, {"fr_sk:": {40: 2}}, {"ag:b": 1, "agt:a": -5}),
        "B": ({"rv": 1}, {}, {}),
    }


def test_an_agents_group_is_its_body_and_its_presence() -> None:
    fields = {"fr": 2, "fr_ms": 120_000, "fr_sk:40": 2, "ch": 1, "ch_ms": 5000, "ch_sk:30": 1}
    presence = {"status": "busy", "occupancy_ratio": 0.5}
    body = agent_kpis.agent_body("A7", fields)
    assert "presence" not in body
    assert agent_kpis.agent_document("A7", fields, presence) == {**body, "presence": presence}
    # the presence fields among an agent's fields change nothing of the body
    assert agent_kpis.agent_body("A7", {**fields, "ag:b": 1, "agt:b": 7}) == body
    assert body["first_response"]["count"] == 2 and body["chats"]["handle_mean_seconds"] == 5.0


def _agents(cold_p99: float, agents: int) -> dict[str, Any]:
    timed = {"n": 30, "p50": cold_p99 / 2, "p90": cold_p99, "p99": cold_p99, "max": cold_p99}
    return {
        "records": 480_000,
        "queues": 21,
        "replay": {"per_second": 50_000.0},
        "cpu": {
            "first": {"cpu": 0.5, "wall": 0.6},
            "cold_cpu": timed,
            "cold_wall": timed,
            "warm_cpu": timed,
            "warm_wall": timed,
            "agents": agents,
            "agents_with_samples": agents,
            "agents_with_presence": agents,
        },
        "http": {"first": 0.7, "cold": timed, "warm": timed, "refresh": timed},
    }


def test_the_agents_budget_passes_only_under_200_ms_over_500_agents_or_more() -> None:
    marks = [
        budget_rows({"agents": _agents(p99, agents)})[0][-1]
        for p99, agents in ((0.150, 504), (0.250, 504), (0.150, 480))
    ]
    assert marks == ["**pass**", "**FAIL**", "**FAIL**"]
    text = render(
        {"sections": {"agents": _agents(0.15, 504)}, "config": {}},
        command="python -m benchmark.run agents",
        analysis="",
    )
    assert "## 15. KPIs by agent" in text and "504 agents in the 24 h document" in text
    assert "The worker's own refreshes of the KPI snapshot meanwhile" in text
