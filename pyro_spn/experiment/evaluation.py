"""Evaluating a finished run on a data split: likelihood, sample quality and reconstruction.

Images: negative log-likelihood (nats per image) and bits per dimension, FID and KID of the model's samples
against the split on a named feature extractor, reconstruction BCE (models that reconstruct: PAE circuits,
the VAE). 2-D sets: held-out negative log-likelihood and its gap to the true density (where known), MMD² of
the samples to the split (RBF kernels at the data's scale, :func:`~pyro_spn.objectives.data_bandwidths`), and
mode coverage (Gaussian-mixture sets). A model without a likelihood (GAN, MMD-GAN) leaves its likelihood entries
``None``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .. import atomic
from ..data import Dataset, Standardize, load_dataset
from ..leaves import Normal
from ..metrics import (
    FIDKID,
    ClassifierFeatures,
    bits_per_dim,
    classifier_on_samples,
    inception_features,
    log_likelihood_gap,
    mmd2_rbf,
    mode_coverage,
    reconstruction_bce,
    reconstruction_mse,
    train_classifier_features,
)
from ..objectives import data_bandwidths
from ..train.checkpoint import CheckpointError, checkpoint_content, load_weights
from ..train.records import read_metrics
from ..train.sample import SavedRun
from .config import FEATURES

SPLITS: tuple[str, ...] = ("val", "test")
KID_SUBSETS = 50
# The metrics every evaluation reports (``None`` where one does not apply).
METRICS: tuple[str, ...] = ("nll", "bpd", "fid", "kid", "kid_std", "features", "ll_gap", "mmd2", "mode_coverage",
                            "reconstruction", "accuracy")


def load_run_data(saved: SavedRun) -> Dataset:
    """The data set of a run, split and preprocessed as it was for training."""
    config = saved.config
    return load_dataset(config.dataset, leaf=saved.info.leaf.name, root=config.data_root, download=False,
                        seed=config.seed)


def feature_extractor(kind: str, dataset: str, cache: Path, *, data_root: str | None = None,
                      inception_weights: str | os.PathLike | None = None, epochs: int = 15) -> nn.Module:
    """The FID / KID features of image data set ``dataset``.

    ``"classifier"``: a :class:`~pyro_spn.metrics.ClassifierFeatures` trained on the training split (seed 0)
    of ``dataset`` for ``epochs`` epochs, cached in ``cache`` (trained once, loaded afterwards).
    ``"inception"``: the standard Inception-v3 from the local file ``inception_weights``.
    """
    if kind not in FEATURES:
        raise ValueError(f"features must be one of {', '.join(FEATURES)}; got {kind!r}")
    if kind == "inception":
        if inception_weights is None:
            raise ValueError("inception_weights: the inception features need a local weights file")
        return inception_features(inception_weights)
    name = f"classifier-{dataset}"
    if cache.is_file():
        return _cached_features(cache, name)
    data = load_dataset(dataset, leaf="auto", root=data_root, seed=0)
    if data.train_labels is None:
        raise ValueError(f"features: {dataset!r} has no labels to train a classifier on; use inception features")
    images = data.preprocessing.inverse(data.train)
    model = train_classifier_features(images, data.train_labels, epochs=epochs, name=name)
    state = {"channels": images.shape[1], "num_classes": int(data.train_labels.max()) + 1,
             "state_dict": model.state_dict()}
    atomic.write_atomically(cache, lambda temp: torch.save(state, temp))
    return model


def _cached_features(cache: Path, name: str) -> nn.Module:
    """The classifier features :func:`feature_extractor` saved in ``cache``.

    Raises:
        CheckpointError: naming the file, if it is unreadable or does not hold such features.
    """
    try:
        saved = load_weights(cache, "feature cache")
        with checkpoint_content(cache):
            model = ClassifierFeatures(saved["channels"], saved["num_classes"], name=name)
            model.load_state_dict(saved["state_dict"])
    except CheckpointError as error:
        raise CheckpointError(f"features: {error}; delete it to train the features again") from None
    return model.eval()


def _log_jacobian(data: Dataset) -> float:
    """``log|det ∂y/∂x|`` of the map from data units (pixel values ``0..max``) to model space (0 unless
    the data were standardized)."""
    if isinstance(data.preprocessing, Standardize):
        return -float((data.preprocessing.max_value * data.preprocessing.std.double()).log().sum())
    return 0.0


@torch.no_grad()
def evaluate_run(run: str | os.PathLike, split: str, *, features: nn.Module | None = None,
                 num_samples: int = 1000, classifier_epochs: int = 15, seed: int = 0,
                 device: str = "cpu") -> dict[str, Any]:
    """The metrics of the run in folder ``run`` on its ``split`` (``"val"`` or ``"test"``).

    Args:
        run: a finished run folder.
        split: the held-out split to evaluate on.
        features: the FID / KID feature extractor (image data sets; required for them).
        num_samples: samples drawn from the model.
        classifier_epochs: training epochs of the classifier-on-samples (class-conditional runs).
        seed: seeds the sampler.
        device: where the model runs (``"auto"``, ``"cpu"`` or ``"cuda"``); metrics are computed on the CPU.

    Returns:
        A flat dict: ``nll`` (nats per example), ``bpd`` (images), ``fid``, ``kid``, ``kid_std``, ``features``
        (images), ``ll_gap``, ``mmd2``, ``mode_coverage`` (2-D), ``reconstruction`` (BCE per image for
        images, squared error per point for 2-D), ``accuracy`` (class-conditional runs only), ``num_parameters``,
        ``epochs`` and ``train_seconds``; entries that do not apply are ``None``.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")
    saved = SavedRun.load(run, device=device)
    model, data = saved.model, load_run_data(saved)
    x: Tensor = getattr(data, split)
    torch.manual_seed(seed)
    samples = model.sample(num_samples, saved.config.batch_size)
    result: dict[str, Any] = dict.fromkeys(METRICS)
    log_likelihood = model.log_likelihood(x).double() if model.has_likelihood else None
    if log_likelihood is not None:
        result["nll"] = -float(log_likelihood.mean())
    reconstruction = model.reconstruct(x) if model.can_reconstruct else None
    if data.is_image:
        image_metrics(result, data, x, samples, log_likelihood, reconstruction, features)
    else:
        planar_metrics(result, data, x, samples, log_likelihood, reconstruction)
    if model.class_conditional:
        result["accuracy"] = _accuracy_of_classifier_on_samples(saved, data, split, classifier_epochs, seed)
    records = read_metrics(Path(run) / "metrics.jsonl")
    result.update(num_parameters=model.num_parameters(), epochs=saved.epoch,
                  train_seconds=sum(r.get("seconds", 0.0) for r in records))
    return result


def _accuracy_of_classifier_on_samples(saved: SavedRun, data: Dataset, split: str, epochs: int, seed: int) -> float:
    """The real-``split`` accuracy of a classifier trained for ``epochs`` on labelled samples of the run's
    class-conditional circuit (the paper's classifier-on-samples metric)."""
    labels = getattr(data, f"{split}_labels")
    if labels is None or saved.info.num_classes is None:
        raise ValueError(f"accuracy: the data set {data.name!r} has no labels")

    def generate(asked: Tensor) -> Tensor:
        return data.preprocessing.inverse(saved.model.sample_given(asked)).clamp(0, 1)

    x = getattr(data, split)
    return classifier_on_samples(generate, data.preprocessing.inverse(x), labels, num_classes=saved.info.num_classes,
                                 epochs=epochs, seed=seed).accuracy


def image_metrics(result: dict[str, Any], data: Dataset, x: Tensor, samples: Tensor, log_likelihood: Tensor | None,
                  reconstruction: Tensor | None, features: nn.Module | None) -> None:
    """Fills ``result``'s image entries (``bpd``, ``fid``, ``kid``, ``kid_std``, ``features``, ``reconstruction``)
    from the split ``x``, model-space ``samples``, ``log p(x)`` and reconstructions of ``x`` (``None``: not
    applicable)."""
    if features is None:
        raise ValueError("features: image data sets need a feature extractor for FID / KID")
    if log_likelihood is not None:
        num_dims = math.prod(data.event_shape)
        continuous = isinstance(data.leaf, Normal)
        result["bpd"] = bits_per_dim(log_likelihood, num_dims, discrete=not continuous,
                                     log_jacobian=_log_jacobian(data) if continuous else 0.0)
    real, fake = data.preprocessing.inverse(x), data.preprocessing.inverse(samples).clamp(0, 1)
    scores = FIDKID(real, features)
    fid = scores.fid(fake)
    kid = scores.kid(fake, subsets=KID_SUBSETS)
    result.update(fid=fid.value, kid=kid.value, kid_std=kid.std, features=fid.features)
    if reconstruction is not None:
        result["reconstruction"] = reconstruction_bce(data.preprocessing.inverse(reconstruction).clamp(0, 1), real)


def planar_metrics(result: dict[str, Any], data: Dataset, x: Tensor, samples: Tensor, log_likelihood: Tensor | None,
                   reconstruction: Tensor | None) -> None:
    """Fills ``result``'s 2-D entries (``mmd2`` with :func:`~pyro_spn.objectives.data_bandwidths`, ``ll_gap``,
    ``mode_coverage``, ``reconstruction``)."""
    result["mmd2"] = mmd2_rbf(samples, x, data_bandwidths(x))
    if log_likelihood is not None and data.true_log_density is not None:
        result["ll_gap"] = log_likelihood_gap(log_likelihood, data.true_log_density(x))
    if data.modes is not None:
        result["mode_coverage"] = mode_coverage(samples, data.modes, covariances=data.mode_covariances)
    if reconstruction is not None:
        result["reconstruction"] = reconstruction_mse(reconstruction, x) * x.shape[1]
