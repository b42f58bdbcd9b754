"""What breach detection has to publish for one ticket at a detection clock
(``streams.breaches.alerts_due``), and when it must look again (``breach_deadline``)."""

from __future__ import annotations

import orjson

from deskpulse.models.sla import Policy
from deskpulse.streams.breaches import alerts_due
from deskpulse.streams.core import Conversation, CoreConfig, breach_deadline

H = 3_600_000
T0 = 1_795_392_000_000  # 2026-11-23T00:00:00Z
CONFIG = CoreConfig(
    policies=(
        Policy(
            name="rs",
            targets={"resolution": {"normal": 4 * 3600}},
            pause=("pending",),
            warn_at=(0.5,),
        ),
    )
)


def ticket(*statuses: tuple[float, str]) -> Conversation:
    """A ticket created at T0 with status changes ``(hours after T0, code)``."""
    timeline = {f"s{n}": (T0 + int(hours * H), code) for n, (hours, code) in enumerate(statuses)}
    return Conversation(
        kind="t", opened=(T0, "c"), dims=("email", "billing", "normal"), timeline=timeline
    )


def warnings(state: Conversation, clock_ms: int) -> list[tuple[str, float, str]]:
    out = []
    for alert in alerts_due("t:T", state, clock_ms, CONFIG, "p"):
        body = orjson.loads(alert.payload)
        assert body["type"] == "sla.at_risk", body
        out.append((alert.marker, body["remaining_seconds"], body["due_at"]))
    return out


def test_a_warning_is_due_even_when_the_clock_then_pauses_for_good() -> None:
    # half of the 4 h reached at 2 h while running, pending for good from 3 h: there is no
    # deadline, but the warning was reached while the instance ran. It is published once,
    # due_at being the deadline had the clock kept running (4 h), and the ticket then
    # leaves the due set (it used to stay there, due at 2 h, with nothing ever claimed)
    state = ticket((3, "p"))
    assert breach_deadline(state, CONFIG) == T0 + 2 * H
    assert warnings(state, T0 + 10 * H) == [("rs:1@0.5", 7200.0, "2026-11-23T04:00:00.000Z")]
    state.claims.add("rs:1@0.5")
    assert warnings(state, T0 + 10 * H) == []
    assert breach_deadline(state, CONFIG) is None


def test_due_at_assumes_the_clock_keeps_running() -> None:
    # paused 3 h..5 h: the deadline is 6 h, but at the warning (2 h) the clock running on
    # gives 4 h: that is the warning's due_at
    state = ticket((3, "p"), (5, "o"))
    assert warnings(state, T0 + 2 * H) == [("rs:1@0.5", 7200.0, "2026-11-23T04:00:00.000Z")]
    # without a pause both agree
    assert warnings(ticket(), T0 + 2 * H) == [("rs:1@0.5", 7200.0, "2026-11-23T04:00:00.000Z")]
    assert warnings(ticket(), T0 + 2 * H - 1) == []
