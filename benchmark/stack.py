"""The processes one run starts, the settings each contender runs with, and Redis progress.

Every process goes through :class:`Processes`, which stops them all in reverse order when
the run ends, fails or is interrupted. Settings are built here from explicit values only
(``DESKPULSE_*`` from the caller's environment or a ``.env`` never leak in) and handed to
a subprocess as the environment that rebuilds exactly them.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr

from deskpulse.models.settings import ENV_PREFIX, Settings, format_duration
from deskpulse.streams.devtools.embedded import ManagedProcess, free_port
from deskpulse.streams.redis_client import Client

__all__ = ["HOST", "Processes", "applied_total", "child_env", "make_settings", "meta_totals"]

HOST = "127.0.0.1"
REPO_ROOT = Path(__file__).resolve().parent.parent


def make_settings(**values: Any) -> Settings:
    """Settings from ``values`` and defaults only (no environment, no ``.env``)."""
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith(ENV_PREFIX)}
    try:
        return Settings(_env_file=None, **values)  # type: ignore[call-arg]
    finally:
        os.environ.update(saved)


def _json_value(value: Any) -> Any:
    """A settings model (a schedule, a policy, an alert rule) as the JSON it was read from."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude_none=True)
    return value


def _env_value(name: str, value: Any) -> str:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if name == "windows":
        return ",".join(format_duration(width) for width in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    if isinstance(value, tuple | list):
        return json.dumps([_json_value(v) for v in value])
    if isinstance(value, dict):
        return json.dumps({k: _json_value(v) for k, v in value.items()})
    raise TypeError(f"no environment spelling for {name}={value!r}")


def child_env(settings: Settings, *, code: Path | None = None, **extra: str) -> dict[str, str]:
    """The environment a ``python -m ...`` child needs to build ``settings`` again;
    ``code``: a directory holding another ``deskpulse`` package for it to run (a version
    to compare), imported before this tree's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if value is not None:
            env[ENV_PREFIX + name.upper()] = _env_value(name, value)
    # benchmark.* children import from the work tree; streams.* resolves to the same files
    path = [str(code) if code is not None else None, str(REPO_ROOT), env.get("PYTHONPATH")]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, path))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


class Processes:
    """Every process a run started; :meth:`stop_all` ends them, newest first."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._running: list[ManagedProcess] = []

    def start(
        self,
        name: str,
        argv: list[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> ManagedProcess:
        cwd = cwd or self.workdir / name
        cwd.mkdir(parents=True, exist_ok=True)
        proc = ManagedProcess(name, argv, self.workdir / "logs" / f"{name}.log", cwd=cwd, env=env)
        self._running.append(proc)
        return proc

    def adopt(self, proc: ManagedProcess) -> ManagedProcess:
        self._running.append(proc)
        return proc

    def worker(
        self, name: str, settings: Settings, *, code: Path | None = None, **extra_env: str
    ) -> ManagedProcess:
        """``python -m deskpulse.streams.cli worker`` (what ``deskpulse worker`` runs);
        ``code`` as :func:`child_env` takes it."""
        return self.start(
            name,
            [sys.executable, "-m", "deskpulse.streams.cli", "--log-level", "warning", "worker"],
            env=child_env(settings, code=code, **extra_env),
        )

    def stop(self, proc: ManagedProcess, timeout_s: float = 20.0) -> int:
        code = proc.stop(timeout_s=timeout_s)
        if proc in self._running:
            self._running.remove(proc)
        return code

    def stop_all(self) -> None:
        for proc in reversed(self._running):
            try:
                proc.stop(timeout_s=15)
            except Exception as error:  # keep stopping the others
                print(f"benchmark: stopping {proc.name} failed: {error}", file=sys.stderr)
        self._running.clear()


def web_port() -> int:
    return free_port(HOST)


async def meta_totals(redis: Client, prefix: str, partitions: int) -> dict[str, int]:
    """Sums over partitions of the meta counters (``applied``, ``dup:*``, ``late:*``, ...)."""
    async with redis.pipeline(transaction=False) as pipe:
        for p in range(partitions):
            pipe.hgetall(f"{prefix}:{{p{p}}}:meta")
        replies = await pipe.execute()
    sums: dict[str, int] = {}
    for reply in replies:
        for key, value in reply.items():
            name = key.decode()
            if name in ("version", "wm", "gen") or name.startswith(("off:", "wm:")):
                continue
            sums[name] = sums.get(name, 0) + int(value)
    return sums


def applied_total(sums: Mapping[str, int]) -> int:
    """Events the state has accounted for: applied, duplicates and late ones."""
    return sum(v for k, v in sums.items() if k == "applied" or k.startswith(("dup:", "late:")))


async def wait_applied(
    redis: Client,
    prefix: str,
    partitions: int,
    expected: int,
    *,
    timeout_s: float,
    proc: ManagedProcess | None = None,
    on_first: Any = None,
    poll_s: float = 0.01,
) -> dict[str, float]:
    """Poll Redis until ``expected`` events are accounted for under ``prefix``.

    Returns the first observation of progress and the completion: ``t_first``, ``n_first``,
    ``t_done``, ``n_done`` (``time.time()`` seconds). ``on_first()`` runs at the first one.
    """
    deadline = time.monotonic() + timeout_s
    first: tuple[float, int] | None = None
    while True:
        now = time.time()
        total = applied_total(await meta_totals(redis, prefix, partitions))
        if total and first is None:
            first = (now, total)
            if on_first is not None:
                on_first()
        if total >= expected:
            assert first is not None
            return {"t_first": first[0], "n_first": first[1], "t_done": now, "n_done": total}
        if proc is not None and not proc.running:
            raise RuntimeError(f"{proc.name} exited ({proc.returncode}):\n{proc.log_tail()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{prefix}: {total} of {expected} events after {timeout_s:g}s")
        await asyncio.sleep(poll_s)
