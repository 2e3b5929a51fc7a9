"""Atomic writes: a reader sees the old file or the whole new one; nothing is left behind on a failure."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from pyro_spn import atomic


def test_write_text_replaces_and_honors_the_umask(tmp_path):
    path = tmp_path / "sub" / "config.json"
    atomic.write_text(path, "one")
    atomic.write_text(path, "two")
    assert path.read_text() == "two"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert sorted(p.name for p in path.parent.iterdir()) == ["config.json"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "checkpoint.pt"
    path.write_text("old")

    def half(temp: Path) -> None:
        temp.write_text("partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic.write_atomically(path, half)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_explicit_mode_and_json(tmp_path):
    atomic.write_atomically(tmp_path / "private", lambda temp: temp.write_bytes(b"x"), mode=0o600)
    assert stat.S_IMODE((tmp_path / "private").stat().st_mode) == 0o600
    atomic.write_json(tmp_path / "a.json", {"b": [1, 2]})
    assert (tmp_path / "a.json").read_text() == '{\n  "b": [\n    1,\n    2\n  ]\n}\n'


def test_append_line_completes_a_truncated_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    atomic.append_line(path, "a")
    atomic.append_line(path, "b")
    assert path.read_text() == "a\nb\n"
    path.write_text("a\nb")  # no final newline
    atomic.append_line(path, "c")
    assert path.read_text() == "a\nb\nc\n"


def test_remove_stale_temporaries(tmp_path):
    path = tmp_path / "checkpoint.pt"
    stale = [tmp_path / ".checkpoint.pt.abc123.tmp", tmp_path / ".checkpoint.pt.x.tmp"]
    for temp in stale:
        temp.write_text("x")
    (tmp_path / ".other.pt.y.tmp").write_text("x")
    assert atomic.remove_stale_temporaries(path) == sorted(stale)
    assert [p.name for p in tmp_path.iterdir()] == [".other.pt.y.tmp"]
