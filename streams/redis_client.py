"""Every Redis client deskpulse opens, built from the settings in one place.

``DESKPULSE_REDIS_URL`` carries the address, the database, AUTH and ACL users
(``redis://user:password@host:port/db``) and TLS (``rediss://…?ssl_ca_certs=…``), read by
redis-py exactly as written; what differs between the processes is what the client is
for, its *purpose*, one row of :data:`PURPOSES`:

==========  =====================================  =======  =======  =======  ===========
purpose     used by                                client   socket   connect  health
                                                   retries  timeout  timeout  check every
==========  =====================================  =======  =======  =======  ===========
``ingest``  the worker and its engine process      no       10 s     5 s      15 s
``reads``   the read process (``GET /kpis``)       no       10 s     5 s      15 s
``probe``   the start-up credential and TLS check  no       3 s      3 s      --
``replay``  ``deskpulse replay``                   no       --       --       --
``command`` ``deskpulse kpis``, ``state``, demo    default  --       5 s      --
==========  =====================================  =======  =======  =======  ===========

*no*: the client never retries (``Retry(NoBackoff(), 0)``): the engine's
``retry_forever`` retries with backoff and reports ``deskpulse_redis_up``, a failed read is
a 503 now rather than a retry later, a start-up check says at once what failed. *default*:
redis-py's own, for one-shot commands. ``--``: no limit (a replay's commits may be large; a
command waits as long as its operator does). The health check pings a connection that was
idle that long before using it. The read process names its connections
``deskpulse-reads``, so ``CLIENT LIST`` tells them from the ingest path's.

With ``DESKPULSE_REDIS_CLUSTER=true`` every purpose gets a
:class:`~redis.asyncio.cluster.RedisCluster` instead, built from the same URL (any node of
the cluster: the client asks it for the others and follows ``MOVED`` and ``ASK`` itself),
with the same AUTH, TLS and options, so every process takes it alike. Its client retries
are the same *no*: a ``CLUSTERDOWN`` or a node that went away is the caller's to retry
with backoff. :func:`check_mode` is the start-up check that the flag matches the server.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from deskpulse.models.errors import SettingsError
from deskpulse.models.settings import Settings

__all__ = [
    "PURPOSES",
    "Client",
    "ClientOptions",
    "Purpose",
    "check_mode",
    "client_options",
    "connect",
    "is_cluster",
]

#: How the cluster client's discovery says the node it asked is no cluster node.
_NOT_A_CLUSTER = ("Cluster mode is not enabled", "cluster support disabled")

#: What :func:`connect` returns: one Redis, or a Redis Cluster (``DESKPULSE_REDIS_CLUSTER``).
Client = Redis | RedisCluster

Purpose = Literal["ingest", "reads", "probe", "replay", "command"]


@dataclass(frozen=True)
class ClientOptions:
    """How a client of one purpose behaves (see the table above)."""

    #: whether the client itself retries (redis-py's default) or never does
    client_retries: bool
    socket_timeout_s: float | None
    socket_connect_timeout_s: float | None
    health_check_interval_s: float = 0
    client_name: str | None = None


PURPOSES: dict[Purpose, ClientOptions] = {
    "ingest": ClientOptions(False, 10, 5, health_check_interval_s=15),
    "reads": ClientOptions(False, 10, 5, health_check_interval_s=15, client_name="deskpulse-reads"),
    "probe": ClientOptions(False, 3, 3),
    "replay": ClientOptions(False, None, None),
    "command": ClientOptions(True, None, 5),
}


def client_options(purpose: Purpose) -> dict[str, Any]:
    """The keyword arguments ``Redis.from_url`` is given for ``purpose`` (only those set,
    so what is not named stays redis-py's default)."""
    options = PURPOSES[purpose]
    kwargs: dict[str, Any] = {}
    if not options.client_retries:
        kwargs["retry"] = Retry(NoBackoff(), 0)
    if options.socket_timeout_s is not None:
        kwargs["socket_timeout"] = options.socket_timeout_s
    if options.socket_connect_timeout_s is not None:
        kwargs["socket_connect_timeout"] = options.socket_connect_timeout_s
    if options.health_check_interval_s:
        kwargs["health_check_interval"] = options.health_check_interval_s
    if options.client_name is not None:
        kwargs["client_name"] = options.client_name
    return kwargs


def connect(settings: Settings, *, purpose: Purpose) -> Client:
    """A client of ``DESKPULSE_REDIS_URL`` for ``purpose``; it connects on first use."""
    url = settings.redis_url.get_secret_value()
    if settings.redis_cluster:
        return RedisCluster.from_url(url, **client_options(purpose))
    return Redis.from_url(url, **client_options(purpose))


def is_cluster(redis: Client) -> bool:
    """Whether ``redis`` is a Redis Cluster client."""
    return isinstance(redis, RedisCluster)


async def check_mode(redis: Client) -> None:
    """Raise :class:`SettingsError` naming ``DESKPULSE_REDIS_CLUSTER`` when the client's
    kind (the setting) does not say what the server is (``cluster_enabled`` of ``INFO
    cluster``): a cluster client cannot start on a single Redis, and a single-node client
    on a cluster node would meet ``MOVED`` for most partitions."""
    if isinstance(redis, RedisCluster):
        # the cluster client learns the slots before its first command: on a single node
        # that fails before any INFO could be read
        from redis.exceptions import RedisClusterException

        try:
            await redis.initialize()
        except RedisClusterException as error:
            if any(mark in str(error) for mark in _NOT_A_CLUSTER):
                raise SettingsError(
                    "DESKPULSE_REDIS_CLUSTER",
                    "is true but the Redis at DESKPULSE_REDIS_URL is not a cluster node "
                    "(cluster_enabled:0); unset it for a single Redis",
                ) from None
            # what went wrong below the cluster's discovery (unreachable, AUTH, TLS), as
            # the single-node client would have raised it
            raise (error.__cause__ or error) from None
        return
    from redis.exceptions import NoPermissionError

    try:
        info = await redis.info("cluster")
    except NoPermissionError:
        return  # an ACL user without INFO (@dangerous): nothing to tell it by
    if str(info.get("cluster_enabled", 0)) == "1":
        raise SettingsError(
            "DESKPULSE_REDIS_CLUSTER",
            "is false but the Redis at DESKPULSE_REDIS_URL is a cluster node "
            "(cluster_enabled:1); set DESKPULSE_REDIS_CLUSTER=true",
        )
