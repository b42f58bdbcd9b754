"""One owner for Redis: the store holds every key and script, the factory builds every
client, and the key table in docs/architecture.md lists every key the store writes."""

from __future__ import annotations

import ast
import asyncio
import itertools
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.asyncio import Redis

from deskpulse.models.settings import Settings
from deskpulse.streams.breaches import check_breaches
from deskpulse.streams.core import CoreConfig
from deskpulse.streams.redis_client import connect
from deskpulse.streams.store import Store
from tests.integration.test_store import T0, apply, created, new_prefix, pendings, replied

ROOT = Path(__file__).resolve().parents[2]
PACKAGE_DIRS = ("models", "streams", "exporters")
#: the store owns the keys and scripts; the factory builds the clients
OWNERS = {"streams/store.py", "streams/redis_client.py"}
#: the test launcher pings the redis-server it started with a client of its own
DEV_TOOLS = {"streams/devtools/embedded.py"}
#: what a module that holds a client of its own may do with it besides handing it over
CLIENT_LIFECYCLE = {"ping", "aclose"}


def _named(node: ast.expr, *names: str) -> bool:
    """``node`` is the name ``names`` or an attribute of that name (``self.store``)."""
    if isinstance(node, ast.Name):
        return node.id in names
    return isinstance(node, ast.Attribute) and node.attr in names


def redis_trespasses(source: str) -> list[str]:
    """What in ``source`` touches Redis other than through the store and the factory."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        where = f"line {getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Attribute):
            if node.attr == "register_script":
                found.append(f"{where}: registers a Lua script")
            elif node.attr == "redis" and _named(node.value, "store", "_store"):
                found.append(f"{where}: reaches into the store's client")
            elif node.attr in ("base", "key") and _named(node.value, "store", "_store"):
                found.append(f"{where}: builds a key from the store's {node.attr}()")
            elif node.attr == "from_url" and _named(node.value, "Redis", "StrictRedis"):
                found.append(f"{where}: builds a Redis client")
            elif _named(node.value, "redis") and node.attr not in CLIENT_LIFECYCLE:
                found.append(f"{where}: sends {node.attr} to Redis")
        elif isinstance(node, ast.Call) and _named(node.func, "Redis", "StrictRedis"):
            found.append(f"{where}: builds a Redis client")
        elif isinstance(node, ast.JoinedStr):
            for value, after in itertools.pairwise(node.values):
                if (
                    isinstance(value, ast.FormattedValue)
                    and value.conversion == -1
                    and "prefix" in ast.unparse(value.value)
                    and isinstance(after, ast.Constant)
                    and str(after.value).startswith(":")
                ):
                    found.append(f"{where}: builds a key string")
    return found


def package_modules() -> Iterator[tuple[str, str]]:
    for folder in PACKAGE_DIRS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            yield path.relative_to(ROOT).as_posix(), path.read_text()


@pytest.mark.parametrize(
    "source",
    [
        "async def f(store):\n    return await store.redis.hgetall('x')",
        "async def f(self):\n    return await self.store.redis.hgetall('x')",
        "def f(redis):\n    return redis.register_script('return 1')",
        "async def f(redis):\n    await redis.hset('k', 'f', '1')",
        "async def f(self):\n    await self.redis.hdel('k', 'f')",
        "def f(store, p):\n    return store.base(p) + 'breach_out'",
        "def f(settings):\n    return Redis.from_url(settings.redis_url.get_secret_value())",
        "def f():\n    return Redis(host='h')",
        "def f(settings):\n    return f'{settings.redis_prefix}:config'",
        "def f(store):\n    return f'{store.prefix}:alerts'",
    ],
)
def test_the_check_finds_a_module_touching_redis_itself(source: str) -> None:
    assert redis_trespasses(source), source


def test_the_check_lets_a_client_owner_ping_and_close_and_name_the_prefix() -> None:
    source = (
        "async def f(self, redis, store):\n"
        "    await self.redis.ping()\n"
        "    await redis.aclose()\n"
        "    raise ValueError(f'the state under prefix {store.prefix!r}: gone')\n"
    )
    assert redis_trespasses(source) == []


def test_only_the_store_and_the_factory_touch_redis() -> None:
    trespasses = {
        name: found
        for name, source in package_modules()
        if name not in OWNERS | DEV_TOOLS and (found := redis_trespasses(source))
    }
    assert trespasses == {}
    # the owners do what the others may not (so the check looks at the right files)
    sources = dict(package_modules())
    assert "register_script" in sources["streams/store.py"]
    assert "Redis.from_url" in sources["streams/redis_client.py"]


# -- every key the store writes is in the key tables ------------------------------------------


def documented_keys(text: str) -> set[str]:
    """The key patterns (``P:{pn}:b:<start>``) a key table names in its first column."""
    return set(re.findall(r"`+(P:[^`\s]+)`+", text))


def architecture_key_table() -> str:
    doc = (ROOT / "docs" / "architecture.md").read_text()
    section = doc.split("## Keys in Redis", 1)[1].split("\n## ", 1)[0]
    return "\n".join(line.split("|")[1] for line in section.splitlines() if line.startswith("| `"))


def store_key_table() -> str:
    docstring = ast.get_docstring(ast.parse((ROOT / "streams" / "store.py").read_text())) or ""
    rows = docstring.split("Key layout", 1)[1].split("\n\n", 2)[1]
    return "\n".join(line[:30] for line in rows.splitlines())


def key_pattern(key: str, prefix: str) -> str:
    """A stored key as the tables write it: ``P`` for the prefix, ``{pn}``, ``<start>``."""
    assert key.startswith(prefix + ":"), key
    rest = key[len(prefix) + 1 :]
    match = re.fullmatch(r"\{p\d+\}:(.+)", rest)
    if match is None:
        return f"P:{rest}"
    suffix = re.sub(r"^([bBrR]):\d+$", r"\1:<start>", match.group(1))
    suffix = re.sub(r"^(l[ow]):.+$", r"\1:<group>", suffix, flags=re.DOTALL)
    return f"P:{{pn}}:{suffix}"


async def write_every_kind_of_key(client: Redis, prefix: str) -> None:
    """What a worker, a breach check, the rules and ``deskpulse state reset`` write."""
    store = Store(client, prefix, CoreConfig(bucket_seconds=60, rollup_seconds=600))
    await store.check_config()
    await apply(
        store,
        0,
        pendings(
            [
                created("A", T0 + 10, priority="urgent"),  # never answered: breaches
                replied("B", T0 + 20),  # held until its opener comes
                created("C", T0 + 100),  # normal: still due at the clock below
            ]
        ),
    )
    await store.start_at(1, {"tickets": 41})

    async def broker_down(items: Any) -> None:
        raise ConnectionError("the broker does not answer")

    # the claim is made and the payload parked in breach_out; the publish fails
    with pytest.raises(ConnectionError):
        await check_breaches(store, 0, (T0 + 4_000) * 1000, broker_down)
    await store.save_alert_states({"rule\x1f5m\x1f*\x1f*\x1f*": "firing"})
    await store.record_reset(reset_at="2026-11-23T00:00:00Z", note="test")


def test_every_key_the_store_writes_is_in_the_key_tables(
    redis_url: str, redis_client: redis.Redis
) -> None:
    prefix = new_prefix()

    async def scenario() -> None:
        client = Redis.from_url(redis_url)
        try:
            await write_every_kind_of_key(client, prefix)
        finally:
            await client.aclose()

    asyncio.run(scenario())
    keys = {k.decode() for k in redis_client.scan_iter(match=f"{prefix}:*", count=1000)}
    written = {key_pattern(key, prefix) for key in keys}
    # the scenario wrote every kind of key there is, or it proves less than it says
    for expected in (
        "P:config",
        "P:partitions",
        "P:alerts",
        "P:{pn}:b:<start>",
        "P:{pn}:B:<start>",
        "P:{pn}:held",
        "P:{pn}:due",
        "P:{pn}:breach_out",
    ):
        assert expected in written, (expected, sorted(written))
    assert written - documented_keys(architecture_key_table()) == set()
    assert written - documented_keys(store_key_table()) == set()


def test_the_key_tables_read_as_key_tables() -> None:
    # a table this test can no longer parse would make the check above pass on nothing
    for table in (architecture_key_table(), store_key_table()):
        keys = documented_keys(table)
        assert {"P:config", "P:alerts", "P:partitions", "P:{pn}:meta"} <= keys, keys


# -- what the state commands and the demo ask the store ----------------------------------------


def test_the_demo_claims_state_through_the_store(settings: Settings) -> None:
    from deskpulse.streams.devtools.demo import claim_state

    async def scenario() -> tuple[Settings, Settings, Settings, bool]:
        client = connect(settings, purpose="command")
        store = Store(client, settings.redis_prefix, CoreConfig.from_settings(settings))
        try:
            empty = await claim_state(settings, own_redis=False, now_s=T0)
            await store.check_config()
            elsewhere = await claim_state(settings, own_redis=False, now_s=T0)
            own = await claim_state(settings, own_redis=True, now_s=T0)
            return empty, elsewhere, own, await store.has_state()
        finally:
            await client.aclose()

    empty, elsewhere, own, left = asyncio.run(scenario())
    assert empty.redis_prefix == settings.redis_prefix  # nothing there: the prefix as it is
    assert elsewhere.redis_prefix == f"{settings.redis_prefix}-demo-{T0}"  # not its state
    assert own.redis_prefix == settings.redis_prefix  # its own Redis: cleared
    assert not left


def test_a_reset_is_recorded_in_the_config(redis_url: str, redis_client: redis.Redis) -> None:
    prefix = new_prefix()

    async def scenario() -> None:
        client = Redis.from_url(redis_url)
        try:
            store = Store(client, prefix, CoreConfig())
            await store.check_config()
            await store.record_reset(reset_at="2026-11-23T00:00:00Z", note="lost in a flush")
        finally:
            await client.aclose()

    asyncio.run(scenario())
    config = {k.decode(): v.decode() for k, v in redis_client.hgetall(f"{prefix}:config").items()}
    assert config["reset_at"] == "2026-11-23T00:00:00Z"
    assert config["reset_note"] == "lost in a flush"
    assert "generation" in config  # written beside what was there
