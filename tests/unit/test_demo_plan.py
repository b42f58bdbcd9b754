"""What ``deskpulse demo`` starts and where (streams/devtools/demo.py ``plan_stack``), the
rate its banner states, and its lines on a stdout whose reader is gone."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time

import pytest

from deskpulse.models.errors import SettingsError
from deskpulse.models.settings import Settings
from deskpulse.streams.devtools import demo
from deskpulse.streams.devtools.demo import StackPlan, plan_stack
from deskpulse.streams.devtools.simulate import generate

MACHINE = {("127.0.0.1", 9092), ("127.0.0.1", 6379), ("127.0.0.1", 6066)}


def plan(
    listening: set[tuple[str, int]], *, use_existing: bool = False, **named: object
) -> StackPlan:
    ports = itertools.count(40001)
    settings = Settings(**named)  # type: ignore[arg-type]
    return plan_stack(
        settings,
        use_existing=use_existing,
        named=named.keys(),
        is_open=lambda host, port: (host, port) in listening,
        pick_port=lambda host: next(ports),
    )


# (what listens, --use-existing, the settings named) -> (broker, own?, redis, own?, web port)
CASES = [
    # nothing named: its own servers on free ports, whatever listens on 9092 and 6379
    (MACHINE, False, {}, (("127.0.0.1", 40001), True, ("127.0.0.1", 40002), True, 40003)),
    (set(), False, {}, (("127.0.0.1", 40001), True, ("127.0.0.1", 40002), True, 6066)),
    # a Redis named and answering is used; a broker named but silent is started there
    (
        {("127.0.0.1", 7000)},
        False,
        {"redis_url": "redis://127.0.0.1:7000/0", "kafka_bootstrap": "127.0.0.1:7001"},
        (("127.0.0.1", 7001), True, ("127.0.0.1", 7000), False, 6066),
    ),
    # --use-existing: the configured addresses (the defaults here)
    (MACHINE, True, {}, (("127.0.0.1", 9092), False, ("127.0.0.1", 6379), False, 40001)),
    # the web port named is taken as it is
    (
        MACHINE,
        False,
        {"web_port": 6066},
        (("127.0.0.1", 40001), True, ("127.0.0.1", 40002), True, 6066),
    ),
]


@pytest.mark.parametrize(("listening", "use_existing", "named", "expected"), CASES)
def test_plan(
    listening: set[tuple[str, int]],
    use_existing: bool,
    named: dict[str, object],
    expected: tuple[object, ...],
) -> None:
    got = plan(listening, use_existing=use_existing, **named)
    assert (got.broker, got.own_broker, got.redis, got.own_redis, got.web_port) == expected


def test_use_existing_refuses_what_does_not_answer() -> None:
    with pytest.raises(SettingsError) as refused:
        plan({("127.0.0.1", 9092)}, use_existing=True)
    assert str(refused.value) == (
        "DESKPULSE_REDIS_URL: --use-existing: no Redis answers at 127.0.0.1:6379"
    )


def test_the_settings_follow_the_plan() -> None:
    got = plan(MACHINE)
    settings = got.settings_for(Settings(redis_url="redis://:secret@10.0.0.1:6379/3"))
    assert settings.redis_url.get_secret_value() == "redis://127.0.0.1:40002/0"
    assert settings.kafka_bootstrap == "127.0.0.1:40001"
    assert settings.web_port == 40003
    kept = plan(MACHINE, use_existing=True).settings_for(Settings())
    assert kept.redis_url.get_secret_value() == "redis://127.0.0.1:6379/0"


def test_the_worker_gets_the_planned_addresses_and_the_demo_defaults() -> None:
    settings = plan(MACHINE).settings_for(Settings(metrics_refresh_interval=3))
    env = demo.worker_environment(settings, {"PATH": "/bin"})
    assert env["DESKPULSE_REDIS_URL"] == "redis://127.0.0.1:40002/0"
    assert env["DESKPULSE_KAFKA_BOOTSTRAP"] == "127.0.0.1:40001"
    assert env["DESKPULSE_WEB_PORT"] == "40003"
    assert env["DESKPULSE_KAFKA_SESSION_TIMEOUT"] == "4"
    assert env["DESKPULSE_BREACH_CHECK_INTERVAL"] == "5"
    assert "DESKPULSE_METRICS_REFRESH_INTERVAL" not in env  # named: the worker reads its own


def test_the_stated_rate_counts_the_records_ahead_and_keeps_them() -> None:
    now_s = 1_795_392_000.0 + 3 * 86400 + 10 * 3600  # a Wednesday, 10:00 UTC
    config = demo.simulation(now_s, rate=4.0, seed=3, agent_hours={})
    records = demo._Peekable(generate(config))
    history = sum(1 for _ in demo.take_until(records, now_s))
    assert history > 4.0 * demo.HISTORY_S * 0.5
    per_s = demo.live_rate(records, now_s, span_s=600)
    taken = list(itertools.islice(records, int(per_s * 600) + 50))
    due = [r.occurred_at_s for r in taken if r.occurred_at_s is not None]
    assert due == sorted(due) and due[0] >= now_s  # nothing lost, nothing reordered
    assert sum(1 for t in due if t < now_s + 600) == round(per_s * 600)
    assert 2.0 < per_s < 8.0  # no office hours here: about the rate asked for


def test_lines_to_a_stdout_whose_reader_is_gone_fail_nothing() -> None:
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line
    code = (
        "from deskpulse.streams.devtools.demo import _Output\n"
        "out = _Output()\n"
        "out.say('one'); out.say('two')\n"
        "assert out.broken\n"
        "print('three')\n"  # after it, plain prints go nowhere quietly too
    )
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", code], stdout=write, stderr=subprocess.PIPE, timeout=60
    )
    os.close(write)
    assert done.returncode == 0, done.stderr
    assert done.stderr == b"", done.stderr
    assert time.monotonic() - started < 30
