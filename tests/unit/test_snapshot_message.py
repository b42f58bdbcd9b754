"""A KPI topic message is built as a dict, byte for byte what the schema's model dumps:
``KpiSnapshot``'s fields, then the group's, in the model's order, and valid for it."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from deskpulse.exporters.publish import _message
from deskpulse.models.outputs import KpiSnapshot
from deskpulse.streams.agent_kpis import agent_document
from deskpulse.streams.core import LONGEST, OLDEST, group_document

END_S = 1_796_600_000
KEY = {"channel": "email", "queue": "billing", "priority": "urgent"}
#: a ticket created and first answered (with its duration), one survey, a chat abandoned
FIELDS = {"tc": 3, "fr": 2, "fr_ms": 120_000, "cs_n": 1, "cs_sat": 1, "ca": 1, "cab": 1}
LIVE = {"bl:o": 2, "bl:w": 1, OLDEST: (END_S - 3_600) * 1000, LONGEST: (END_S - 90) * 1000}


def documents() -> list[tuple[tuple[str | None, ...], dict[str, Any]]]:
    other = group_document({"channel": "", "queue": "other", "priority": ""}, FIELDS, None, END_S)
    presence = {"status": "busy", "occupancy_ratio": 0.75}
    return [
        ((None, None, None), group_document({}, FIELDS, LIVE, END_S)),  # the total
        (tuple(KEY.values()), group_document(KEY, FIELDS, LIVE, END_S)),
        (tuple(KEY.values()), group_document(KEY, {}, None, END_S)),  # nothing but its key
        (("", "other", ""), {**other, "folded_groups": 12}),
        (("agent", "A7"), agent_document("A7", {"fr": 2, "fr_ms": 120_000}, presence)),
    ]


@pytest.mark.parametrize("parts, group", documents())
def test_the_message_is_the_models_dump(
    parts: tuple[str | None, ...], group: dict[str, Any]
) -> None:
    window, start, end = "1h", "2026-12-07T05:00:00Z", "2026-12-07T06:00:00Z"
    key, body = _message(window, start, end, parts, group)
    dumped = KpiSnapshot.build(window, start, end, group).model_dump(mode="json")
    dumped.pop("schema_version")
    assert orjson.dumps(body) == orjson.dumps(dumped)  # same fields, values and order
    assert list(body)[:4] == ["window", "start", "end", "key"]
    sent = {"schema_version": 1, **body}  # as the publisher sends it
    assert KpiSnapshot.model_validate(sent).model_dump(mode="json") == sent
    assert key.startswith(f"{window}|")
