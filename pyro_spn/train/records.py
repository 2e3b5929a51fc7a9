"""Run records: the metrics log (JSON lines) and HDF5 files of samples, both written atomically
(:mod:`pyro_spn.atomic`)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
from torch import Tensor

from .. import atomic


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics log, one dict per line (none if the file does not exist)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def append_metrics(path: Path, record: dict[str, Any]) -> None:
    """Appends ``record`` as one JSON line (the file is rewritten atomically)."""
    atomic.append_line(path, json.dumps(record))


def keep_metrics(path: Path, last_epoch: int) -> None:
    """Rewrites the log with only the records of epochs ``<= last_epoch`` (on resume, drops the records of
    an epoch whose checkpoint was never written); ``last_epoch = 0`` empties it."""
    kept = [r for r in read_metrics(path) if r.get("epoch", 0) <= last_epoch]
    atomic.write_text(path, "".join(json.dumps(r) + "\n" for r in kept))


def write_hdf5(path: Path, arrays: Mapping[str, Tensor], attrs: Mapping[str, object]) -> None:
    """Writes ``arrays`` (CPU tensors, one data set each) and the file's ``attrs`` to ``path`` atomically."""

    def write(temp: Path) -> None:
        with h5py.File(temp, "w") as file:
            for name, array in arrays.items():
                file.create_dataset(name, data=array.detach().cpu().numpy(), compression="gzip")
            file.attrs.update(attrs)

    atomic.write_atomically(path, write)
