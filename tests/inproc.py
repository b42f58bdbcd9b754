"""The worker inside the test process: the ``inproc_worker`` fixture's :class:`InprocWorker`.

Worker behaviour that needs no second process (consuming and applying events,
dead-lettering, serving ``/kpis`` and ``/metrics``, publishing snapshots and alerts) is
tested on the real worker run here: no interpreter to start nor modules to import (about
0.7 s of a start here; the rest, about 3 s, is the broker's first group join), no second
process competing for the CPU, and the worker's own records in the test's report.
Faults that need a process of their own (``kill -9``, SIGSTOP, a crash and restart, the
engine process's child) stay with :class:`~tests.support.WorkerProcess`.

What runs is what ``deskpulse worker`` runs (:func:`~streams.cli.run_worker`): the app of
:func:`~streams.app.create_app` with its :class:`~streams.app.Service`, agents, timers and
pages, under a :class:`faust.Worker` through ``execute_from_commandline``, the same start,
stop and exit status. Why a thread with an event loop of its own rather than the test's
loop: the tests are synchronous (they wait with ``time.sleep`` and talk to Kafka through
``asyncio.run``), which would block a worker sharing their thread; and Faust's worker owns
its loop from start to close, as in the process. What differs from the process, and why:

- the engine runs in the worker's process (``DESKPULSE_ENGINE_PROCESS=false``; ``auto``
  would start a child on two CPUs or more): the engine process, the same protocol in a
  child, is tested by the system tests that start one;
- no signal handlers (only the main thread may install them): :meth:`InprocWorker.stop`
  schedules the very shutdown a SIGTERM schedules;
- Faust does not set up logging (it would replace pytest's handlers): the worker's log
  records (the root logger at INFO while the fixture lasts, as the command sets it) are
  kept by a handler of this module, formatted as the command formats them, without the
  command's throttle of repeated lines;
- the undecodable-batch report (:mod:`streams.record_batches`), installed by the command
  for the process, is installed while the worker runs and taken away after;
- a stop that overruns the worker's deadline ends the process in production; here it
  is reported as a failed stop (the test process must live on), and the stop then fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import faust

from deskpulse.models.errors import SettingsError
from deskpulse.models.settings import Settings
from deskpulse.streams import compat, record_batches
from deskpulse.streams.app import create_app, probe_redis
from deskpulse.streams.cli import probe_web_address
from tests.support import WorkerChecks

__all__ = ["InprocWorker", "children", "port_is_free"]

#: The command's log format (streams/cli.py), so log assertions read the same lines.
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def children(pid: int | None = None) -> set[int]:
    """The pids of the live child processes of ``pid`` (this process by default)."""
    found = set()
    me = str(os.getpid() if pid is None else pid)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:  # gone meanwhile
            continue
        if fields[1] == me and fields[0] != "Z":
            found.add(int(entry.name))
    return found


def port_is_free(host: str, port: int) -> bool:
    """Whether a server could listen on ``host:port`` now (nothing is bound there)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


class _Worker(faust.Worker):
    """Faust's worker without the process-wide parts a test process keeps for itself."""

    def install_signal_handlers(self) -> None:
        # only the main thread may; the fixture stops the worker as a SIGTERM would
        pass


class _KeepRecords(logging.Handler):
    """Keeps every record logged while the worker runs, formatted as the command does."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.setFormatter(logging.Formatter(LOG_FORMAT))
        self.lines: list[str] = []
        self._guard = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        line = self.format(record)
        with self._guard:
            self.lines.append(line)

    def text(self) -> str:
        with self._guard:
            return "\n".join(self.lines)


class InprocWorker(WorkerChecks):
    """The real worker on ``settings``, in a thread of the test process with its own loop.

    Mirrors :class:`~tests.support.WorkerProcess` (``get``, ``log``, ``describe``,
    ``wait_ready``, ``running``, ``returncode``, ``stop``) so a test reads the same on
    either. ``returncode`` is the exit status ``deskpulse worker`` would have had: 0 after
    a clean stop, non-zero after a crash (whose exception is kept in ``error``).
    """

    def __init__(self, settings: Settings, *, name: str = "worker") -> None:
        if settings.engine_process is True:
            raise ValueError(
                "an engine process is a second process: start that worker with start_worker"
            )
        # "auto" means a child process on two CPUs or more: here the engine is in-process
        self.settings = settings.model_copy(update={"engine_process": False})
        self.name = name
        self.returncode: int | None = None
        self.error: BaseException | None = None
        self.overdue = False
        self._records = _KeepRecords()
        self._built = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._worker: _Worker | None = None
        self._thread = threading.Thread(target=self._run, name=f"deskpulse-{name}", daemon=True)

    # -- the worker's thread ------------------------------------------------------------

    def start(self) -> InprocWorker:
        """Start the thread; return once the app is built (or failed to be)."""
        logging.getLogger().addHandler(self._records)
        self._thread.start()
        self._built.wait(30)
        return self

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            # as streams/cli.py run_worker: the settings probes first, then the app
            _probe_settings(self.settings, loop)
            app = create_app(self.settings)
            self._worker = _Worker(
                app,
                loop=loop,
                loglevel="info",
                quiet=True,
                redirect_stdouts=False,
                override_logging=False,
            )
            self._loop = loop
        except BaseException as error:
            self.error = error
            # the command's exit status for a bad setting, else for any failure
            self.returncode = 2 if isinstance(error, SettingsError) else 1
            loop.close()
            return
        finally:
            self._built.set()
        try:
            # runs the loop until the worker stops, then closes it (mode's _shutdown_loop)
            self._worker.execute_from_commandline()
        except SystemExit as done:
            self.returncode = done.code if isinstance(done.code, int) else 1
            self.error = self._worker.crash_reason
        except BaseException as error:  # pragma: no cover - reported by stop()
            self.error = error
            self.returncode = 1

    # -- what a test sees ---------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def log(self) -> str:
        return self._records.text()

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def describe(self) -> str:
        """State and log tail, for assertion messages."""
        state = "running" if self.running else f"stopped with status {self.returncode}"
        if self.error is not None:
            state += f" ({self.error!r})"
        return f"in-process worker {state}; last lines of its log:\n{self.log_tail()}"

    def stop(self, timeout_s: float = 30) -> int:
        """Shut down as a SIGTERM does, wait up to ``timeout_s``; the exit status."""
        loop, worker = self._loop, self._worker
        if self.running and loop is not None and worker is not None:
            # RuntimeError: the loop closed meanwhile, the worker is stopping already
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(worker._schedule_shutdown, signal.SIGTERM)
        self._thread.join(timeout_s)
        logging.getLogger().removeHandler(self._records)
        if self._thread.is_alive():
            raise AssertionError(
                f"the worker did not stop within {timeout_s:g}s: {self.describe()}"
            )
        if self.overdue:
            raise AssertionError(f"the worker's stop overran its deadline: {self.describe()}")
        assert self.returncode is not None
        return self.returncode


def _probe_settings(settings: Settings, loop: asyncio.AbstractEventLoop) -> None:
    """The checks ``deskpulse worker`` makes before it builds the app (streams/cli.py)."""
    probe_web_address(settings)
    loop.run_until_complete(probe_redis(settings))


@contextlib.contextmanager
def undecodable_batches_reported() -> Iterator[None]:
    """:func:`streams.record_batches.install` for the duration, as the command has it for
    the process; aiokafka is left as it was found (other tests read it plain)."""
    if record_batches.installed():
        yield
        return
    original = compat.record_iterator()
    record_batches.install()
    try:
        yield
    finally:
        compat.replace_record_iterator(original)
