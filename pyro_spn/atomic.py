"""Atomic file writes, with one guarantee everywhere: a reader sees the old file or the whole new one, never a part.

Every write goes to a fresh, uniquely named temporary file in the target's folder (``.<name>.<random>.tmp``, so
concurrent writers never share one), is flushed to disk (``fsync``), and is renamed over the target
(``os.replace``, atomic on POSIX and Windows); the folder is synced after the rename where the platform allows. On
any failure, the interruption included, the temporary file is removed and the target is untouched. Temporary files
left by a killed process match :data:`TEMP_PATTERN` (see :func:`remove_stale_temporaries`).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: The glob pattern of this module's temporary files for a target named ``name``: ``.name.*.tmp``.
TEMP_PATTERN = ".{name}.*.tmp"


def _default_mode() -> int:
    """The mode a plain ``open(path, "w")`` would give a new file: ``0o666`` without the process's umask."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def write_atomically(path: str | os.PathLike, write: Callable[[Path], None], mode: int | None = None) -> None:
    """Calls ``write(temp)`` for a fresh temporary file ``temp`` beside ``path`` and renames it over ``path``.

    Args:
        path: the target; its folder is created if missing.
        write: writes the whole content to the path it is given (it may reopen the file by name).
        mode: the new file's permission bits (default: what ``open`` would give, the umask applied).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    temp = Path(name)
    try:
        write(temp)
        os.chmod(temp, _default_mode() if mode is None else mode)
        with open(temp, "rb+") as file:
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
    _sync_folder(path.parent)


def _sync_folder(folder: Path) -> None:
    """Makes a rename in ``folder`` durable (POSIX; a no-op where folders cannot be opened)."""
    with contextlib.suppress(OSError):
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Writes ``text`` (UTF-8) to ``path`` atomically."""
    def write(temp: Path) -> None:
        temp.write_text(text, encoding="utf-8")

    write_atomically(path, write)


def write_json(path: str | os.PathLike, value: Any) -> None:
    """Writes ``value`` as indented JSON (with a final newline) to ``path`` atomically."""
    write_text(path, json.dumps(value, indent=2) + "\n")


def append_line(path: str | os.PathLike, line: str) -> None:
    """Appends ``line`` (and a newline) to the text file ``path`` by rewriting it atomically, so that a crash never
    leaves a partial last line (for small logs: it rewrites the whole file)."""
    path = Path(path)
    old = path.read_text(encoding="utf-8") if path.is_file() else ""
    if old and not old.endswith("\n"):
        old += "\n"
    write_text(path, old + line + "\n")


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Removes the temporary files a killed writer left beside ``path``; returns them."""
    path = Path(path)
    stale = sorted(path.parent.glob(TEMP_PATTERN.format(name=path.name)))
    for temp in stale:
        with contextlib.suppress(OSError):
            temp.unlink()
    return stale
