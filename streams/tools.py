"""The traffic and backfill commands: ``simulate``, ``produce``, ``replay``."""

from __future__ import annotations

import argparse
from typing import Any

from models.settings import Settings

__all__ = ["add_commands", "run"]


def add_commands(commands: Any) -> None:
    """Register the sub-commands on the CLI's sub-parser set."""


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run one of the commands registered by :func:`add_commands`."""
    raise SystemExit(f"deskpulse: unknown command {args.command}")
