"""What the wheel installs: one name, ``deskpulse``, and a public API that resolves.

The folders stay at the repository's top level (models/, streams/, exporters/) and are
mapped under ``deskpulse`` by pyproject.toml. A wheel that also claimed ``models`` or
``exporters`` as top-level names would let another distribution of that name overwrite
them (PyPI has both), so these tests build the real wheel and install it into a fresh
virtual environment, away from this checkout and its editable install.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import deskpulse

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built from a copy of what git tracks: the build writes its ``build/`` and
    egg-info next to the sources, which must not race another build in the checkout (an
    editable install, ``make lint``'s link tree) or leave files there."""
    source = tmp_path_factory.mktemp("source")
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode()
    for name in filter(None, tracked.split("\0")):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    out = tmp_path_factory.mktemp("wheel")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(source)],
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, f"pip wheel failed:\n{built.stdout}\n{built.stderr}"
    (found,) = out.glob("deskpulse-*.whl")
    return found


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh venv with only the wheel installed; its dependencies come from this
    interpreter's site-packages on PYTHONPATH, where ``.pth`` files (the editable install's
    finder among them) are not read."""
    env_dir = tmp_path_factory.mktemp("venv")
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    target = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(target)
    yield python


def run(python: Path, code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    deps = sysconfig.get_paths()["purelib"]
    return subprocess.run(
        [str(python), "-c", code],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={"PYTHONPATH": deps, "PATH": "/usr/bin:/bin"},
        timeout=60,
    )


def test_the_wheel_installs_only_the_deskpulse_name(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        tops = {name.split("/", 1)[0] for name in archive.namelist()}
        names = set(archive.namelist())
    assert {top for top in tops if not top.endswith(".dist-info")} == {"deskpulse"}, tops
    for module in (
        "deskpulse/__init__.py",
        "deskpulse/py.typed",
        "deskpulse/models/events.py",
        "deskpulse/streams/cli.py",
        "deskpulse/streams/offload.py",
        "deskpulse/exporters/prometheus.py",
        "deskpulse/exporters/assets/grafana/dashboards/deskpulse.json",
        "deskpulse/exporters/assets/board/index.html",
    ):
        assert module in names, module
    assert not any(name.startswith("tests/") or "/tests/" in name for name in names)


def test_a_fresh_venv_imports_deskpulse_and_not_models(installed: Path, tmp_path: Path) -> None:
    done = run(
        installed,
        "import importlib.util as u, deskpulse.models.events as e, deskpulse.streams.cli\n"
        "print(e.__file__)\n"
        "print([n for n in ('models', 'streams', 'exporters') if u.find_spec(n)])",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    where, claimed = done.stdout.splitlines()
    assert "site-packages/deskpulse/models/events.py" in where, where
    assert claimed == "[]", f"top-level names claimed: {claimed}"
    refused = run(installed, "import models", cwd=tmp_path)
    assert refused.returncode == 1
    assert "No module named 'models'" in refused.stderr


def test_the_console_script_and_the_engine_child_run_from_the_wheel(
    installed: Path, tmp_path: Path
) -> None:
    entry = run(
        installed,
        "from importlib.metadata import entry_points\n"
        "(script,) = entry_points(group='console_scripts', name='deskpulse')\n"
        "print(script.value)",
        cwd=tmp_path,
    )
    assert entry.stdout.strip() == "deskpulse.streams.cli:main", entry.stderr
    deps = sysconfig.get_paths()["purelib"]
    env = {"PYTHONPATH": deps, "PATH": "/usr/bin:/bin"}
    helped = subprocess.run(
        [str(installed), "-m", "deskpulse.streams.cli", "--help"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=60,
    )
    assert helped.returncode == 0, helped.stderr
    assert "worker" in helped.stdout
    # the module the worker starts its engine process from
    child = run(installed, "import deskpulse.streams.offload as o; print(o.__name__)", tmp_path)
    assert child.stdout.strip() == "deskpulse.streams.offload", child.stderr


def test_the_public_api_is_curated_and_resolves() -> None:
    """Every name in ``deskpulse.__all__`` resolves to the object its module defines; a name
    added or dropped here is a public API change and must be made on purpose."""
    assert sorted(deskpulse.__all__) == sorted(
        [
            "__version__",
            "Settings",
            "TicketCreated",
            "TicketReplied",
            "TicketStatusChanged",
            "TicketUpdated",
            "ChatRequested",
            "ChatAccepted",
            "ChatAbandoned",
            "ChatEnded",
            "SurveyResponded",
            "AgentStatusChanged",
            "decode",
            "encode",
            "KpiSnapshot",
            "SlaBreached",
            "AlertTransition",
            "DeskpulseError",
            "SettingsError",
            "RejectedEvent",
            "InvalidQuery",
            "DependencyError",
        ]
    )
    for name in set(deskpulse.__all__) - {"__version__"}:
        value = getattr(deskpulse, name)
        assert value.__module__.startswith("deskpulse.models."), (name, value.__module__)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = deskpulse.nope  # type: ignore[attr-defined]


def test_importing_deskpulse_loads_no_models() -> None:
    """``import deskpulse`` stays cheap: the public names load on first use."""
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, deskpulse; print(sorted(m for m in sys.modules "
            "if m.startswith(('deskpulse.', 'pydantic'))))",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stdout.strip() == "[]", done
