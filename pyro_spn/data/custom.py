"""A user's own data set from a path: a folder of images, a ``.npy`` array or an HDF5 file.

``load_dataset("path:<path>")`` (or :func:`load_custom`) reads:

- **a folder of images** (``.png``, ``.jpg``, ``.jpeg``, read with Pillow, sorted by file name): all of one size;
  grayscale (modes ``1``, ``L``, ``LA``) → 1 channel, otherwise RGB (alpha dropped; a folder with any color image
  makes every image RGB). Images directly in the folder have no labels; if there are none there but the folder's
  subfolders hold images, each subfolder is a class (labels ``0..``, subfolders sorted by name);
- **a ``.npy`` array** ``[N, ...]`` (read with ``allow_pickle=False``: never a pickle);
- **an HDF5 file** (``.h5``, ``.hdf5``): the dataset named after ``#`` (``path:data.h5#images``), or the file's
  only dataset.

An array of integers (any integer dtype, or bool) of 3 or 4 dimensions is images of 8-bit counts ``0..255``:
``[N, H, W]`` (one channel), ``[N, C, H, W]`` where ``C = shape[1] <= 4``, else ``[N, H, W, C]`` where
``C = shape[-1] <= 4``. These images, like the folder's, take the representation of the built-in image sets
(Binomial counts with ``total_count=255`` by default, or any other family of ``LEAVES``). Any other array,
``[N]`` or ``[N, D]``, is continuous features: float32 values as they are, with Normal leaves, like the 2-D sets.

Splits, as for digits: a random 10 % test, 10 % validation and the rest train (``seed`` draws the permutation),
at least :data:`MIN_EXAMPLES` examples. Errors name the path and what is wrong (:class:`CustomDataError`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .. import checks
from ..leaves import Normal
from .dataset import Dataset
from .preprocessing import IMAGE_LEAVES, Identity, Preprocessing, image_leaf, image_preprocessing, leaf_choice

#: ``load_dataset`` names of the form ``path:<path>`` (``path:<file>#<dataset>`` for an HDF5 dataset).
PREFIX = "path:"
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg")
ARRAY_EXTENSIONS: tuple[str, ...] = (".npy", ".h5", ".hdf5")
#: The largest value of image arrays and files (8-bit).
MAX_VALUE = 255
#: The fewest examples a custom data set may have (each split then has at least one).
MIN_EXAMPLES = 10
VAL_FRACTION = TEST_FRACTION = 0.1
_MAX_CHANNELS = 4


class CustomDataError(ValueError):
    """A custom data set cannot be used: the message names the path and what is wrong."""


def is_custom(name: str) -> bool:
    """Whether ``name`` is a custom data set's name (``path:...``)."""
    return isinstance(name, str) and name.startswith(PREFIX)


def split_name(name: str) -> tuple[Path, str | None]:
    """``path:<path>[#<key>]`` → ``(path, key)``; ``ValueError`` for an empty path."""
    spec = name[len(PREFIX):] if is_custom(name) else name
    path, key = spec, None
    if "#" in spec and not os.path.exists(spec):
        path, key = spec.rsplit("#", 1)
    if not path:
        raise CustomDataError(f"name: a custom data set needs a path after {PREFIX!r}, got {name!r}")
    return Path(path).expanduser(), key or None


def custom_name(path: str | os.PathLike) -> str:
    """The ``load_dataset`` name of a user's path (``<path>[#<dataset>]``, e.g. a CLI's ``--data-path``):
    ``path:<absolute path>[#<dataset>]``, so that a run started elsewhere (or resumed) finds the same files."""
    where, key = split_name(os.fspath(path))
    return PREFIX + str(where.resolve()) + (f"#{key}" if key else "")


def safe_name(name: str) -> str:
    """A short name for run folders: ``custom-<file or folder name>`` with only ``[A-Za-z0-9._-]``."""
    path, key = split_name(name)
    stem = path.stem if path.suffix.lower() in ARRAY_EXTENSIONS else path.name
    text = f"custom-{stem}" + (f"-{key.strip('/').replace('/', '-')}" if key else "")
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)


# -- reading ------------------------------------------------------------------------------------------------
def _image_files(folder: Path) -> tuple[list[Path], list[int] | None]:
    """The folder's image files and their labels (``None`` without class subfolders)."""
    def images_in(path: Path) -> list[Path]:
        return sorted(p for p in path.iterdir()
                      if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS)

    direct = images_in(folder)
    if direct:
        return direct, None
    files: list[Path] = []
    labels: list[int] = []
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    for label, subfolder in enumerate(c for c in classes if images_in(c)):
        found = images_in(subfolder)
        files += found
        labels += [label] * len(found)
    if not files:
        raise CustomDataError(f"{folder}: an empty folder: no {'/'.join(IMAGE_EXTENSIONS)} images in it or in its "
                              f"subfolders")
    return files, labels


def _read_image(path: Path) -> np.ndarray:
    """One image as ``uint8`` ``[H, W]`` (grayscale) or ``[H, W, 3]``."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            if image.mode in ("1", "L", "LA"):
                return np.asarray(image.convert("L"), dtype=np.uint8)
            if image.mode in ("P", "RGB", "RGBA", "CMYK", "YCbCr", "PA"):
                return np.asarray(image.convert("RGB"), dtype=np.uint8)
            raise CustomDataError(f"{path}: image mode {image.mode!r} is not 8-bit grayscale or color")
    except (OSError, UnidentifiedImageError) as error:
        raise CustomDataError(f"{path}: cannot read the image ({error})") from None


def _read_folder(folder: Path) -> tuple[Tensor, Tensor | None]:
    """``uint8`` ``[N, C, H, W]`` images of a folder and their labels ``[N]`` or ``None``."""
    files, labels = _image_files(folder)
    images = [_read_image(path) for path in files]
    sizes = {image.shape[:2] for image in images}
    if len(sizes) > 1:
        first = {image.shape[:2]: path for path, image in zip(files, images, strict=True)}
        examples = ", ".join(f"{path.name} {h}×{w}" for (h, w), path in sorted(first.items())[:3])
        raise CustomDataError(f"{folder}: the images have {len(sizes)} different sizes (e.g. {examples}); "
                              f"resize them to one size")
    color = any(image.ndim == 3 for image in images)
    stacked = np.stack([_as_rgb(image) if color else image[None] for image in images])
    return torch.from_numpy(stacked), None if labels is None else torch.tensor(labels, dtype=torch.long)


def _as_rgb(image: np.ndarray) -> np.ndarray:
    """``[H, W]`` or ``[H, W, 3]`` → ``[3, H, W]``."""
    return np.repeat(image[None], 3, axis=0) if image.ndim == 2 else image.transpose(2, 0, 1)


def _read_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as error:  # object arrays need pickles: refused
        raise CustomDataError(f"{path}: not a plain numeric .npy array ({error})") from None
    except OSError as error:
        raise CustomDataError(f"{path}: cannot read the .npy file ({error})") from None


def _read_hdf5(path: Path, key: str | None) -> np.ndarray:
    import h5py

    try:
        with h5py.File(path, "r") as file:
            names: list[str] = []
            file.visititems(lambda name, item: names.append(name) if isinstance(item, h5py.Dataset) else None)
            if key is None:
                if len(names) != 1:
                    raise CustomDataError(f"{path}: holds {len(names)} datasets ({', '.join(names) or 'none'}); name "
                                          f"one as path:{path}#<dataset>")
                key = names[0]
            item = file.get(key)
            if not isinstance(item, h5py.Dataset):
                raise CustomDataError(f"{path}: no dataset {key!r} (datasets: {', '.join(names) or 'none'})")
            if item.dtype.kind not in "biuf":
                raise CustomDataError(f"{path}#{key}: dtype {item.dtype} is not numeric")
            return np.asarray(item[()])
    except OSError as error:
        raise CustomDataError(f"{path}: cannot read the HDF5 file ({error})") from None


def _array_data(array: np.ndarray, where: str) -> tuple[Tensor, bool]:
    """A numeric array ``[N, ...]`` → ``(images uint8 [N, C, H, W], True)`` or ``(features float32 [N, D], False)``."""
    if array.dtype.kind not in "biuf":
        raise CustomDataError(f"{where}: dtype {array.dtype} is not numeric")
    if array.ndim == 0 or array.shape[0] == 0:
        raise CustomDataError(f"{where}: an empty array (shape {array.shape}); expected [N, ...] with N >= 1")
    if array.dtype.kind in "biu" and array.ndim in (3, 4):
        return _image_array(array, where), True
    if array.ndim > 2:
        raise CustomDataError(f"{where}: a float array of shape {array.shape}; expected features [N, D], or images "
                              f"as integers 0..{MAX_VALUE} [N, H, W], [N, C, H, W] or [N, H, W, C]")
    features = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    features = features[:, None] if features.dim() == 1 else features
    bad = int((~torch.isfinite(features)).sum())
    if bad:
        raise CustomDataError(f"{where}: {bad} non-finite values (NaN or infinite); remove or impute them")
    return features, False


def _image_array(array: np.ndarray, where: str) -> Tensor:
    """Integer images ``[N, H, W]``, ``[N, C, H, W]`` or ``[N, H, W, C]`` → ``uint8`` ``[N, C, H, W]``."""
    low, high = int(array.min()), int(array.max())
    if low < 0 or high > MAX_VALUE:
        raise CustomDataError(f"{where}: integer images must lie in 0..{MAX_VALUE}, got values in {low}..{high}")
    if array.ndim == 3:
        array = array[:, None]
    elif array.shape[1] > _MAX_CHANNELS:
        if array.shape[-1] > _MAX_CHANNELS:
            raise CustomDataError(f"{where}: images of shape {array.shape}: neither shape[1] nor shape[-1] is a "
                                  f"number of channels (1 to {_MAX_CHANNELS})")
        array = array.transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.uint8))


def _read(path: Path, key: str | None) -> tuple[Tensor, Tensor | None, bool]:
    """``(data, labels, is_image)`` of the path (see the module)."""
    if not path.exists():
        raise CustomDataError(f"{path}: no such file or folder")
    if path.is_dir():
        if key is not None:
            raise CustomDataError(f"{path}: a folder takes no dataset name (#{key})")
        images, labels = _read_folder(path)
        return images, labels, True
    suffix = path.suffix.lower()
    if suffix not in ARRAY_EXTENSIONS:
        raise CustomDataError(f"{path}: unknown extension {path.suffix!r}; expected a folder of images or a file "
                              f"ending in {', '.join(ARRAY_EXTENSIONS)}")
    if suffix == ".npy" and key is not None:
        raise CustomDataError(f"{path}: a .npy file takes no dataset name (#{key})")
    array = _read_npy(path) if suffix == ".npy" else _read_hdf5(path, key)
    data, is_image = _array_data(array, str(path) if key is None else f"{path}#{key}")
    return data, None, is_image


# -- the data set -------------------------------------------------------------------------------------------
def _split(n: int, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(train, val, test)`` indices: a random permutation split 80 / 10 / 10 (test and validation rounded)."""
    permutation = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    test, val = round(n * TEST_FRACTION), round(n * VAL_FRACTION)
    return permutation[test + val:], permutation[test:test + val], permutation[:test]


def _resolve_leaf(leaf: str, is_image: bool, where: str) -> str:
    leaf = leaf_choice(leaf, ("auto", *IMAGE_LEAVES))
    if not is_image:
        if leaf not in ("auto", "normal"):
            raise ValueError(f"leaf must be 'auto' or 'normal' for the continuous features of {where}, got {leaf!r}")
        return "normal"
    return "binomial" if leaf == "auto" else leaf


def event_shape_of_custom(name: str) -> tuple[int, ...]:
    """The shape of one example of the custom data set ``name`` (``path:...``), reading only what it needs for
    arrays (a memory map or the HDF5 dataset's shape); a folder's images are read."""
    path, key = split_name(name)
    if path.is_file() and path.suffix.lower() == ".npy":
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError):
            array = None
        images = array is not None and array.dtype.kind in "biu" and array.ndim in (3, 4)
        if array is not None and array.dtype.kind in "biuf" and array.ndim in (1, 2) and not images:
            return (1,) if array.ndim == 1 else tuple(array.shape[1:])
    data, _, _ = _read(path, key)
    return tuple(data.shape[1:])


def load_custom(path: str | os.PathLike, *, key: str | None = None, leaf: str = "auto", seed: int = 0,
                num_samples: int | None = None) -> Dataset:
    """Loads a user's data set from ``path`` (see the module), split and preprocessed like the built-in sets.

    Args:
        path: a folder of images, a ``.npy`` file or an HDF5 file.
        key: the HDF5 dataset (default: the file's only one).
        leaf: ``"auto"`` (binomial for images, normal for features) or one of ``LEAVES`` for images, preprocessed as
            :func:`~pyro_spn.data.load_dataset` does (``"normal"``: standardized per pixel on the train split);
            features accept only normal.
        seed: draws the split (and the dequantization noise of the continuous families).
        num_samples: keep at most the first ``num_samples`` examples of each split (default: all), at least 10.

    Returns:
        A :class:`Dataset` named ``path:<absolute path>[#key]`` (``load_dataset`` reloads it by that name).

    Raises:
        CustomDataError (a ValueError): the path is missing, of an unknown extension, an empty folder, images of
            mixed sizes, non-finite or out-of-range values, too few examples, a pickled array; ValueError: bad
            ``leaf``, ``seed`` or ``num_samples``.
    """
    checks.integer("seed", seed, minimum=0, maximum=2**63 - 1)
    if num_samples is not None:
        checks.integer("num_samples", num_samples, minimum=MIN_EXAMPLES)
    where = Path(path).expanduser()
    data, labels, is_image = _read(where, key)
    leaf = _resolve_leaf(leaf, is_image, str(where))
    if data.shape[0] < MIN_EXAMPLES:
        raise CustomDataError(f"{where}: {data.shape[0]} examples; at least {MIN_EXAMPLES} are needed for the "
                              f"train / validation / test splits")
    parts = _split(data.shape[0], seed)
    if num_samples is not None:
        parts = tuple(part[:num_samples] for part in parts)  # type: ignore[assignment]
    train, val, test = parts
    preprocessing: Preprocessing = (image_preprocessing(leaf, MAX_VALUE, data[train], seed) if is_image
                                    else Identity())
    name = custom_name(str(where) + (f"#{key}" if key else ""))
    return Dataset(
        name=name, train=preprocessing(data[train]), val=preprocessing(data[val]), test=preprocessing(data[test]),
        train_labels=None if labels is None else labels[train], val_labels=None if labels is None else labels[val],
        test_labels=None if labels is None else labels[test], event_shape=tuple(data.shape[1:]),
        leaf=image_leaf(leaf, MAX_VALUE) if is_image else Normal(), is_image=is_image, preprocessing=preprocessing,
    )


def load_custom_by_name(name: str, *, leaf: str = "auto", seed: int = 0, num_samples: int | None = None) -> Dataset:
    """:func:`load_custom` of a ``path:<path>[#key]`` name."""
    path, key = split_name(name)
    return load_custom(path, key=key, leaf=leaf, seed=seed, num_samples=num_samples)


__all__ = ["ARRAY_EXTENSIONS", "IMAGE_EXTENSIONS", "MAX_VALUE", "MIN_EXAMPLES", "PREFIX", "CustomDataError",
           "custom_name", "event_shape_of_custom", "is_custom", "load_custom", "load_custom_by_name", "safe_name",
           "split_name"]
