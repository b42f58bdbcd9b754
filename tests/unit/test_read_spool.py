"""Where the read process's spool is made: the operator's ``TMPDIR``, else memory (tmpfs)
where the host has it, else the system's temporary directory."""

from __future__ import annotations

import os
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
