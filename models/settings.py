"""The one settings object: environment (prefix ``DESKPULSE_``) and an optional ``.env``.

Built once at start (:func:`load_settings`) and passed down; tests construct
:class:`Settings` directly. Every setting has a default that works with the embedded
stack. A bad value raises :class:`~models.errors.SettingsError` whose message is one line
naming the setting, e.g. ``DESKPULSE_WEB_PORT: input should be a valid integer (got 'abc')``.
"""

from __future__ import annotations

import ipaddress
import os
import re
import ssl
from typing import Annotated, Any, Literal, get_args
from urllib.parse import unquote, urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from pydantic_settings import SettingsError as PydanticSettingsError

from deskpulse.models.errors import SettingsError
from deskpulse.models.events import DimensionName
from deskpulse.models.sla import Policy, Schedule, default_policy

__all__ = [
    "DEFAULT_ALERT_RULES",
    "DEFAULT_FIRST_RESPONSE_TARGETS",
    "RECORD_KINDS",
    "AlertRule",
    "RecordKind",
    "Settings",
    "available_cpus",
    "bootstrap_problem",
    "format_duration",
    "host_problem",
    "is_loopback",
    "load_settings",
    "parse_duration",
    "redis_url_problem",
]

ENV_PREFIX = "DESKPULSE_"

PriorityName = Literal["urgent", "high", "normal", "low"]

#: The kinds of input record, each on its own topic (:meth:`Settings.topic_for`).
RecordKind = Literal["tickets", "chats", "surveys", "agents"]
RECORD_KINDS: tuple[RecordKind, ...] = get_args(RecordKind)

DEFAULT_FIRST_RESPONSE_TARGETS: dict[PriorityName, int] = {
    "urgent": 3600,
    "high": 14400,
    "normal": 28800,
    "low": 86400,
}

_DURATION = re.compile(r"^\s*(\d+)\s*(s|m|h|d)?\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: str | int) -> int:
    """Seconds in ``"90s"``, ``"5m"``, ``"1h"``, ``"2d"`` or a bare number of seconds."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, int):
        seconds = value
    else:
        match = _DURATION.match(value)
        if match is None:
            raise ValueError(f"not a duration like 90s, 5m, 1h or 2d: {value!r}")
        seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2) or "s"]
    if seconds < 0:
        raise ValueError(f"duration must not be negative: {value!r}")
    return seconds


def format_duration(seconds: int) -> str:
    """The spelling of a width: 300 -> ``"5m"``, 86400 -> ``"24h"``, 90 -> ``"90s"``."""
    for unit in ("h", "m"):  # 24h reads better on a board than 1d
        size = _UNIT_SECONDS[unit]
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


_REDIS_SCHEMES = ("redis", "rediss", "unix")
_REDIS_URL_FORMS = "write redis://HOST:PORT/DB, rediss://… for TLS or unix:///path/to/socket"


def redis_url_problem(url: str) -> str | None:
    """What is wrong with a Redis URL, in words that never repeat its password; ``None``
    if the Redis client takes it (checked without connecting)."""
    password = url.rpartition("@")[0].partition("://")[2].partition(":")[2]
    problem = _redis_url_problem(url)
    if problem is not None and password:
        for spelling in {password, unquote(password)}:
            problem = problem.replace(spelling, "***")
    return problem


def _redis_url_problem(url: str) -> str | None:
    from redis.asyncio.connection import Connection, parse_url

    if "://" not in url:
        return f"has no scheme: {_REDIS_URL_FORMS}"
    try:
        parsed = urlsplit(url)
        if parsed.scheme not in _REDIS_SCHEMES:
            return f"the scheme {parsed.scheme!r} is not redis, rediss or unix: {_REDIS_URL_FORMS}"
        options: dict[str, Any] = dict(parse_url(url))
        # the client's own checks: a numeric port, query values of the types it reads, no
        # query name its connection does not take
        options.pop("connection_class", Connection)(**options)
    except Exception as error:  # ValueError, TypeError, RedisError: one line
        return str(error) or type(error).__name__
    if parsed.scheme == "unix":
        return None if options.get("path") else "names no socket path, as in unix:///run/redis.sock"
    if options.get("port") == 0:
        return "port 0 is no port Redis listens on"
    database = unquote(parsed.path).replace("/", "")
    if database and not database.isdigit():  # the client would quietly use database 0
        return f"the database {database!r} is not a number, as in redis://HOST:6379/0"
    return None


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")
_HOST_NAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?")


def host_problem(host: str) -> str | None:
    """What is wrong with a host to listen on (an IP address or a DNS name); ``None`` if
    nothing. Whether this host has that address is only known when the worker listens."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return None
    if host.replace(".", "").isdigit() or not _HOST_NAME.fullmatch(host) or len(host) > 253:
        return "is neither an IP address nor a host name"
    return None


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an IP address or a name) is this machine's loopback only."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bootstrap_problem(servers: str) -> str | None:
    """What is wrong with a Kafka bootstrap list (``host:port,host:port``); ``None`` if nothing.

    A host without a port means the broker's default, 9092.
    """
    if not servers or any(char.isspace() for char in servers):
        return "write host:port,host:port, without spaces"
    for server in servers.split(","):
        if not server:
            return f"an empty entry in {servers!r}: write host:port,host:port"
        if "://" in server:
            return f"{server!r} is a URL: write host:port, without a scheme"
        host, colon, port = server.rpartition(":")
        if server.count(":") > 1 and not host.endswith("]"):
            continue  # a bare IPv6 address
        if colon and not (port.isdigit() and 1 <= int(port) <= 65535):
            return f"the port of {server!r} is not a number from 1 to 65535"
        if colon and not host.strip("[]"):
            return f"{server!r} names no host"
    return None


class AlertRule(BaseModel):
    """A threshold rule on a windowed KPI: fires when ``value op threshold``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # no control characters: the name is part of the rule's state keys in Redis
    name: str = Field(min_length=1, max_length=100, pattern=r"^[^\x00-\x1f\x7f]+$")
    metric: Literal[
        "chat_abandonment_ratio",
        "chat_service_level_ratio",
        "csat_ratio",
        "first_response_within_target_ratio",
        "first_response_p90_seconds",
        "nps_score",
        "ces_score_average",
    ]
    window: str = "15m"
    op: Literal[">", "<"]
    threshold: float
    # A ratio over a handful of samples is noise; below this many the rule stays quiet.
    min_samples: int = Field(default=10, ge=1)
    # Evaluate per group of these dimensions; empty: the total only.
    by: tuple[DimensionName, ...] = ()

    @field_validator("window")
    @classmethod
    def _window(cls, value: str) -> str:
        return format_duration(parse_duration(value))


DEFAULT_ALERT_RULES: tuple[dict[str, Any], ...] = (
    {
        "name": "ChatAbandonmentHigh",
        "metric": "chat_abandonment_ratio",
        "window": "15m",
        "op": ">",
        "threshold": 0.10,
    },
    {"name": "CsatLow", "metric": "csat_ratio", "window": "1h", "op": "<", "threshold": 0.80},
    {
        "name": "ChatServiceLevelLow",
        "metric": "chat_service_level_ratio",
        "window": "15m",
        "op": "<",
        "threshold": 0.80,
    },
)


class Settings(BaseSettings):
    """Every knob of deskpulse. Field ``x`` is read from ``DESKPULSE_X``."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
    )

    # Connections
    kafka_bootstrap: str = "127.0.0.1:9092"
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: str | None = None
    kafka_session_timeout: Annotated[int, NoDecode] = 10
    redis_url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")
    redis_prefix: str = Field(default="deskpulse", pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    # DESKPULSE_REDIS_URL names one node of a Redis Cluster; the client finds the others
    redis_cluster: bool = False
    # replicas a commit must reach (WAIT) before its batch is acknowledged; 0: the master's
    # acknowledgement is enough (replication is asynchronous and a failover may lose it)
    redis_min_replicas: int = Field(default=0, ge=0, le=16)
    redis_wait_timeout: float = Field(default=1.0, gt=0, le=60)
    app_id: str = Field(default="deskpulse", pattern=r"^[A-Za-z0-9_.-]{1,128}$")

    # Topics
    topic_tickets: str = "support.tickets"
    topic_chats: str = "support.chats"
    topic_surveys: str = "support.surveys"
    # agents' presence (agent.status_changed), keyed by agent_id, co-partitioned too
    topic_agents: str = "support.agents"
    topic_deadletter: str = "deskpulse.deadletter"
    topic_kpis: str = "deskpulse.kpis"
    topic_alerts: str = "deskpulse.alerts"
    # where records a producer put on another partition than their conversation's go to
    # reach it; empty: "<app_id>.repartition", one per deployment like its consumer group
    topic_repartition: str = ""
    topic_partitions: int = Field(default=4, ge=1, le=1024)

    # KPI definitions
    first_response_targets: dict[PriorityName, int] = Field(
        default_factory=lambda: dict(DEFAULT_FIRST_RESPONSE_TARGETS)
    )
    short_abandon: Annotated[int, NoDecode] = 5
    # business calendars by name, and the SLA policies (None: the v1 default policy);
    # validated here, not yet used by the engine
    schedules: dict[str, Schedule] = Field(default_factory=dict)
    sla_policies: tuple[Policy, ...] | None = None
    chat_answer_target: Annotated[int, NoDecode] = 20

    # Windows and state
    bucket_seconds: Annotated[int, NoDecode] = 60
    rollup_seconds: Annotated[int, NoDecode] = 3600
    retention: Annotated[int, NoDecode] = 48 * 3600
    # a ticket not solved or closed keeps its state past retention until this long after
    # its creation (and at least retention after its last event); then it is dropped
    open_ticket_max_age: Annotated[int, NoDecode] = 30 * 86400
    # a chat waiting this long without an accept, abandon or end no longer counts as waiting
    chat_stale_after: Annotated[int, NoDecode] = 3600
    windows: Annotated[tuple[int, ...], NoDecode] = (300, 900, 3600, 86400)
    max_future: Annotated[int, NoDecode] = 300
    max_record_bytes: int = Field(default=1_048_576, ge=256)

    # Processing
    batch_size: int = Field(default=5000, ge=1, le=100_000)
    batch_within: float = Field(default=0.1, gt=0, le=10)
    # batches an agent hands on before it waits for the oldest to be committed
    batches_in_flight: int = Field(default=2, ge=1, le=16)
    # how long the broker may hold a fetch while it has nothing new (seconds)
    kafka_fetch_max_wait: float = Field(default=0.1, gt=0, le=30)
    # fold and commit in a child process, so Faust's consumer keeps a core of its own;
    # "auto": when this process may use two CPUs or more (see available_cpus)
    engine_process: bool | Literal["auto"] = "auto"
    # an input partition with lag whose offsets have not moved for this long while nothing
    # of it is in flight is sought back to its committed offset (seconds; streams/watchdog.py)
    stall_timeout: float = Field(default=30.0, gt=0, le=86_400)

    # Web and exporters
    web_host: str = "127.0.0.1"
    web_port: int = Field(default=6066, ge=1, le=65535)
    web_token: SecretStr | None = None
    # /metrics wants the web token too (Prometheus sends it as a bearer credential)
    metrics_require_token: bool = False
    metrics_refresh_interval: Annotated[int, NoDecode] = 5
    snapshot_interval: Annotated[int, NoDecode] = 10
    # every group shown is published again this often, changed or not (in between, only
    # the groups whose window sums or levels changed since they were last published)
    snapshot_full_interval: Annotated[int, NoDecode] = 300
    breach_check_interval: Annotated[int, NoDecode] = 15
    alert_rules: tuple[AlertRule, ...] = Field(
        default_factory=lambda: tuple(AlertRule(**rule) for rule in DEFAULT_ALERT_RULES)
    )
    max_series_per_metric: int = Field(default=10_000, ge=1)
    # series of /metrics in all, every family together (the least active groups of each
    # kind are folded into "other" past it); room for the families without groups first
    max_series: int = Field(default=50_000, ge=1_000, le=10_000_000)
    # messages per KPI snapshot on the KPI topic (the smallest groups are folded into one)
    max_snapshot_messages: int = Field(default=10_000, ge=1)
    label_max_length: int = Field(default=64, ge=8, le=1024)
    # agent ids as Prometheus labels (the deskpulse_agent_* families), under the same
    # DESKPULSE_MAX_SERIES: off by default, an id in a label is the operator's choice
    agent_metrics: bool = False

    # KPI reads (GET /kpis): computed in a read process of their own, at most this many at
    # once, this many more waiting (then 503), an identical request answered from the last
    # computation for this many seconds (0: only requests that arrive while it runs share it)
    read_concurrency: int = Field(default=2, ge=1, le=64)
    read_queue: int = Field(default=8, ge=0, le=10_000)
    read_cache: float = Field(default=1.0, ge=0, le=60)
    # GET /kpis requests let through per second, evenly spaced (0: no limit): each costs
    # the event loop that Faust's consumer shares, even a cached or refused one
    read_rate: float = Field(default=200.0, ge=0, le=100_000)
    # how much the read process lowers its CPU priority (nice, 0 - 19): reads give way to
    # ingestion when the CPU is contended, at the cost of their latency; 0 keeps the
    # worker's priority
    read_nice: int = Field(default=10, ge=0, le=19)

    # Webhook ingestion (`deskpulse ingest`, or the worker with DESKPULSE_INGEST=true)
    ingest: bool = False
    ingest_host: str = "127.0.0.1"
    ingest_port: int = Field(default=6067, ge=1, le=65535)
    # the bearer token of POST /ingest/events; required to listen beyond loopback
    ingest_token: SecretStr | None = None
    ingest_max_bytes: int = Field(default=1_048_576, ge=1024, le=64 * 1_048_576)
    # requests per second let through per source (events, zendesk, intercom); 0: no limit
    ingest_rate: float = Field(default=0.0, ge=0, le=1_000_000)
    # how long a request waits for the broker's acknowledgement before it is answered 503
    ingest_ack_timeout: Annotated[int, NoDecode] = 3
    zendesk_signing_secret: SecretStr | None = None
    zendesk_queue_field: Literal["group", "brand", "form"] = "group"
    zendesk_queue_map: dict[str, str] = Field(default_factory=dict)
    zendesk_channel_map: dict[str, str] = Field(default_factory=dict)
    webhook_max_age: Annotated[int, NoDecode] = 300
    intercom_client_secret: SecretStr | None = None
    intercom_as: Literal["chat", "ticket"] = "chat"
    intercom_queue_map: dict[str, str] = Field(default_factory=dict)

    @field_validator(
        "kafka_session_timeout",
        "short_abandon",
        "chat_answer_target",
        "bucket_seconds",
        "rollup_seconds",
        "retention",
        "open_ticket_max_age",
        "chat_stale_after",
        "max_future",
        "metrics_refresh_interval",
        "snapshot_interval",
        "snapshot_full_interval",
        "breach_check_interval",
        "ingest_ack_timeout",
        "webhook_max_age",
        mode="before",
    )
    @classmethod
    def _duration(cls, value: Any) -> int:
        return parse_duration(value)

    @field_validator(
        "kafka_session_timeout",
        "metrics_refresh_interval",
        "snapshot_interval",
        "snapshot_full_interval",
        "breach_check_interval",
        "ingest_ack_timeout",
        "webhook_max_age",
    )
    @classmethod
    def _at_least_a_second(cls, value: int) -> int:
        if value < 1:
            raise ValueError("must be at least 1s")
        return value

    @field_validator(
        "web_token", "ingest_token", "zendesk_signing_secret", "intercom_client_secret"
    )
    @classmethod
    def _token(cls, value: SecretStr | None) -> SecretStr | None:
        # an empty token would make "Bearer " the password: unset it to leave /kpis open
        if value is not None and not value.get_secret_value().strip():
            raise ValueError("must not be empty (unset it for no token)")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: SecretStr) -> SecretStr:
        problem = redis_url_problem(value.get_secret_value())
        if problem is not None:
            raise ValueError(problem)
        return value

    @field_validator("kafka_bootstrap")
    @classmethod
    def _bootstrap(cls, value: str) -> str:
        problem = bootstrap_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    @field_validator(
        "topic_tickets",
        "topic_chats",
        "topic_surveys",
        "topic_agents",
        "topic_deadletter",
        "topic_kpis",
        "topic_alerts",
        "topic_repartition",
    )
    @classmethod
    def _topic(cls, value: str, info: ValidationInfo) -> str:
        if value == "" and info.field_name == "topic_repartition":
            return value  # the default, derived from app_id
        if not _TOPIC.fullmatch(value) or value in (".", ".."):
            raise ValueError("a Kafka topic name is 1 to 249 letters, digits, '.', '_' or '-'")
        return value

    @field_validator("web_host", "ingest_host")
    @classmethod
    def _web_host(cls, value: str) -> str:
        problem = host_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    @field_validator("engine_process", mode="before")
    @classmethod
    def _auto_or_bool(cls, value: Any) -> bool | str:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text == "auto":
            return "auto"
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ValueError("must be true, false or auto")

    @field_validator("windows", mode="before")
    @classmethod
    def _windows(cls, value: Any) -> tuple[int, ...]:
        items = value.split(",") if isinstance(value, str) else list(value)
        widths = tuple(parse_duration(item) for item in items if str(item).strip())
        if not widths:
            raise ValueError("at least one window width is needed")
        return tuple(dict.fromkeys(widths))

    @field_validator("first_response_targets")
    @classmethod
    def _targets(cls, value: dict[PriorityName, int]) -> dict[PriorityName, int]:
        merged = {**DEFAULT_FIRST_RESPONSE_TARGETS, **value}
        if any(seconds <= 0 for seconds in merged.values()):
            raise ValueError("targets must be positive numbers of seconds")
        return merged

    @field_validator("zendesk_queue_map", "zendesk_channel_map", "intercom_queue_map")
    @classmethod
    def _dimension_map(cls, value: dict[str, str]) -> dict[str, str]:
        for key, name in value.items():
            if not name or len(name) > 256 or _CONTROL.search(name):
                raise ValueError(
                    f"the value of {key!r} is no queue or channel name: 1 to 256 printable "
                    "characters"
                )
        return value

    @field_validator("schedules")
    @classmethod
    def _schedule_names(cls, value: dict[str, Schedule]) -> dict[str, Schedule]:
        for name in value:
            if not name or len(name) > 100 or _CONTROL.search(name):
                raise ValueError(f"{name!r} is no schedule name: 1 to 100 printable characters")
        return value

    @field_validator("sla_policies", mode="before")
    @classmethod
    def _policies(cls, value: Any) -> Any:
        # each policy on its own, so the line names the policy rather than its index
        if value is None or isinstance(value, str) or not isinstance(value, list | tuple):
            return value
        policies: list[Policy] = []
        for index, item in enumerate(value):
            if isinstance(item, Policy):
                policies.append(item)
                continue
            name = item.get("name") if isinstance(item, dict) else None
            called = f"policy {name!r}" if isinstance(name, str) else f"policy {index}"
            try:
                policies.append(Policy.model_validate(item))
            except ValidationError as error:
                raise ValueError(f"{called}: {_where(error)}") from None
        names = [policy.name for policy in policies]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"two policies are named {name!r}")
        return tuple(policies)

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        for policy in self.sla_policies or ():
            if policy.schedule is not None and policy.schedule not in self.schedules:
                raise ValueError(
                    f"sla_policies: policy {policy.name!r} names the schedule "
                    f"{policy.schedule!r}, which DESKPULSE_SCHEDULES does not define"
                )
        if self.snapshot_full_interval < self.snapshot_interval:
            raise ValueError(
                f"snapshot_full_interval: {format_duration(self.snapshot_full_interval)} is "
                f"shorter than the snapshot interval ({format_duration(self.snapshot_interval)})"
            )
        if self.bucket_seconds <= 0:
            raise ValueError("bucket_seconds: must be positive")
        if self.rollup_seconds % self.bucket_seconds:
            raise ValueError("rollup_seconds: must be a multiple of the bucket")
        for width in self.windows:
            if width <= 0 or width % self.bucket_seconds:
                raise ValueError(
                    f"windows: {format_duration(width)} is not a positive multiple of "
                    f"the {self.bucket_seconds}s bucket"
                )
            if width > self.retention:
                raise ValueError(f"windows: {format_duration(width)} is longer than retention")
        if self.open_ticket_max_age < self.retention:
            raise ValueError(
                f"open_ticket_max_age: {format_duration(self.open_ticket_max_age)} is shorter "
                f"than the retention ({format_duration(self.retention)}): every ticket is kept "
                "that long anyway"
            )
        if self.redis_cluster and urlsplit(self.redis_url.get_secret_value()).scheme == "unix":
            raise ValueError("redis_cluster: a Redis Cluster is reached over TCP, not unix://")
        if self.redis_cluster and urlsplit(self.redis_url.get_secret_value()).path.strip(
            "/"
        ) not in (
            "",
            "0",
        ):
            raise ValueError("redis_cluster: a Redis Cluster has database 0 only")
        if self.chat_stale_after <= 0:
            raise ValueError("chat_stale_after: must be positive")
        for rule in self.alert_rules:
            if parse_duration(rule.window) % self.bucket_seconds:
                raise ValueError(f"alert_rules: window of {rule.name} is not a bucket multiple")
        if self.kafka_security_protocol.startswith("SASL") and not (
            self.kafka_sasl_username and self.kafka_sasl_password
        ):
            raise ValueError(
                f"kafka_sasl_username: {self.kafka_security_protocol} needs "
                "DESKPULSE_KAFKA_SASL_USERNAME and DESKPULSE_KAFKA_SASL_PASSWORD"
            )
        if self.ingest_token is None and not is_loopback(self.ingest_host):
            raise ValueError(
                f"ingest_token: needed to listen on {self.ingest_host}, which is not a loopback "
                "address (POST /ingest/events would take events from anyone who reaches it)"
            )
        if self.ingest and self.ingest_port == self.web_port:
            raise ValueError(
                f"ingest_port: {self.ingest_port} is DESKPULSE_WEB_PORT too; the worker serves "
                "the ingest routes on a port of their own"
            )
        if self.metrics_require_token and self.web_token is None:
            raise ValueError("metrics_require_token: needs DESKPULSE_WEB_TOKEN to be set")
        if not self.topic_repartition:
            # frozen: set once here, as if it had been given
            object.__setattr__(self, "topic_repartition", f"{self.app_id}.repartition")
        others = (*self.input_topics, self.topic_deadletter, self.topic_kpis, self.topic_alerts)
        if self.topic_repartition in others:
            raise ValueError(
                f"topic_repartition: {self.topic_repartition} is already another deskpulse topic"
            )
        return self

    @property
    def policies(self) -> tuple[Policy, ...]:
        """The SLA policies in force, first match wins: ``DESKPULSE_SLA_POLICIES``, or when
        it is absent the one ``default`` policy of v1 (first response within
        ``DESKPULSE_FIRST_RESPONSE_TARGETS``, calendar time, no warnings)."""
        if self.sla_policies is not None:
            return self.sla_policies
        return (default_policy(self.first_response_targets),)

    @property
    def window_names(self) -> tuple[str, ...]:
        return tuple(format_duration(width) for width in self.windows)

    @property
    def input_topics(self) -> tuple[str, str, str, str]:
        return (self.topic_tickets, self.topic_chats, self.topic_surveys, self.topic_agents)

    def topic_for(self, kind: str) -> str:
        """The configured input topic of a record kind (one of :data:`RECORD_KINDS`)."""
        if kind == "tickets":
            return self.topic_tickets
        if kind == "chats":
            return self.topic_chats
        if kind == "surveys":
            return self.topic_surveys
        if kind == "agents":
            return self.topic_agents
        raise ValueError(f"no input topic for {kind!r}; the kinds are {', '.join(RECORD_KINDS)}")

    @property
    def uses_engine_process(self) -> bool:
        """``engine_process`` resolved: ``auto`` means yes with two CPUs or more."""
        if self.engine_process == "auto":
            return available_cpus() >= 2
        return bool(self.engine_process)


def available_cpus(cgroup_root: str = "/sys/fs/cgroup") -> float:
    """CPUs this process may use: its affinity mask, capped by a cgroup v2 CPU quota.

    A container limited to one CPU by its runtime (``cpu.max`` of ``100000 100000``) still
    sees every host CPU in its affinity mask; the quota is what it gets.
    """
    try:
        cpus: float = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    try:
        with open(f"{cgroup_root}/cpu.max", encoding="ascii") as handle:
            quota, period = handle.read().split()[:2]
    except (OSError, ValueError):
        return cpus
    if quota != "max" and int(period) > 0:
        cpus = min(cpus, int(quota) / int(period))
    return cpus


#: settings whose value a message must never repeat
_SECRETS = frozenset(
    name
    for name, field in Settings.model_fields.items()
    if field.annotation is SecretStr or SecretStr in get_args(field.annotation)
)


def _where(error: ValidationError) -> str:
    """The first problem of a nested model, as ``a.b[0].c: message (got …)``."""
    first = error.errors()[0]
    path = "".join(
        f"[{part}]" if isinstance(part, int) else f".{part}"
        for part in first["loc"]
        if part != "[key]"  # a bad key: the message names it
    ).lstrip(".")
    message = str(first["msg"]).removeprefix("Value error, ")
    got = first.get("input")
    if isinstance(got, str | int | float) and not (isinstance(got, str) and repr(got) in message):
        message += f" (got {got!r})"
    return f"{path}: {message}" if path else message


def _one_line(error: ValidationError) -> tuple[str, str]:
    first = error.errors()[0]
    loc = list(first["loc"])
    message = str(first["msg"])
    if not loc and ": " in message:  # model-level checks name their field first
        head, message = message.split(": ", 1)
        loc = [head.removeprefix("Value error, ")]
    name = ENV_PREFIX + (str(loc[0]) if loc else "SETTINGS").upper()
    # where inside a structured setting, e.g. alert_rules[0].metric
    inner = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc[1:])
    message = message.removeprefix("Value error, ")
    if inner:
        message = f"{loc[0]!s}{inner}: {message}"
    got = first.get("input")
    if loc and isinstance(got, str | int | float) and loc[0] not in _SECRETS:
        message += f" (got {got!r})"
    return name, message


_FIELD_IN_MESSAGE = re.compile(r'field "([a-z_]+)"')


def load_settings(**overrides: Any) -> Settings:
    """Build the settings from the environment; a bad value raises :class:`SettingsError`.

    The start's checks beyond the values' form are made here too (a CA file that cannot be
    read), so every command fails on them with the same one line.
    """
    try:
        settings = Settings(**overrides)
    except ValidationError as error:
        raise SettingsError(*_one_line(error)) from None
    except PydanticSettingsError as error:  # e.g. a JSON setting that is not JSON
        match = _FIELD_IN_MESSAGE.search(str(error))
        name = ENV_PREFIX + (match.group(1).upper() if match else "SETTINGS")
        raise SettingsError(name, "is not valid JSON") from None
    except UnicodeDecodeError as error:  # the .env file (the environment is always text)
        raise SettingsError(
            ".env", f"is not UTF-8 (byte {error.object[error.start]:#04x} at {error.start})"
        ) from None
    if settings.kafka_ssl_cafile is not None and settings.kafka_security_protocol.endswith("SSL"):
        try:
            ssl.create_default_context(cafile=settings.kafka_ssl_cafile)
        except (OSError, ssl.SSLError) as error:
            reason = getattr(error, "strerror", None) or str(error)
            raise SettingsError(
                "DESKPULSE_KAFKA_SSL_CAFILE",
                f"cannot read CA certificates from {settings.kafka_ssl_cafile!r}: {reason}",
            ) from None
    return settings
