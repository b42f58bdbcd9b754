"""The Faust app's options: one function builds them, for the worker and the bare agent."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path
from typing import Any

import faust
import pytest
from pydantic import SecretStr

from benchmark import bare_agent
from deskpulse.models.settings import Settings
from deskpulse.streams.app import DeskpulseApp, create_app, faust_app_options

# what the options must say, whatever the settings
FIXED = {
    "store": "memory://",
    "web_enabled": True,
    "topic_replication_factor": 1,
    "producer_acks": -1,
    "consumer_auto_offset_reset": "earliest",
    "stream_wait_empty": True,
    "broker_commit_interval": 1.0,
    "table_cleanup_interval": 3600,
    "web_in_thread": False,
}


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        # the defaults
        (
            {},
            {
                "id": "deskpulse",
                "broker": ["kafka://127.0.0.1:9092"],
                "broker_credentials": None,
                "web_host": "127.0.0.1",
                "web_bind": "127.0.0.1",
                "web_port": 6066,
                "topic_partitions": 4,
                "broker_session_timeout": 10.0,
                "broker_heartbeat_interval": 2.5,
                "fetch_max_wait_s": 0.1,
            },
        ),
        # several brokers: one URL each; the web server binds where it is told to listen
        (
            {"kafka_bootstrap": "k1:9092,k2:9093", "web_host": "0.0.0.0", "web_port": 7000},
            {
                "broker": ["kafka://k1:9092", "kafka://k2:9093"],
                "web_host": "0.0.0.0",
                "web_bind": "0.0.0.0",
                "web_port": 7000,
            },
        ),
        # heartbeats a quarter of the session timeout...
        (
            {"kafka_session_timeout": 30, "app_id": "desk-eu", "topic_partitions": 12},
            {
                "id": "desk-eu",
                "broker_session_timeout": 30.0,
                "broker_heartbeat_interval": 7.5,
                "topic_partitions": 12,
            },
        ),
        # ...but never under a second
        ({"kafka_session_timeout": 2}, {"broker_heartbeat_interval": 1.0}),
        # the fetch wait as set (the app turns it into whole ms for the consumer)
        ({"kafka_fetch_max_wait": 0.0004}, {"fetch_max_wait_s": 0.0004}),
    ],
)
def test_options(values: dict[str, Any], expected: dict[str, Any]) -> None:
    options = faust_app_options(Settings(**values))
    assert options == {**options, **FIXED, **expected}


def test_options_carry_the_broker_credentials() -> None:
    settings = Settings(
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism="PLAIN",
        kafka_sasl_username="desk",
        kafka_sasl_password=SecretStr("pw"),
    )
    credentials = faust_app_options(settings)["broker_credentials"]
    assert isinstance(credentials, faust.SASLCredentials)
    assert (credentials.username, credentials.password) == ("desk", "pw")


def _conf(app: faust.App) -> dict[str, Any]:
    """What the options set, as the built app holds it."""
    conf = app.conf
    credentials = conf.broker_credentials
    return {
        "class": type(app),
        "fetch_max_wait_ms": app.fetch_max_wait_ms,  # type: ignore[attr-defined]
        "credentials": None if credentials is None else vars(credentials),
        **{
            name: getattr(conf, name)
            for name in (
                "id",
                "broker",
                "store",
                "web_host",
                "web_port",
                "web_bind",
                "web_enabled",
                "topic_partitions",
                "topic_replication_factor",
                "producer_acks",
                "consumer_auto_offset_reset",
                "stream_wait_empty",
                "broker_commit_interval",
                "broker_session_timeout",
                "broker_heartbeat_interval",
                "table_cleanup_interval",
                "web_in_thread",
            )
        },
    }


@pytest.mark.parametrize(
    "values",
    [
        {},
        {"kafka_bootstrap": "k1:9092,k2:9093", "kafka_session_timeout": 30, "app_id": "bench"},
        {"kafka_fetch_max_wait": 0.02, "topic_partitions": 8, "web_port": 7001},
        {
            "kafka_security_protocol": "SASL_PLAINTEXT",
            "kafka_sasl_mechanism": "PLAIN",
            "kafka_sasl_username": "desk",
            "kafka_sasl_password": SecretStr("pw"),
        },
    ],
)
def test_the_bare_agent_builds_the_workers_app(values: dict[str, Any], tmp_path: Path) -> None:
    settings = Settings(**values)
    worker = create_app(settings)
    bare = bare_agent.create_bare_app(settings, tmp_path / "bare.json")
    assert _conf(bare) == _conf(worker)
    assert isinstance(bare, DeskpulseApp)


def test_the_bare_agent_passes_nothing_but_the_options() -> None:
    """Its app is ``DeskpulseApp(**faust_app_options(settings))``: no option of its own."""
    tree = ast.parse(inspect.getsource(bare_agent.create_bare_app))
    calls = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "DeskpulseApp"
    ]
    assert len(calls) == 1
    (call,) = calls
    assert call.args == []
    assert len(call.keywords) == 1
    (keyword,) = call.keywords
    assert keyword.arg is None  # **options
    assert ast.unparse(keyword.value) == "faust_app_options(settings)"
