"""The command line: errors in one line, and the readable table."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from deskpulse.streams.cli import render_table
from deskpulse.streams.core import group_document
from deskpulse.streams.devtools.embedded import free_port
from tests.support import run_cli


def environ(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DESKPULSE_")}
    return env | extra


def test_kpis_with_redis_unreachable_says_so_in_one_line(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    done = run_cli(["kpis", "--window", "1h"], environ(DESKPULSE_REDIS_URL=url), cwd=tmp_path)
    assert done.returncode == 1, done
    assert done.stderr.splitlines() == [done.stderr.strip()]
    assert done.stderr.startswith("deskpulse kpis: cannot read Redis:")


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--window", "7s"], "not a multiple"),  # not a multiple of the 60 s bucket
        (["--window", "1h", "--by", "agent"], "--by takes channel, queue, priority"),
        (
            ["--window", "1h", "--at", "2026-11-23T05:00:00"],
            "is not an RFC 3339 time with an offset",
        ),
    ],
)
def test_kpis_refuses_bad_arguments(tmp_path: Path, args: list[str], says: str) -> None:
    done = run_cli(["kpis", *args], environ(), cwd=tmp_path)
    assert done.returncode == 2, done
    assert says in done.stderr


def test_table_has_a_row_per_group_and_dashes_for_no_samples() -> None:
    document = {
        "window": {"start": "2026-11-23T05:00:00Z", "end": "2026-11-23T06:00:00Z", "seconds": 3600},
        "by": ["channel"],
        "groups": [
            group_document({"channel": "email"}, {"tc": 3, "fr": 2, "fr_ms": 120_000, "fr_in": 1}),
            group_document({"channel": "chat"}, {"cr": 4, "ca": 3, "cab": 1, "ca_in": 2}),
        ],
    }
    lines = render_table(document).splitlines()
    assert lines[0] == "window 2026-11-23T05:00:00Z .. 2026-11-23T06:00:00Z (3600s)"
    email = next(line for line in lines if line.startswith("channel=email"))
    chat = next(line for line in lines if line.startswith("channel=chat"))
    assert "50.0%" in email  # one of two first responses within target
    assert "25.0%" in chat and "50.0%" in chat  # abandonment 1/4, service level 2/4
    assert " - " in email  # no chats: no abandonment ratio


def test_version_matches_the_package_metadata() -> None:
    import tomllib

    from deskpulse import __version__

    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    assert tomllib.loads(pyproject.read_text())["project"]["version"] == __version__
