"""Settings (README.md, "Settings"): defaults, spellings, and one clear line for a bad value."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from datetime import date
from pathlib import Path

import pydantic
import pytest

from deskpulse.models.errors import SettingsError
from deskpulse.models.settings import (
    DEFAULT_FIRST_RESPONSE_TARGETS,
    RECORD_KINDS,
    Settings,
    available_cpus,
    format_duration,
    load_settings,
    parse_duration,
)
from tests.support import settings_env


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
    assert settings.input_topics == (
        "support.tickets",
        "support.chats",
        "support.surveys",
        "support.agents",
    )
    assert settings.topic_deadletter == "deskpulse.deadletter"
    assert settings.topic_kpis == "deskpulse.kpis"
    assert settings.topic_alerts == "deskpulse.alerts"
    assert settings.first_response_targets == {
        "urgent": 3600,
        "high": 14400,
        "normal": 28800,
        "low": 86400,
    }


def test_topic_for_each_record_kind() -> None:
    settings = Settings(topic_tickets="t", topic_chats="c", topic_surveys="s", topic_agents="a")
    assert {kind: settings.topic_for(kind) for kind in RECORD_KINDS} == {
        "tickets": "t",
        "chats": "c",
        "surveys": "s",
        "agents": "a",
    }
    # the kinds in the order of the input topics
    assert tuple(settings.topic_for(kind) for kind in RECORD_KINDS) == settings.input_topics
    with pytest.raises(ValueError, match="no input topic for 'alerts'; the kinds are tickets"):
        settings.topic_for("alerts")
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
    # an unknown priority: the targets name the four priorities of docs/kpis.md
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
    # the Redis client's own parser would raise these much later, as a traceback
    ("DESKPULSE_REDIS_URL", "localhost:6379", "has no scheme: write redis://"),
    ("DESKPULSE_REDIS_URL", "garbage", "has no scheme"),
    ("DESKPULSE_REDIS_URL", "http://127.0.0.1:6379/0", "the scheme 'http' is not redis"),
    ("DESKPULSE_REDIS_URL", "redis://127.0.0.1:abc/0", "'abc'"),
    ("DESKPULSE_REDIS_URL", "redis://127.0.0.1:99999/0", "out of range"),
    ("DESKPULSE_REDIS_URL", "redis://127.0.0.1:0/0", "port 0"),
    ("DESKPULSE_REDIS_URL", "redis://[::1/0", "IPv6"),
    ("DESKPULSE_REDIS_URL", "redis://127.0.0.1:6379/zero", "database 'zero'"),
    ("DESKPULSE_REDIS_URL", "redis://127.0.0.1:6379/0?socket_timeout=soon", "socket_timeout"),
    ("DESKPULSE_REDIS_URL", "redis://127.0.0.1:6379/0?colour=blue", "colour"),
    ("DESKPULSE_REDIS_URL", "rediss://127.0.0.1:6380/0?ssl_cert_reqs=maybe", "maybe"),
    ("DESKPULSE_REDIS_URL", "unix://", "socket path"),
    ("DESKPULSE_KAFKA_BOOTSTRAP", "localhost:abc", "not a number"),
    ("DESKPULSE_KAFKA_BOOTSTRAP", "localhost:0", "not a number from 1 to 65535"),
    ("DESKPULSE_KAFKA_BOOTSTRAP", "kafka://127.0.0.1:9092", "without a scheme"),
    ("DESKPULSE_KAFKA_BOOTSTRAP", "a:9092,,b:9092", "empty entry"),
    ("DESKPULSE_KAFKA_BOOTSTRAP", "a:9092, b:9092", "without spaces"),
    ("DESKPULSE_KAFKA_BOOTSTRAP", ":9092", "no host"),
    ("DESKPULSE_WEB_PORT", "0", "1"),
    ("DESKPULSE_READ_NICE", "20", "19"),
    ("DESKPULSE_READ_NICE", "-5", "0"),
    ("DESKPULSE_STALL_TIMEOUT", "0", "greater than 0"),
    ("DESKPULSE_STALL_TIMEOUT", "-5", "greater than 0"),
    ("DESKPULSE_STALL_TIMEOUT", "soon", "number"),
    ("DESKPULSE_WEB_HOST", "999.1.1.1", "neither an IP address nor a host name"),
    ("DESKPULSE_WEB_HOST", "", "neither"),
    ("DESKPULSE_WEB_HOST", "local host", "neither"),
    ("DESKPULSE_TOPIC_TICKETS", "support tickets", "topic name"),
    ("DESKPULSE_TOPIC_ALERTS", "..", "topic name"),
    ("DESKPULSE_TOPIC_DEADLETTER", "d" * 250, "249"),
    ("DESKPULSE_TOPIC_REPARTITION", "a/b", "topic name"),
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
    "url",
    [
        "redis://127.0.0.1:6379/0",
        "redis://127.0.0.1",
        "REDIS://127.0.0.1:6379/",
        "redis://:pass@127.0.0.1:6379/15",
        "redis://user:p%40ss@[::1]:6379/0?socket_timeout=2.5&health_check_interval=10",
        "rediss://user:pass@redis.internal:6380/0?ssl_ca_certs=/etc/ca.pem&ssl_cert_reqs=required",
        "unix:///run/redis/redis.sock?db=2",
    ],
)
def test_redis_urls_the_client_takes_are_accepted(
    monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    from redis.asyncio import Redis

    monkeypatch.setenv("DESKPULSE_REDIS_URL", url)
    assert load_settings().redis_url.get_secret_value() == url
    # and the client builds a connection from it (no connecting: nothing listens there)
    client = Redis.from_url(url)
    client.connection_pool.make_connection()


@pytest.mark.parametrize(
    "url",
    [
        "redis://:hunter2@127.0.0.1:6379/0?socket_timeout=soon",
        "redis://alice:hunter2@127.0.0.1:port/0",
        "rediss://alice:hunter2@127.0.0.1:6380/0?ssl_cert_reqs=hunter2",
        "redis://alice:hunter2@127.0.0.1:6379/hunter2",
        "hunter2",
    ],
)
def test_a_bad_redis_url_is_refused_without_its_password(
    monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    monkeypatch.setenv("DESKPULSE_REDIS_URL", url)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert caught.value.setting == "DESKPULSE_REDIS_URL"
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize("servers", ["localhost", "k1:9092,k2:9093", "[::1]:9092", "::1"])
def test_bootstrap_lists_are_accepted(monkeypatch: pytest.MonkeyPatch, servers: str) -> None:
    monkeypatch.setenv("DESKPULSE_KAFKA_BOOTSTRAP", servers)
    assert load_settings().kafka_bootstrap == servers


@pytest.mark.parametrize("protocol", ["SASL_PLAINTEXT", "SASL_SSL"])
def test_sasl_needs_a_user_and_a_password(monkeypatch: pytest.MonkeyPatch, protocol: str) -> None:
    monkeypatch.setenv("DESKPULSE_KAFKA_SECURITY_PROTOCOL", protocol)
    monkeypatch.setenv("DESKPULSE_KAFKA_SASL_USERNAME", "alice")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert caught.value.setting == "DESKPULSE_KAFKA_SASL_USERNAME"
    assert "DESKPULSE_KAFKA_SASL_PASSWORD" in str(caught.value)
    monkeypatch.setenv("DESKPULSE_KAFKA_SASL_PASSWORD", "secret")
    assert load_settings().kafka_sasl_username == "alice"


def test_a_ca_file_that_cannot_be_read_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from tests.faults_support import make_tls_files

    monkeypatch.setenv("DESKPULSE_KAFKA_SECURITY_PROTOCOL", "SSL")
    for cafile in (tmp_path / "missing.pem", tmp_path / "not-a-certificate.pem"):
        (tmp_path / "not-a-certificate.pem").write_text("hello\n")
        monkeypatch.setenv("DESKPULSE_KAFKA_SSL_CAFILE", str(cafile))
        with pytest.raises(SettingsError) as caught:
            load_settings()
        assert caught.value.setting == "DESKPULSE_KAFKA_SSL_CAFILE"
        assert str(cafile) in str(caught.value)
    ca = make_tls_files(tmp_path / "tls").ca_cert
    monkeypatch.setenv("DESKPULSE_KAFKA_SSL_CAFILE", str(ca))
    assert load_settings().kafka_ssl_cafile == str(ca)


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
        [sys.executable, "-m", "deskpulse.streams.cli", *args],
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


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("DESKPULSE_REDIS_URL", "localhost:6379", "has no scheme"),
        ("DESKPULSE_REDIS_URL", "http://127.0.0.1:6379/0", "the scheme 'http'"),
        ("DESKPULSE_REDIS_URL", "redis://:hunter2@127.0.0.1:port/0", "'port'"),
        ("DESKPULSE_KAFKA_BOOTSTRAP", "127.0.0.1:port", "not a number"),
        ("DESKPULSE_KAFKA_SSL_CAFILE", "/nonexistent/ca.pem", "No such file"),
        ("DESKPULSE_WEB_HOST", "999.1.1.1", "neither"),
    ],
)
@pytest.mark.parametrize("command", [["worker"], ["kpis", "--json"]])
def test_cli_refuses_a_bad_connection_setting_in_one_line(
    tmp_path: Path, command: list[str], name: str, value: str, says: str
) -> None:
    env = clean_environ(**{name: value, "DESKPULSE_KAFKA_SECURITY_PROTOCOL": "SSL"})
    done = run_cli(env, tmp_path, *command)
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.splitlines() == [done.stderr.strip()], done.stderr[-3000:]
    assert done.stderr.startswith(f"deskpulse: bad setting {name}: "), done.stderr
    assert says in done.stderr
    assert "hunter2" not in done.stderr
    assert done.stdout == ""


def test_the_worker_refuses_a_web_address_it_cannot_listen_on(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cases = [
            ({"DESKPULSE_WEB_PORT": str(port)}, "DESKPULSE_WEB_PORT", f"port {port} is in use"),
            # TEST-NET-1 (RFC 5737): an address no host here has
            ({"DESKPULSE_WEB_HOST": "192.0.2.1"}, "DESKPULSE_WEB_HOST", "cannot listen"),
            ({"DESKPULSE_WEB_HOST": "no-such-host.invalid"}, "DESKPULSE_WEB_HOST", "resolve"),
        ]
        for extra, name, says in cases:
            # nothing listens at the broker and Redis named: the address is refused first
            env = clean_environ(
                DESKPULSE_KAFKA_BOOTSTRAP="127.0.0.1:9",
                DESKPULSE_REDIS_URL="redis://127.0.0.1:9/0",
                **extra,
            )
            done = run_cli(env, tmp_path, "worker")
            assert done.returncode == 2, done.stderr[-3000:]
            lines = done.stderr.splitlines()
            assert len(lines) == 1, done.stderr[-3000:]
            assert lines[0].startswith(f"deskpulse: bad setting {name}: "), lines[0]
            assert says in lines[0]


def test_cli_reads_a_bad_setting_from_dotenv(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("DESKPULSE_WINDOWS=7s\n")
    done = run_cli(clean_environ(), tmp_path, "worker")
    assert done.returncode == 2, done
    assert done.stderr.splitlines() == [
        "deskpulse: bad setting DESKPULSE_WINDOWS: 7s is not a positive multiple of the 60s bucket"
    ]


def test_a_dotenv_that_is_not_utf8_is_refused_in_one_line(tmp_path: Path) -> None:
    (tmp_path / ".env").write_bytes(b"DESKPULSE_APP_ID=caf\xe9\n")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert caught.value.setting == ".env"
    done = run_cli(clean_environ(), tmp_path, "kpis", "--json")
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.splitlines() == [
        "deskpulse: bad setting .env: is not UTF-8 (byte 0xe9 at 20)"
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
    monkeypatch.setattr("deskpulse.models.settings.available_cpus", lambda: 1.0)
    assert not load_settings().uses_engine_process
    monkeypatch.setattr("deskpulse.models.settings.available_cpus", lambda: 2.0)
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


# --- business calendars and SLA policies ------------------------------------------------

EMEA = {
    "timezone": "Europe/Berlin",
    "hours": {
        "mon": ["09:00-17:30"],
        "tue": ["09:00-17:30"],
        "wed": ["09:00-17:30"],
        "thu": ["09:00-17:30"],
        "fri": ["09:00-13:00", "14:00-17:00"],
    },
    "holidays": ["2026-12-24", "2026-12-25", "2027-01-01"],
}
POLICIES = [
    {
        "name": "vip",
        "match": {"queue": ["billing"], "priority": ["urgent", "high"]},
        "schedule": "emea",
        "targets": {
            "first_response": {"urgent": 3600, "high": 7200},
            "next_response": {"urgent": 7200, "high": 14400},
            "resolution": {"urgent": 28800, "high": 86400},
        },
        "pause": ["pending"],
        "warn_at": [0.5, 0.75, 0.9],
    },
    {"name": "default", "targets": {"first_response": {"urgent": 3600, "normal": 28800}}},
]


def test_schedules_and_policies_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DESKPULSE_SCHEDULES", json.dumps({"emea": EMEA}))
    monkeypatch.setenv("DESKPULSE_SLA_POLICIES", json.dumps(POLICIES))
    settings = load_settings()
    emea = settings.schedules["emea"]
    assert emea.timezone == "Europe/Berlin"
    assert emea.weekly_minutes()[4] == ((540, 780), (840, 1020))  # Friday, split
    assert emea.weekly_minutes()[5] == ()  # Saturday: not listed, closed
    assert emea.holidays[0] == date(2026, 12, 24)
    vip, default = settings.policies
    assert (vip.name, vip.schedule, vip.pause, vip.warn_at) == (
        "vip",
        "emea",
        ("pending",),
        (0.5, 0.75, 0.9),
    )
    assert vip.target_seconds("resolution", "high") == 86400
    assert vip.target_seconds("resolution", "low") is None
    # defaults of a policy: every ticket, calendar time, pending pauses, warn at 75 %
    assert default.match.fits("any", "any", "low")
    assert (default.schedule, default.pause, default.warn_at) == (None, ("pending",), (0.75,))


def test_without_policies_the_one_default_policy_is_v1(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DESKPULSE_FIRST_RESPONSE_TARGETS", '{"urgent": 900}')
    settings = load_settings()
    assert settings.schedules == {}
    assert settings.sla_policies is None
    (policy,) = settings.policies
    assert policy.name == "default"
    assert policy.schedule is None
    assert policy.warn_at == ()
    assert policy.targets == {"first_response": {**DEFAULT_FIRST_RESPONSE_TARGETS, "urgent": 900}}


def test_an_empty_policy_list_means_no_sla(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DESKPULSE_SLA_POLICIES", "[]")
    assert load_settings().policies == ()


def test_schedules_and_policies_round_trip_through_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    original = Settings(schedules={"emea": EMEA}, sla_policies=POLICIES)
    for name, value in settings_env(original).items():
        if name.startswith("DESKPULSE_"):
            monkeypatch.setenv(name, value)
    assert load_settings() == original
    # the engine and read processes get the settings pickled
    assert pickle.loads(pickle.dumps(original)) == original


def _schedule(**changes: object) -> str:
    return json.dumps({"emea": {**EMEA, **changes}})


def _policy(**changes: object) -> str:
    return json.dumps([{**POLICIES[1], "name": "vip", **changes}])


# (variable, bad value, what the line must say besides the name): each names its schedule
# or policy
BAD_SLA = [
    (
        "DESKPULSE_SCHEDULES",
        _schedule(timezone="Europe/Berlinn"),
        "emea.timezone: unknown time zone 'Europe/Berlinn'",
    ),
    ("DESKPULSE_SCHEDULES", _schedule(timezone="CET+1"), "emea.timezone: unknown time zone"),
    (
        "DESKPULSE_SCHEDULES",
        _schedule(hours={"mon": ["9:00-17:00"]}),
        "emea.hours: mon: '9:00-17:00' is not an interval",
    ),
    (
        "DESKPULSE_SCHEDULES",
        _schedule(hours={"mon": ["09:00-25:00"]}),
        "emea.hours: mon: '09:00-25:00' ends at no time",
    ),
    (
        "DESKPULSE_SCHEDULES",
        _schedule(hours={"mon": ["24:00-24:00"]}),
        "emea.hours: mon: '24:00-24:00' starts at no time",
    ),
    ("DESKPULSE_SCHEDULES", _schedule(hours={"mon": ["09:60-10:00"]}), "starts at no time"),
    (
        "DESKPULSE_SCHEDULES",
        _schedule(hours={"mon": ["17:00-09:00"]}),
        "emea.hours: mon: '17:00-09:00' does not end after it starts",
    ),
    (
        "DESKPULSE_SCHEDULES",
        _schedule(hours={"mon": ["09:00-09:00"]}),
        "does not end after it starts",
    ),
    (
        "DESKPULSE_SCHEDULES",
        _schedule(hours={"tue": ["13:00-17:00", "09:00-13:30"]}),
        "emea.hours: tue: 09:00-13:30 overlaps 13:00-17:00",
    ),
    (
        "DESKPULSE_SCHEDULES",
        _schedule(hours={"monday": ["09:00-17:00"]}),
        "emea.hours: unknown day 'monday'",
    ),
    ("DESKPULSE_SCHEDULES", _schedule(hours={}), "emea.hours: is never open"),
    ("DESKPULSE_SCHEDULES", _schedule(hours={"mon": "09:00-17:00"}), "emea.hours.mon"),
    (
        "DESKPULSE_SCHEDULES",
        _schedule(holidays=["2026-02-30"]),
        "emea.holidays: bad holiday '2026-02-30'",
    ),
    (
        "DESKPULSE_SCHEDULES",
        _schedule(holidays=["24.12.2026"]),
        "emea.holidays: bad holiday '24.12.2026'",
    ),
    ("DESKPULSE_SCHEDULES", _schedule(holidays="2026-12-24"), "emea.holidays: must be a list"),
    ("DESKPULSE_SCHEDULES", _schedule(weekends=True), "emea.weekends"),
    ("DESKPULSE_SCHEDULES", json.dumps({"emea": {"hours": EMEA["hours"]}}), "emea.timezone"),
    ("DESKPULSE_SCHEDULES", "[]", "dictionary"),
    ("DESKPULSE_SCHEDULES", "{emea}", "not valid JSON"),
    (
        "DESKPULSE_SLA_POLICIES",
        _policy(schedule="apac"),
        "policy 'vip' names the schedule 'apac', which DESKPULSE_SCHEDULES does not define",
    ),
    (
        "DESKPULSE_SLA_POLICIES",
        _policy(targets={"first_response": {"urgent": 0}}),
        "policy 'vip': targets.first_response.urgent: Input should be greater than 0",
    ),
    (
        "DESKPULSE_SLA_POLICIES",
        _policy(targets={"first_response": {"urgent": -60}}),
        "greater than 0",
    ),
    (
        "DESKPULSE_SLA_POLICIES",
        _policy(targets={"first_reply": {"urgent": 60}}),
        "policy 'vip': targets.first_reply: Input should be 'first_response'",
    ),
    (
        "DESKPULSE_SLA_POLICIES",
        _policy(targets={"resolution": {"critical": 60}}),
        "policy 'vip': targets.resolution.critical",
    ),
    ("DESKPULSE_SLA_POLICIES", _policy(match={"team": ["a"]}), "policy 'vip': match.team"),
    (
        "DESKPULSE_SLA_POLICIES",
        _policy(match={"priority": ["p1"]}),
        "policy 'vip': match.priority[0]",
    ),
    (
        "DESKPULSE_SLA_POLICIES",
        _policy(match={"queue": []}),
        "policy 'vip': match.queue: an empty list matches no ticket",
    ),
    (
        "DESKPULSE_SLA_POLICIES",
        _policy(pause=["waiting"]),
        "policy 'vip': pause: unknown status 'waiting'",
    ),
    (
        "DESKPULSE_SLA_POLICIES",
        _policy(warn_at=[0.9, 0.5]),
        "policy 'vip': warn_at: fractions must be in increasing order",
    ),
    ("DESKPULSE_SLA_POLICIES", _policy(warn_at=[0.5, 0.5]), "each once"),
    (
        "DESKPULSE_SLA_POLICIES",
        _policy(warn_at=[1]),
        "policy 'vip': warn_at: 1.0 is not a fraction",
    ),
    ("DESKPULSE_SLA_POLICIES", _policy(warn_at=[0]), "is not a fraction"),
    ("DESKPULSE_SLA_POLICIES", json.dumps([{"targets": {}}]), "policy 0: name"),
    (
        "DESKPULSE_SLA_POLICIES",
        json.dumps([POLICIES[1], POLICIES[1]]),
        "two policies are named 'default'",
    ),
    ("DESKPULSE_SLA_POLICIES", json.dumps(POLICIES[1]), "tuple"),
]


@pytest.mark.parametrize(("name", "value", "says"), BAD_SLA, ids=[s for _, _, s in BAD_SLA])
def test_a_bad_schedule_or_policy_names_it(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, says: str
) -> None:
    monkeypatch.setenv("DESKPULSE_SCHEDULES", json.dumps({"emea": EMEA}))
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    line = str(caught.value)
    assert caught.value.setting == name
    assert line.startswith(f"{name}: ")
    assert "\n" not in line
    assert says in line


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("DESKPULSE_SCHEDULES", _schedule(timezone="Mars/Olympus"), "unknown time zone"),
        ("DESKPULSE_SLA_POLICIES", _policy(schedule="apac"), "policy 'vip' names the schedule"),
    ],
)
def test_cli_refuses_a_bad_schedule_or_policy_in_one_line(
    tmp_path: Path, name: str, value: str, says: str
) -> None:
    env = clean_environ(**{"DESKPULSE_SCHEDULES": json.dumps({"emea": EMEA}), name: value})
    done = run_cli(env, tmp_path, "worker")
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.splitlines() == [done.stderr.strip()], done.stderr[-2000:]
    assert done.stderr.startswith(f"deskpulse: bad setting {name}: "), done.stderr
    assert says in done.stderr
    assert done.stdout == ""


def test_agent_metrics_is_off_by_default_and_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().agent_metrics is False
    monkeypatch.setenv("DESKPULSE_AGENT_METRICS", "true")
    assert load_settings().agent_metrics is True
    monkeypatch.setenv("DESKPULSE_AGENT_METRICS", "sometimes")
    with pytest.raises(SettingsError) as raised:
        load_settings()
    assert str(raised.value).startswith("DESKPULSE_AGENT_METRICS")
