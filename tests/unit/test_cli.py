"""The command line: errors in one line, and the readable table."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from deskpulse.streams.agent_kpis import agent_document
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


# Runs `deskpulse kpis` in a fresh interpreter (Redis unreachable: the command has imported
# all it reads with by the time it connects), then lists what the process has loaded.
_KPIS_MODULES = """
import sys
from deskpulse.streams.cli import main
status = main(["kpis", "--window", "1h", "--json"])
print(status, *sorted(sys.modules))
"""

#: What the command must not load: it is a one-shot Redis read with a budget for its whole
#: process (200 ms), and these cost tens of milliseconds of it while serving nothing there.
KPIS_MUST_NOT_LOAD = (
    "aiokafka",
    "faust",
    "mode",
    "aiohttp",
    "prometheus_client",
    "deskpulse.exporters",
    "deskpulse.streams.app",
    "deskpulse.streams.devtools",
    "deskpulse.streams.record_batches",
    "deskpulse.streams.replay",
)


def test_kpis_command_loads_no_kafka_client_nor_worker(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    done = subprocess.run(
        [sys.executable, "-c", _KPIS_MODULES],
        env=environ(DESKPULSE_REDIS_URL=url),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    status, *modules = done.stdout.split()
    # it got as far as the read: the settings, the store, the query and the client loaded
    assert status == "1", done
    assert "cannot read Redis" in done.stderr, done
    for needed in ("deskpulse.models.settings", "deskpulse.streams.store", "redis"):
        assert needed in modules
    loaded = [
        name
        for name in modules
        for root in KPIS_MUST_NOT_LOAD
        if name == root or name.startswith(root + ".")
    ]
    assert loaded == []


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--window", "7s"], "not a multiple"),  # not a multiple of the 60 s bucket
        (["--window", "1h", "--by", "team"], "--by takes channel, queue, priority or agent"),
        (["--window", "1h", "--by", "agent,queue"], "--by agent cannot be combined"),
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


def test_table_by_agent_has_a_row_per_agent() -> None:
    presence = {"status": "busy", "occupancy_ratio": 0.75}
    document = {
        "window": {"start": "2026-11-23T05:00:00Z", "end": "2026-11-23T06:00:00Z", "seconds": 3600},
        "by": ["agent"],
        "groups": [
            agent_document("A7", {"fr": 2, "fr_ms": 120_000, "rv": 3, "ca": 1}, presence),
            agent_document(
                "B2", {"cs_n": 4, "cs_sat": 3}, {"status": None, "occupancy_ratio": None}
            ),
        ],
    }
    lines = render_table(document).splitlines()
    assert lines[1].split() == [
        "agent", "FRT", "n", "FRT", "p50", "next", "n", "chats", "handle", "p50", "CSAT",
        "solved", "status", "occupancy",
    ]  # fmt: skip
    a7 = next(line for line in lines if line.startswith("A7"))
    b2 = next(line for line in lines if line.startswith("B2"))
    assert a7.split()[-3:] == ["3", "busy", "75.0%"]
    assert "75.0%" in b2 and b2.split()[-2:] == ["-", "-"]  # CSAT 3/4, no presence


def test_version_matches_the_package_metadata() -> None:
    import tomllib

    from deskpulse import __version__

    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    assert tomllib.loads(pyproject.read_text())["project"]["version"] == __version__


# -- --help: every command and option says what it does, and its range -----------------------


def parsers() -> list[tuple[str, argparse.ArgumentParser]]:
    """``(command line, parser)`` of the top level and every subcommand, depth first."""
    from deskpulse.streams.cli import _parser

    found: list[tuple[str, argparse.ArgumentParser]] = []

    def walk(name: str, parser: argparse.ArgumentParser) -> None:
        found.append((name, parser))
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub_name, sub in action.choices.items():
                    walk(f"{name} {sub_name}", sub)

    walk("deskpulse", _parser())
    return found


def test_every_command_and_option_has_help_with_its_range() -> None:
    from deskpulse.streams.tools import Bounded

    seen = 0
    for name, parser in parsers():
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            where = f"{name} {'/'.join(action.option_strings) or action.dest}"
            if isinstance(action, argparse._SubParsersAction):
                # each command listed with what it does
                helps = {choice.dest: choice.help for choice in action._choices_actions}
                assert set(helps) == set(action.choices), where
                assert all(text and len(text) > 10 for text in helps.values()), helps
                continue
            seen += 1
            assert action.help and len(action.help) > 10, f"{where}: no help"
            if action.type in (int, float):
                pytest.fail(f"{where}: a number without a range (use Bounded)")
            if isinstance(action.type, Bounded):
                assert action.type.text in action.help, f"{where}: {action.help!r}"
                with pytest.raises(argparse.ArgumentTypeError):
                    action.type(str(action.type.high * 2 + 1))
                assert action.type(str(action.default)) == action.default, where
            if action.choices:
                assert all(str(c) in action.help for c in action.choices), where
    assert seen >= 20  # the options of demo, kpis, state reset, simulate, produce


@pytest.mark.parametrize("command", [name for name, _ in parsers()])
def test_help_prints_every_option_and_exits_0(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from deskpulse.streams.cli import main

    with pytest.raises(SystemExit) as exited:
        main([*command.split()[1:], "--help"])
    assert exited.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    parser = dict(parsers())[command]
    for action in parser._actions:
        if action.help and not isinstance(action, argparse._SubParsersAction):
            first_words = " ".join(action.help.split()[:4]).replace("%%", "%")
            assert first_words in text, (command, action.help)
