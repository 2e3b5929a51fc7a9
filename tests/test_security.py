"""What the package trusts: the native library is loaded only from a private folder of this user and only if this
user built it; a planted library (whose constructor would run on loading) is never loaded. "Another user" is
simulated by folders and files with group or other write bits (and, when the tests run as root, by files handed to
another user id)."""

from __future__ import annotations

import ctypes
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from pyro_spn import folders, native

COMPILER = next(filter(None, map(shutil.which, (os.environ.get("CC") or "cc", "gcc", "clang"))), None)
pytestmark = pytest.mark.skipif(COMPILER is None, reason="no C compiler")
UID = os.getuid() if hasattr(os, "getuid") else "user"
PLANTED = r"""
#include <stdio.h>
#include <stdlib.h>
__attribute__((constructor)) static void planted(void) {
  FILE *file = fopen(getenv("PLANT_MARKER"), "w");
  if (file) { fputs("the planted library ran", file); fclose(file); }
}
"""


def run_fresh(tmp_path: Path, cwd: Path | None = None, umask: int | None = None, **env: str) -> tuple[str, str]:
    """``native.available()`` (stdout) and the warnings (stderr) of a new process with these environment variables
    (and ``PLANT_MARKER``, the file a planted library's constructor writes)."""
    code = ("import os, warnings; warnings.simplefilter('always'); "
            f"{'' if umask is None else f'os.umask({umask}); '}"
            "from pyro_spn import native; print(native.available())")
    base = {key: value for key, value in os.environ.items() if key not in ("PYRO_SPN_CACHE_DIR", "XDG_CACHE_HOME")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=cwd,
                            env={**base, "PLANT_MARKER": str(tmp_path / "marker"), **env})
    return result.stdout.strip() if result.returncode == 0 else f"exit status {result.returncode}", result.stderr


@pytest.fixture(scope="module")
def prebuilt(tmp_path_factory) -> Path:
    """A temporary folder ``T`` whose ``pyro_spn-<uid>`` holds a library built by this code (the system's
    temporary folder of the tests that fall back to it, so they need not build again)."""
    temp = tmp_path_factory.mktemp("prebuilt")
    available, warned = run_fresh(temp, PYRO_SPN_CACHE_DIR=str(temp / f"pyro_spn-{UID}"))
    assert available == "True", warned
    return temp


@pytest.fixture(scope="module")
def planted_library(tmp_path_factory) -> Path:
    """A shared library whose constructor writes the file ``$PLANT_MARKER``."""
    folder = tmp_path_factory.mktemp("planted")
    (folder / "planted.c").write_text(PLANTED)
    subprocess.run([COMPILER, "-shared", "-fPIC", str(folder / "planted.c"), "-o", str(folder / "planted.so")],
                   check=True, capture_output=True)
    return folder / "planted.so"


def plant(folder: Path, prebuilt: Path, planted_library: Path, mode: int = 0o777) -> None:
    """Fills ``folder`` with the planted library under every name this code's library has, then sets its mode."""
    folder.mkdir(parents=True, exist_ok=True)
    for built in (prebuilt / f"pyro_spn-{UID}").glob("*.so"):
        shutil.copy(planted_library, folder / built.name)
    folder.chmod(mode)


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o702], ids=["world-writable", "group-writable", "other-writable"])
def test_a_cache_folder_others_may_write_to_is_not_used(tmp_path, prebuilt, planted_library, mode):
    plant(tmp_path / "cache", prebuilt, planted_library, mode)
    available, warned = run_fresh(tmp_path, PYRO_SPN_CACHE_DIR=str(tmp_path / "cache"), TMPDIR=str(prebuilt))
    assert not (tmp_path / "marker").exists(), "the planted library was loaded"
    assert available == "True", warned  # from the private fallback folder
    assert "not building the native kernel in" in warned and str(tmp_path / "cache") in warned


def test_a_temporary_fallback_folder_others_may_write_to_is_not_used(tmp_path, prebuilt, planted_library):
    """The cache folder cannot be created (a file is in the way), and ``<TMPDIR>/pyro_spn-<uid>`` was created by
    someone else: no library is loaded, the PyTorch path is used."""
    (tmp_path / "a-file").write_text("")
    plant(tmp_path / "tmp" / f"pyro_spn-{UID}", prebuilt, planted_library)
    available, warned = run_fresh(tmp_path, PYRO_SPN_CACHE_DIR=str(tmp_path / "a-file" / "cache"),
                                  TMPDIR=str(tmp_path / "tmp"))
    assert not (tmp_path / "marker").exists(), "the planted library was loaded"
    assert available == "False"
    assert "no private folder to build in" in warned


def test_a_file_in_home_falls_back_to_a_private_temporary_folder(tmp_path, prebuilt):
    (tmp_path / "home").write_text("")
    available, warned = run_fresh(tmp_path, HOME=str(tmp_path / "home"), TMPDIR=str(prebuilt))
    assert available == "True", warned


@pytest.mark.parametrize("variable", ["PYRO_SPN_CACHE_DIR", "XDG_CACHE_HOME"])
def test_relative_cache_paths_are_ignored(tmp_path, prebuilt, planted_library, variable):
    """A relative cache path would name a folder in whatever the working folder is: it is ignored, even if that
    folder looks private."""
    work = tmp_path / "work"
    relative = "cache" if variable == "PYRO_SPN_CACHE_DIR" else "xdg"
    folder = work / relative if variable == "PYRO_SPN_CACHE_DIR" else work / relative / "pyro_spn"
    plant(folder, prebuilt, planted_library, mode=0o700)
    home = tmp_path / "home"
    shutil.copytree(prebuilt / f"pyro_spn-{UID}", home / ".cache" / "pyro_spn")
    available, warned = run_fresh(tmp_path, cwd=work, HOME=str(home), **{variable: relative})
    assert not (tmp_path / "marker").exists(), "the planted library was loaded"
    assert available == "True", warned


@pytest.mark.parametrize("owner", ["writable-by-others", "another-user"])
def test_an_untrusted_library_in_a_private_folder_is_rebuilt_not_loaded(tmp_path, prebuilt, planted_library, owner):
    cache = tmp_path / "cache"
    plant(cache, prebuilt, planted_library, mode=0o700)
    for library in cache.glob("*.so"):
        if owner == "another-user":
            if UID != 0:
                pytest.skip("only root can hand a file to another user")
            os.chown(library, 65534, 65534)
            library.chmod(0o755)
        else:
            library.chmod(0o666)
    available, warned = run_fresh(tmp_path, PYRO_SPN_CACHE_DIR=str(cache))
    assert not (tmp_path / "marker").exists(), "the planted library was loaded"
    assert available == "True", warned
    for library in cache.glob("*.so"):
        assert library.stat().st_uid == UID and stat.S_IMODE(library.stat().st_mode) == 0o700


@pytest.mark.skipif(UID != 0, reason="only root can hand a folder to another user")
def test_a_cache_folder_of_another_user_is_not_used(tmp_path, prebuilt, planted_library):
    plant(tmp_path / "cache", prebuilt, planted_library, mode=0o755)
    os.chown(tmp_path / "cache", 65534, 65534)
    available, warned = run_fresh(tmp_path, PYRO_SPN_CACHE_DIR=str(tmp_path / "cache"), TMPDIR=str(prebuilt))
    assert not (tmp_path / "marker").exists(), "the planted library was loaded"
    assert available == "True" and "belongs to another user" in warned


def test_a_fresh_build_is_private_even_under_umask_000(tmp_path):
    available, warned = run_fresh(tmp_path, umask=0, PYRO_SPN_CACHE_DIR=str(tmp_path / "cache"))
    assert available == "True", warned
    assert stat.S_IMODE((tmp_path / "cache").stat().st_mode) == 0o700
    built = list((tmp_path / "cache").iterdir())
    assert [path.suffix for path in built] == [".so"]  # no temporary file left behind
    assert stat.S_IMODE(built[0].stat().st_mode) == 0o700


def test_private_folder_checks(tmp_path):
    with pytest.raises(ValueError, match="absolute"):
        folders.private_folder("relative")
    assert folders.private_folder(tmp_path / "a" / "b") == tmp_path.resolve() / "a" / "b"
    (tmp_path / "open").mkdir(mode=0o777)
    (tmp_path / "open").chmod(0o777)
    with pytest.raises(folders.UnsafeFolderError, match="others may write"):
        folders.private_folder(tmp_path / "open")
    with pytest.raises(folders.UnsafeFolderError, match="everyone may write"):
        folders.private_folder(tmp_path / "open" / "inside")
    (tmp_path / "link").symlink_to(tmp_path / "a")
    with pytest.raises(folders.UnsafeFolderError, match="not a folder"):
        folders.private_folder(tmp_path / "link")


def test_the_library_is_built_from_every_source(tmp_path, monkeypatch):
    """Another kernel file in the sources' folder goes into the same library (and changes its cache key), and
    :func:`native.library` is the one library the kernels use."""
    sources = tmp_path / "sources"
    sources.mkdir()
    for source in native.sources():
        shutil.copy(source, sources)
    (sources / "extra.c").write_text("int pyro_spn_test_answer(void) { return 42; }\n")
    monkeypatch.setattr(native, "SOURCE_DIR", sources)
    monkeypatch.setenv("PYRO_SPN_CACHE_DIR", str(tmp_path / "cache"))
    first = native._build()
    assert ctypes.CDLL(str(first)).pyro_spn_test_answer() == 42
    (sources / "extra.c").write_text("int pyro_spn_test_answer(void) { return 43; }\n")
    second = native._build()
    assert second != first and ctypes.CDLL(str(second)).pyro_spn_test_answer() == 43

    monkeypatch.undo()
    library = native.library()
    assert isinstance(library, ctypes.CDLL) and native.available()
    assert library is native.library()
    with native.disabled():
        assert native.library() is None
