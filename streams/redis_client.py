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

A new kind of client (Redis Cluster, say) is added here, and every process takes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from deskpulse.models.settings import Settings

__all__ = ["PURPOSES", "ClientOptions", "Purpose", "client_options", "connect"]

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


def connect(settings: Settings, *, purpose: Purpose) -> Redis:
    """A client of ``DESKPULSE_REDIS_URL`` for ``purpose``; it connects on first use."""
    return Redis.from_url(settings.redis_url.get_secret_value(), **client_options(purpose))
