"""The state check's gate: batches wait for it, and it never stays shut without a word.

A check that fails in a way nobody foresaw (a client left mid-request, a bug) is logged
with its traceback and tried again on a fresh client; one that takes long is said in the
log. These run the real :class:`StateGuard` with ``verify`` replaced: no services needed.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from deskpulse.models.errors import Abandoned, StateLost
from deskpulse.models.settings import Settings
from deskpulse.streams import integrity
from deskpulse.streams.integrity import StateGuard


def guard() -> StateGuard:
    return StateGuard(Settings(), store=None, report_ok=lambda ok: None)  # type: ignore[arg-type]


def test_an_unexpected_error_in_the_check_is_logged_and_the_check_tried_again(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[Any] = []

    async def verify(store: Any, offsets: Any, topics: Any, partitions: list[int]) -> list[str]:
        calls.append(offsets)
        if len(calls) == 1:
            raise RuntimeError("client in a state nobody foresaw")
        return []

    monkeypatch.setattr(integrity, "verify", verify)

    async def run() -> None:
        state = guard()
        state.assigned([0, 2])
        assert state.checking
        await asyncio.wait_for(state.admit(), 10)  # opens after the second attempt
        assert not state.checking
        await state.stop()

    with caplog.at_level(logging.INFO, logger="deskpulse.state"):
        asyncio.run(run())
    assert len(calls) == 2
    assert calls[0] is not calls[1], "each attempt gets a broker client of its own"
    failed = [r for r in caplog.records if "failed unexpectedly" in r.getMessage()]
    assert len(failed) == 1 and failed[0].exc_info is not None
    assert "partitions 0,2" in failed[0].getMessage()
    assert any("checked against the consumer group" in r.getMessage() for r in caplog.records)


def test_a_slow_check_is_said_in_the_log_and_a_state_error_still_halts(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(integrity, "_SLOW_CHECK_S", 0.2)
    release = asyncio.Event()

    async def verify(store: Any, offsets: Any, topics: Any, partitions: list[int]) -> list[str]:
        await release.wait()
        raise StateLost("fence_behind", "the group committed past the fence", "restore it")

    monkeypatch.setattr(integrity, "verify", verify)
    reported: list[bool] = []

    async def run() -> None:
        state = StateGuard(Settings(), store=None, report_ok=reported.append)  # type: ignore[arg-type]
        state.assigned([1])
        await asyncio.sleep(0.5)
        assert state.checking
        release.set()
        admitted = asyncio.ensure_future(state.admit())
        await asyncio.sleep(0.3)
        assert not admitted.done(), "a lost state holds the batch"
        assert isinstance(state.error, StateLost)
        state.release()
        with pytest.raises(Abandoned):
            await asyncio.wait_for(admitted, 5)
        await state.stop()

    with caplog.at_level(logging.INFO, logger="deskpulse.state"):
        asyncio.run(run())
    assert reported == [False]
    slow = [r.getMessage() for r in caplog.records if "wait for the state check" in r.getMessage()]
    assert slow == [slow[0]] and "partitions 1 " in slow[0], slow


class Gate:
    """A guard whose check ends when :attr:`release` is set, and the batches it admitted,
    in the order it admitted them."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.release = asyncio.Event()
        self.admitted: list[int] = []

        async def verify(store: Any, offsets: Any, topics: Any, partitions: list[int]) -> list[str]:
            await self.release.wait()
            return []

        monkeypatch.setattr(integrity, "verify", verify)

    async def batch(self, state: StateGuard, n: int) -> None:
        await state.admit()
        self.admitted.append(n)


@pytest.mark.parametrize("opens_after_s", [0.31, 0.37, 0.43])
def test_batches_waiting_for_the_check_are_admitted_in_the_order_they_came(
    monkeypatch: pytest.MonkeyPatch, opens_after_s: float
) -> None:
    """A partition's batches must reach the engine in the order they were taken: a later
    batch applied first moves the fence past the earlier one, which is then read back from
    the log as a hole, or, where the partition had no fence yet, skipped as applied (lost).
    Batches come while the gate is shut, at different moments of its polling (every 0.25 s),
    and some just after it opened."""
    gate = Gate(monkeypatch)

    async def run() -> None:
        state = guard()
        state.assigned([0])
        tasks = []
        for n in range(8):
            tasks.append(asyncio.ensure_future(gate.batch(state, n)))
            await asyncio.sleep(0.03)  # spread over one polling period
        await asyncio.sleep(opens_after_s - 8 * 0.03)
        gate.release.set()
        for n in range(8, 12):  # the gate opens meanwhile: these come after the waiting ones
            tasks.append(asyncio.ensure_future(gate.batch(state, n)))
            await asyncio.sleep(0)
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
        await state.stop()

    asyncio.run(run())
    assert gate.admitted == list(range(12))


def test_a_batch_cancelled_while_waiting_keeps_the_order_of_those_behind_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gate = Gate(monkeypatch)

    async def run() -> None:
        state = guard()
        state.assigned([0])
        tasks = []
        for n in range(6):
            tasks.append(asyncio.ensure_future(gate.batch(state, n)))
            await asyncio.sleep(0.06)
        tasks[2].cancel()  # waiting behind 0 and 1
        await asyncio.sleep(0.3)  # the others poll the gate meanwhile
        gate.release.set()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)
        await state.stop()

    asyncio.run(run())
    assert gate.admitted == [0, 1, 3, 4, 5]
