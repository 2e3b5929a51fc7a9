"""Decoding the image data sets into ``uint8`` tensors, through scikit-learn (digits) and torchvision.

:func:`decode` returns the data set's own splits as the source ships them (no preprocessing, no held-out
validation part): ``{"all"}`` for digits, ``{"train", "test"}`` for MNIST, SVHN and CIFAR-10, and
``{"train", "valid", "test"}`` for CelebA. Images are ``uint8`` ``[N, C, H, W]`` counts ``0..max_value``,
labels ``long`` ``[N]`` or ``None``.

Where the files live under ``root`` (torchvision's formats):

- MNIST: ``<root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte``
- CIFAR-10: ``<root>/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}``
- SVHN: ``<root>/svhn/{train,test}_32x32.mat``
- CelebA: ``<root>/celeba/img_align_celeba/*.jpg`` and the five ``list_*``/``identity_*`` text files;
  images are center-cropped to 178 × 178 and resized to 64 × 64.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import torch
from torch import Tensor

from .dataset import DatasetNotFoundError

if TYPE_CHECKING:
    from torchvision.datasets import CelebA

IMAGE_DATASETS: tuple[str, ...] = ("digits", "mnist", "svhn", "cifar10", "celeba")

RawSplit = tuple[Tensor, Tensor | None]
"""``(images, labels)``: ``uint8`` ``[N, C, H, W]`` and ``long`` ``[N]`` (or ``None``)."""

_T = TypeVar("_T")
_PARALLEL_DECODE_MIN = 2048  # CelebA: decode JPEGs in worker processes from this many images on
_CELEBA_CROP, _CELEBA_SIZE = 178, 64


@dataclass(frozen=True)
class ImageSpec:
    """What a data set looks like and where its torchvision-format files live.

    Attributes:
        event_shape: ``(C, H, W)``.
        max_value: the largest count (255 for 8-bit images, 16 for digits).
        folder: the folder under ``root`` holding the files (``""`` for the bundled digits).
        files: the files (or folders) torchvision needs, relative to ``folder``.
    """

    event_shape: tuple[int, int, int]
    max_value: int
    folder: str
    files: tuple[str, ...]


SPECS: dict[str, ImageSpec] = {
    "digits": ImageSpec((1, 8, 8), 16, "", ()),
    "mnist": ImageSpec((1, 28, 28), 255, os.path.join("MNIST", "raw"), (
        "train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")),
    "svhn": ImageSpec((3, 32, 32), 255, "svhn", ("train_32x32.mat", "test_32x32.mat")),
    "cifar10": ImageSpec((3, 32, 32), 255, "cifar-10-batches-py", (
        *(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta")),
    "celeba": ImageSpec((3, 64, 64), 255, "celeba", (
        "img_align_celeba", "list_eval_partition.txt", "identity_CelebA.txt", "list_bbox_celeba.txt",
        "list_landmarks_align_celeba.txt", "list_attr_celeba.txt")),
}


def _not_found(name: str, root: Path, download: bool, error: Exception) -> DatasetNotFoundError:
    """One message: where the loader looked, what is missing, how to get the data."""
    spec = SPECS[name]
    folder = (root / spec.folder).resolve()
    missing = [f for f in spec.files if not (folder / f).exists()]
    fetch = "" if download else "pass download=True (pyrospn-train: --download) to fetch it, or "
    if download:
        problem = f"the download of data set {name!r} into {folder} failed ({error})"
    elif missing:
        problem = f"data set {name!r} not found in {folder} (missing: {', '.join(missing)})"
    else:
        problem = f"data set {name!r} in {folder} could not be read, files corrupted or incomplete? ({error})"
    how = (f"To get it, {fetch}put torchvision's files there: <root>/{Path(spec.folder).as_posix()}/"
           f"{{{', '.join(spec.files)}}} with root={root}")
    return DatasetNotFoundError(f"{problem}. {how}.")


def _torchvision(name: str, root: Path, download: bool, build: Callable[[], _T]) -> _T:
    """Runs a torchvision constructor (or a pass over its images), turning its errors into
    :class:`DatasetNotFoundError`: missing files, failed downloads, and corrupt files, for which torchvision and the
    readers under it raise errors of every kind (assertions, pickle, MATLAB and image errors included)."""
    try:
        return build()
    except Exception as error:
        raise _not_found(name, root, download, error) from error


def _digits() -> dict[str, RawSplit]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(bunch.images).round().to(torch.uint8).unsqueeze(1)
    return {"all": (images, torch.from_numpy(bunch.target).to(torch.long))}


def _mnist(root: Path, download: bool) -> dict[str, RawSplit]:
    from torchvision.datasets import MNIST

    splits: dict[str, RawSplit] = {}
    for split in ("train", "test"):
        data = _torchvision("mnist", root, download, partial(MNIST, root, train=split == "train", download=download))
        splits[split] = (data.data.unsqueeze(1).contiguous(), data.targets.to(torch.long))
    return splits


def _cifar10(root: Path, download: bool) -> dict[str, RawSplit]:
    from torchvision.datasets import CIFAR10

    splits: dict[str, RawSplit] = {}
    for split in ("train", "test"):
        data = _torchvision("cifar10", root, download,
                            partial(CIFAR10, root, train=split == "train", download=download))
        images = torch.from_numpy(data.data).permute(0, 3, 1, 2).contiguous()  # HWC → CHW
        splits[split] = (images, torch.tensor(data.targets, dtype=torch.long))
    return splits


def _svhn(root: Path, download: bool) -> dict[str, RawSplit]:
    from torchvision.datasets import SVHN

    splits: dict[str, RawSplit] = {}
    for split in ("train", "test"):
        data = _torchvision("svhn", root, download, partial(SVHN, root / SPECS["svhn"].folder, split=split,
                                                            download=download))
        splits[split] = (torch.from_numpy(data.data).contiguous(), torch.from_numpy(data.labels).to(torch.long))
    return splits


def _stack_images(batch: list[tuple[Tensor, None]]) -> Tensor:
    """DataLoader collate: ``[(image [C, H, W], None), ...]`` → ``[B, C, H, W]``."""
    return torch.stack([image for image, _ in batch])


def _celeba(root: Path, download: bool) -> dict[str, RawSplit]:
    from torchvision import transforms
    from torchvision.datasets import CelebA

    transform = transforms.Compose([
        transforms.CenterCrop(_CELEBA_CROP), transforms.Resize(_CELEBA_SIZE), transforms.PILToTensor()])
    splits: dict[str, RawSplit] = {}
    for split in ("train", "valid", "test"):
        data = _torchvision("celeba", root, download, partial(CelebA, root, split=split, target_type=[],
                                                              transform=transform, download=download))
        splits[split] = (_torchvision("celeba", root, download, partial(_decode_celeba, data)), None)
    return splits


def _decode_celeba(data: CelebA) -> Tensor:
    """The images of a CelebA split, ``uint8`` ``[N, 3, 64, 64]`` (decoded in worker processes if there are many)."""
    from torch.utils.data import DataLoader

    workers = min(8, os.cpu_count() or 1) if len(data) >= _PARALLEL_DECODE_MIN else 0
    images = torch.empty((len(data), *SPECS["celeba"].event_shape), dtype=torch.uint8)
    start = 0
    for batch in DataLoader(data, batch_size=256, num_workers=workers, collate_fn=_stack_images):
        images[start : start + len(batch)] = batch
        start += len(batch)
    return images


def decode(name: str, root: str | os.PathLike, download: bool) -> dict[str, RawSplit]:
    """Reads image data set ``name`` from its files under ``root`` (downloading them first if ``download``).

    Raises:
        DatasetNotFoundError: the files are missing or unreadable (and the download, if asked for, failed).
    """
    root = Path(root)
    if name == "digits":
        return _digits()
    if name == "mnist":
        return _mnist(root, download)
    if name == "cifar10":
        return _cifar10(root, download)
    if name == "svhn":
        return _svhn(root, download)
    if name == "celeba":
        return _celeba(root, download)
    raise ValueError(f"name must be one of {IMAGE_DATASETS}, got {name!r}")
