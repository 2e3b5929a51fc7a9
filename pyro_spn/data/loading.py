"""``load_dataset``: one entry point for the synthetic 2-D sets and the image sets.

Splits:

- synthetic sets: ``num_samples`` points (default 3000), split 80 / 10 / 10 at random;
- digits (no official split): 80 / 10 / 10 at random (1437 / 180 / 180);
- MNIST, SVHN, CIFAR-10: the official test split; validation is a random 10 % of the official train split;
- CelebA: its official train / valid / test splits;
- a custom data set ``path:<path>`` (:mod:`.custom`: a folder of images, a ``.npy`` array or an HDF5 file):
  80 / 10 / 10 at random.

Every random choice is drawn from ``seed``; the same arguments give the same tensors.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path

import torch
from torch import Tensor

from .. import checks, folders
from ..leaves import Normal
from . import images
from .cache import cache_path, read_cache, write_cache
from .custom import event_shape_of_custom, is_custom, load_custom_by_name
from .dataset import Dataset
from .images import IMAGE_DATASETS, SPECS, RawSplit
from .preprocessing import IMAGE_LEAVES, Identity, image_leaf, image_preprocessing, leaf_choice
from .synthetic import SYNTHETIC_DATASETS, sample_synthetic

DATASETS: tuple[str, ...] = SYNTHETIC_DATASETS + IMAGE_DATASETS
#: The leaf families a data set can be loaded for, by their command-line names (2-D sets: normal only).
LEAVES: tuple[str, ...] = IMAGE_LEAVES
DEFAULT_NUM_SAMPLES = 3000
#: The folder of the torchvision-format files where no ``root`` is given (relative to the working folder).
DEFAULT_ROOT = "data"
#: The mode of cache files in the private cache folder.
PRIVATE_FILE_MODE = 0o600
MIN_NUM_SAMPLES = 10
VAL_FRACTION = TEST_FRACTION = 0.1


def event_shape_of(name: str) -> tuple[int, ...]:
    """The shape of one example of data set ``name`` (known without loading it; a custom ``path:...`` set's from its
    file, a folder's by reading its images)."""
    if is_custom(name):
        return event_shape_of_custom(name)
    checks.choice("name", name, DATASETS)
    return (2,) if name in SYNTHETIC_DATASETS else SPECS[name].event_shape


def _split_indices(n: int, seed: int, fractions: tuple[float, ...]) -> list[Tensor]:
    """A random partition of ``range(n)``: one index tensor per fraction (rounded), then the rest, in this order."""
    permutation = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    sizes = [round(n * fraction) for fraction in fractions]
    return list(torch.split(permutation, [*sizes, n - sum(sizes)]))


def _check_arguments(name: str, leaf: str, seed: int, num_samples: int | None) -> str:
    """Validates the arguments of :func:`load_dataset`; returns the resolved leaf type."""
    checks.choice("name", name, DATASETS)
    leaf = leaf_choice(leaf, ("auto", *LEAVES))
    checks.integer("seed", seed, minimum=0, maximum=2**63 - 1)
    if num_samples is not None:
        checks.integer("num_samples", num_samples, minimum=MIN_NUM_SAMPLES)
    if name in SYNTHETIC_DATASETS:
        if leaf not in ("auto", "normal"):
            raise ValueError(f"leaf must be 'auto' or 'normal' for the 2-D data set {name!r}, got {leaf!r}")
        return "normal"
    return "binomial" if leaf == "auto" else leaf


def _load_synthetic(name: str, seed: int, num_samples: int) -> Dataset:
    points, labels, mixture = sample_synthetic(name, num_samples, seed)
    test, val, train = _split_indices(num_samples, seed, (TEST_FRACTION, VAL_FRACTION))
    data = Dataset(
        name=name, train=points[train], val=points[val], test=points[test], train_labels=labels[train],
        val_labels=labels[val], test_labels=labels[test], event_shape=(2,), leaf=Normal(),
        is_image=False, preprocessing=Identity(),
    )
    if mixture is None:
        return data
    return dataclasses.replace(data, true_log_density=mixture.log_prob, modes=mixture.means.to(torch.float32),
                               mode_scales=mixture.scales.to(torch.float32),
                               mode_covariances=mixture.covariances.to(torch.float32),
                               mode_weights=mixture.weights.to(torch.float32))


def _select(split: RawSplit, index: Tensor) -> RawSplit:
    images_, labels = split
    return images_[index], None if labels is None else labels[index]


def _image_splits(sources: dict[str, RawSplit], seed: int) -> dict[str, RawSplit]:
    """The source splits (see :func:`images.decode`) → ``{"train", "val", "test"}``."""
    if "all" in sources:
        test, val, train = _split_indices(sources["all"][0].shape[0], seed, (TEST_FRACTION, VAL_FRACTION))
        return {"train": _select(sources["all"], train), "val": _select(sources["all"], val),
                "test": _select(sources["all"], test)}
    if "valid" in sources:
        return {"train": sources["train"], "val": sources["valid"], "test": sources["test"]}
    val, train = _split_indices(sources["train"][0].shape[0], seed, (VAL_FRACTION,))
    return {"train": _select(sources["train"], train), "val": _select(sources["train"], val),
            "test": sources["test"]}


def _private_cache_dir() -> Path | None:
    """``data/`` in the package's cache folder, private (:mod:`pyro_spn.folders`); ``None`` (with a warning where
    the folder is unsafe) if there is none."""
    base = folders.cache_dir()
    if base is None:
        return None
    try:
        return folders.private_folder(base / "data")
    except OSError as error:
        warnings.warn(f"pyro_spn: not caching decoded images ({error})", RuntimeWarning, stacklevel=4)
        return None


def _decode_through_cache(name: str, root: Path, download: bool, cache_dir: Path | None,
                          private: bool) -> dict[str, RawSplit]:
    """The data set's source splits: from its cache file in ``cache_dir`` (in a ``private`` folder only if this user
    wrote it), else decoded and cached there."""
    if cache_dir is None:
        return images.decode(name, root, download)
    path = cache_path(cache_dir, name)
    trusted = not private or not path.exists() or not folders.file_problem(path)
    sources = read_cache(path, name) if trusted else None
    if sources is None:
        sources = images.decode(name, root, download)
        write_cache(path, name, sources, mode=PRIVATE_FILE_MODE if private else None)
    return sources


def _load_images(name: str, leaf: str, root: Path, download: bool, seed: int, num_samples: int | None,
                 cache_dir: Path | None, private: bool) -> Dataset:
    sources = _decode_through_cache(name, root, download, cache_dir, private)
    splits = _image_splits(sources, seed)
    if num_samples is not None:
        splits = {key: (x[:num_samples], None if y is None else y[:num_samples]) for key, (x, y) in splits.items()}
    spec = SPECS[name]
    preprocessing = image_preprocessing(leaf, spec.max_value, splits["train"][0], seed)
    return Dataset(
        name=name, train=preprocessing(splits["train"][0]), val=preprocessing(splits["val"][0]),
        test=preprocessing(splits["test"][0]), train_labels=splits["train"][1], val_labels=splits["val"][1],
        test_labels=splits["test"][1], event_shape=spec.event_shape,
        leaf=image_leaf(leaf, spec.max_value),
        is_image=True, preprocessing=preprocessing,
    )


def load_dataset(name: str, *, leaf: str = "auto", root: str | os.PathLike | None = None, download: bool = False,
                 seed: int = 0, num_samples: int | None = None,
                 cache_dir: str | os.PathLike | None = None) -> Dataset:
    """Loads data set ``name``, split into train / validation / test and preprocessed for ``leaf``.

    Args:
        name: one of ``DATASETS``: the 2-D sets ``SYNTHETIC_DATASETS`` or the image sets ``IMAGE_DATASETS``; or
            ``path:<path>`` for a user's data set (:mod:`pyro_spn.data.custom`: a folder of images, a ``.npy``
            array, an HDF5 file, ``path:<file>#<dataset>`` naming one of its datasets; ``root``, ``download`` and
            ``cache_dir`` do not apply).
        leaf: one of ``LEAVES`` (or a family's config name, ``negative_binomial``) or ``"auto"`` (binomial for
            images, normal for 2-D sets; 2-D sets accept only normal). For images
            (:func:`~pyro_spn.data.preprocessing.image_preprocessing`): ``"binomial"``, ``"poisson"``,
            ``"geometric"``, ``"negative-binomial"`` model the integer counts ``0..max_value`` (Binomial and
            NegativeBinomial with ``total_count = max_value``); ``"normal"`` per-feature zero mean and unit
            variance on the train split; ``"bernoulli"`` binarized at half range; ``"exponential"``, ``"gamma"``,
            ``"lognormal"``, ``"beta"`` dequantized into ``(0, 1)``, ``(x + u) / (max_value + 1)`` with uniform
            noise ``u`` drawn from ``seed``. 2-D sets: raw coordinates.
        root: the folder holding the torchvision-format files (see :mod:`pyro_spn.data.images`), default
            ``data`` in the working folder; unused for the synthetic sets and digits (bundled with scikit-learn).
        download: let torchvision download missing files into ``root``.
        seed: seeds the synthetic draws, every random split and the dequantization noise.
        num_samples: synthetic sets: the number of points over all splits (default 3000); image sets: keep at
            most the first ``num_samples`` examples of each split (default: all). At least 10.
        cache_dir: folder of the HDF5 cache of decoded images; default ``<root>/cache`` where ``root`` is given,
            else ``data/`` in the package's private cache folder (:func:`pyro_spn.folders.cache_dir`, e.g.
            ``~/.cache/pyro_spn/data``; no cache where that folder is not private), so a run started anywhere
            leaves no files there.

    Returns:
        A :class:`Dataset`: splits ``[N, *event_shape]`` float32, labels ``[N]`` long (or ``None``).

    Raises:
        ValueError: an unknown ``name`` or ``leaf``, a leaf that does not fit the data, a bad ``seed`` or
            ``num_samples``; a custom data set that cannot be used (:class:`~pyro_spn.data.custom.CustomDataError`,
            naming the path and the problem).
        DatasetNotFoundError: the files of an image set are missing and ``download`` is off (or failed).
    """
    if is_custom(name):
        return load_custom_by_name(name, leaf=leaf, seed=seed, num_samples=num_samples)
    leaf = _check_arguments(name, leaf, seed, num_samples)
    if name in SYNTHETIC_DATASETS:
        return _load_synthetic(name, seed, DEFAULT_NUM_SAMPLES if num_samples is None else num_samples)
    files = Path(DEFAULT_ROOT if root is None else root)
    if cache_dir is None and root is None:
        return _load_images(name, leaf, files, download, seed, num_samples, _private_cache_dir(), private=True)
    cache = files / "cache" if cache_dir is None else Path(cache_dir)
    return _load_images(name, leaf, files, download, seed, num_samples, cache, private=False)
