"""Where the read process's spool is made: the operator's ``TMPDIR``, else memory (tmpfs)
where the host has it, else the system's temporary directory."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from deskpulse.streams import reads


def test_tmpdir_set_is_where_the_spool_goes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shm = tmp_path / "shm"
    shm.mkdir()
    monkeypatch.setattr(reads, "SHM_DIR", str(shm))
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    assert reads._spool_parent() is None  # tempfile's own choice: TMPDIR
    monkeypatch.setattr(tempfile, "tempdir", None)  # tempfile reads TMPDIR again
    made = tempfile.mkdtemp(prefix="deskpulse-reads-", dir=reads._spool_parent())
    assert Path(made).parent == tmp_path


def test_without_tmpdir_the_spool_is_in_memory_where_the_host_has_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TMPDIR", raising=False)
    shm = tmp_path / "shm"
    shm.mkdir()
    monkeypatch.setattr(reads, "SHM_DIR", str(shm))
    assert reads._spool_parent() == str(shm)
    with monkeypatch.context() as patched:  # there, but this process may not write it
        patched.setattr(os, "access", lambda path, mode: path != str(shm))
        assert reads._spool_parent() is None
    monkeypatch.setattr(reads, "SHM_DIR", str(tmp_path / "none"))
    assert reads._spool_parent() is None  # no tmpfs: the system's temporary directory


def test_a_spool_left_by_a_worker_that_is_gone_is_removed_at_the_next_start(
    tmp_path: Path,
) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # its pid names no process now
    stale = tmp_path / f"{reads._spool_prefix(gone.pid)}x1y2"
    stale.mkdir()
    (stale / "7").write_bytes(b"{}" * 1000)  # an answer nobody took
    mine = tmp_path / f"{reads._spool_prefix(os.getpid())}a3b4"  # a live worker's
    mine.mkdir()
    others = [tmp_path / "deskpulse-reads-abc", tmp_path / "deskpulse-reads-12", tmp_path / "x"]
    for other in others:
        other.mkdir()
    reads._clear_stale_spools(str(tmp_path))
    assert not stale.exists()
    assert mine.is_dir() and all(other.is_dir() for other in others)
    reads._clear_stale_spools(str(tmp_path / "none"))  # no such directory: nothing to do


def test_the_spool_is_named_for_its_worker_and_a_live_one_is_kept(tmp_path: Path) -> None:
    made = tempfile.mkdtemp(prefix=reads._spool_prefix(os.getpid()), dir=tmp_path)
    assert Path(made).name.startswith(f"deskpulse-reads-{os.getpid()}-")
    reads._clear_stale_spools(str(tmp_path))
    assert Path(made).is_dir()
