"""The run folder's own files, the check before a new run writes into a folder, and the folder's preparation: the
temporary files of a killed run removed, and for an overwrite the earlier run's files (never other files)."""

from __future__ import annotations

import re
from pathlib import Path

from .. import atomic
from .checkpoint import CHECKPOINT_NAME

#: The files a run writes besides its pictures, the checkpoint first (so a half-cleared folder cannot be resumed).
RUN_FILES: tuple[str, ...] = (CHECKPOINT_NAME, "config.json", "metrics.jsonl", "samples.h5")
#: The names of a run's pictures (``samples_epoch001.png``, ...).
PICTURES = re.compile(r"samples_epoch\d{3,}\.png")


def is_run_file(path: Path) -> bool:
    """Whether ``path`` is (or would be) one of the files of a run in its folder: a run file's name in a folder that
    holds a run (a checkpoint or a config)."""
    named = path.name in RUN_FILES or PICTURES.fullmatch(path.name) is not None
    return named and any((path.parent / name).is_file() for name in RUN_FILES[:2])


def run_files(folder: Path) -> list[Path]:
    """The files of a run in ``folder``: the checkpoint first, then the rest (none if there is no such folder)."""
    if not folder.is_dir():
        return []
    pictures = sorted(path for path in folder.iterdir() if PICTURES.fullmatch(path.name))
    return [path for path in (folder / name for name in RUN_FILES) if path.is_file()] + pictures


def check_new_run(folder: Path, overwrite: bool) -> None:
    """Raises ``ValueError`` unless a new run may write into ``folder``: a folder that does not exist or is empty,
    or any folder with ``overwrite`` (whose run files will be replaced)."""
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"output {folder} is a file, not a folder")
    entries = sorted(path.name for path in folder.iterdir()) if folder.is_dir() else []
    if entries and not overwrite:
        held = "a run (checkpoint.pt)" if CHECKPOINT_NAME in entries else "files (" + ", ".join(entries[:4]) + (
            ", ...)" if len(entries) > 4 else ")")
        raise ValueError(f"output {folder} already holds {held}; resume it (--resume), replace the run's files "
                         f"(--overwrite) or choose another output")


def prepare(folder: Path, overwrite: bool) -> None:
    """Creates ``folder``, removes the temporary files a killed run left there and, for an ``overwrite``, the files
    of the run it held (:func:`run_files`; other files stay)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in (*RUN_FILES, "samples_epoch*.png"):
        atomic.remove_stale_temporaries(folder / name)
    if overwrite:
        for path in run_files(folder):
            path.unlink()
