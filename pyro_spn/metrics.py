"""Evaluation metrics: FID and KID on any feature extractor, reconstruction errors, bits per dimension, and the
2-D metrics (MMD², mode coverage, log-likelihood gap).

Sample-quality metrics are computed in float64 from features ``[N, D]``. The image-level helpers (:func:`fid`,
:func:`kid`, :class:`FIDKID`) take images ``[N, C, H, W]`` in ``[0, 1]`` and any ``nn.Module`` mapping them to
``[N, D]``, and return a :class:`MetricResult` that names the features used. Offline, the default extractor is
:func:`train_classifier_features` (a small CNN trained on the data set itself); :func:`inception_features` loads
the standard Inception-v3 from a local weights file (nothing is downloaded).

:func:`classifier_on_samples` scores a class-conditional generator (e.g. a class-conditional circuit,
:class:`pyro_spn.joint.JointSPN` with a ``Categorical`` label) by the real-test accuracy of a classifier trained on
its labelled samples only.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import checks
from .objectives.mmd import BANDWIDTHS, mmd2

__all__ = [
    "FIDKID",
    "ClassifierFeatures",
    "ClassifierOnSamplesResult",
    "MetricResult",
    "bits_per_dim",
    "classifier_on_samples",
    "extract_features",
    "fid",
    "frechet_distance",
    "inception_features",
    "kernel_inception_distance",
    "kid",
    "log_likelihood_gap",
    "mmd2_rbf",
    "mode_coverage",
    "reconstruction_bce",
    "reconstruction_mse",
    "train_classifier_features",
]


@dataclass(frozen=True)
class MetricResult:
    """A metric's value and the features it was computed on.

    Attributes:
        value: the metric (for KID: the mean over subsets).
        features: the name of the feature extractor (e.g. ``"inception-v3-pool3"``, ``"classifier-digits"``).
        std: for KID, the standard deviation over subsets; else ``None``.
    """

    value: float
    features: str
    std: float | None = None


def _features_2d(name: str, features: Tensor, least: int) -> Tensor:
    """Checks ``features`` is a finite ``[N, D]`` tensor with ``N >= least``; returns it in float64."""
    if not isinstance(features, Tensor) or features.dim() != 2:
        shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
        raise ValueError(f"{name} must be a tensor of shape [N, D], got {shape}")
    if features.shape[0] < least:
        raise ValueError(f"{name} needs at least {least} rows, got {features.shape[0]}")
    features = features.detach().to(torch.float64)
    if not bool(torch.isfinite(features).all()):
        raise ValueError(f"{name} must be finite")
    return features


def _same_width(a: Tensor, b: Tensor) -> None:
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"features_a and features_b must have the same D, got {a.shape[1]} and {b.shape[1]}")


def frechet_distance(features_a: Tensor, features_b: Tensor) -> float:
    """The Fréchet distance between Gaussians fitted to two feature sets (the FID formula), in float64:
    ``‖μ_a − μ_b‖² + tr(Σ_a) + tr(Σ_b) − 2 tr((Σ_a^½ Σ_b Σ_a^½)^½)``, with unbiased covariances.

    Args:
        features_a: ``[N, D]``, ``N >= 2``.
        features_b: ``[M, D]``, ``M >= 2``.
    """
    a, b = _features_2d("features_a", features_a, 2), _features_2d("features_b", features_b, 2)
    _same_width(a, b)
    mean_a, mean_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T).reshape(a.shape[1], a.shape[1]), torch.cov(b.T).reshape(b.shape[1], b.shape[1])
    values, vectors = torch.linalg.eigh(cov_a)
    root_a = (vectors * values.clamp_min(0).sqrt()) @ vectors.T  # Σ_a^½, symmetric
    middle = root_a @ cov_b @ root_a
    trace_root = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp_min(0).sqrt().sum()
    distance = (mean_a - mean_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * trace_root
    return float(distance)


def kernel_inception_distance(features_a: Tensor, features_b: Tensor, subsets: int = 100, subset_size: int = 1000,
                              degree: int = 3, seed: int = 0) -> tuple[float, float]:
    """KID (Bińkowski et al. 2018): the unbiased MMD² under the polynomial kernel ``k(x, y) = (xᵀy / D + 1)^degree``,
    averaged over ``subsets`` random pairs of subsets of ``subset_size`` rows (drawn without replacement within
    a subset), in float64.

    Args:
        features_a: ``[N, D]``.
        features_b: ``[M, D]``.
        subsets: the number of subset pairs.
        subset_size: rows per subset, ``2 <= subset_size <= min(N, M)``.
        degree: the polynomial kernel's degree.
        seed: seeds the subset draws (the global RNG is untouched).

    Returns:
        ``(mean, std)`` over the subsets (population std; ``0`` for one subset).
    """
    a, b = _features_2d("features_a", features_a, 2), _features_2d("features_b", features_b, 2)
    _same_width(a, b)
    subsets, degree = checks.integer("subsets", subsets), checks.integer("degree", degree)
    if isinstance(subset_size, bool) or not isinstance(subset_size, int) or not 2 <= subset_size <= min(len(a), len(b)):
        raise ValueError(f"subset_size must be an integer in [2, {min(len(a), len(b))}], got {subset_size!r}")
    generator = torch.Generator().manual_seed(seed)
    m, dim = subset_size, a.shape[1]
    estimates = torch.empty(subsets, dtype=torch.float64)
    for s in range(subsets):
        x = a[torch.randperm(len(a), generator=generator)[:m]]
        y = b[torch.randperm(len(b), generator=generator)[:m]]
        k_xx, k_yy, k_xy = ((u @ v.T / dim + 1) ** degree for u, v in ((x, x), (y, y), (x, y)))
        within = (k_xx.sum() - k_xx.diagonal().sum() + k_yy.sum() - k_yy.diagonal().sum()) / (m * (m - 1))
        estimates[s] = within - 2 * k_xy.mean()
    return float(estimates.mean()), float(estimates.std(correction=0))


def _check_images(name: str, images: Tensor) -> Tensor:
    if not isinstance(images, Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"{name} must be a tensor of shape [N, C, H, W], got {shape}")
    if not images.is_floating_point() or not bool(((images >= 0) & (images <= 1)).all()):
        raise ValueError(f"{name} must be floating point with values in [0, 1]")
    return images


def _extractor_name(feature_extractor: nn.Module) -> str:
    if not isinstance(feature_extractor, nn.Module):
        raise ValueError(f"feature_extractor must be an nn.Module, got {type(feature_extractor).__name__}")
    return str(getattr(feature_extractor, "features_name", type(feature_extractor).__name__))


@torch.no_grad()
def extract_features(images: Tensor, feature_extractor: nn.Module, batch_size: int = 256) -> Tensor:
    """Features of ``images`` ``[N, C, H, W]`` in ``[0, 1]``: ``[N, D]`` float64, computed in eval mode (the
    module's training flag is restored) in batches on the module's device."""
    images = _check_images("images", images)
    _extractor_name(feature_extractor)
    batch_size = checks.integer("batch_size", batch_size)
    parameter = next(feature_extractor.parameters(), None)
    device = images.device if parameter is None else parameter.device
    was_training = feature_extractor.training
    feature_extractor.eval()
    try:
        chunks = [feature_extractor(chunk.to(device)).reshape(len(chunk), -1).to("cpu", torch.float64)
                  for chunk in images.split(batch_size)]
    finally:
        feature_extractor.train(was_training)
    return torch.cat(chunks)


class FIDKID:
    """FID and KID of generated images against a fixed real set, whose features are computed once.

    Args:
        real: ``[N, C, H, W]`` in ``[0, 1]``.
        feature_extractor: maps such images to ``[N, D]``; its ``features_name`` attribute (else its class name)
            names the features in the results.
        batch_size: images per forward pass.
    """

    def __init__(self, real: Tensor, feature_extractor: nn.Module, batch_size: int = 256) -> None:
        self.features = _extractor_name(feature_extractor)
        self.feature_extractor = feature_extractor
        self.batch_size = batch_size
        self.real_features = extract_features(_check_images("real", real), feature_extractor, batch_size)  # [N, D]

    def fid(self, fake: Tensor) -> MetricResult:
        """FID between the real images and ``fake`` ``[M, C, H, W]`` in ``[0, 1]``."""
        fake_features = extract_features(_check_images("fake", fake), self.feature_extractor, self.batch_size)
        return MetricResult(frechet_distance(self.real_features, fake_features), self.features)

    def kid(self, fake: Tensor, subsets: int = 100, subset_size: int = 1000, degree: int = 3,
            seed: int = 0) -> MetricResult:
        """KID between the real images and ``fake`` ``[M, C, H, W]``; ``subset_size`` is capped at ``min(N, M)``.
        See :func:`kernel_inception_distance`."""
        fake_features = extract_features(_check_images("fake", fake), self.feature_extractor, self.batch_size)
        size = min(subset_size, len(self.real_features), len(fake_features))
        mean, std = kernel_inception_distance(self.real_features, fake_features, subsets, size, degree, seed)
        return MetricResult(mean, self.features, std)


def fid(real: Tensor, fake: Tensor, feature_extractor: nn.Module) -> MetricResult:
    """FID between ``real`` ``[N, C, H, W]`` and ``fake`` ``[M, C, H, W]`` (both in ``[0, 1]``) on the features of
    ``feature_extractor`` (``[N, C, H, W]`` → ``[N, D]``)."""
    return FIDKID(real, feature_extractor).fid(fake)


def kid(real: Tensor, fake: Tensor, feature_extractor: nn.Module, subsets: int = 100, subset_size: int = 1000,
        degree: int = 3, seed: int = 0) -> MetricResult:
    """KID (mean and std over subsets) between ``real`` ``[N, C, H, W]`` and ``fake`` ``[M, C, H, W]`` in
    ``[0, 1]``; see :meth:`FIDKID.kid`."""
    return FIDKID(real, feature_extractor).kid(fake, subsets, subset_size, degree, seed)


class _InceptionFeatures(nn.Module):
    """Wraps torchmetrics' Inception-v3: ``[N, C, H, W]`` in ``[0, 1]`` (``C`` = 1 or 3) → pool3 ``[N, 2048]``."""

    features_name = "inception-v3-pool3"

    def __init__(self, inception: nn.Module) -> None:
        super().__init__()
        self.inception = inception

    def forward(self, images: Tensor) -> Tensor:
        """``[N, C, H, W]`` in ``[0, 1]`` → ``[N, 2048]``; grayscale is repeated to RGB, pixels rounded to 8 bits."""
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        return self.inception((images * 255).round().to(torch.uint8)).reshape(len(images), -1)


def inception_features(weights_path: str | os.PathLike) -> nn.Module:
    """The standard FID Inception-v3 (pool3 features, ``[N, C, H, W]`` in ``[0, 1]`` → ``[N, 2048]``), built with
    ``torchmetrics.image.fid.NoTrainInceptionV3`` from a local weights file (torch-fidelity's
    ``weights-inception-2015-12-05-6726825d.pth``); nothing is downloaded.

    Raises:
        FileNotFoundError: ``weights_path`` is not an existing file.
        ModuleNotFoundError: torchmetrics or torch-fidelity (which the Inception needs) is not installed.
    """
    path = Path(weights_path)
    if not path.is_file():
        raise FileNotFoundError(f"weights_path: no Inception-v3 weights file at {str(path)!r}; download "
                                "torch-fidelity's weights-inception-2015-12-05-6726825d.pth elsewhere and pass its "
                                "path (this package never downloads), or use train_classifier_features offline")
    try:
        import torch_fidelity  # noqa: F401  (NoTrainInceptionV3 needs it)
        from torchmetrics.image.fid import NoTrainInceptionV3
    except ImportError as error:
        raise ModuleNotFoundError("inception_features needs torchmetrics and torch-fidelity "
                                  "(pip install torchmetrics[image]); use train_classifier_features offline") from error
    inception = NoTrainInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(path))
    return _InceptionFeatures(inception)


class ClassifierFeatures(nn.Module):
    """A small CNN classifier; :meth:`forward` gives its penultimate layer, the features for FID / KID.

    ``[N, C, H, W]`` in ``[0, 1]`` → ``[N, feature_dim]`` (any ``H, W >= 2``: adaptive pooling to ``4 × 4``).
    """

    def __init__(self, channels: int, num_classes: int, feature_dim: int = 128, name: str = "classifier") -> None:
        super().__init__()
        self.features_name = name
        self.body = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
            nn.AdaptiveMaxPool2d(4), nn.Flatten(), nn.Linear(64 * 16, feature_dim), nn.ReLU(),
        )
        self.head = nn.Linear(feature_dim, num_classes)

    def forward(self, images: Tensor) -> Tensor:
        """Penultimate features ``[N, feature_dim]``."""
        return self.body(images)

    def classify(self, images: Tensor) -> Tensor:
        """Class logits ``[N, num_classes]``."""
        return self.head(self.body(images))


def train_classifier_features(images: Tensor, labels: Tensor, epochs: int = 15, seed: int = 0,
                              batch_size: int = 64, lr: float = 1e-3, name: str = "classifier") -> ClassifierFeatures:
    """Trains a :class:`ClassifierFeatures` on ``images`` ``[N, C, H, W]`` in ``[0, 1]`` with ``labels`` ``[N]``
    (long, ``0..K-1``) by Adam on cross-entropy, on the images' device; deterministic given ``seed`` (the global
    RNG is untouched), also when called under ``torch.no_grad()``. Returns the classifier in eval mode; its
    features are named ``name``."""
    images = _check_images("images", images)
    if not isinstance(labels, Tensor) or labels.shape != images.shape[:1] or labels.dtype != torch.long:
        raise ValueError(f"labels must be a long tensor of shape [{images.shape[0]}]")
    if bool((labels < 0).any()):
        raise ValueError("labels must be >= 0")
    epochs, batch_size = checks.integer("epochs", epochs), checks.integer("batch_size", batch_size)
    with torch.random.fork_rng(devices=[]), torch.enable_grad():
        torch.manual_seed(seed)
        model = ClassifierFeatures(images.shape[1], int(labels.max()) + 1, name=name).to(images.device)
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        generator = torch.Generator().manual_seed(seed)
        model.train()
        for _ in range(epochs):
            for index in torch.randperm(len(images), generator=generator).split(batch_size):
                index = index.to(images.device)
                loss = F.cross_entropy(model.classify(images[index]), labels[index])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
    return model.eval()


@dataclass(frozen=True)
class ClassifierOnSamplesResult:
    """The classifier-on-samples metric (:func:`classifier_on_samples`).

    Attributes:
        accuracy: the test accuracy, in ``[0, 1]``, of a classifier trained on generated images only.
        per_class_accuracy: the accuracy on the real test images of each class (NaN for a class without any).
        num_generated: the number of generated training images (``num_classes · samples_per_class``).
        num_test: the number of real test images.
    """

    accuracy: float
    per_class_accuracy: tuple[float, ...]
    num_generated: int
    num_test: int


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seeds the CPU RNG (and the initialized CUDA ones) inside, restores every RNG state afterwards."""
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=cuda):
        torch.default_generator.manual_seed(seed)
        for device in cuda:
            torch.cuda.default_generators[device].manual_seed(seed)
        yield


def classifier_on_samples(generate: Callable[[Tensor], Tensor], test_images: Tensor, test_labels: Tensor, *,
                          num_classes: int | None = None, samples_per_class: int = 200, epochs: int = 15,
                          seed: int = 0, batch_size: int = 64) -> ClassifierOnSamplesResult:
    """Classifier on samples: how well a classifier trained *only on generated, labelled images* does on real ones.

    A class-conditional generator (e.g. :meth:`pyro_spn.joint.MarginalSPNDistribution.sample_given` of a class
    label, scaled to ``[0, 1]``) draws ``samples_per_class`` images of every class; a :class:`ClassifierFeatures`
    CNN is trained on them (:func:`train_classifier_features`) and its accuracy is measured on the real test
    split. High accuracy needs samples that are both realistic and faithful to their label; a generator that
    ignores the label scores about chance. Deterministic given ``seed``, which seeds the generation and the
    training (the global RNG is untouched).

    Args:
        generate: maps labels ``[M]`` (long, balanced over the classes, on ``test_images``' device) to images
            ``[M, C, H, W]`` in ``[0, 1]`` of those labels, with ``C, H, W`` those of ``test_images``.
        test_images: ``[N, C, H, W]`` real images in ``[0, 1]``.
        test_labels: ``[N]`` long labels of ``test_images``, in ``0..num_classes-1``.
        num_classes: ``V >= 2``; by default ``test_labels.max() + 1``.
        samples_per_class: generated images per class.
        epochs, batch_size: the classifier's training.
        seed: seeds the generation and the classifier.
    """
    if not callable(generate):
        raise TypeError(f"generate must be a callable labels [M] -> images [M, C, H, W], got {generate!r}")
    test_images = _check_images("test_images", test_images)
    if (not isinstance(test_labels, Tensor) or test_labels.shape != test_images.shape[:1]
            or test_labels.dtype != torch.long):
        raise ValueError(f"test_labels must be a long tensor of shape [{test_images.shape[0]}]")
    if num_classes is None:
        num_classes = int(test_labels.max()) + 1
        if num_classes < 2:
            raise ValueError("num_classes: test_labels hold a single class; pass num_classes >= 2")
    elif isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2 or None, got {num_classes!r}")
    if bool(((test_labels < 0) | (test_labels >= num_classes)).any()):
        raise ValueError(f"test_labels must be in 0..{num_classes - 1}")
    samples_per_class = checks.integer("samples_per_class", samples_per_class)
    epochs, batch_size = checks.integer("epochs", epochs), checks.integer("batch_size", batch_size)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")

    labels = torch.arange(num_classes, device=test_images.device).repeat_interleave(samples_per_class)  # [M]
    with _seeded(seed):
        generated = generate(labels.clone())
    generated = _check_images("generate(labels)", generated)
    if generated.shape != labels.shape + test_images.shape[1:]:
        raise ValueError(f"generate(labels) must return images of shape [{len(labels)}, "
                         f"{', '.join(map(str, test_images.shape[1:]))}], got {tuple(generated.shape)}")
    classifier = train_classifier_features(generated.detach(), labels.to(generated.device), epochs=epochs,
                                           seed=seed, batch_size=batch_size, name="classifier-on-samples")
    device = next(classifier.parameters()).device
    with torch.no_grad():
        predicted = torch.cat([classifier.classify(chunk.to(device)).argmax(1).cpu()
                               for chunk in test_images.split(256)])
    correct = (predicted == test_labels.cpu()).double()
    counts = torch.bincount(test_labels.cpu(), minlength=num_classes).double()
    per_class = torch.bincount(test_labels.cpu(), weights=correct, minlength=num_classes) / counts
    return ClassifierOnSamplesResult(float(correct.mean()), tuple(per_class.tolist()), len(labels), len(test_images))


def _same_shape(x_hat: Tensor, x: Tensor) -> None:
    if not isinstance(x_hat, Tensor) or not isinstance(x, Tensor) or x_hat.dim() < 1 or x_hat.shape != x.shape:
        raise ValueError("x_hat and x must be tensors of the same shape [N, *shape]")


def reconstruction_bce(x_hat: Tensor, x: Tensor) -> float:
    """Binary cross-entropy ``−Σ_pixels [x log x̂ + (1 − x) log(1 − x̂)]``, averaged over images (logs clamped at
    ``−100`` as in PyTorch).

    Args:
        x_hat: ``[N, *shape]`` reconstructed pixel probabilities in ``[0, 1]``.
        x: ``[N, *shape]`` targets in ``[0, 1]``.
    """
    _same_shape(x_hat, x)
    for name, value in (("x_hat", x_hat), ("x", x)):
        if not bool(((value >= 0) & (value <= 1)).all()):
            raise ValueError(f"{name} must have values in [0, 1]")
    bce = F.binary_cross_entropy(x_hat.detach().double(), x.detach().double(), reduction="none")
    return float(bce.reshape(len(x), -1).sum(1).mean())


def reconstruction_mse(x_hat: Tensor, x: Tensor) -> float:
    """Mean squared error per pixel, ``mean((x̂ − x)²)`` over all images and pixels.

    Args:
        x_hat: ``[N, *shape]`` reconstructions.
        x: ``[N, *shape]`` targets.
    """
    _same_shape(x_hat, x)
    return float((x_hat.detach().double() - x.detach().double()).square().mean())


def bits_per_dim(log_likelihood: Tensor, num_dims: int, discrete: bool, log_jacobian: float | Tensor = 0.0) -> float:
    """Negative log-likelihood in bits per dimension, averaged over examples: ``−(ℓ + J) / (D ln 2)``.

    Discrete models (Binomial / Bernoulli leaves on integer counts) give a log-probability mass: ``J = 0``.
    Continuous models (Normal leaves) give a log-density in *model space* ``y = f(x)``; to report it on a data
    scale ``x`` (e.g. 8-bit pixel values, each in ``[0, 256)`` after uniform dequantization, where it bounds
    the discrete bits/dim), pass ``J = log|det ∂y/∂x|``, so that ``log p(x) = ℓ + J``. Examples:
    ``pyro_spn.data.Standardize`` (``y = (x / max_value − mean) / std``): ``J = −Σ_d log(max_value · std_d)``;
    pixels scaled to ``[0, 1]`` as ``y = x / 256``: ``J = −D log 256`` (adds exactly 8 bits/dim).

    Args:
        log_likelihood: ``[N]`` log-likelihoods in nats, each over ``num_dims`` dimensions.
        num_dims: ``D``, the dimensions per example (e.g. ``C · H · W``).
        discrete: whether ``log_likelihood`` is a log-mass (then ``log_jacobian`` must be ``0``).
        log_jacobian: ``J``, a number or ``[N]`` (only for ``discrete=False``).
    """
    if not isinstance(log_likelihood, Tensor) or log_likelihood.dim() != 1 or len(log_likelihood) == 0:
        raise ValueError("log_likelihood must be a non-empty tensor of shape [N]")
    num_dims = checks.integer("num_dims", num_dims)
    if not isinstance(discrete, bool):
        raise ValueError(f"discrete must be a bool, got {discrete!r}")
    jacobian = torch.as_tensor(log_jacobian, dtype=torch.float64)
    if discrete and bool((jacobian != 0).any()):
        raise ValueError("log_jacobian must be 0 for discrete=True (a probability mass has no change of variables)")
    log_px = log_likelihood.detach().cpu().double() + jacobian
    return float(-log_px.mean() / (num_dims * math.log(2)))


def mmd2_rbf(x: Tensor, y: Tensor, bandwidths: Sequence[float] = BANDWIDTHS) -> float:
    """The unbiased squared MMD between ``x`` ``[N, D]`` and ``y`` ``[M, D]`` under a sum of RBF kernels, in
    float64 (:func:`pyro_spn.objectives.mmd.mmd2`)."""
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise ValueError("x and y must be tensors [N, D] and [M, D]")
    return float(mmd2(x.detach().double(), y.detach().double(), bandwidths))


def mode_coverage(samples: Tensor, modes: Tensor, scales: Tensor | None = None, covariances: Tensor | None = None,
                  min_fraction: float = 0.05, radius: float = 3.0) -> float:
    """The fraction of modes that are covered: each sample goes to its nearest mode in standardized distance
    (``‖x − μ_k‖ / σ_k``, or Mahalanobis with ``covariances``) if that distance is ``<= radius``; a mode is covered
    when it receives at least ``min_fraction`` of all samples.

    Args:
        samples: ``[N, 2]``.
        modes: ``[K, 2]`` mode means.
        scales: ``[K]`` mode stds (exactly one of ``scales`` and ``covariances``).
        covariances: ``[K, 2, 2]`` mode covariances.
        min_fraction: in ``(0, 1]``.
        radius: in standard deviations, ``> 0``.
    """
    samples = _features_2d("samples", samples, 1)
    modes = _features_2d("modes", modes, 1)
    _same_width(samples, modes)
    if not 0 < min_fraction <= 1:
        raise ValueError(f"min_fraction must be in (0, 1], got {min_fraction!r}")
    if not 0 < radius < math.inf:
        raise ValueError(f"radius must be a finite number > 0, got {radius!r}")
    if (scales is None) == (covariances is None):
        raise ValueError("exactly one of scales and covariances must be given")
    difference = samples[:, None, :] - modes[None, :, :]  # [N, K, D]
    k, dim = modes.shape
    if covariances is not None:
        if not isinstance(covariances, Tensor) or covariances.shape != (k, dim, dim):
            raise ValueError(f"covariances must be a tensor of shape [{k}, {dim}, {dim}]")
        precision = torch.linalg.inv(covariances.detach().double())
        distance = torch.einsum("nki,kij,nkj->nk", difference, precision, difference).clamp_min(0).sqrt()
    else:
        if not isinstance(scales, Tensor) or scales.shape != (k,) or not bool((scales > 0).all()):
            raise ValueError(f"scales must be a tensor of shape [{k}] with entries > 0")
        distance = difference.norm(dim=-1) / scales.detach().double()
    nearest, assigned = distance.min(1)
    counts = torch.bincount(assigned[nearest <= radius], minlength=k)
    return float((counts >= min_fraction * len(samples)).double().mean())


def log_likelihood_gap(model_log_prob: Tensor, true_log_density: Tensor) -> float:
    """``mean(log p_true(x) − log q_model(x))`` over points ``x``: on samples of the true distribution, an
    estimate of ``KL(p_true ‖ q_model) >= 0`` (larger = worse model).

    Args:
        model_log_prob: ``[N]`` the model's log-density at the points.
        true_log_density: ``[N]`` the true log-density at the same points.
    """
    if (not isinstance(model_log_prob, Tensor) or not isinstance(true_log_density, Tensor)
            or model_log_prob.dim() != 1 or model_log_prob.shape != true_log_density.shape or len(model_log_prob) == 0):
        raise ValueError("model_log_prob and true_log_density must be non-empty tensors of the same shape [N]")
    return float((true_log_density.detach().double() - model_log_prob.detach().double()).mean())
