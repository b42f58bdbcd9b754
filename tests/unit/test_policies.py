"""The SLA policy set of the demo and the benchmark (streams/devtools/policies.py): settings
the worker accepts, first matches as intended, and simulated agents on the same hours."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from benchmark.stack import child_env, make_settings
from deskpulse.models.settings import Settings, load_settings
from deskpulse.models.sla import policy_for
from deskpulse.streams.devtools import policies
from deskpulse.streams.devtools.demo import worker_environment

QUEUES = ("billing", "sales", "technical", "general", "unassigned", "queue-00")
PRIORITIES = ("low", "normal", "high", "urgent")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No DESKPULSE_* from the outside, and no .env."""
    for name in list(os.environ):
        if name.startswith("DESKPULSE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def demo_settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings a worker builds at start with the policy set in its environment."""
    for name, value in policies.settings_env().items():
        monkeypatch.setenv(name, value)
    return load_settings()


def test_the_worker_accepts_the_policy_set(demo_settings: Settings) -> None:
    assert sorted(demo_settings.schedules) == ["americas", "emea"]
    assert demo_settings.schedules["emea"].timezone == "Europe/Berlin"
    assert demo_settings.schedules["americas"].timezone == "America/New_York"
    names = [policy.name for policy in demo_settings.policies]
    assert names == ["billing-priority", "emea", "americas", "default"]
    assert {policy.schedule for policy in demo_settings.policies} == {"emea", "americas", None}
    # every policy has targets for all three metrics and every priority it can match
    for policy in demo_settings.policies:
        priorities = policy.match.priority or PRIORITIES
        for metric in ("first_response", "next_response", "resolution"):
            for priority in priorities:
                assert policy.target_seconds(metric, priority), (policy.name, metric, priority)


@pytest.mark.parametrize("queue", QUEUES)
@pytest.mark.parametrize("priority", PRIORITIES)
def test_first_match_and_the_agents_keep_the_policys_hours(
    demo_settings: Settings, queue: str, priority: str
) -> None:
    policy = policy_for(demo_settings.policies, "email", queue, priority)
    assert policy is not None  # the last policy matches every ticket: 24/7, calendar time
    expected = {
        "billing": "billing-priority" if priority in ("urgent", "high") else "emea",
        "sales": "emea",
        "technical": "americas",
    }.get(queue, "default")
    assert policy.name == expected
    # the simulated agents of a queue work the schedule its tickets are measured on
    assert policy.schedule == policies.AGENT_SCHEDULES.get(queue)
    hours = policies.agent_hours()
    if policy.schedule is None:
        assert queue not in hours
    else:
        assert hours[queue] == demo_settings.schedules[policy.schedule]


def test_the_benchmark_hands_the_policy_set_to_its_workers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # what benchmark.run's contenders are built with, and the environment a worker gets
    built = make_settings(redis_prefix="bench-x", **policies.settings_values())
    assert built.sla_policies is not None and len(built.schedules) == 2
    for name, value in child_env(built).items():
        if name.startswith("DESKPULSE_"):
            monkeypatch.setenv(name, value)
    assert load_settings() == built


def test_the_demo_worker_gets_the_policy_set_unless_the_user_set_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    plain = load_settings()
    env = worker_environment(plain, {"PATH": "/bin"})
    assert env["DESKPULSE_SCHEDULES"] == policies.SCHEDULES
    assert env["DESKPULSE_SLA_POLICIES"] == policies.SLA_POLICIES
    assert env["DESKPULSE_REDIS_PREFIX"] == plain.redis_prefix
    assert env["PATH"] == "/bin"
    monkeypatch.setenv("DESKPULSE_SLA_POLICIES", "[]")  # the user's own: no SLA at all
    own = load_settings()
    env = worker_environment(own, {"DESKPULSE_SLA_POLICIES": "[]"})
    assert env["DESKPULSE_SLA_POLICIES"] == "[]"
    assert "DESKPULSE_SCHEDULES" not in env
