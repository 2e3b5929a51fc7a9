"""Run records: the metrics log (JSON lines) and HDF5 files of samples, both written atomically
(:mod:`pyro_spn.atomic`)."""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
from torch import Tensor

from .. import atomic

#: The attribute of an HDF5 file that names what wrote it.
SOFTWARE_ATTRIBUTE = "software"
#: What the package's files say wrote them, unless a command names itself.
SOFTWARE = "pyro_spn"


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics log, one dict per line (none if the file does not exist). A damaged last line (a
    write cut short by a crash or a full disk) is dropped with a warning.

    Raises:
        ValueError: naming the file and the line, for a damaged line before the last one.
    """
    if not path.is_file():
        return []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} is not a metrics log ({error})") from None
    lines = [(number, line) for number, line in enumerate(text.splitlines(), start=1) if line.strip()]
    records = []
    for number, line in lines:
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError(f"a JSON {type(record).__name__}, not an object")
        except ValueError as error:
            if number != lines[-1][0]:
                raise ValueError(f"{path}: line {number} is not a metrics record ({error})") from None
            warnings.warn(f"{path}: dropped its damaged last line {number} ({error})", RuntimeWarning, stacklevel=2)
            break
        records.append(record)
    return records


def append_metrics(path: Path, record: dict[str, Any]) -> None:
    """Appends ``record`` as one JSON line (the file is rewritten atomically)."""
    atomic.append_line(path, json.dumps(record))


def metrics_until(path: Path, last_epoch: int) -> list[dict[str, Any]]:
    """The records of the log whose ``epoch`` is at most ``last_epoch`` (on resume: without the records of an epoch
    whose checkpoint was never written)."""
    return [r for r in read_metrics(path) if isinstance(r.get("epoch"), int) and r["epoch"] <= last_epoch]


def write_metrics(path: Path, records: list[dict[str, Any]]) -> None:
    """Replaces the log with ``records`` (atomically)."""
    atomic.write_text(path, "".join(json.dumps(record) + "\n" for record in records))


def hdf5_software(path: Path) -> str | None:
    """The ``software`` attribute of the HDF5 file ``path`` (what wrote it), or ``None`` (none, or not HDF5)."""
    try:
        with h5py.File(path, "r") as file:
            software = file.attrs.get(SOFTWARE_ATTRIBUTE)
    except (OSError, ValueError):
        return None
    return software if isinstance(software, str) else None


def write_hdf5(path: Path, arrays: Mapping[str, Tensor], attrs: Mapping[str, object], software: str = SOFTWARE) -> None:
    """Writes ``arrays`` (CPU tensors, one data set each) and the file's ``attrs`` (and ``software``, what wrote
    it, as :data:`SOFTWARE_ATTRIBUTE`) to ``path`` atomically."""

    def write(temp: Path) -> None:
        with h5py.File(temp, "w") as file:
            for name, array in arrays.items():
                file.create_dataset(name, data=array.detach().cpu().numpy(), compression="gzip")
            file.attrs.update({**attrs, SOFTWARE_ATTRIBUTE: software})

    atomic.write_atomically(path, write)
