"""HDF5 cache of decoded image data sets, so that a second load reads one file instead of decoding images.

The cache holds the data set's own splits as :func:`pyro_spn.data.images.decode` returns them, as ``uint8``
(a quarter of float32's size, and the same file serves every leaf type, seed and ``num_samples``):

    /<split>/images   uint8 [N, C, H, W]
    /<split>/labels   int64 [N]            (absent for data sets without labels)
    attrs: format_version, name

Files are written atomically (:mod:`pyro_spn.atomic`), so a reader never sees a partial file, and concurrent
writers (e.g. several DDP ranks) are harmless.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import h5py
import torch

from .. import atomic
from .images import RawSplit

FORMAT_VERSION = 1


def cache_path(cache_dir: str | os.PathLike, name: str) -> Path:
    """The cache file of data set ``name`` in ``cache_dir``."""
    return Path(cache_dir) / f"{name}-v{FORMAT_VERSION}.h5"


def read_cache(path: Path, name: str) -> dict[str, RawSplit] | None:
    """The splits stored in ``path``, or ``None`` if there is no usable cache file (missing, unreadable, stale)."""
    if not path.is_file():
        return None
    try:
        with h5py.File(path, "r") as file:
            if file.attrs.get("format_version") != FORMAT_VERSION or file.attrs.get("name") != name:
                return None
            splits = {}
            for split, group in file.items():
                images = torch.from_numpy(group["images"][()])
                labels = torch.from_numpy(group["labels"][()]).to(torch.long) if "labels" in group else None
                splits[split] = (images, labels)
            return splits
    except (OSError, KeyError) as error:
        warnings.warn(f"ignoring unreadable cache file {path}: {error}", stacklevel=3)
        return None


def write_cache(path: Path, name: str, splits: dict[str, RawSplit], mode: int | None = None) -> None:
    """Writes ``splits`` to ``path`` atomically (with permission bits ``mode``, default the umask's); a failure
    (read-only folder, full disk) only warns."""
    def write(temp: Path) -> None:
        with h5py.File(temp, "w") as file:
            file.attrs["format_version"] = FORMAT_VERSION
            file.attrs["name"] = name
            for split, (images, labels) in splits.items():
                group = file.create_group(split)
                group.create_dataset("images", data=images.numpy())
                if labels is not None:
                    group.create_dataset("labels", data=labels.numpy())

    try:
        atomic.write_atomically(path, write, mode)
    except OSError as error:
        warnings.warn(f"could not write the cache file {path}: {error}", stacklevel=3)
