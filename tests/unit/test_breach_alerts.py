"""What breach detection has to publish for one ticket at a detection clock
(``streams.breaches.alerts_due``), and when it must look again (``breach_deadline``)."""

from __future__ import annotations

import orjson

from deskpulse.models.sla import Policy
from deskpulse.streams.breaches import alerts_due, published_marker
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


def test_a_published_alert_read_back_is_the_claim_marker_it_was_claimed_under() -> None:
    """``published_marker`` is the inverse of the markers ``alerts_due`` claims under: a
    state that adopts them holds exactly the claims of the state that published."""
    state = ticket()
    found = alerts_due("t:T", state, T0 + 5 * H, CONFIG, "p")
    assert [a.marker for a in found] == ["rs:1@0.5", "rs:1"]
    for alert in found:
        assert published_marker(orjson.loads(alert.payload)) == ("T", alert.marker)
    cases = [
        # a v1 breach has neither metric nor instance: the first response's
        ({"type": "sla.breached", "ticket_id": "A"}, ("A", "fr:1")),
        (
            {
                "type": "sla.at_risk",
                "ticket_id": "B",
                "metric": "next_response",
                "instance": 2,
                "fraction": 0.75,
            },
            ("B", "nr:2@0.75"),
        ),
        (
            {
                "type": "sla.breach_retracted",
                "ticket_id": "C",
                "metric": "resolution",
                "instance": 1,
            },
            ("C", "rs:1@r"),
        ),
        ({"type": "alert.firing", "rule": "csat_low", "window": "1h"}, None),
        ({"type": "sla.breached", "ticket_id": "D", "metric": "speed"}, None),
        ({"type": "sla.at_risk", "ticket_id": "E", "metric": "resolution"}, None),
    ]
    for payload, marker in cases:
        assert published_marker(payload) == marker, payload
