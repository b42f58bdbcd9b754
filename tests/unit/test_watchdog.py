"""The stuck-partition rule (``deskpulse.streams.watchdog``), as pure functions of time."""

from __future__ import annotations

import pytest

from deskpulse.streams.watchdog import (
    ATTEMPTS_BEFORE_ERROR,
    MAX_BACKOFF_S,
    Progress,
    StallWatch,
    is_stuck,
)

TIMEOUT_S = 30.0


@pytest.mark.parametrize(
    ("lag", "unmoved_s", "busy", "flow_active", "broker_up", "stuck"),
    [
        (0, 100.0, False, True, True, False),  # nothing to read: idle, not stuck
        (5, 0.0, False, True, True, False),  # just moved
        (5, 29.9, False, True, True, False),  # not moving, under the timeout
        (5, 30.0, False, True, True, True),  # not moving for the timeout: stuck
        (5, 300.0, False, True, True, True),  # and long after
        (5, 300.0, True, True, True, False),  # a batch held (state guard, dead letters)
        (5, 300.0, False, False, True, False),  # Faust's flow stopped: a rebalance
        (5, 300.0, False, True, False, False),  # the broker does not answer
    ],
)
def test_is_stuck(
    lag: int, unmoved_s: float, busy: bool, flow_active: bool, broker_up: bool, stuck: bool
) -> None:
    assert (
        is_stuck(lag, unmoved_s, TIMEOUT_S, busy=busy, flow_active=flow_active, broker_up=broker_up)
        is stuck
    )


def at(committed: int | None, read: int | None, end: int, busy: bool = False) -> Progress:
    return Progress(committed=committed, read=read, end=end, busy=busy)


def observe(
    watch: StallWatch[str], progress: Progress, now_s: float, **flags: bool
) -> float | None:
    """How long the partition was stuck when ``observe`` reports it, else None."""
    stalls = watch.observe(
        {"p": progress},
        now_s,
        flow_active=flags.get("flow_active", True),
        broker_up=flags.get("broker_up", True),
    )
    return stalls["p"].stuck_s if "p" in stalls else None


def test_a_partition_whose_offsets_stand_still_with_lag_is_reported_once_per_timeout() -> None:
    watch: StallWatch[str] = StallWatch(TIMEOUT_S)
    assert observe(watch, at(100, 99, 130), 0.0) is None  # first sight starts the clock
    assert observe(watch, at(100, 99, 130), 29.0) is None
    assert observe(watch, at(100, 99, 130), 30.0) == 30.0
    # recovered (sought back): given another timeout before the next attempt
    assert observe(watch, at(100, 99, 130), 45.0) is None
    stalls = watch.observe({"p": at(100, 99, 130)}, 60.0, flow_active=True, broker_up=True)
    assert stalls["p"].attempt == 2
    assert stalls["p"].stuck_s == 60.0  # measured from the last move, not the last attempt
    assert (stalls["p"].committed, stalls["p"].end) == (100, 130)


def test_moving_offsets_restart_the_clock() -> None:
    watch: StallWatch[str] = StallWatch(TIMEOUT_S)
    observe(watch, at(100, 99, 5000), 0.0)
    assert observe(watch, at(100, 120, 5000), 20.0) is None  # read moved
    assert observe(watch, at(140, 120, 5000), 40.0) is None  # committed moved
    assert observe(watch, at(140, 120, 5000), 69.0) is None
    assert observe(watch, at(140, 120, 5000), 70.0) == 30.0


@pytest.mark.parametrize(
    "pause",
    [
        {"progress": at(100, 99, 130, busy=True)},  # a held batch
        {"flags": {"flow_active": False}},  # a rebalance
        {"flags": {"broker_up": False}},  # a silent broker
        {"progress": at(100, 99, 100)},  # caught up, then new records arrive
    ],
)
def test_a_pause_with_a_reason_is_not_counted_as_stuck(pause: dict) -> None:
    watch: StallWatch[str] = StallWatch(TIMEOUT_S)
    observe(watch, at(100, 99, 130), 0.0)
    during = pause.get("progress", at(100, 99, 130))
    assert observe(watch, during, 25.0, **pause.get("flags", {})) is None
    assert observe(watch, during, 100.0, **pause.get("flags", {})) is None
    # once the reason is gone, the clock runs from the last look that had one
    assert observe(watch, at(100, 99, 130), 120.0) is None
    assert observe(watch, at(100, 99, 130), 130.0) == 30.0


def test_a_partition_that_stays_stuck_is_retried_with_backoff() -> None:
    watch: StallWatch[str] = StallWatch(TIMEOUT_S)
    observe(watch, at(7, 6, 9), 0.0)
    attempts: list[tuple[int, float]] = []
    now_s = 0.0
    while now_s < 3600:
        now_s += 1.0
        stalls = watch.observe({"p": at(7, 6, 9)}, now_s, flow_active=True, broker_up=True)
        if "p" in stalls:
            attempts.append((stalls["p"].attempt, now_s))
    numbers = [n for n, _ in attempts]
    assert numbers == list(range(1, len(numbers) + 1))  # never silent: each one reported
    gaps = [b - a for (_, a), (_, b) in zip([(0, 0.0), *attempts], attempts, strict=False)]
    # a timeout apart until the error threshold, then doubling, capped
    assert gaps[:ATTEMPTS_BEFORE_ERROR] == [TIMEOUT_S] * ATTEMPTS_BEFORE_ERROR
    assert gaps[ATTEMPTS_BEFORE_ERROR : ATTEMPTS_BEFORE_ERROR + 3] == [60.0, 120.0, 240.0]
    assert max(gaps) == MAX_BACKOFF_S
    # progress ends the backoff: the next stall is reported after one timeout again
    observe(watch, at(8, 7, 9), now_s)
    assert observe(watch, at(8, 7, 9), now_s + TIMEOUT_S) == TIMEOUT_S


def test_partitions_no_longer_assigned_are_forgotten() -> None:
    watch: StallWatch[str] = StallWatch(TIMEOUT_S)
    observe(watch, at(100, 99, 130), 0.0)
    watch.observe({}, 10.0, flow_active=True, broker_up=True)  # revoked
    assert observe(watch, at(100, 99, 130), 35.0) is None  # assigned again: a new clock
    assert observe(watch, at(100, 99, 130), 65.0) == 30.0
