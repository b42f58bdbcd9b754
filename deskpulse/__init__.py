"""deskpulse: live, exact customer-support KPIs from a Kafka event stream.

The distribution installs this one name. Its subpackages live at the repository's top
level and are mapped in by ``pyproject.toml``:

- ``deskpulse.models``: the event schema, settings, output payloads and error classes;
- ``deskpulse.streams``: the pure KPI core, the Redis store, the Faust worker, replay, CLI;
- ``deskpulse.exporters``: Prometheus metrics, Kafka outputs, the metric catalog and assets.

The names below are the public API: what an integrating service may import from
``deskpulse`` itself. They load on first use, so ``import deskpulse`` (and every CLI
command) does not pay for pydantic models it does not touch. ``tests/unit/test_packaging.py``
keeps this list and what it resolves to in step.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Kept in step with pyproject.toml by tests/unit/test_cli.py (importlib.metadata costs every
# command ~40 ms of start-up).
__version__ = "0.1.0"

# public name -> the module that defines it
_PUBLIC: dict[str, str] = {
    # settings
    "Settings": "deskpulse.models.settings",
    # events: the wire schema and its codec
    "TicketCreated": "deskpulse.models.events",
    "TicketReplied": "deskpulse.models.events",
    "TicketStatusChanged": "deskpulse.models.events",
    "TicketUpdated": "deskpulse.models.events",
    "ChatRequested": "deskpulse.models.events",
    "ChatAccepted": "deskpulse.models.events",
    "ChatAbandoned": "deskpulse.models.events",
    "ChatEnded": "deskpulse.models.events",
    "SurveyResponded": "deskpulse.models.events",
    "AgentStatusChanged": "deskpulse.models.events",
    "decode": "deskpulse.models.events",
    "encode": "deskpulse.models.events",
    # what deskpulse publishes
    "KpiSnapshot": "deskpulse.models.outputs",
    "SlaBreached": "deskpulse.models.outputs",
    "AlertTransition": "deskpulse.models.outputs",
    # errors an integration may catch
    "DeskpulseError": "deskpulse.models.errors",
    "SettingsError": "deskpulse.models.errors",
    "RejectedEvent": "deskpulse.models.errors",
    "InvalidQuery": "deskpulse.models.errors",
    "DependencyError": "deskpulse.models.errors",
}

__all__ = [
    "AgentStatusChanged",
    "AlertTransition",
    "ChatAbandoned",
    "ChatAccepted",
    "ChatEnded",
    "ChatRequested",
    "DependencyError",
    "DeskpulseError",
    "InvalidQuery",
    "KpiSnapshot",
    "RejectedEvent",
    "Settings",
    "SettingsError",
    "SlaBreached",
    "SurveyResponded",
    "TicketCreated",
    "TicketReplied",
    "TicketStatusChanged",
    "TicketUpdated",
    "__version__",
    "decode",
    "encode",
]

if TYPE_CHECKING:
    from deskpulse.models.errors import (
        DependencyError,
        DeskpulseError,
        InvalidQuery,
        RejectedEvent,
        SettingsError,
    )
    from deskpulse.models.events import (
        AgentStatusChanged,
        ChatAbandoned,
        ChatAccepted,
        ChatEnded,
        ChatRequested,
        SurveyResponded,
        TicketCreated,
        TicketReplied,
        TicketStatusChanged,
        TicketUpdated,
        decode,
        encode,
    )
    from deskpulse.models.outputs import AlertTransition, KpiSnapshot, SlaBreached
    from deskpulse.models.settings import Settings


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'deskpulse' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
