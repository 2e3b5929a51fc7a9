"""The package's cache folder, and which folders and files in it are trusted.

The cache folder (:func:`cache_dir`) holds the built native kernels and, unless a data root is given, the HDF5
cache of decoded images (``data/``): ``$PYRO_SPN_CACHE_DIR``, else ``$XDG_CACHE_HOME/pyro_spn``, else
``~/.cache/pyro_spn``. Relative values of these variables are ignored (they would name a different folder in every
working directory).

What is trusted (POSIX; where the system has no user ids, the checks pass):

* a folder is **private** if it is a real folder (not a link), owned by this user, that no one else may write to
  (no group or other write bit), and no folder above it may be written to by everyone without the sticky bit
  (else it could be renamed away and replaced); :func:`private_folder` creates missing ones with mode ``0700``;
* a file is **trusted** if it is a regular file (not a link) owned by this user that no one else may write to, in
  a private folder (:func:`file_problem`).

So only files this user wrote are loaded as code (the native kernel) or read as cached data.
"""

from __future__ import annotations

import os
import stat
import warnings
from pathlib import Path

#: The environment variable that sets :func:`cache_dir`.
ENV_CACHE_DIR = "PYRO_SPN_CACHE_DIR"
_OTHERS_WRITE = stat.S_IWGRP | stat.S_IWOTH


class UnsafeFolderError(PermissionError):
    """A folder that others could write to (or that another user owns), so its files cannot be trusted."""


def cache_dir() -> Path | None:
    """``$PYRO_SPN_CACHE_DIR``, ``$XDG_CACHE_HOME/pyro_spn`` or ``~/.cache/pyro_spn`` (the first that is set to an
    absolute path); ``None`` if there is no home folder either. Not created: see :func:`private_folder`."""
    configured = os.environ.get(ENV_CACHE_DIR)
    if configured:
        if Path(configured).is_absolute():
            return Path(configured)
        warnings.warn(f"pyro_spn: ignoring {ENV_CACHE_DIR}={configured!r}: not an absolute path", RuntimeWarning,
                      stacklevel=2)
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / "pyro_spn"
    try:
        home = Path.home()
    except RuntimeError:  # no HOME and no password entry
        return None
    return home / ".cache" / "pyro_spn" if home.is_absolute() else None


def private_folder(path: str | os.PathLike) -> Path:
    """The folder ``path`` (absolute), created with mode ``0700`` if missing (its missing parents too, as the XDG
    base directory specification asks), and checked to be private (see the module docstring).

    Returns:
        ``path`` with its parent folders' links resolved.

    Raises:
        ValueError: ``path`` is relative.
        UnsafeFolderError: the folder is not private (it is a link, another user's, or writable by others).
        OSError: it cannot be created (e.g. a file is in the way).
    """
    path = Path(path)
    if not path.is_absolute():
        raise ValueError(f"path must be an absolute folder, got {str(path)!r}")
    for folder in reversed([path, *path.parents]):
        if not folder.exists():
            _make_private(folder)
    path = path.parent.resolve() / path.name
    problem = folder_problem(path)
    if problem:
        raise UnsafeFolderError(f"{path}: {problem}")
    return path


def _make_private(folder: Path) -> None:
    """Creates ``folder`` with mode ``0700`` (a concurrent creator may have been first)."""
    try:
        folder.mkdir(mode=0o700)
    except FileExistsError:
        return
    os.chmod(folder, 0o700)  # the umask may have removed the owner's bits


def folder_problem(path: Path) -> str:
    """Why the folder ``path`` (whose parents' links are resolved) is not private, or ``""`` if it is."""
    if not hasattr(os, "getuid"):
        return ""
    status = os.lstat(path)
    if not stat.S_ISDIR(status.st_mode):
        return "not a folder (a link or a file)"
    problem = _ownership_problem(status, "folder")
    if problem:
        return problem
    for parent in path.parents:
        mode = os.stat(parent).st_mode
        if mode & stat.S_IWOTH and not mode & stat.S_ISVTX:
            return f"it lies in {parent}, which everyone may write to"
    return ""


def file_problem(path: Path) -> str:
    """Why the file ``path`` in a private folder is not trusted, or ``""`` if it is (see the module docstring)."""
    if not hasattr(os, "getuid"):
        return ""
    status = os.lstat(path)
    if not stat.S_ISREG(status.st_mode):
        return "not a regular file (a link or a folder)"
    return _ownership_problem(status, "file")


def _ownership_problem(status: os.stat_result, kind: str) -> str:
    if status.st_uid != os.getuid():
        return f"the {kind} belongs to another user (uid {status.st_uid})"
    if status.st_mode & _OTHERS_WRITE:
        return f"others may write to the {kind} (mode {stat.S_IMODE(status.st_mode):o})"
    return ""
