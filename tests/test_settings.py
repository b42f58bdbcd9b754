"""Settings (CONTRACT §6): defaults, spellings, and one clear line for a bad value."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pydantic
import pytest

from models.errors import SettingsError
from models.settings import (
    DEFAULT_FIRST_RESPONSE_TARGETS,
    Settings,
    available_cpus,
    format_duration,
    load_settings,
    parse_duration,
)

from .support import settings_env


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No DESKPULSE_* from the outside, and no .env but the one a test writes."""
    for name in list(os.environ):
        if name.startswith("DESKPULSE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def test_defaults_match_the_contract() -> None:
    settings = load_settings()
    assert settings.kafka_bootstrap == "127.0.0.1:9092"
    assert settings.redis_url.get_secret_value() == "redis://127.0.0.1:6379/0"
    assert settings.redis_prefix == "deskpulse"
    assert settings.app_id == "deskpulse"
    assert settings.input_topics == ("support.tickets", "support.chats", "support.surveys")
    assert settings.topic_deadletter == "deskpulse.deadletter"
    assert settings.topic_kpis == "deskpulse.kpis"
    assert settings.topic_alerts == "deskpulse.alerts"
    assert settings.first_response_targets == {
        "urgent": 3600,
        "high": 14400,
        "normal": 28800,
        "low": 86400,
    }
    assert settings.first_response_targets == DEFAULT_FIRST_RESPONSE_TARGETS
    assert settings.short_abandon == 5
    assert settings.chat_answer_target == 20
    assert settings.bucket_seconds == 60
    assert settings.retention == 48 * 3600
    assert settings.window_names == ("5m", "15m", "1h", "24h")
    assert (settings.web_host, settings.web_port) == ("127.0.0.1", 6066)
    assert settings.web_token is None
    assert settings.snapshot_interval == 10
    assert settings.breach_check_interval == 15
    assert {rule.name for rule in settings.alert_rules} >= {"ChatAbandonmentHigh", "CsatLow"}


def test_the_secret_is_not_in_the_repr() -> None:
    settings = Settings(redis_url="redis://:hunter2@127.0.0.1:6379/0")
    assert "hunter2" not in repr(settings)
    assert "hunter2" not in str(settings)


# (written, seconds)
DURATIONS = [
    ("0", 0),
    ("90", 90),
    ("90s", 90),
    ("5m", 300),
    ("1h", 3600),
    ("48h", 172800),
    ("2d", 172800),
    (" 15m ", 900),
    (30, 30),
]


@pytest.mark.parametrize(("written", "seconds"), DURATIONS)
def test_parse_duration(written: str | int, seconds: int) -> None:
    assert parse_duration(written) == seconds


@pytest.mark.parametrize("written", ["x", "", "5 minutes", "1.5h", "-5m", "5M", "m", True, -1])
def test_parse_duration_refuses(written: str | int) -> None:
    with pytest.raises(ValueError):
        parse_duration(written)


@pytest.mark.parametrize(
    ("seconds", "written"),
    [(300, "5m"), (900, "15m"), (3600, "1h"), (86400, "24h"), (90, "90s"), (7200, "2h")],
)
def test_format_duration(seconds: int, written: str) -> None:
    assert format_duration(seconds) == written


def test_durations_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DESKPULSE_RETENTION", "72h")
    monkeypatch.setenv("DESKPULSE_SNAPSHOT_INTERVAL", "5m")
    monkeypatch.setenv("DESKPULSE_CHAT_ANSWER_TARGET", "30")
    monkeypatch.setenv("DESKPULSE_KAFKA_SESSION_TIMEOUT", "4s")
    settings = load_settings()
    assert settings.retention == 72 * 3600
    assert settings.snapshot_interval == 300
    assert settings.chat_answer_target == 30
    assert settings.kafka_session_timeout == 4


# (DESKPULSE_WINDOWS, parsed widths): order kept, repeats and blanks dropped
WINDOWS = [
    ("5m,15m,1h,24h", (300, 900, 3600, 86400)),
    ("1h", (3600,)),
    (" 5m , 1h ", (300, 3600)),
    ("1h,5m", (3600, 300)),
    ("5m,5m,300s", (300,)),
    ("5m,,1h,", (300, 3600)),
    ("1d", (86400,)),
    ("120", (120,)),
]


@pytest.mark.parametrize(("written", "widths"), WINDOWS)
def test_windows_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, written: str, widths: tuple[int, ...]
) -> None:
    monkeypatch.setenv("DESKPULSE_WINDOWS", written)
    assert load_settings().windows == widths


def test_targets_from_the_environment_merge_with_the_defaults(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DESKPULSE_FIRST_RESPONSE_TARGETS", '{"urgent": 900}')
    assert load_settings().first_response_targets == {
        **DEFAULT_FIRST_RESPONSE_TARGETS,
        "urgent": 900,
    }


# (variable, bad value, what the line must say besides the name)
BAD = [
    ("DESKPULSE_WEB_PORT", "abc", "integer"),
    ("DESKPULSE_WEB_PORT", "70000", "65535"),
    ("DESKPULSE_WINDOWS", "7s", "multiple"),
    ("DESKPULSE_WINDOWS", "90s,5m", "90s"),
    ("DESKPULSE_WINDOWS", ",", "window"),
    ("DESKPULSE_WINDOWS", "5 minutes", "duration"),
    ("DESKPULSE_WINDOWS", "72h", "retention"),
    ("DESKPULSE_RETENTION", "x", "duration"),
    ("DESKPULSE_RETENTION", "-5m", "duration"),
    ("DESKPULSE_FIRST_RESPONSE_TARGETS", '{"urgent": -1}', "positive"),
    ("DESKPULSE_FIRST_RESPONSE_TARGETS", '{"urgent": 0}', "positive"),
    # an unknown priority: the targets name the four of CONTRACT §1
    ("DESKPULSE_FIRST_RESPONSE_TARGETS", '{"critical": 600}', "critical"),
    ("DESKPULSE_FIRST_RESPONSE_TARGETS", "3600", "dictionary"),
    ("DESKPULSE_FIRST_RESPONSE_TARGETS", '{"urgent": "soon"}', "integer"),
    ("DESKPULSE_TOPIC_PARTITIONS", "0", "1"),
    ("DESKPULSE_BATCH_WITHIN", "0", "0"),
    ("DESKPULSE_KAFKA_FETCH_MAX_WAIT", "0", "0"),
    ("DESKPULSE_KAFKA_FETCH_MAX_WAIT", "soon", "number"),
    ("DESKPULSE_MAX_RECORD_BYTES", "10", "256"),
    ("DESKPULSE_KAFKA_SECURITY_PROTOCOL", "TLS", "PLAINTEXT"),
    ("DESKPULSE_REDIS_PREFIX", "has space", "pattern"),
    ("DESKPULSE_APP_ID", "", "pattern"),
    ("DESKPULSE_BUCKET_SECONDS", "0", "positive"),
    ("DESKPULSE_ROLLUP_SECONDS", "90", "multiple"),
    ("DESKPULSE_KAFKA_SESSION_TIMEOUT", "1.5", "duration"),
    ("DESKPULSE_SHORT_ABANDON", "yes", "duration"),
    ("DESKPULSE_ALERT_RULES", '[{"name": "x", "metric": "csat_ratio"}]', ""),
    ("DESKPULSE_ENGINE_PROCESS", "sometimes", "true, false or auto"),
    ("DESKPULSE_BATCHES_IN_FLIGHT", "0", "1"),
]


@pytest.mark.parametrize(("name", "value", "says"), BAD, ids=[f"{n}={v}" for n, v, _ in BAD])
def test_bad_value_names_the_setting(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, says: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    line = str(caught.value)
    assert caught.value.setting == name
    assert line.startswith(f"{name}: ")
    assert "\n" not in line
    assert says in line


@pytest.mark.parametrize(
    "name",
    [
        "DESKPULSE_KAFKA_SESSION_TIMEOUT",
        "DESKPULSE_METRICS_REFRESH_INTERVAL",
        "DESKPULSE_SNAPSHOT_INTERVAL",
        "DESKPULSE_BREACH_CHECK_INTERVAL",
    ],
)
def test_zero_interval_is_refused(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv(name, "0")
    with pytest.raises(SettingsError, match=name):
        load_settings()


@pytest.mark.parametrize(
    ("name", "value"),
    [("DESKPULSE_FIRST_RESPONSE_TARGETS", "{urgent: 60}"), ("DESKPULSE_ALERT_RULES", "not json")],
)
def test_json_that_does_not_parse_names_the_setting(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert caught.value.setting == name


def test_bad_alert_rule_says_which_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DESKPULSE_ALERT_RULES", '[{"name": "x", "window": "15m", "op": ">"}]')
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert caught.value.setting == "DESKPULSE_ALERT_RULES"
    assert "metric" in str(caught.value)


def test_settings_are_frozen() -> None:
    settings = load_settings()
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        settings.web_port = 1  # type: ignore[misc]
    assert settings.web_port == 6066


def test_dotenv_is_read_and_the_environment_wins(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text("DESKPULSE_REDIS_PREFIX=fromfile\nDESKPULSE_APP_ID=fromfile\n")
    monkeypatch.setenv("DESKPULSE_APP_ID", "fromenv")
    settings = load_settings()
    assert (settings.redis_prefix, settings.app_id) == ("fromfile", "fromenv")


def test_settings_env_round_trips(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test helper that hands settings to subprocesses loses nothing."""
    original = Settings(
        kafka_bootstrap="127.0.0.1:1",
        redis_url="redis://:pw@127.0.0.1:2/3",
        redis_prefix="p1",
        app_id="a1",
        topic_tickets="x.t",
        topic_deadletter="x.dl",
        topic_partitions=3,
        first_response_targets={"urgent": 60},
        windows=(300, 3600),
        retention=7200,
        kafka_session_timeout=4,
        batch_within=0.1,
        max_record_bytes=1024,
        web_port=1234,
        web_token="tok",
        alert_rules=(
            {"name": "R", "metric": "csat_ratio", "window": "5m", "op": "<", "threshold": 0.5},
        ),
    )
    for name, value in settings_env(original).items():
        if name.startswith("DESKPULSE_"):
            monkeypatch.setenv(name, value)
    assert load_settings() == original


def run_cli(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def clean_environ(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DESKPULSE_")}
    return env | extra


@pytest.mark.parametrize("command", [["worker"], ["kpis", "--json"], ["demo"]])
def test_cli_refuses_a_bad_setting_in_one_line(tmp_path: Path, command: list[str]) -> None:
    done = run_cli(clean_environ(DESKPULSE_WEB_PORT="abc"), tmp_path, *command)
    assert done.returncode == 2, done
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("deskpulse: bad setting DESKPULSE_WEB_PORT: "), lines[0]
    assert "abc" in lines[0]
    assert done.stdout == ""


def test_cli_reads_a_bad_setting_from_dotenv(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("DESKPULSE_WINDOWS=7s\n")
    done = run_cli(clean_environ(), tmp_path, "worker")
    assert done.returncode == 2, done
    assert done.stderr.splitlines() == [
        "deskpulse: bad setting DESKPULSE_WINDOWS: 7s is not a positive multiple of the 60s bucket"
    ]


def test_cli_refuses_json_that_does_not_parse_in_one_line(tmp_path: Path) -> None:
    done = run_cli(
        clean_environ(DESKPULSE_FIRST_RESPONSE_TARGETS="{urgent: 60}"), tmp_path, "worker"
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert len(done.stderr.splitlines()) == 1, done.stderr[-2000:]
    assert done.stderr.startswith("deskpulse: bad setting DESKPULSE_FIRST_RESPONSE_TARGETS: ")


@pytest.mark.parametrize(
    ("written", "means"),
    [("auto", "auto"), ("AUTO", "auto"), ("true", True), ("1", True), ("off", False)],
)
def test_engine_process_spellings(
    monkeypatch: pytest.MonkeyPatch, written: str, means: bool | str
) -> None:
    monkeypatch.setenv("DESKPULSE_ENGINE_PROCESS", written)
    assert load_settings().engine_process == means


def test_engine_process_auto_follows_the_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().engine_process == "auto"  # the default
    monkeypatch.setattr("models.settings.available_cpus", lambda: 1.0)
    assert not load_settings().uses_engine_process
    monkeypatch.setattr("models.settings.available_cpus", lambda: 2.0)
    assert load_settings().uses_engine_process
    assert not load_settings(engine_process=False).uses_engine_process


@pytest.mark.parametrize(
    ("cpu_max", "cap"),
    [
        (None, None),  # no cgroup v2 file: the affinity mask
        ("max 100000\n", None),  # no quota
        ("100000 100000\n", 1.0),  # a container limited to one CPU
        ("150000 100000\n", 1.5),
        ("garbage\n", None),
    ],
)
def test_available_cpus_takes_the_cgroup_quota(
    tmp_path: Path, cpu_max: str | None, cap: float | None
) -> None:
    if cpu_max is not None:
        (tmp_path / "cpu.max").write_text(cpu_max)
    mask = len(os.sched_getaffinity(0))
    assert available_cpus(str(tmp_path)) == (mask if cap is None else min(mask, cap))
