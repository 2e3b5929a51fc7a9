"""The :class:`Dataset` record returned by ``load_dataset`` and the error for missing data files."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from ..leaves import Leaf
from .preprocessing import Counts, Preprocessing


class DatasetNotFoundError(FileNotFoundError):
    """The files of a data set are missing (or unreadable) and ``download`` was off or failed.

    The message says where the loader looked and how to get the data.
    """


def model_scale(preprocessing: Preprocessing) -> float:
    """Model-space data divided by it are pixels in ``[0, 1]`` (images): ``max_value`` for integer counts (the
    Binomial, Poisson, Geometric and NegativeBinomial leaves), 1 for every other preprocessing (binarized and
    dequantized data already lie in ``[0, 1]``, standardized data and 2-D points stay as they are)."""
    return float(preprocessing.max_value) if isinstance(preprocessing, Counts) else 1.0


@dataclass
class Dataset:
    """Train / validation / test splits of one data set, preprocessed for one leaf type.

    Attributes:
        name: the data set's name, one of ``DATASETS``.
        train, val, test: ``[N, *event_shape]`` float32, already preprocessed for ``leaf`` (model space).
        train_labels, val_labels, test_labels: ``[N]`` long class labels (mixture component, moon or circle
            index for 2-D sets), or ``None`` where the data set has none (CelebA).
        event_shape: ``(C, H, W)`` for images, ``(2,)`` for 2-D sets.
        leaf: the leaf family the preprocessing targets: ``Binomial(total_count=N)`` (``N`` = 255 for 8-bit
            images, 16 for digits), ``Normal()``, ``Bernoulli()``, or for images any other family of ``LEAVES``
            (:func:`pyro_spn.data.preprocessing.image_leaf`).
        is_image: whether the data are images.
        preprocessing: maps raw data to model space (``forward``) and back (``inverse``: images to ``[0, 1]``,
            2-D points to raw coordinates); ``preprocessing.state_dict()`` goes into checkpoints.
        true_log_density: for the Gaussian-mixture 2-D sets, the exact log-density of raw points ``[M, 2]`` →
            ``[M]``; else ``None``.
        modes: ``[K, 2]`` mixture means of the Gaussian-mixture 2-D sets, else ``None``.
        mode_scales: ``[K]`` std of each mode (for full covariances, along the major axis), else ``None``.
        mode_covariances: ``[K, 2, 2]`` covariance of each mode (for Mahalanobis mode assignment), else ``None``.
        mode_weights: ``[K]`` mixture weight of each mode, else ``None``.
    """

    name: str
    train: Tensor
    val: Tensor
    test: Tensor
    train_labels: Tensor | None
    val_labels: Tensor | None
    test_labels: Tensor | None
    event_shape: tuple[int, ...]
    leaf: Leaf
    is_image: bool
    preprocessing: Preprocessing
    true_log_density: Callable[[Tensor], Tensor] | None = None
    modes: Tensor | None = None
    mode_scales: Tensor | None = None
    mode_covariances: Tensor | None = None
    mode_weights: Tensor | None = None

    @property
    def scale(self) -> float:
        """:func:`model_scale` of the data's preprocessing: model-space images divided by it lie in ``[0, 1]``."""
        return model_scale(self.preprocessing)
