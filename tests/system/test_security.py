"""Security: Redis AUTH, ACL users and TLS; Kafka SASL/SSL settings handed to the clients;
secrets kept out of reprs, logs and ``/metrics``; the bearer token on ``/kpis``; the web
port on loopback by default; label values bounded and free of ids."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faust
import orjson
import pytest
from pydantic import SecretStr

from deskpulse.exporters.kafka import kafka_client_options
from deskpulse.models.settings import Settings
from deskpulse.streams.app import create_app
from deskpulse.streams.devtools.embedded import ManagedProcess, free_port, start_redis
from tests.conftest import HOST, create_topics, new_settings
from tests.faults_support import (
    TlsFiles,
    TlsUnsupported,
    http_request,
    listening_addresses,
    make_tls_files,
    start_tls_redis,
    tune,
)
from tests.support import (
    StartWorker,
    WorkerProcess,
    produce,
    run_cli,
    samples,
    scrape,
    settings_env,
    wait_until,
)

PASSWORD = "pw-" + uuid.uuid4().hex  # distinctive: grep-able in every output
TOKEN = "tok-" + uuid.uuid4().hex
LABEL_MAX = 16


def fresh_settings(broker: str, redis_url: str, **update: Any) -> Settings:
    """Settings with topics, group and prefix of their own (like the ``settings`` fixture)."""
    return tune(new_settings(broker, redis_url, prefix="s", topic_partitions=2), **update)


def stamp(t_s: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t_s))


def ticket(ticket_id: str, at_s: float, **fields: Any) -> tuple[bytes, bytes]:
    payload = {
        "event_id": "evt-" + uuid.uuid4().hex,
        "type": "ticket.created",
        "occurred_at": stamp(at_s),
        "ticket_id": ticket_id,
        **fields,
    }
    return ticket_id.encode(), orjson.dumps(payload)


def processed_total(worker: WorkerProcess) -> float:
    response = worker.get("/metrics")
    if response is None or response.status != 200:
        return 0.0
    return sum(v for _, v in samples(response.text, "deskpulse_events_processed_total"))


def kpis(settings: Settings, cwd: Path, *args: str) -> dict[str, Any]:
    done = run_cli(["kpis", "--json", *args], settings_env(settings), cwd=cwd)
    assert done.returncode == 0, done.stderr
    document: dict[str, Any] = json.loads(done.stdout)
    return document


def works(
    start_worker: StartWorker, settings: Settings, workdir: Path, ticket_id: str
) -> WorkerProcess:
    """Run a worker, send it one ticket, wait until it is in the KPIs; the (stopped) worker."""
    worker = start_worker(settings, workdir, timeout_s=90)
    asyncio.run(produce(settings, settings.topic_tickets, [ticket(ticket_id, time.time() - 60)]))
    wait_until(lambda: processed_total(worker) >= 1, 30, message=worker.describe)
    document = kpis(settings, workdir, "--window", "1h")
    assert document["groups"][0]["tickets_created"] == 1, document
    assert worker.stop() == 0, worker.describe()
    return worker


def refused_at_start(settings: Settings, cwd: Path, *secrets: str) -> str:
    """``deskpulse worker`` must exit with status 2 and one stderr line naming the Redis
    URL setting, leaking none of ``secrets``; that line."""
    done = run_cli(["worker"], settings_env(settings), cwd=cwd, timeout_s=60)
    assert done.returncode == 2, (done.returncode, done.stderr[-3000:])
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr[-3000:]
    assert lines[0].startswith("deskpulse: bad setting DESKPULSE_REDIS_URL: "), lines[0]
    for secret in secrets:
        assert secret not in done.stderr + done.stdout
    return lines[0]


class DebugWorker(WorkerProcess):
    """A worker run with ``--log-level debug``: the most a log can give away."""

    def __init__(self, settings: Settings, workdir: Path, *, name: str = "worker") -> None:
        import sys

        self.settings = settings
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.env = settings_env(settings)
        self.log_path = self.workdir / f"{name}.log"
        self.process = ManagedProcess(
            name,
            [sys.executable, "-m", "deskpulse.streams.cli", "--log-level", "debug", "worker"],
            self.log_path,
            cwd=self.workdir,
            env=self.env,
        )


# -- a worker on a password-protected Redis, with a web token and short labels ----------------


@dataclass(frozen=True)
class Secured:
    settings: Settings
    worker: WorkerProcess
    workdir: Path
    ids: tuple[str, ...]
    long_channel: str
    long_queue: str


@pytest.fixture(scope="module")
def auth_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """Port of a redis-server that wants ``PASSWORD``."""
    port = free_port(HOST)
    with start_redis(HOST, port, tmp_path_factory.mktemp("redis-auth"), password=PASSWORD):
        yield port


@pytest.fixture(scope="module")
def secured(
    broker: str, auth_redis: int, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Secured]:
    settings = fresh_settings(
        broker,
        f"redis://:{PASSWORD}@{HOST}:{auth_redis}/0",
        web_token=SecretStr(TOKEN),
        label_max_length=LABEL_MAX,
    )
    create_topics(settings)
    workdir = tmp_path_factory.mktemp("secured")
    mark = uuid.uuid4().hex[:12]
    ids = {
        name: f"{name.upper()}-{mark}"
        for name in ("ticket", "chat", "agent", "requester", "customer")
    }
    long_channel = "channel-" + "c" * 40
    long_queue = "Queue-" + "q" * 40
    now = time.time()
    tickets = [
        ticket(
            ids["ticket"],
            now - 300,
            channel=long_channel,
            queue=long_queue,
            priority="urgent",
            requester_id=ids["requester"],
        ),
        (
            ids["ticket"].encode(),
            orjson.dumps(
                {
                    "event_id": "evt-" + uuid.uuid4().hex,
                    "type": "ticket.replied",
                    "occurred_at": stamp(now - 200),
                    "ticket_id": ids["ticket"],
                    "author_role": "agent",
                    "agent_id": ids["agent"],
                }
            ),
        ),
    ]
    chats = [
        (
            ids["chat"].encode(),
            orjson.dumps(
                {
                    "event_id": "evt-" + uuid.uuid4().hex,
                    "type": "chat.requested",
                    "occurred_at": stamp(now - 300),
                    "chat_id": ids["chat"],
                    "queue": long_queue,
                }
            ),
        ),
        (
            ids["chat"].encode(),
            orjson.dumps(
                {
                    "event_id": "evt-" + uuid.uuid4().hex,
                    "type": "chat.accepted",
                    "occurred_at": stamp(now - 290),
                    "chat_id": ids["chat"],
                    "agent_id": ids["agent"],
                }
            ),
        ),
    ]
    surveys = [
        (
            ids["chat"].encode(),
            orjson.dumps(
                {
                    "event_id": "evt-" + uuid.uuid4().hex,
                    "type": "survey.responded",
                    "occurred_at": stamp(now - 100),
                    "kind": "csat",
                    "score": 5,
                    "chat_id": ids["chat"],
                    "agent_id": ids["agent"],
                    "customer_id": ids["customer"],  # an unknown field, ignored
                }
            ),
        )
    ]
    worker = DebugWorker(settings, workdir / "worker")
    try:
        worker.wait_ready(90)

        async def send() -> None:
            await produce(settings, settings.topic_tickets, tickets)
            await produce(settings, settings.topic_chats, chats)
            await produce(settings, settings.topic_surveys, surveys)

        asyncio.run(send())
        wait_until(lambda: processed_total(worker) >= 5, 30, message=worker.describe)
        # the KPI snapshot behind /metrics has caught up with all of it
        wait_until(
            lambda: samples(scrape(settings.web_port), "deskpulse_csat_responses"),
            30,
            message=worker.describe,
        )
        yield Secured(settings, worker, workdir, tuple(ids.values()), long_channel, long_queue)
        assert worker.stop() == 0, worker.describe()
    finally:
        worker.stop(timeout_s=15)


def test_a_worker_on_a_password_protected_redis_processes_events(secured: Secured) -> None:
    document = kpis(secured.settings, secured.workdir, "--window", "1h")
    group = document["groups"][0]
    assert group["tickets_created"] == 1
    assert group["first_response"]["count"] == 1
    assert group["chats"]["answered"] == 1
    assert group["csat"]["responses"] == 1


def test_the_redis_password_is_never_logged_or_exported(secured: Secured) -> None:
    worker = secured.worker
    log = worker.log()
    assert "DEBUG" in log, "the worker was meant to log at debug level"
    assert PASSWORD not in log
    for path in ("/metrics", "/healthz", "/readyz", "/kpis"):
        response = worker.get(path)
        assert response is not None, path
        assert PASSWORD not in response.text, path
    assert TOKEN not in worker.log()


def test_kpis_want_the_bearer_token_metrics_and_health_stay_open(secured: Secured) -> None:
    url = f"http://{HOST}:{secured.settings.web_port}"
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": f"Bearer {TOKEN[:-1]}"},
        {"Authorization": TOKEN},
        {"Authorization": f"Basic {TOKEN}"},
    ):
        response = http_request(url + "/kpis?window=1h", headers)
        assert response is not None
        assert response.status == 401, (headers, response)
        assert TOKEN not in response.text
    good = http_request(url + "/kpis?window=1h", {"Authorization": f"Bearer {TOKEN}"})
    assert good is not None
    assert good.status == 200, good
    assert json.loads(good.body)["groups"][0]["tickets_created"] == 1
    for path in ("/metrics", "/healthz", "/readyz"):
        response = http_request(url + path)
        assert response is not None
        assert response.status == 200, (path, response)


def test_the_web_port_listens_on_loopback_only_by_default(secured: Secured) -> None:
    assert Settings.model_fields["web_host"].default == "127.0.0.1"
    assert secured.settings.web_host == "127.0.0.1"
    assert listening_addresses(secured.settings.web_port) == {"127.0.0.1"}


def test_label_values_are_cut_to_the_configured_length(secured: Secured) -> None:
    text = scrape(secured.settings.web_port)
    seen: dict[str, set[str]] = {"channel": set(), "queue": set()}
    for family in ("deskpulse_tickets_created", "deskpulse_chats_requested"):
        for labels, _ in samples(text, family):
            for name in seen:
                seen[name].add(labels[name])
    assert secured.long_channel[:LABEL_MAX] in seen["channel"], seen
    assert secured.long_queue[:LABEL_MAX] in seen["queue"], seen
    for line in text.splitlines():
        if line.startswith("#") or "{" not in line:
            continue
        for name in ("channel", "queue", "priority"):
            marker = f'{name}="'
            if marker in line:
                value = line.split(marker, 1)[1].split('"', 1)[0]
                assert len(value) <= LABEL_MAX, line


def test_no_id_from_the_input_reaches_metrics(secured: Secured) -> None:
    text = scrape(secured.settings.web_port)
    assert samples(text, "deskpulse_tickets_created"), "the windowed gauges are there"
    for identifier in secured.ids:
        assert identifier not in text
        assert identifier.lower() not in text.lower()
    token = {"Authorization": f"Bearer {TOKEN}"}
    url = f"http://{HOST}:{secured.settings.web_port}/kpis?window=1h&by=channel,queue,priority"
    document = http_request(url, token)
    assert document is not None
    for identifier in secured.ids:
        assert identifier not in document.text


# -- credentials refused at start ------------------------------------------------------------


@pytest.mark.parametrize(
    ("credentials", "why"),
    # (without credentials redis-py's HELLO is refused: either way, credentials are named)
    [(":not-the-password@", "refused the credentials"), ("", "credentials")],
    ids=["wrong-password", "no-password"],
)
def test_a_wrong_redis_password_stops_the_worker_in_one_line(
    broker: str, auth_redis: int, tmp_path: Path, credentials: str, why: str
) -> None:
    settings = fresh_settings(broker, f"redis://{credentials}{HOST}:{auth_redis}/0")
    line = refused_at_start(settings, tmp_path, PASSWORD, "not-the-password")
    assert why in line, line


@pytest.fixture(scope="module")
def acl_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, str, str]]:
    """A redis-server with an ACL user ``alice`` who may touch only keys under her prefix;
    its port, her password and her prefix."""
    port = free_port(HOST)
    secret = "alice-" + uuid.uuid4().hex
    prefix = "acl" + uuid.uuid4().hex[:8]
    # every key deskpulse writes lives under the prefix (docs/architecture.md, the key
    # table): so may the ACL say
    rules = ["alice", "on", f">{secret}", f"~{prefix}:*", "+@all", "-@dangerous"]
    with start_redis(
        HOST, port, tmp_path_factory.mktemp("redis-acl"), extra_args=["--user", *rules]
    ):
        yield port, secret, prefix


def test_a_redis_acl_user_works(
    broker: str, acl_redis: tuple[int, str, str], tmp_path: Path, start_worker: StartWorker
) -> None:
    port, secret, prefix = acl_redis
    settings = fresh_settings(broker, f"redis://alice:{secret}@{HOST}:{port}/0")
    settings = settings.model_copy(update={"redis_prefix": prefix})
    create_topics(settings)
    worker = works(start_worker, settings, tmp_path, "ACL-1")
    assert secret not in worker.log()


def test_a_wrong_acl_password_stops_the_worker_in_one_line(
    broker: str, acl_redis: tuple[int, str, str], tmp_path: Path
) -> None:
    port, secret, _ = acl_redis
    settings = fresh_settings(broker, f"redis://alice:nope-{secret[-6:]}@{HOST}:{port}/0")
    line = refused_at_start(settings, tmp_path, secret, f"nope-{secret[-6:]}")
    assert "refused the credentials" in line, line


# -- TLS -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsRedis:
    port: int
    files: TlsFiles


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRedis]:
    """A redis-server with only a TLS port, its certificate signed by a throwaway CA."""
    directory = tmp_path_factory.mktemp("redis-tls")
    files = make_tls_files(directory / "pki")
    port = free_port(HOST)
    try:
        process = start_tls_redis(HOST, port, directory / "redis", files)
    except TlsUnsupported as error:
        pytest.skip(f"this redis-server was built without TLS support: {error}")
    with process:
        yield TlsRedis(port, files)


def test_a_worker_talks_to_redis_over_tls(
    broker: str, tls_redis: TlsRedis, tmp_path: Path, start_worker: StartWorker
) -> None:
    url = f"rediss://{HOST}:{tls_redis.port}/0?ssl_ca_certs={tls_redis.files.ca_cert}"
    settings = fresh_settings(broker, url)
    create_topics(settings)
    works(start_worker, settings, tmp_path, "TLS-1")


def test_an_unverifiable_redis_certificate_stops_the_worker_in_one_line(
    broker: str, tls_redis: TlsRedis, tmp_path: Path
) -> None:
    # no CA given: the system CAs do not know the throwaway one, verification fails
    settings = fresh_settings(broker, f"rediss://{HOST}:{tls_redis.port}/0")
    line = refused_at_start(settings, tmp_path)
    assert "TLS" in line, line
    assert "CERTIFICATE_VERIFY_FAILED" in line or "certificate verify failed" in line, line


# -- Kafka SASL/SSL settings reach the clients -------------------------------------------------


def test_plaintext_kafka_options_carry_no_security() -> None:
    options = kafka_client_options(Settings(kafka_bootstrap="k1:9092,k2:9092"))
    assert options == {"bootstrap_servers": "k1:9092,k2:9092", "security_protocol": "PLAINTEXT"}


@pytest.fixture(scope="module")
def ca_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tls_files(tmp_path_factory.mktemp("pki")).ca_cert


def _ca_subjects(context: ssl.SSLContext) -> list[Any]:
    return [cert["subject"] for cert in context.get_ca_certs()]


def test_ssl_kafka_options_verify_against_the_given_ca(ca_file: Path) -> None:
    settings = Settings(
        kafka_bootstrap="k:9093", kafka_security_protocol="SSL", kafka_ssl_cafile=str(ca_file)
    )
    options = kafka_client_options(settings)
    assert set(options) == {"bootstrap_servers", "security_protocol", "ssl_context"}
    assert options["security_protocol"] == "SSL"
    context = options["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    assert ((("commonName", "deskpulse throwaway test CA"),),) in _ca_subjects(context)


@pytest.mark.parametrize(
    ("protocol", "mechanism"),
    [
        ("SASL_PLAINTEXT", "PLAIN"),
        ("SASL_PLAINTEXT", "SCRAM-SHA-256"),
        ("SASL_PLAINTEXT", "SCRAM-SHA-512"),
        ("SASL_SSL", "SCRAM-SHA-256"),
    ],
)
def test_sasl_kafka_options_carry_mechanism_and_credentials(
    protocol: str, mechanism: str, ca_file: Path
) -> None:
    secret = "kpw-" + uuid.uuid4().hex
    settings = Settings(
        kafka_bootstrap="k:9094",
        kafka_security_protocol=protocol,
        kafka_sasl_mechanism=mechanism,
        kafka_sasl_username="deskpulse-svc",
        kafka_sasl_password=SecretStr(secret),
        kafka_ssl_cafile=str(ca_file),
    )
    options = kafka_client_options(settings)
    assert options["security_protocol"] == protocol
    assert options["sasl_mechanism"] == mechanism
    assert options["sasl_plain_username"] == "deskpulse-svc"
    assert options["sasl_plain_password"] == secret  # the plain string, not the SecretStr
    if protocol == "SASL_SSL":
        assert isinstance(options["ssl_context"], ssl.SSLContext)
        assert ((("commonName", "deskpulse throwaway test CA"),),) in _ca_subjects(
            options["ssl_context"]
        )
    else:
        assert "ssl_context" not in options
    assert secret not in repr(settings)


@pytest.mark.parametrize(
    ("protocol", "mechanism"),
    [
        ("SASL_PLAINTEXT", "PLAIN"),
        ("SASL_PLAINTEXT", "SCRAM-SHA-256"),
        ("SASL_SSL", "SCRAM-SHA-512"),
    ],
)
def test_the_faust_consumer_gets_the_same_sasl_credentials(
    protocol: str, mechanism: str, ca_file: Path
) -> None:
    secret = "kpw-" + uuid.uuid4().hex
    settings = Settings(
        kafka_bootstrap="k:9094",
        kafka_security_protocol=protocol,
        kafka_sasl_mechanism=mechanism,
        kafka_sasl_username="deskpulse-svc",
        kafka_sasl_password=SecretStr(secret),
        kafka_ssl_cafile=str(ca_file),
        web_port=free_port(HOST),
    )
    credentials = create_app(settings).conf.broker_credentials
    assert isinstance(credentials, faust.SASLCredentials)
    assert credentials.protocol.value == protocol
    assert credentials.mechanism.value == mechanism
    assert credentials.username == "deskpulse-svc"
    assert credentials.password == secret
    if protocol == "SASL_SSL":
        assert credentials.ssl_context is not None
        assert ((("commonName", "deskpulse throwaway test CA"),),) in _ca_subjects(
            credentials.ssl_context
        )
    assert secret not in repr(credentials)


def test_the_faust_consumer_gets_the_ssl_context(ca_file: Path) -> None:
    settings = Settings(
        kafka_bootstrap="k:9093",
        kafka_security_protocol="SSL",
        kafka_ssl_cafile=str(ca_file),
        web_port=free_port(HOST),
    )
    credentials = create_app(settings).conf.broker_credentials
    assert isinstance(credentials, faust.SSLCredentials)
    assert ((("commonName", "deskpulse throwaway test CA"),),) in _ca_subjects(credentials.context)


def test_no_secret_in_the_repr_of_the_settings() -> None:
    secrets = {
        "redis": "rpw-" + uuid.uuid4().hex,
        "kafka": "kpw-" + uuid.uuid4().hex,
        "token": "tok-" + uuid.uuid4().hex,
    }
    settings = Settings(
        redis_url=SecretStr(f"rediss://alice:{secrets['redis']}@redis.internal:6380/0"),
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="svc",
        kafka_sasl_password=SecretStr(secrets["kafka"]),
        web_token=SecretStr(secrets["token"]),
    )
    renderings = {
        "repr": repr(settings),
        "str": str(settings),
        "format": f"{settings}",
        "model_dump": repr(settings.model_dump()),
        "model_dump_json": settings.model_dump_json(),
    }
    for name, text in renderings.items():
        for kind, secret in secrets.items():
            assert secret not in text, (name, kind)
    # the user name of the Redis URL hides with the rest of it
    assert "alice" not in renderings["repr"]
