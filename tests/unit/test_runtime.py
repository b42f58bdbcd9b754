"""The process-wide garbage collector settings: the one-shot commands' pause."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from deskpulse.streams.runtime import one_shot_gc


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
