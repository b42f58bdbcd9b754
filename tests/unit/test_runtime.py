"""The process-wide garbage collector settings: the one-shot commands' pause; giving freed
memory back to the system; one malloc arena for every thread."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from deskpulse.streams.runtime import one_shot_gc, release_memory


@pytest.fixture
def collector() -> Iterator[None]:
    """Leave the collector as the test found it (enabled, nothing frozen by the test)."""
    enabled = gc.isenabled()
    yield
    gc.unfreeze()
    if enabled:
        gc.enable()


@pytest.mark.usefixtures("collector")
def test_one_shot_gc_pauses_collections_and_freezes_what_it_built() -> None:
    gc.enable()
    frozen = gc.get_freeze_count()
    with one_shot_gc():
        assert not gc.isenabled()
        built = [[index] for index in range(1000)]  # tracked containers
    assert gc.isenabled()  # as it was before
    assert gc.get_freeze_count() >= frozen + len(built)


@pytest.mark.usefixtures("collector")
def test_one_shot_gc_leaves_a_disabled_collector_disabled() -> None:
    gc.disable()
    with one_shot_gc():
        pass
    assert not gc.isenabled()


@pytest.mark.usefixtures("collector")
def test_one_shot_gc_restores_the_collector_when_the_command_fails() -> None:
    gc.enable()
    with pytest.raises(RuntimeError), one_shot_gc():
        raise RuntimeError("the command failed")
    assert gc.isenabled()


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc_trim, /proc")
def test_release_memory_gives_freed_dict_tables_back() -> None:
    # dicts of a refresh's size: their tables come from malloc, freed pages stay with it
    tables = [{f"f{i}:{j}": j for j in range(64)} for i in range(20_000)]
    del tables
    before = _rss_kib()
    release_memory()
    assert _rss_kib() < before


_ARENAS = """
import ctypes, ctypes.util, sys, threading
from deskpulse.streams.runtime import one_malloc_arena
if sys.argv[1] == "one":
    one_malloc_arena()
def work():
    for _ in range(5):
        kept = [bytes(2000 + i % 7) for i in range(20_000)]  # from malloc, not pymalloc
    del kept
threads = [threading.Thread(target=work) for _ in range(4)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
ctypes.CDLL(ctypes.util.find_library("c")).malloc_stats()
"""


def _arenas(mode: str, env: dict[str, str]) -> int:
    """The arenas glibc's ``malloc_stats`` lists after four threads allocated at once."""
    done = subprocess.run(
        [sys.executable, "-c", _ARENAS, mode], env=env, capture_output=True, text=True, check=True
    )
    return sum(line.startswith("Arena ") for line in done.stderr.splitlines())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt, malloc_stats")
def test_one_malloc_arena_serves_every_thread_from_one_arena() -> None:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    assert _arenas("glibc's", env) > 1  # threads that found it busy got arenas of their own
    assert _arenas("one", env) == 1
    # the operator's MALLOC_ARENA_MAX holds
    assert _arenas("one", {**env, "MALLOC_ARENA_MAX": "3"}) > 1
