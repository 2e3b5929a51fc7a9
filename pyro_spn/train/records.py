"""Run records: the metrics log (JSON lines) and HDF5 files of samples, both replaced atomically."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
from torch import Tensor


def _replace_atomically(path: Path, write: Callable[[str], None]) -> None:
    """Calls ``write(temp_path)`` for a temporary file beside ``path`` and renames it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(temp)
        os.replace(temp, path)
    except BaseException:
        if os.path.exists(temp):
            os.remove(temp)
        raise


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics log, one dict per line (none if the file does not exist)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def append_metrics(path: Path, record: dict[str, Any]) -> None:
    """Appends ``record`` as one JSON line."""
    with path.open("a") as file:
        file.write(json.dumps(record) + "\n")


def keep_metrics(path: Path, last_epoch: int) -> None:
    """Rewrites the log with only the records of epochs ``<= last_epoch`` (on resume, drops the records of
    an epoch whose checkpoint was never written); ``last_epoch = 0`` empties it."""
    kept = [r for r in read_metrics(path) if r.get("epoch", 0) <= last_epoch]

    def write(temp: str) -> None:
        Path(temp).write_text("".join(json.dumps(r) + "\n" for r in kept))

    _replace_atomically(path, write)


def write_hdf5(path: Path, arrays: dict[str, Tensor], attrs: dict[str, str | int | float]) -> None:
    """Writes ``arrays`` (CPU tensors, one data set each) and the file's ``attrs`` to ``path`` atomically."""

    def write(temp: str) -> None:
        with h5py.File(temp, "w") as file:
            for name, array in arrays.items():
                file.create_dataset(name, data=array.detach().cpu().numpy(), compression="gzip")
            file.attrs.update(attrs)

    _replace_atomically(path, write)
