"""The Redis client factory: the options each purpose sets, and the address, AUTH and TLS
taken from ``DESKPULSE_REDIS_URL`` as written."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pydantic import SecretStr
from redis.asyncio import Redis
from redis.asyncio.connection import Connection, SSLConnection
from redis.backoff import NoBackoff

from deskpulse.models.settings import Settings
from deskpulse.streams.redis_client import PURPOSES, Purpose, client_options, connect
from deskpulse.streams.store import text

#: purpose -> (socket timeout, connect timeout, health check interval, client name),
#: None where redis-py's default stays
TABLE: list[tuple[Purpose, Any, Any, Any, Any]] = [
    ("ingest", 10, 5, 15, None),
    ("reads", 10, 5, 15, "deskpulse-reads"),
    ("probe", 3, 3, None, None),
    ("replay", None, None, None, None),
    ("command", None, 5, None, None),
]


def test_the_table_covers_every_purpose() -> None:
    assert sorted(p for p, *_ in TABLE) == sorted(PURPOSES)


@pytest.mark.parametrize(("purpose", "socket_s", "connect_s", "health_s", "name"), TABLE)
def test_each_purpose_sets_its_options(
    purpose: Purpose, socket_s: Any, connect_s: Any, health_s: Any, name: Any
) -> None:
    client = connect(Settings(redis_url=SecretStr("redis://10.0.0.7:6390/2")), purpose=purpose)
    kwargs = client.connection_pool.connection_kwargs
    assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("10.0.0.7", 6390, 2)
    assert kwargs.get("socket_timeout") == socket_s
    assert kwargs.get("socket_connect_timeout") == connect_s
    assert kwargs.get("health_check_interval") == health_s
    assert kwargs.get("client_name") == name
    options = client_options(purpose)
    if purpose == "command":
        assert "retry" not in options  # one-shot commands keep redis-py's own retry policy
    else:
        # retries and backoff are the caller's (or a failure is reported at once)
        retry = kwargs["retry"]
        assert retry.get_retries() == 0
        assert isinstance(retry._backoff, NoBackoff)
    assert client.connection_pool.connection_class is Connection


def test_each_client_is_new_with_a_retry_of_its_own() -> None:
    settings = Settings()
    first, second = (connect(settings, purpose="ingest") for _ in range(2))
    assert first is not second
    assert first.get_retry() is not second.get_retry()


def test_auth_and_acl_users_come_from_the_url() -> None:
    url = "redis://alice:s3cret@10.0.0.7:6390/0"
    kwargs = connect(Settings(redis_url=SecretStr(url)), purpose="ingest").connection_pool
    assert kwargs.connection_kwargs["username"] == "alice"
    assert kwargs.connection_kwargs["password"] == "s3cret"
    anonymous = connect(Settings(redis_url=SecretStr("redis://:pw@h:1/0")), purpose="probe")
    assert anonymous.connection_pool.connection_kwargs["password"] == "pw"
    assert anonymous.connection_pool.connection_kwargs.get("username") is None


def test_tls_comes_from_the_url() -> None:
    url = "rediss://cache.internal:6380/0?ssl_ca_certs=/etc/ca.pem&ssl_cert_reqs=required"
    for purpose in PURPOSES:
        client = connect(Settings(redis_url=SecretStr(url)), purpose=purpose)
        assert client.connection_pool.connection_class is SSLConnection
        kwargs = client.connection_pool.connection_kwargs
        assert kwargs["ssl_ca_certs"] == "/etc/ca.pem"
        assert kwargs["ssl_cert_reqs"] == "required"


def test_a_unix_socket_url_connects_by_path() -> None:
    client = connect(Settings(redis_url=SecretStr("unix:///run/redis.sock?db=3")), purpose="reads")
    kwargs = client.connection_pool.connection_kwargs
    assert kwargs["path"] == "/run/redis.sock"
    assert kwargs["db"] == 3
    assert kwargs["client_name"] == "deskpulse-reads"


@pytest.mark.parametrize("purpose", sorted(PURPOSES))
def test_a_client_of_each_purpose_talks_to_a_real_redis(redis_url: str, purpose: Purpose) -> None:
    async def scenario() -> tuple[bool, Any]:
        client: Redis = connect(Settings(redis_url=SecretStr(redis_url)), purpose=purpose)
        try:
            return await client.ping(), await client.client_getname()
        finally:
            await client.aclose()

    pong, name = asyncio.run(scenario())
    assert pong is True
    expected = PURPOSES[purpose].client_name
    assert (None if name is None else text(name)) == expected
